"""One request and its reply over the model server's socket: connecting, reading reply lines, the errors that can end it.

Each exchange opens its own connection, so threads can share a client and a connection broken by a
dead server is never reused.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_runtime import protocol
from model_runtime.protocol import ErrorReply
from model_runtime.runtime import StopCheck
from s2v.errors import ModelServerError

STOP_POLL_S = 0.5  # how often a client waiting for its job asks its should_stop
LOG_TAIL_LINES = 20


class NoServer(ModelServerError):
    """Nothing listens on the socket."""


class ReplyTimeout(ModelServerError):
    """The server did not answer in time."""


class ConnectionLost(ModelServerError):
    """The server closed the connection before answering: it died, or is dying."""


class StopAsked(Exception):
    """The caller's should_stop gave a reason while the client waited for a reply."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of the server's log, for error messages."""
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 16384))
            text = log.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class Exchange:
    """Requests to the server on `socket_path`; its log (beside the socket) is quoted when it dies."""

    def __init__(self, socket_path: Path, connect_timeout_s: float):
        self.socket_path = socket_path
        self.files = protocol.server_files(socket_path)
        self.connect_timeout_s = connect_timeout_s

    def __call__(
        self, message: dict[str, Any], read_timeout: float, on_event: Callable[[dict[str, Any]], None] | None = None,
        should_stop: StopCheck | None = None, on_abandon: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Send one request and return its reply; an error reply raises its s2v.errors exception.

        `on_abandon` runs when the wait for the reply ends without one, the server alive: a time
        limit, StopAsked from `should_stop`, KeyboardInterrupt, an exception from `on_event`."""
        with self._connect() as conn:
            try:
                conn.sendall(json.dumps(message).encode() + b"\n")
            except OSError as exc:
                raise self._lost(exc) from None
            deadline = time.monotonic() + read_timeout
            buffer = bytearray()
            try:
                while True:
                    data = self._read_reply(conn, buffer, deadline, should_stop)
                    if "success" in data:
                        break
                    if on_event is not None:
                        on_event(data)
            except ConnectionLost:
                raise
            except BaseException:
                if on_abandon is not None:
                    on_abandon()
                raise
        if data["success"] is not True:
            raise protocol.exception_from(ErrorReply.model_validate(data))
        return data

    def _connect(self) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(self.connect_timeout_s)
        try:
            conn.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            conn.close()
            raise NoServer(f"no model server listens on {self.socket_path} ({exc.strerror})") from None
        except TimeoutError:
            conn.close()
            raise ModelServerError(f"connecting to the model server at {self.socket_path} took over {self.connect_timeout_s:g} s") from None
        except OSError as exc:
            conn.close()
            raise ModelServerError(f"cannot connect to the model server at {self.socket_path}: {exc}") from None
        return conn

    def _read_reply(self, conn: socket.socket, buffer: bytearray, deadline: float, should_stop: StopCheck | None = None) -> dict[str, Any]:
        while (end := buffer.find(b"\n")) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReplyTimeout(f"no reply from {self.socket_path}")
            if should_stop is not None and (reason := should_stop()):
                raise StopAsked(reason)
            conn.settimeout(left if should_stop is None else min(left, STOP_POLL_S))
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue  # the loop's top decides: past the deadline, or time to ask should_stop
            except OSError as exc:
                raise self._lost(exc) from None
            if not chunk:
                raise self._lost(None)
            buffer += chunk
            if len(buffer) > protocol.MAX_LINE_BYTES:
                raise ModelServerError(f"the model server at {self.socket_path} sent a reply over {protocol.MAX_LINE_BYTES} bytes")
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        try:
            data = json.loads(line)
        except ValueError:
            raise ModelServerError(f"the model server at {self.socket_path} sent a line that is not JSON: {line[:200]!r}") from None
        if not isinstance(data, dict):
            raise ModelServerError(f"the model server at {self.socket_path} sent {line[:200]!r}, not a JSON object")
        return data

    def _lost(self, exc: OSError | None) -> ConnectionLost:
        how = f" ({exc.strerror or exc})" if exc else ""
        return ConnectionLost(
            f"the model server at {self.socket_path} closed the connection before answering{how}: it crashed or was "
            f"killed (an out-of-memory kill shows in `dmesg`); the next request starts a new one. "
            f"Its log {self.files.log} ends with:\n{log_tail(self.files.log)}"
        )
