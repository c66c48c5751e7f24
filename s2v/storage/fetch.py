"""Inputs into a work folder: local paths, file://, http(s):// and s3://, size-capped and hashed as they stream.

The entry points (`fetch_input`, `read_bytes`, `read_text`, `local_file`); each source is read in its
own module (`fetch_http`, `fetch_sources`) and capped by `download_limits`. Sizes are in MiB; every
download has a wall-clock deadline. Local paths are read only where the operator allowed them
(`local_inputs`, `input_roots`).
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel

from s2v.errors import InputError
from s2v.settings import Settings
from s2v.storage.atomic import publish, staged_file
from s2v.storage.download_limits import Deadline, Limits, MiB, deadline_in, limited, limits_for
from s2v.storage.fetch_http import http_chunks
from s2v.storage.fetch_sources import local_chunks, local_file, s3_chunks
from s2v.storage.locations import check_scheme, uri_scheme
from s2v.storage.redaction import redact

__all__ = ["FetchedInput", "MAX_TEXT_BYTES", "fetch_input", "local_file", "read_bytes", "read_text"]

log = logging.getLogger(__name__)

MAX_TEXT_BYTES = 50 * MiB  # manifests and ledgers


class FetchedInput(BaseModel):
    """One input stored in the work folder. `source` is the redacted URI, safe to show and keep."""

    field: str
    source: str
    path: Path
    sha256: str
    size_bytes: int
    fetch_s: float  # how long the download or copy took


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
    limits = limits_for(field, settings)
    ends = deadline_in(limits.timeout_s, deadline)
    with closing(_read_chunks(uri, field, settings, limits, ends)) as chunks:
        path, sha256, size = _store(chunks, Path(dest_dir), _basename(uri, field))
    seconds = time.perf_counter() - started
    log.debug("fetched %s %s: %d bytes in %.2f s", field, shown, size, seconds)
    return FetchedInput(field=field, source=shown, path=path, sha256=sha256, size_bytes=size, fetch_s=seconds)


def read_bytes(uri: str, settings: Settings, field: str = "manifest", max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes at `uri` (at most `max_bytes`), read with the same schemes, guards, deadline and errors as inputs."""
    limits = Limits(max_bytes, "", settings.download_timeout_s, "S2V_DOWNLOAD_TIMEOUT_S")
    with closing(_read_chunks(uri, field, settings, limits, deadline_in(limits.timeout_s, None))) as chunks:
        return b"".join(chunks)


def read_text(uri: str, settings: Settings, field: str = "manifest", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text (BOM or not) at `uri`, read like `read_bytes`."""
    data = read_bytes(uri, settings, field, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(field, redact(uri), f"not UTF-8 text (bad byte at offset {exc.start})") from None


def _read_chunks(uri: str, field: str, settings: Settings, limits: Limits, deadline: Deadline) -> Iterator[bytes]:
    scheme = check_scheme(uri, field)
    if scheme in ("http", "https"):
        chunks = http_chunks(uri, field, settings, limits, deadline)
    elif scheme == "s3":
        chunks = s3_chunks(uri, field, settings, limits, deadline)
    else:
        chunks = local_chunks(uri, field, settings, limits)
    return limited(chunks, limits, deadline, field, redact(uri))


def _store(chunks: Iterator[bytes], dest_dir: Path, basename: str) -> tuple[Path, str, int]:
    # The final name is the content's hash, known only once the last byte is in.
    digest, size = hashlib.sha256(), 0
    with staged_file(dest_dir / ".incoming") as partial_path:
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
            return stored, sha256, size
        final = folder / basename
        publish(partial_path, final)
        return final, sha256, size


def _basename(uri: str, field: str) -> str:
    scheme = uri_scheme(uri)
    raw = unquote(urlsplit(uri).path) if scheme else uri
    name = re.sub(r"[^A-Za-z0-9._-]", "_", raw.replace("\\", "/").rsplit("/", 1)[-1]).lstrip("._")
    if len(name) > 120:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:100] + dot + ext[:16]) if dot else name[:120]
    return name or field
