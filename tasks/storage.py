"""Reading the pipeline's inputs and writing its outputs: local paths, http(s), S3 and Cloudflare R2.

Reads stream through httpx (http) and s3fs (S3); writes go through boto3's managed transfer. A URL
a user supplies is a door into the worker's network, so http(s) hosts must resolve to public
addresses unless `settings.allowed_hosts` names them, and credentials carried in a URI (userinfo,
signed query strings) never reach an error message, a log line or a record: everything shown goes
through `redact`.

Sizes are in MiB (1 MB here = 1,048,576 bytes), like `video_size_mb` in the results.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import BaseModel

from s2v.errors import InputError, S2VError, TransientError
from s2v.settings import Settings

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

log = logging.getLogger(__name__)

MiB = 1024 * 1024
CHUNK_BYTES = MiB
MAX_REDIRECTS = 5
MAX_TEXT_BYTES = 50 * MiB  # manifests and ledgers
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
URL_SCHEMES = ("http", "https", "s3")
SAFE_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

# Error codes S3, R2 and their SDKs use for "slow down" or "try again".
_TRANSIENT_S3_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequests", "TooManyRequestsException", "RequestThrottled", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "BandwidthLimitExceeded",
    "PriorRequestNotComplete", "500", "502", "503", "504",
})
# Query parameters that sign or expire a URL (S3/R2, GCS, Azure SAS, CloudFront, OAuth). They change
# every time a link is re-signed, so they are left out of a URI's identity.
_SIGNING_PARAM = re.compile(
    r"^(x-amz-.*|x-goog-.*|signature|sig|se|st|sp|sv|sr|spr|skoid|sktid|skt|ske|sks|skv|"
    r"expires|policy|key-pair-id|token|access_token|auth.*)$",
    re.IGNORECASE,
)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


class _RedactUrls(logging.Filter):
    """httpx logs every request's full URL at INFO: signatures and passwords included."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        return True


if not any(isinstance(f, _RedactUrls) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_RedactUrls())


class FetchedInput(BaseModel):
    """One input stored in the work folder. `source` is the redacted URI, safe to show and keep."""

    field: str
    source: str
    path: Path
    sha256: str
    size_bytes: int
    seconds: float


# ---------------------------------------------------------------------------------------------
# Showing URIs without their secrets


def redact(uri: str) -> str:
    """`uri` safe to show: userinfo becomes `***`, every query value `REDACTED`, the fragment goes.

    All query values are hidden, not only the ones known to be signatures: a token under a name
    nobody listed would otherwise leak. Local paths come back unchanged.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if _scheme_of(parts.scheme) == "":
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{piece.partition('=')[0]}=REDACTED" if "=" in piece else "REDACTED"
        for piece in parts.query.split("&")
        if piece
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


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
    if _scheme_of(parts.scheme) == "":
        return uri
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        piece for piece in parts.query.split("&") if piece and not _SIGNING_PARAM.match(piece.partition("=")[0])
    )
    return urlunsplit((parts.scheme.lower(), netloc.lower(), parts.path, query, ""))


def _scheme_of(raw: str) -> str:
    # A one-letter "scheme" is a Windows drive ("C:\\clips\\a.wav"): a local path.
    return raw.lower() if len(raw) > 1 else ""


def uri_scheme(uri: str) -> str:
    """'' for a local path, else the lower-case scheme."""
    try:
        return _scheme_of(urlsplit(uri).scheme)
    except ValueError:
        return ""


def check_scheme(uri: str, field: str) -> str:
    """The scheme of `uri`, or InputError when it is not one the pipeline reads."""
    scheme = uri_scheme(uri)
    if scheme not in ("", "file", *URL_SCHEMES):
        raise InputError(field, redact(uri), f"unsupported scheme {scheme!r}; use a local path, file://, http(s):// or s3://")
    return scheme


# ---------------------------------------------------------------------------------------------
# Transient or not


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: connection errors, timeouts, HTTP 5xx/408/429, S3 throttling.

    Walks the exception's causes, because s3fs and boto3 wrap the service's error in their own.
    The project's deliberate errors (InputError, ManifestError, ...) are never transient.
    """
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, TransientError):
            return True
        if isinstance(err, S2VError):
            return False
        if isinstance(err, ClientError):
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = str(err.response.get("Error", {}).get("Code", ""))
            return _transient_status(status) or code in _TRANSIENT_S3_CODES
        if isinstance(err, httpx.HTTPStatusError):
            return _transient_status(err.response.status_code)
        if isinstance(err, (httpx.TransportError, BotoConnectionError, HTTPClientError, IncompleteReadError,
                            ConnectionError, TimeoutError)):
            return True
        if "aiohttp" in sys.modules:  # s3fs's transport; only loaded when S3 was used
            import aiohttp

            if isinstance(err, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
                return True
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return False


def _transient_status(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task run only when its exception is transient.

    Prefect 3.9's engine hands over `Failed(data=exception)`; a state without an exception (a task
    that returned a Failed state itself) is not retried.
    """
    data = getattr(state, "data", None)
    return isinstance(data, BaseException) and is_transient(data)


# ---------------------------------------------------------------------------------------------
# Reading inputs


def fetch_input(uri: str, dest_dir: Path, field: str, settings: Settings) -> FetchedInput:
    """Download or copy `uri` to `dest_dir/<sha256[:16]>/<name>`, so equal content is stored once.

    Local paths (only under `settings.input_roots` when set), file://, http(s):// (public hosts or
    `settings.allowed_hosts`) and s3:// (`settings.s3_endpoint_url`, so R2 works). Reading stops as
    soon as the size limit for `field` is passed; `settings.download_timeout_s` bounds the whole
    download. Problems with the input raise InputError; network trouble raises TransientError.
    """
    started = time.perf_counter()
    shown = redact(uri)
    with closing(_read_chunks(uri, field, settings, _limit_bytes(field, settings))) as chunks:
        path, sha256, size = _store(chunks, Path(dest_dir), _basename(uri, field))
    seconds = time.perf_counter() - started
    log.debug("fetched %s %s: %d bytes in %.2f s", field, shown, size, seconds)
    return FetchedInput(field=field, source=shown, path=path, sha256=sha256, size_bytes=size, seconds=seconds)


def read_text(uri: str, settings: Settings, field: str = "manifest", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text (BOM or not) at `uri`, read with the same schemes, guards and errors as inputs."""
    with closing(_read_chunks(uri, field, settings, max_bytes)) as chunks:
        data = b"".join(chunks)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(field, redact(uri), f"not UTF-8 text (bad byte at offset {exc.start})") from None


def _limit_bytes(field: str, settings: Settings) -> int:
    megabytes = settings.max_image_mb if "image" in field else settings.max_audio_mb
    return math.ceil(megabytes * MiB)


def _limit_hint(field: str) -> str:
    if "image" in field:
        return " (S2V_MAX_IMAGE_MB)"
    return " (S2V_MAX_AUDIO_MB)" if "audio" in field else ""


def _read_chunks(uri: str, field: str, settings: Settings, limit: int) -> Iterator[bytes]:
    scheme = check_scheme(uri, field)
    if scheme in ("http", "https"):
        chunks = _http_chunks(uri, field, settings, limit)
    elif scheme == "s3":
        chunks = _s3_chunks(uri, field, settings, limit)
    else:
        chunks = _local_chunks(uri, field, settings, limit)
    return _limited(chunks, limit, field, redact(uri))


def _limited(chunks: Iterator[bytes], limit: int, field: str, shown: str) -> Iterator[bytes]:
    # Sizes announced up front are checked by each reader; this catches servers that lie or omit them.
    total = 0
    with closing(chunks):
        for chunk in chunks:
            total += len(chunk)
            if total > limit:
                raise InputError(field, shown, f"larger than the {limit / MiB:.3g} MB limit{_limit_hint(field)}")
            yield chunk


def _check_size(size: int | None, limit: int, field: str, shown: str) -> None:
    if size is not None and size > limit:
        raise InputError(field, shown, f"{size / MiB:.3g} MB is over the {limit / MiB:.3g} MB limit{_limit_hint(field)}")


def _store(chunks: Iterator[bytes], dest_dir: Path, basename: str) -> tuple[Path, str, int]:
    incoming = dest_dir / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    partial_path = incoming / f"{uuid.uuid4().hex}.part"
    digest, size = hashlib.sha256(), 0
    try:
        with open(partial_path, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        sha256 = digest.hexdigest()
        folder = dest_dir / sha256[:16]
        folder.mkdir(exist_ok=True)
        stored = next((p for p in folder.iterdir() if p.is_file()), None)
        if stored is not None:
            partial_path.unlink()
            return stored, sha256, size
        final = folder / basename
        os.replace(partial_path, final)
        return final, sha256, size
    except BaseException:
        partial_path.unlink(missing_ok=True)
        raise


def _basename(uri: str, field: str) -> str:
    scheme = uri_scheme(uri)
    raw = unquote(urlsplit(uri).path) if scheme else uri
    name = re.sub(r"[^A-Za-z0-9._-]", "_", raw.replace("\\", "/").rsplit("/", 1)[-1]).lstrip("._")
    if len(name) > 120:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:100] + dot + ext[:16]) if dot else name[:120]
    return name or field


# Local files ---------------------------------------------------------------------------------


def _local_chunks(uri: str, field: str, settings: Settings, limit: int) -> Iterator[bytes]:
    shown = redact(uri)
    resolved = Path(os.path.realpath(_local_path(uri, field, shown)))
    # Checked before touching the file, so a refused path does not reveal whether it exists.
    if settings.input_roots is not None and not any(
        resolved.is_relative_to(os.path.realpath(root)) for root in settings.input_roots
    ):
        raise InputError(field, shown, "outside the allowed input folders (S2V_INPUT_ROOTS)")
    try:
        source = open(resolved, "rb")
    except FileNotFoundError:
        raise InputError(field, shown, "file not found") from None
    except IsADirectoryError:
        raise InputError(field, shown, "is a folder, not a file") from None
    except PermissionError:
        raise InputError(field, shown, "not readable (permission denied)") from None
    with source:
        _check_size(os.fstat(source.fileno()).st_size, limit, field, shown)
        yield from iter(partial(source.read, CHUNK_BYTES), b"")


def _local_path(uri: str, field: str, shown: str) -> str:
    if uri_scheme(uri) != "file":
        return uri
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise InputError(field, shown, "file:// URLs must name a local file (file:///path)")
    return unquote(parts.path)


# HTTP ------------------------------------------------------------------------------------------


def _http_chunks(uri: str, field: str, settings: Settings, limit: int) -> Iterator[bytes]:
    shown = redact(uri)
    timeout = settings.download_timeout_s
    deadline = time.monotonic() + timeout
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            url = httpx.URL(uri)
            for _ in range(MAX_REDIRECTS + 1):
                request = _guarded_request(client, url, field, settings)
                response = client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        # Every hop is guarded: a public host may redirect to a private one.
                        url = url.join(response.headers["location"])
                        continue
                    _check_status(response.status_code, field, shown)
                    length = response.headers.get("content-length", "")
                    _check_size(int(length) if length.isdigit() else None, limit, field, shown)
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        if time.monotonic() > deadline:
                            raise TransientError(f"{field} {shown}: download took longer than {timeout:g} s")
                        yield chunk
                    return
                finally:
                    response.close()
            raise InputError(field, shown, f"more than {MAX_REDIRECTS} redirects")
    except httpx.TimeoutException:
        raise TransientError(f"{field} {shown}: no answer within {timeout:g} s") from None
    except httpx.TransportError as exc:
        raise TransientError(f"{field} {shown}: {type(exc).__name__}: {scrub(str(exc), uri)}") from None
    except httpx.InvalidURL as exc:
        raise InputError(field, shown, f"invalid URL ({scrub(str(exc), uri)})") from None


def _guarded_request(client: httpx.Client, url: httpx.URL, field: str, settings: Settings) -> httpx.Request:
    shown = redact(str(url))
    if url.scheme not in ("http", "https"):
        raise InputError(field, shown, f"redirected to unsupported scheme {url.scheme!r}")
    address = _public_address(url, field, shown, settings)
    if address is None:
        return client.build_request("GET", url)
    # Connect to the address that was checked: a second DNS answer cannot swap in a private one.
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return client.build_request(
        "GET", url.copy_with(host=address), headers={"Host": url.netloc.decode("ascii")}, extensions=extensions
    )


def _public_address(url: httpx.URL, field: str, shown: str, settings: Settings) -> str | None:
    """The public address to connect to, or None when `settings.allowed_hosts` names the host."""
    host = url.host.lower()
    if not host:
        raise InputError(field, shown, "URL has no host")
    if host in {allowed.lower().strip("[]") for allowed in settings.allowed_hosts}:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise TransientError(f"{field} {shown}: DNS lookup failed for now ({exc.strerror})") from None
        raise InputError(field, shown, f"host not found ({exc.strerror})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        kind = _non_public_kind(address)
        if kind:
            raise InputError(
                field, shown,
                f"host resolves to a {kind} address ({address}); name it in S2V_ALLOWED_HOSTS if it is meant to be reached",
            )
    return str(addresses[0])


def _non_public_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata)"
    if address.is_private:
        return "private"
    if address.is_multicast or address.is_reserved or not address.is_global:
        return "non-public"
    return None


def _check_status(status: int, field: str, shown: str) -> None:
    if 200 <= status < 300:
        return
    if _transient_status(status):
        raise TransientError(f"{field} {shown}: HTTP {status} from the server")
    if status in (401, 403):
        raise InputError(field, shown, f"access denied (HTTP {status}); a signed URL may have expired")
    if status in (404, 410):
        raise InputError(field, shown, f"not found (HTTP {status})")
    raise InputError(field, shown, f"the server answered HTTP {status}")


# S3 --------------------------------------------------------------------------------------------


def _s3_chunks(uri: str, field: str, settings: Settings, limit: int) -> Iterator[bytes]:
    shown = redact(uri)
    bucket, key = split_s3(uri)
    if "@" in urlsplit(uri).netloc:
        raise InputError(field, shown, "credentials in s3:// URIs are not accepted; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if not bucket or not key:
        raise InputError(field, shown, "an s3 URI needs a bucket and a key: s3://bucket/key")
    fs = s3_filesystem(settings)
    try:
        _check_size(fs.info(f"{bucket}/{key}")["size"], limit, field, shown)
        with fs.open(f"{bucket}/{key}", "rb") as source:
            yield from iter(partial(source.read, CHUNK_BYTES), b"")
    except FileNotFoundError:
        raise InputError(field, shown, "not found (no such bucket or key)") from None
    except PermissionError:
        raise InputError(field, shown, "access denied") from None
    except (InputError, TransientError):
        raise
    except Exception as exc:
        if is_transient(exc):
            raise TransientError(f"{field} {shown}: {type(exc).__name__}: {scrub(str(exc), uri)}") from None
        raise


def split_s3(uri: str) -> tuple[str, str]:
    """('bucket', 'key/inside') from 's3://bucket/key/inside'; the key may be '' for a bucket root."""
    parts = urlsplit(uri)
    return parts.netloc.rpartition("@")[2], parts.path.lstrip("/")


def s3_client_config() -> "Config":
    """botocore settings for S3 and R2: checksums only when an operation requires them.

    boto3 >= 1.36 sends CRC checksums on every upload by default, which Cloudflare R2 rejects.
    """
    from botocore.config import Config

    return Config(
        signature_version="s3v4",  # R2 accepts only SigV4, also for presigned links
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "max_attempts": 3},
    )


def make_s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for `settings.s3_endpoint_url` (R2 or any S3-compatible store)."""
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=settings.s3_endpoint_url, config=s3_client_config())


def s3_filesystem(settings: Settings) -> Any:
    """An s3fs filesystem with the same endpoint and checksum settings as `make_s3_client`."""
    import s3fs

    return s3fs.S3FileSystem(
        endpoint_url=settings.s3_endpoint_url,
        # Existence checks (resume) must see deletions made since the last look.
        use_listings_cache=False,
        config_kwargs={
            "signature_version": "s3v4",
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "connect_timeout": settings.download_timeout_s,
            "read_timeout": settings.download_timeout_s,
            "retries": {"mode": "standard", "max_attempts": 3},
        },
    )


# ---------------------------------------------------------------------------------------------
# Writing outputs


def default_transfer() -> "TransferConfig":
    """Multipart above 16 MiB, in 16 MiB parts, 4 at a time: a long 720p video goes up in parallel."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=4)


def is_s3(location: str) -> bool:
    return uri_scheme(location) == "s3"


def output_location(output: str, key: str) -> str:
    """Where `key` lives under `output`: 's3://bucket/prefix/key' or an absolute local path."""
    check_key(key)
    if is_s3(output):
        bucket, prefix = split_s3(output)
        return f"s3://{bucket}/{_object_key(prefix, key)}"
    return str(_local_folder(output).resolve() / key)


def check_key(key: str) -> str:
    """`key` if it is a relative path of safe segments (no '..', no absolute path), else InputError."""
    segments = key.split("/")
    if not key or not all(SAFE_KEY_SEGMENT.match(segment) for segment in segments):
        raise InputError(
            "output key", key,
            "must be a relative path of segments made of letters, digits, '.', '_' and '-' (not starting with '.')",
        )
    return key


def put_output(
    local_path: Path,
    output: str,
    key: str,
    settings: Settings,
    content_type: str = "video/mp4",
    transfer: "TransferConfig | None" = None,
) -> str:
    """Put `local_path` at `output`/`key` and return the URL to hand out.

    `output` is a local folder (atomic copy: temp file + rename) or s3://bucket/prefix (boto3
    managed transfer, multipart above `transfer`'s threshold). URL: `settings.public_base_url` +
    key when set, else for S3 a presigned GET valid `settings.presign_seconds`, else the local path.
    Transient S3 failures raise TransientError.
    """
    check_key(key)
    if is_s3(output):
        bucket, prefix = split_s3(output)
        object_key = _object_key(prefix, key)
        client = make_s3_client(settings)
        try:
            client.upload_file(
                str(local_path), bucket, object_key,
                ExtraArgs={"ContentType": content_type}, Config=transfer or default_transfer(),
            )
        except Exception as exc:
            if is_transient(exc):
                raise TransientError(f"upload to s3://{bucket}/{object_key} failed: {type(exc).__name__}: {scrub(str(exc))}") from None
            raise
        if settings.public_base_url:
            return _public_url(settings.public_base_url, object_key)
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": object_key},
            # A SigV4 link cannot outlive 7 days; S3 and R2 refuse longer ones when they are used.
            ExpiresIn=min(settings.presign_seconds, MAX_PRESIGN_SECONDS),
        )
    destination = _local_folder(output).resolve() / key
    _copy_atomically(Path(local_path), destination)
    if settings.public_base_url:
        return _public_url(settings.public_base_url, key)
    return str(destination)


def _object_key(prefix: str, key: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def _public_url(base: str, key: str) -> str:
    return f"{base.rstrip('/')}/{quote(key, safe='/')}"


def _local_folder(output: str) -> Path:
    return Path(_local_path(output, "output", output))


def _copy_atomically(source: Path, destination: Path) -> None:
    if source.resolve() == destination:
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial_path = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
    try:
        with open(source, "rb") as src, open(partial_path, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK_BYTES)
            dst.flush()
            os.fsync(dst.fileno())
        # Readers see the old file or the whole new one, never a half-written video.
        os.replace(partial_path, destination)
    except BaseException:
        partial_path.unlink(missing_ok=True)
        raise


# Output locations are configuration, not user input: no input guards on these.


def exists(location: str, settings: Settings) -> bool:
    """Whether a file is at `location` (a local path or s3://bucket/key)."""
    if not is_s3(location):
        return Path(_local_path(location, "output", location)).is_file()
    bucket, key = split_s3(location)
    try:
        return bool(key) and s3_filesystem(settings).isfile(f"{bucket}/{key}")
    except Exception as exc:
        if is_transient(exc):
            raise TransientError(f"checking {location}: {type(exc).__name__}: {scrub(str(exc))}") from None
        raise


def read_output_text(location: str, settings: Settings) -> str | None:
    """The UTF-8 text at an output `location` (local path or s3://bucket/key), None when absent."""
    if not is_s3(location):
        path = Path(_local_path(location, "output", location))
        return path.read_text(encoding="utf-8-sig") if path.is_file() else None
    bucket, key = split_s3(location)
    try:
        with s3_filesystem(settings).open(f"{bucket}/{key}", "rb") as source:
            return source.read().decode("utf-8-sig")
    except FileNotFoundError:
        return None
    except Exception as exc:
        if is_transient(exc):
            raise TransientError(f"reading {location}: {type(exc).__name__}: {scrub(str(exc))}") from None
        raise
