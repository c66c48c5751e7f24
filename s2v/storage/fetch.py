"""Inputs into a work folder: local paths, file://, http(s):// and s3://, size-capped and hashed as they stream.

Sizes are in MiB (1 MB here = 1,048,576 bytes), like `video_size_mb` in the results.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from pydantic import BaseModel

from s2v.errors import InputError, TransientError
from s2v.settings import Settings
from s2v.storage.http_guard import guarded_request
from s2v.storage.locations import check_scheme, local_path, split_s3, uri_scheme
from s2v.storage.redaction import redact, scrub
from s2v.storage.s3 import s3_filesystem
from s2v.storage.transient import transient_as, transient_status

log = logging.getLogger(__name__)

MiB = 1024 * 1024
CHUNK_BYTES = MiB
MAX_REDIRECTS = 5
MAX_TEXT_BYTES = 50 * MiB  # manifests and ledgers


class FetchedInput(BaseModel):
    """One input stored in the work folder. `source` is the redacted URI, safe to show and keep."""

    field: str
    source: str
    path: Path
    sha256: str
    size_bytes: int
    seconds: float


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


def read_bytes(uri: str, settings: Settings, field: str = "manifest", max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes at `uri` (at most `max_bytes`), read with the same schemes, guards and errors as inputs."""
    with closing(_read_chunks(uri, field, settings, max_bytes)) as chunks:
        return b"".join(chunks)


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


def _local_chunks(uri: str, field: str, settings: Settings, limit: int) -> Iterator[bytes]:
    shown = redact(uri)
    resolved = Path(os.path.realpath(local_path(uri, field, shown)))
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



# HTTP ------------------------------------------------------------------------------------------


def _http_chunks(uri: str, field: str, settings: Settings, limit: int) -> Iterator[bytes]:
    shown = redact(uri)
    timeout = settings.download_timeout_s
    deadline = time.monotonic() + timeout
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            url = httpx.URL(uri)
            for _ in range(MAX_REDIRECTS + 1):
                request = guarded_request(client, url, field, settings)
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


def _check_status(status: int, field: str, shown: str) -> None:
    if 200 <= status < 300:
        return
    if transient_status(status):
        raise TransientError(f"{field} {shown}: HTTP {status} from the server")
    if status in (401, 403):
        raise InputError(field, shown, f"access denied (HTTP {status}); a signed URL may have expired")
    if status in (404, 410):
        raise InputError(field, shown, f"not found (HTTP {status})")
    raise InputError(field, shown, f"the server answered HTTP {status}")


def _s3_chunks(uri: str, field: str, settings: Settings, limit: int) -> Iterator[bytes]:
    shown = redact(uri)
    bucket, key = split_s3(uri)
    if "@" in urlsplit(uri).netloc:
        raise InputError(field, shown, "credentials in s3:// URIs are not accepted; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if not bucket or not key:
        raise InputError(field, shown, "an s3 URI needs a bucket and a key: s3://bucket/key")
    fs = s3_filesystem(settings)
    try:
        with transient_as(f"{field} {shown}"):
            _check_size(fs.info(f"{bucket}/{key}")["size"], limit, field, shown)
            with fs.open(f"{bucket}/{key}", "rb") as source:
                yield from iter(partial(source.read, CHUNK_BYTES), b"")
    except FileNotFoundError:
        raise InputError(field, shown, "not found (no such bucket or key)") from None
    except PermissionError:
        raise InputError(field, shown, "access denied") from None
