"""The model server's transport: claiming the Unix socket, accepting connections, reading and sending lines.

The socket's lock file (protocol.server_files) is held for the server's whole life, so a socket file
without a lock holder is a dead server's and may be replaced.
"""
from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from model_runtime import protocol
from s2v.errors import InputError, ModelServerError
from s2v.file_locks import lock_by, open_lock_file

log = logging.getLogger("model_runtime.server")

IDLE_TIMEOUT_S = 600.0  # a connection silent this long is closed, so vanished clients free their thread
ACCEPT_POLL_S = 0.25  # how soon the accept loop notices a stop request
LOCK_RETRY_S = 1.0  # a client probing the lock holds it for microseconds; do not mistake that for a server
LOCK_POLL_S = 0.05


class AlreadyRunning(ModelServerError):
    """A live server holds the socket."""


class LineTooLong(Exception):
    def __init__(self, size: int):
        self.size = size


class LineReader:
    """Newline-delimited requests from a socket. A line over the limit is skipped to its end, then
    reported, so the connection stays in step and can carry the next request."""

    def __init__(self, conn: socket.socket, limit: int = protocol.MAX_LINE_BYTES):
        self.conn, self.limit = conn, limit
        self.buffer = bytearray()
        self.skipped: int | None = None  # bytes of an over-long line dropped so far

    def next_line(self) -> bytes | None:
        """The next line, None at end of input; raises LineTooLong for a line over the limit."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                if self.skipped is not None or end > self.limit:
                    size, self.skipped = (self.skipped or 0) + end, None
                    raise LineTooLong(size)
                return line
            if self.skipped is not None:
                self.skipped += len(self.buffer)
                self.buffer.clear()
            elif len(self.buffer) > self.limit:
                self.skipped = len(self.buffer)
                self.buffer.clear()
            elif self._is_complete_object():
                # The original server's clients may send one JSON object without the newline and then wait.
                line = bytes(self.buffer)
                self.buffer.clear()
                return line
            chunk = self.conn.recv(65536)
            if not chunk:
                if self.skipped is not None:
                    size, self.skipped = self.skipped, None
                    raise LineTooLong(size)
                line, self.buffer = bytes(self.buffer), bytearray()
                return line if line.strip() else None
            self.buffer += chunk

    def _is_complete_object(self) -> bool:
        text = bytes(self.buffer).strip()
        if not (text.startswith(b"{") and text.endswith(b"}")) or len(text) > 65536:
            return False
        try:
            protocol.decode_line(text)
        except InputError:
            return False
        return True


def send(conn: socket.socket, message: BaseModel) -> bool:
    """False when the client has gone; the caller then stops serving it."""
    try:
        conn.sendall(protocol.encode(message))
        return True
    except OSError as exc:
        log.info("could not answer a client (%s); it has gone", exc)
        return False


def peer_gone(conn: socket.socket) -> bool:
    """True when the client closed its end. A client that only shut down writing still waits."""
    poller = select.poll()
    poller.register(conn, select.POLLHUP)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


@dataclass
class ClaimedSocket:
    """The listening socket and the lock that makes it this server's."""

    path: Path
    lock_fd: int
    listener: socket.socket
    inode: int

    @classmethod
    def claim(cls, path: Path) -> ClaimedSocket:
        protocol.check_socket_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _take_lock(protocol.server_files(path).lock, path)
        # Only a lock holder listens here, so a socket file found now is a dead server's, unless a
        # server from before the lock existed still answers on it.
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ModelServerError(f"{path} exists and is not a socket; refusing to replace it")
            if _answers(path):
                raise AlreadyRunning(f"a model server already answers on {path}; use it, or stop it first")
            log.warning("replacing the stale socket %s left by a server that is gone", path)
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        umask = os.umask(0o177)  # born 0600: no moment where another user could connect
        try:
            listener.bind(str(path))
        finally:
            os.umask(umask)
        os.chmod(path, 0o600)
        listener.listen(64)
        listener.settimeout(ACCEPT_POLL_S)
        return cls(path, lock_fd, listener, os.stat(path).st_ino)

    def accept_until(self, stop: threading.Event, serve: Callable[[socket.socket], None]) -> None:
        """Serve each connection on a thread of its own until `stop` is set."""
        while not stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(IDLE_TIMEOUT_S)
            threading.Thread(target=serve, args=(conn,), name="connection", daemon=True).start()

    def stop_listening(self) -> None:
        self.listener.close()

    def release(self) -> None:
        # A newer server may already have replaced the file: remove it only if it is still ours.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self.inode:
                self.path.unlink()
        os.close(self.lock_fd)  # releases the lock; the file stays so no one races on its inode


def _take_lock(lock_path: Path, socket_path: Path) -> int:
    fd = open_lock_file(lock_path)
    if not lock_by(fd, time.monotonic() + LOCK_RETRY_S, LOCK_POLL_S):
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(
            f"a model server (pid {holder}) already runs on {socket_path}; use it, or stop it first "
            f"(send {{\"action\": \"shutdown\"}} or SIGTERM), or pick another --socket"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True
