"""Showing URIs without their secrets.

Credentials carried in a URI (userinfo, signed query strings) never reach an error message, a log line
or a record: everything shown goes through `redact`.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

# Query parameters that sign or expire a URL (S3/R2, GCS, Azure SAS, CloudFront, OAuth). They change
# every time a link is re-signed, so they are left out of a URI's identity.
_SIGNING_PARAM = re.compile(
    r"^(x-amz-.*|x-goog-.*|signature|sig|se|st|sp|sv|sr|spr|skoid|sktid|skt|ske|sks|skv|"
    r"expires|policy|key-pair-id|token|access_token|auth.*)$",
    re.IGNORECASE,
)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_URL_IN_CSV = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s,'\"<>]+")


def scheme_of(raw: str) -> str:
    """A URI's scheme, lower case; '' for a local path."""
    # A one-letter "scheme" is a Windows drive ("C:\\media\\a.wav"): a local path.
    return raw.lower() if len(raw) > 1 else ""


def redact(uri: str) -> str:
    """`uri` safe to show: userinfo becomes `***`, every query value `REDACTED`, the fragment goes.

    All query values are hidden, not only the ones known to be signatures: a token under a name
    nobody listed would otherwise leak. Local paths come back unchanged.
    """
    return _hide_secrets(uri, _hide_value, keep_fragment=False)


def scrub(text: str, *uris: str) -> str:
    """`text` (say, a library's error message) with `uris`, and anything else URL-shaped, redacted."""
    for uri in uris:
        if uri:
            text = text.replace(uri, redact(uri))
    return _URL_IN_TEXT.sub(lambda match: redact(match.group(0)), text)


def stable_uri(uri: str) -> str:
    """`uri` without userinfo, fragment and signing parameters: the same file keeps the same identity
    when its link is re-signed. For hashing only; it may still hold values that `redact` would hide."""
    parts = urlsplit(uri)
    if scheme_of(parts.scheme) == "":
        return uri
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        piece for piece in parts.query.split("&") if piece and not _SIGNING_PARAM.match(piece.partition("=")[0])
    )
    return urlunsplit((parts.scheme.lower(), netloc.lower(), parts.path, query, ""))


def without_credentials(uri: str) -> str:
    """`uri` with its userinfo as `***` and the values of signing parameters `REDACTED`; every other
    part stays, so the link still says which file it was. A URI whose secret is gone cannot be fetched."""
    return _hide_secrets(uri, _hide_signature, keep_fragment=True)


def _hide_value(piece: str) -> str:
    return f"{piece.partition('=')[0]}=REDACTED" if "=" in piece else "REDACTED"


def _hide_signature(piece: str) -> str:
    name = piece.partition("=")[0]
    return f"{name}=REDACTED" if _SIGNING_PARAM.match(name) else piece


def _hide_secrets(uri: str, hide: Callable[[str], str], keep_fragment: bool) -> str:
    """`uri` with its userinfo as `***` and each query piece through `hide`; local paths unchanged."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if scheme_of(parts.scheme) == "":
        return uri
    netloc = "***@" + parts.netloc.rpartition("@")[2] if "@" in parts.netloc else parts.netloc
    query = "&".join(hide(piece) for piece in parts.query.split("&") if piece)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment if keep_fragment else ""))


def text_without_credentials(text: str) -> str:
    """`text` (a manifest's CSV) with every URL in it through `without_credentials`. A URL ends at a
    comma here, as a CSV cell does."""
    return _URL_IN_CSV.sub(lambda match: without_credentials(match.group(0)), text)


class _RedactUrls(logging.Filter):
    """httpx logs every request's full URL at INFO: signatures and passwords included."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        return True


if not any(isinstance(f, _RedactUrls) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_RedactUrls())
