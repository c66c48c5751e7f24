"""Writes, reads and listings at an output location (a local folder or s3://bucket/prefix), through fsspec.

Output locations are configuration, not user input: no input guards here. Objects are written whole:
a reader sees the old object or the new one, never half of one (S3 PUTs are atomic; local files are
written beside their target and renamed into place).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from s2v.settings import Settings
from s2v.storage.atomic import atomic_path
from s2v.storage.locations import check_key, is_s3, local_path, object_key, output_location, split_s3
from s2v.storage.s3 import MAX_PRESIGN_SECONDS, s3_storage_options, without_own_retries
from s2v.storage.transient import transient_as

MiB = 1024 * 1024
PART_BYTES = 16 * MiB  # multipart above two parts' worth, 4 parts at a time: a long 720p video goes up in parallel


def filesystem(location: str, settings: Settings) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a local path, file:// URI or s3:// URI."""
    from fsspec.core import url_to_fs

    if is_s3(location):
        fs, path = url_to_fs(location, **s3_storage_options(settings))
        return without_own_retries(fs), path
    return url_to_fs(os.path.abspath(local_path(location, "output", location)))


def _is_local(fs: Any) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def put_output(
    local_file: Path, output: str, key: str, settings: Settings, content_type: str = "video/mp4",
    part_bytes: int = PART_BYTES,
) -> str:
    """Put `local_file` at `output`/`key` and return the URL to hand out.

    URL: `settings.public_base_url` + key when set, else for S3 a presigned GET valid
    `settings.presign_seconds`, else the local path. Transient failures raise TransientError.
    """
    location = output_location(output, key)
    fs, path = filesystem(location, settings)
    with transient_as(f"writing {location}"):
        _put_file(fs, Path(local_file), path, content_type, part_bytes)
    return output_url(output, key, settings)


def output_url(output: str, key: str, settings: Settings) -> str:
    """The URL to hand out for `key` under `output` (see put_output)."""
    location = output_location(output, key)
    if is_s3(output):
        _, prefix = split_s3(output)
        if settings.public_base_url:
            return _public_url(settings.public_base_url, object_key(prefix, key))
        fs, path = filesystem(location, settings)
        with transient_as(f"signing {location}"):
            return fs.sign(path, expiration=min(settings.presign_seconds, MAX_PRESIGN_SECONDS))
    if settings.public_base_url:
        return _public_url(settings.public_base_url, check_key(key))
    return location


def write_output_text(location: str, text: str, settings: Settings, content_type: str = "text/plain") -> None:
    """Write `text` (UTF-8) whole at `location` (a local path or s3://bucket/key)."""
    fs, path = filesystem(location, settings)
    with tempfile.TemporaryDirectory(prefix="s2v-text-") as tmp:
        staged = Path(tmp) / "text"
        staged.write_text(text, encoding="utf-8", newline="")
        with transient_as(f"writing {location}"):
            _put_file(fs, staged, path, content_type, PART_BYTES)


def read_output_bytes(location: str, settings: Settings) -> bytes | None:
    """The bytes at `location` (local path or s3://bucket/key), None when absent."""
    fs, path = filesystem(location, settings)
    try:
        with transient_as(f"reading {location}"):
            return fs.cat_file(path)
    except FileNotFoundError:
        return None


def read_output_text(location: str, settings: Settings) -> str | None:
    """The UTF-8 text at `location` (local path or s3://bucket/key), None when absent."""
    data = read_output_bytes(location, settings)
    return None if data is None else data.decode("utf-8-sig")


def exists(location: str, settings: Settings) -> bool:
    """Whether a file is at `location` (a local path or s3://bucket/key)."""
    fs, path = filesystem(location, settings)
    with transient_as(f"checking {location}"):
        return bool(path) and fs.isfile(path)


def _put_file(fs: Any, local_file: Path, path: str, content_type: str, part_bytes: int) -> None:
    if _is_local(fs):
        _copy_atomically(local_file, Path(path))
        return
    fs.put_file(str(local_file), path, ContentType=content_type, chunksize=part_bytes, max_concurrency=4)


def _copy_atomically(source: Path, destination: Path) -> None:
    if source.resolve() == destination.resolve():
        return
    # Readers see the old file or the whole new one, never a half-written video.
    with atomic_path(destination, fsync=True) as partial:
        with open(source, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, MiB)


def _public_url(base: str, key: str) -> str:
    return f"{base.rstrip('/')}/{quote(key, safe='/')}"
