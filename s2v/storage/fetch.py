"""Inputs into a work folder: local paths, file://, http(s):// and s3://, size-capped and hashed as they stream.

Sizes are in MiB (1 MB here = 1,048,576 bytes), like `video_size_mb` in the results. Every download
has a wall-clock deadline (connect + whole body) that holds however slowly a server sends its bytes.
Local paths are read only where the operator allowed them (`local_inputs`, `input_roots`).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple
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
LOCAL_REFUSED = (
    "local paths and file:// URLs are not accepted here; give an http(s):// or s3:// URL, "
    "or have the operator name the allowed folders in S2V_INPUT_ROOTS"
)
OUTSIDE_ROOTS = "outside the allowed input folders (S2V_INPUT_ROOTS)"


class FetchedInput(BaseModel):
    """One input stored in the work folder. `source` is the redacted URI, safe to show and keep."""

    field: str
    source: str
    path: Path
    sha256: str
    size_bytes: int
    seconds: float


class _Deadline(NamedTuple):
    at: float  # time.monotonic() by which the download must end
    window_s: float  # the time it was given, for the message


class _Limits(NamedTuple):
    max_bytes: int
    size_setting: str
    timeout_s: float
    timeout_setting: str


def fetch_input(
    uri: str, dest_dir: Path, field: str, settings: Settings, *, deadline: float | None = None
) -> FetchedInput:
    """Download or copy `uri` to `dest_dir/<sha256[:16]>/<name>`, so equal content is stored once.

    Local paths and file:// (only with `settings.local_inputs` or under `settings.input_roots`),
    http(s):// (public hosts or `settings.allowed_hosts`) and s3:// (`settings.s3_endpoint_url`, so R2
    works). Reading stops as soon as the size limit for `field` is passed. The download must end
    within `settings.download_timeout_s` (`lora_download_timeout_s` for a LoRA) and by `deadline`
    (a `time.monotonic()` value, e.g. the end of the download stage) if given. Problems with the
    input raise InputError; network trouble and missed deadlines raise TransientError.
    """
    started = time.perf_counter()
    shown = redact(uri)
    limits = _limits(field, settings)
    ends = _deadline(limits.timeout_s, deadline)
    with closing(_read_chunks(uri, field, settings, limits, ends)) as chunks:
        path, sha256, size = _store(chunks, Path(dest_dir), _basename(uri, field))
    seconds = time.perf_counter() - started
    log.debug("fetched %s %s: %d bytes in %.2f s", field, shown, size, seconds)
    return FetchedInput(field=field, source=shown, path=path, sha256=sha256, size_bytes=size, seconds=seconds)


def read_bytes(uri: str, settings: Settings, field: str = "manifest", max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes at `uri` (at most `max_bytes`), read with the same schemes, guards, deadline and errors as inputs."""
    limits = _Limits(max_bytes, "", settings.download_timeout_s, "S2V_DOWNLOAD_TIMEOUT_S")
    with closing(_read_chunks(uri, field, settings, limits, _deadline(limits.timeout_s, None))) as chunks:
        return b"".join(chunks)


def read_text(uri: str, settings: Settings, field: str = "manifest", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text (BOM or not) at `uri`, read like `read_bytes`."""
    data = read_bytes(uri, settings, field, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(field, redact(uri), f"not UTF-8 text (bad byte at offset {exc.start})") from None


def local_file(uri: str, field: str, settings: Settings) -> Path:
    """The real path of a local path or file:// URI the settings allow, checked to be a readable file.

    Refusals come before the filesystem is touched, or (under `input_roots`) with one message
    whether the path exists or not, so a caller cannot probe the worker's files.
    """
    shown = redact(uri)
    if settings.input_roots is None and not settings.local_inputs:
        raise InputError(field, shown, LOCAL_REFUSED)
    resolved = Path(os.path.realpath(local_path(uri, field, shown)))
    if settings.input_roots is not None and not any(
        resolved.is_relative_to(os.path.realpath(root)) for root in settings.input_roots
    ):
        raise InputError(field, shown, OUTSIDE_ROOTS)
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        raise InputError(field, shown, "file not found") from None
    except PermissionError:
        raise InputError(field, shown, "not readable (permission denied)") from None
    if stat.S_ISDIR(mode):
        raise InputError(field, shown, "is a folder, not a file")
    return resolved


def _limits(field: str, settings: Settings) -> _Limits:
    def size(megabytes: float) -> int:
        return math.ceil(megabytes * MiB)

    if field == "lora":
        return _Limits(size(settings.max_lora_mb), "S2V_MAX_LORA_MB", settings.lora_download_timeout_s, "S2V_LORA_DOWNLOAD_TIMEOUT_S")
    timeout = (settings.download_timeout_s, "S2V_DOWNLOAD_TIMEOUT_S")
    if "pose" in field:
        return _Limits(size(settings.max_pose_video_mb), "S2V_MAX_POSE_VIDEO_MB", *timeout)
    if "image" in field:
        return _Limits(size(settings.max_image_mb), "S2V_MAX_IMAGE_MB", *timeout)
    return _Limits(size(settings.max_audio_mb), "S2V_MAX_AUDIO_MB" if "audio" in field else "", *timeout)


def _deadline(timeout_s: float, outer: float | None) -> _Deadline:
    now = time.monotonic()
    at = now + timeout_s if outer is None else min(now + timeout_s, outer)
    return _Deadline(at, max(0.0, at - now))


def _late(field: str, shown: str, limits: _Limits, deadline: _Deadline) -> TransientError:
    return TransientError(
        f"{field} {shown}: download not finished within {deadline.window_s:.3g} s ({limits.timeout_setting}="
        f"{limits.timeout_s:g} s per download; S2V_DOWNLOAD_STAGE_TIMEOUT_S bounds a row's whole download stage)"
    )


def _read_chunks(uri: str, field: str, settings: Settings, limits: _Limits, deadline: _Deadline) -> Iterator[bytes]:
    scheme = check_scheme(uri, field)
    if scheme in ("http", "https"):
        chunks = _http_chunks(uri, field, settings, limits, deadline)
    elif scheme == "s3":
        chunks = _s3_chunks(uri, field, settings, limits, deadline)
    else:
        chunks = _local_chunks(uri, field, settings, limits)
    return _limited(chunks, limits, deadline, field, redact(uri))


def _limited(chunks: Iterator[bytes], limits: _Limits, deadline: _Deadline, field: str, shown: str) -> Iterator[bytes]:
    # Sizes announced up front are checked by each reader; this catches servers that lie or omit them.
    # The deadline is checked between chunks here; an HTTP read is also cut mid-chunk (_Watchdog).
    total = 0
    with closing(chunks):
        for chunk in chunks:
            total += len(chunk)
            if total > limits.max_bytes:
                raise InputError(field, shown, f"larger than the {limits.max_bytes / MiB:.3g} MB limit{_hint(limits)}")
            if time.monotonic() > deadline.at:
                raise _late(field, shown, limits, deadline)
            yield chunk


def _check_size(size: int | None, limits: _Limits, field: str, shown: str) -> None:
    if size is not None and size > limits.max_bytes:
        raise InputError(field, shown, f"{size / MiB:.3g} MB is over the {limits.max_bytes / MiB:.3g} MB limit{_hint(limits)}")


def _hint(limits: _Limits) -> str:
    return f" ({limits.size_setting})" if limits.size_setting else ""


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


def _local_chunks(uri: str, field: str, settings: Settings, limits: _Limits) -> Iterator[bytes]:
    shown = redact(uri)
    resolved = local_file(uri, field, settings)
    try:
        source = open(resolved, "rb")
    except FileNotFoundError:
        raise InputError(field, shown, "file not found") from None
    except IsADirectoryError:
        raise InputError(field, shown, "is a folder, not a file") from None
    except PermissionError:
        raise InputError(field, shown, "not readable (permission denied)") from None
    with source:
        _check_size(os.fstat(source.fileno()).st_size, limits, field, shown)
        yield from iter(partial(source.read, CHUNK_BYTES), b"")


# HTTP ------------------------------------------------------------------------------------------


class _Watchdog:
    """Shuts the download's connections down at the deadline.

    A read timeout never fires while a server sends one byte every few seconds, and the deadline
    check between chunks waits for a whole chunk; shutting the socket down wakes the blocked read
    at once. httpcore's `trace` extension hands over each new connection's socket (before the
    request is sent, so slow headers are cut too); the watchdog keeps its own duplicate of it, so
    it never touches a socket httpcore has closed and reused.
    """

    def __init__(self, deadline: float):
        self.fired = False
        self._lock = threading.Lock()
        self._done = False
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        sock = info["return_value"].get_extra_info("socket")
        if sock is None:
            return
        with self._lock:
            if self._done:
                return
            own = sock.dup()
            self._sockets.append(own)
            if self.fired:
                _shut(own)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by the peer
        pass


def _http_chunks(uri: str, field: str, settings: Settings, limits: _Limits, deadline: _Deadline) -> Iterator[bytes]:
    shown = redact(uri)
    watchdog = _Watchdog(deadline.at)
    try:
        with httpx.Client(follow_redirects=False) as client, watchdog:
            url = httpx.URL(uri)
            for _ in range(MAX_REDIRECTS + 1):
                left = deadline.at - time.monotonic()
                if left <= 0:
                    raise _late(field, shown, limits, deadline)
                request = guarded_request(client, url, field, settings)
                request.extensions["timeout"] = httpx.Timeout(left).as_dict()
                request.extensions["trace"] = watchdog.trace
                response = client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        # Every hop is guarded: a public host may redirect to a private one.
                        url = url.join(response.headers["location"])
                        continue
                    _check_status(response.status_code, field, shown)
                    length = response.headers.get("content-length", "")
                    _check_size(int(length) if length.isdigit() else None, limits, field, shown)
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        yield chunk
                    if watchdog.fired:  # a body without a length ends at the shutdown: it is cut, not complete
                        raise _late(field, shown, limits, deadline)
                    return
                finally:
                    response.close()
            raise InputError(field, shown, f"more than {MAX_REDIRECTS} redirects")
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        if watchdog.fired or isinstance(exc, httpx.TimeoutException):
            raise _late(field, shown, limits, deadline) from None
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


def _s3_chunks(uri: str, field: str, settings: Settings, limits: _Limits, deadline: _Deadline) -> Iterator[bytes]:
    # botocore's connect/read timeouts bound each call; the deadline is checked between chunks (_limited).
    shown = redact(uri)
    bucket, key = split_s3(uri)
    if "@" in urlsplit(uri).netloc:
        raise InputError(field, shown, "credentials in s3:// URIs are not accepted; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if not bucket or not key:
        raise InputError(field, shown, "an s3 URI needs a bucket and a key: s3://bucket/key")
    fs = s3_filesystem(settings)
    try:
        with transient_as(f"{field} {shown}"):
            _check_size(fs.info(f"{bucket}/{key}")["size"], limits, field, shown)
            if time.monotonic() > deadline.at:
                raise _late(field, shown, limits, deadline)
            with fs.open(f"{bucket}/{key}", "rb") as source:
                yield from iter(partial(source.read, CHUNK_BYTES), b"")
    except FileNotFoundError:
        raise InputError(field, shown, "not found (no such bucket or key)") from None
    except PermissionError:
        raise InputError(field, shown, "access denied") from None
