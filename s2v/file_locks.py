"""Advisory file locks (flock) shared by the CLI and the model runtime: take one by a deadline, or ask if one is held.

Light on purpose (the standard library only): the ground floor, beside s2v.errors. The kernel drops a
flock with the last descriptor of its process, so a holder killed with -9 never blocks anyone.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


def open_lock_file(path: Path) -> int:
    """A descriptor on the lock file at `path`, created owner-only if missing."""
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def lock_by(fd: int, deadline: float, retry_s: float, *, shared: bool = False) -> bool:
    """Take the lock on `fd`, trying again every `retry_s` until time.monotonic() passes `deadline`;
    False when it did not come free in time. Non-blocking tries, so a deadline is a deadline."""
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    while True:
        try:
            fcntl.flock(fd, mode)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(retry_s)


def is_held(path: Path, *, shared: bool = False) -> bool:
    """Whether another descriptor holds a lock on `path` that a `shared` (else exclusive) one would
    conflict with; False when the file does not exist. Call it from a process that holds none there."""
    try:
        # An exclusive flock emulated over NFS needs a descriptor open for writing.
        fd = os.open(path, os.O_RDONLY if shared else os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock, if taken
    return False
