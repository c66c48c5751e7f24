"""Reading an http(s):// input: every redirect hop guarded, the body streamed and cut at the deadline."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from s2v.errors import InputError, TransientError
from s2v.settings import Settings
from s2v.storage.download_limits import CHUNK_BYTES, Deadline, Limits, check_size, late
from s2v.storage.http_guard import guarded_request
from s2v.storage.redaction import redact, scrub
from s2v.storage.transient import transient_status

MAX_REDIRECTS = 5


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


def http_chunks(uri: str, field: str, settings: Settings, limits: Limits, deadline: Deadline) -> Iterator[bytes]:
    """The body at `uri`, following at most MAX_REDIRECTS guarded redirects, ended at the deadline."""
    shown = redact(uri)
    watchdog = _Watchdog(deadline.at)
    try:
        with httpx.Client(follow_redirects=False) as client, watchdog:
            url = httpx.URL(uri)
            for _ in range(MAX_REDIRECTS + 1):
                left = deadline.at - time.monotonic()
                if left <= 0:
                    raise late(field, shown, limits, deadline)
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
                    check_size(int(length) if length.isdigit() else None, limits, field, shown)
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        yield chunk
                    if watchdog.fired:  # a body without a length ends at the shutdown: it is cut, not complete
                        raise late(field, shown, limits, deadline)
                    return
                finally:
                    response.close()
            raise InputError(field, shown, f"more than {MAX_REDIRECTS} redirects")
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        if watchdog.fired or isinstance(exc, httpx.TimeoutException):
            raise late(field, shown, limits, deadline) from None
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
