"""Who uses the local Prefect API: each command that runs flows on it holds a shared lock for its lifetime.

`s2v local-api stop` takes the lock exclusively without waiting: while any batch holds it, the stop is
refused instead of failing that batch's rows. The kernel drops a lock with its process, so a batch killed
with -9 never blocks a later stop.
"""
from __future__ import annotations

import fcntl
from pathlib import Path

from s2v.file_locks import is_held, open_lock_file

_held: list[int] = []  # this process's shared-lock descriptors, open until it exits


def _lock_path(home: Path) -> Path:
    return home / "in-use.lock"


def hold_local_api(home: Path) -> None:
    """Mark the local API at `home` in use by this process until it exits."""
    home.mkdir(parents=True, exist_ok=True)
    fd = open_lock_file(_lock_path(home))
    fcntl.flock(fd, fcntl.LOCK_SH)
    _held.append(fd)


def local_api_in_use(home: Path) -> bool:
    """Whether a command holds the local API at `home` (call it from one that does not hold it)."""
    return is_held(_lock_path(home))
