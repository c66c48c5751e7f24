"""What a URI is, and where a key lives under an output location. Pure string work: no I/O."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from s2v.errors import InputError
from s2v.storage.redaction import redact, scheme_of

URL_SCHEMES = ("http", "https", "s3")
SAFE_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def uri_scheme(uri: str) -> str:
    """'' for a local path, else the lower-case scheme."""
    try:
        return scheme_of(urlsplit(uri).scheme)
    except ValueError:
        return ""


def check_scheme(uri: str, field: str) -> str:
    """The scheme of `uri`, or InputError when it is not one the pipeline reads."""
    scheme = uri_scheme(uri)
    if scheme not in ("", "file", *URL_SCHEMES):
        raise InputError(field, redact(uri), f"unsupported scheme {scheme!r}; use a local path, file://, http(s):// or s3://")
    return scheme


def is_s3(location: str) -> bool:
    return uri_scheme(location) == "s3"


def split_s3(uri: str) -> tuple[str, str]:
    """('bucket', 'key/inside') from 's3://bucket/key/inside'; the key may be '' for a bucket root."""
    parts = urlsplit(uri)
    return parts.netloc.rpartition("@")[2], parts.path.lstrip("/")


def local_path(uri: str, field: str, shown: str) -> str:
    """The filesystem path of a local path or file:// URI."""
    if uri_scheme(uri) != "file":
        return uri
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise InputError(field, shown, "file:// URLs must name a local file (file:///path)")
    return unquote(parts.path)


def check_key(key: str) -> str:
    """`key` if it is a relative path of safe segments (no '..', no absolute path), else InputError."""
    segments = key.split("/")
    if not key or not all(SAFE_KEY_SEGMENT.match(segment) for segment in segments):
        raise InputError(
            "output key", key,
            "must be a relative path of segments made of letters, digits, '.', '_' and '-' (not starting with '.')",
        )
    return key


def output_location(output: str, key: str) -> str:
    """Where `key` lives under `output`: 's3://bucket/prefix/key' or an absolute local path."""
    check_key(key)
    if is_s3(output):
        bucket, prefix = split_s3(output)
        return f"s3://{bucket}/{object_key(prefix, key)}"
    return str(local_folder(output).resolve() / key)


def object_key(prefix: str, key: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def local_folder(output: str) -> Path:
    return Path(local_path(output, "output", output)).expanduser()
