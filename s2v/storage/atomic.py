"""Atomic local writes: a file or folder appears whole under its name, or not at all.

The one way this project writes a local file that others may read while it is written (ledger
records, videos, the LoRA index, the timings file, the tiny checkpoint): the content goes to a
temporary name in the same folder (same filesystem, so the final move is one rename) and is moved
into place only when complete. Any error removes the temporary file. Remote (S3) objects are not
written here: a PUT is atomic already and goes through fsspec (`outputs`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PART = ".part"


@contextmanager
def staged_file(folder: Path, prefix: str = "", suffix: str = PART) -> Iterator[Path]:
    """A fresh, unused path in `folder` to write a file at; gone on the way out unless `publish` moved it.

    For files whose final name is known only once they are written (a download named by its hash)
    or that reach it another way than a rename (a hard link that must not replace anything).
    """
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f"{prefix}{uuid.uuid4().hex}{suffix}"
    try:
        yield staged
    finally:
        staged.unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    """Flush `path`'s content to the disk, so that a crash after the rename cannot leave it empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: Path, path: Path, *, fsync: bool = False) -> None:
    """Move the finished `staged` file to `path` in one step; a reader sees the old file or the new one."""
    if fsync:
        fsync_file(staged)
    os.replace(staged, path)


@contextmanager
def atomic_path(path: Path, *, fsync: bool = False, suffix: str = PART) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on a clean exit it becomes `path`, on an error it is removed.

    `suffix` ends the temporary name, for writers that pick the format by the extension (ffmpeg).
    """
    path = Path(path)
    with staged_file(path.parent, prefix=f".{path.name}.", suffix=suffix) as staged:
        yield staged
        publish(staged, path, fsync=fsync)


def write_atomically(path: Path, data: str | bytes, *, fsync: bool = False) -> None:
    """Write `data` (str as UTF-8, newlines untranslated) whole at `path`, creating its folder."""
    with atomic_path(path, fsync=fsync) as staged:
        if isinstance(data, str):
            with open(staged, "w", encoding="utf-8", newline="") as handle:
                handle.write(data)
        else:
            staged.write_bytes(data)


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A fresh folder beside `path` to fill; on a clean exit it is renamed to `path`, on an error removed.

    The rename raises OSError when `path` exists and is not empty (another writer finished first);
    the staged folder is removed then too, and the caller decides whether theirs will do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
