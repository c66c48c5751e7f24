"""s2v.file_locks: a lock taken by a deadline, and asking whether one is held, without a second process."""
import fcntl
import os
import time

from s2v.file_locks import is_held, lock_by, open_lock_file


def test_lock_by_waits_until_its_deadline_then_gives_up(tmp_path):
    path = tmp_path / "x.lock"
    holder = open_lock_file(path)
    fcntl.flock(holder, fcntl.LOCK_EX)
    waiter = open_lock_file(path)  # another open file description: flock conflicts within a process too
    try:
        started = time.monotonic()
        assert lock_by(waiter, started + 0.2, 0.05) is False
        assert time.monotonic() - started >= 0.2
        os.close(holder)
        assert lock_by(waiter, time.monotonic() + 0.2, 0.05) is True
    finally:
        os.close(waiter)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_is_held_sees_shared_and_exclusive_holders(tmp_path):
    path = tmp_path / "y.lock"
    assert is_held(path) is False and not path.exists()  # asking never creates the file
    shared = open_lock_file(path)
    fcntl.flock(shared, fcntl.LOCK_SH)
    assert is_held(path) is True  # an exclusive taker would wait
    assert is_held(path, shared=True) is False  # another shared holder would not
    os.close(shared)
    exclusive = open_lock_file(path)
    fcntl.flock(exclusive, fcntl.LOCK_EX)
    assert is_held(path, shared=True) is True
    os.close(exclusive)
    assert is_held(path) is False
