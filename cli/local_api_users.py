"""Who uses the local Prefect API: each command that runs flows on it holds a shared lock for its lifetime.

`s2v local-api stop` takes the lock exclusively without waiting: while any batch holds it, the stop is
refused instead of failing that batch's rows. The kernel drops a lock with its process, so a batch killed
with -9 never blocks a later stop.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

_held: list[int] = []  # this process's shared-lock descriptors, open until it exits


def _lock_path(home: Path) -> Path:
    return home / "in-use.lock"


def hold_local_api(home: Path) -> None:
    """Mark the local API at `home` in use by this process until it exits."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_path(home), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _held.append(fd)


def local_api_in_use(home: Path) -> bool:
    """Whether a command holds the local API at `home` (call it from one that does not hold it)."""
    try:
        fd = os.open(_lock_path(home), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
