"""The model server's client, and `ServerRuntime`: the pipeline's two calls served by that server.

Light: no torch. A flow run's tasks import this, and a Prefect worker starts a process per flow run.
Each request opens its own connection, so threads can share a client and a connection broken by a
dead server is never reused. When no server answers, the client starts one (detached, so it outlives
the flow run that started it) and waits until it has loaded the model.

Every job the client sends carries a fresh job id. A client that stops waiting for its job's reply
for any reason but a dead server (its own time limit, `should_stop` giving a reason, Ctrl-C, any
exception while waiting) sends `cancel` for that job before it gives up, so the server does not go
on generating for nobody.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from model_runtime import interrupt, protocol
from model_runtime.protocol import (
    CancelReply, EncodeAudioReply, EncodeAudioRequest, ErrorReply, GenerateCall, GenerateReply, HealthReply, SegmentEvent,
    StatusReply,
)
from model_runtime.request import AudioFeatures, GenerationRequest, GenerationResult
from model_runtime.service import InProcessRuntime
from s2v.errors import GenerationCancelled, GenerationTimeout, ModelServerError
from s2v.settings import DEFAULT_SOCKET, Settings, get_settings

POLL_S = 0.1
STOP_POLL_S = 0.5  # how often a client waiting for its job asks its should_stop
CANCEL_TIMEOUT_S = 2.0  # a best-effort cancel on the way out must not hold up the exception it precedes
LOG_TAIL_LINES = 20
MAX_SPAWNS = 3  # per ensure_running: a start lost to a racing server is retried, a crash loop is not
# Settings the server must share with the client that starts it, passed as S2V_* variables.
SERVER_SETTINGS = ("checkpoint", "cache_dir", "device", "dtype", "vram_limit_gb", "generation_timeout_s", "max_audio_seconds")
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


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


StopCheck = Callable[[], str | None]  # a reason to stop, or None to go on


def reply_grace_s(timeout_s: float) -> float:
    # The server stops a generation at its deadline and answers; this margin lets that clearer answer
    # arrive before the client gives up on its own.
    return min(60.0, max(5.0, 0.1 * timeout_s))


class ModelServerClient:
    def __init__(self, socket_path: Path | str | None = None, settings: Settings | None = None, *, autostart: bool = True):
        self.settings = settings or get_settings()
        self.socket_path = Path(socket_path or self.settings.model_server or DEFAULT_SOCKET).expanduser().absolute()
        protocol.check_socket_path(self.socket_path)
        self.files = protocol.server_files(self.socket_path)
        self.autostart = autostart

    # ---- requests that never start a server ------------------------------------------------------

    def health(self) -> HealthReply:
        return HealthReply.model_validate(self._quick({"action": "health"}))

    def status(self) -> StatusReply:
        return StatusReply.model_validate(self._quick({"action": "status"}))

    def shutdown(self) -> None:
        self._quick({"action": "shutdown"})

    def cancel(self, job_id: str) -> CancelReply:
        """Stop job `job_id` at its next denoising step (running), or before it starts (queued)."""
        return CancelReply.model_validate(self._quick({"action": "cancel", "job_id": job_id}))

    def _cancel_quietly(self, job_id: str) -> None:
        # On the way out of a wait: the server may be gone or slow, and the caller's exception matters more.
        with contextlib.suppress(Exception):
            self._exchange({"action": "cancel", "job_id": job_id}, CANCEL_TIMEOUT_S)

    def _quick(self, message: dict[str, Any]) -> dict[str, Any]:
        timeout = self.settings.server_connect_timeout_s
        try:
            return self._exchange(message, timeout)
        except ReplyTimeout:
            raise ModelServerError(f"the model server at {self.socket_path} did not answer {message['action']} within {timeout:g} s") from None

    # ---- jobs (start a server when none answers) -------------------------------------------------

    def generate(
        self, call: GenerateCall, on_segment: Callable[[int, int], None] | None = None, should_stop: StopCheck | None = None,
    ) -> GenerateReply:
        """The job's reply. `should_stop` is asked every STOP_POLL_S while waiting; a reason cancels the job
        on the server and raises GenerationCancelled. The call's job_id, if unset, is a fresh uuid4 hex."""
        timeout = call.timeout_s or self.settings.generation_timeout_s
        request = call.request.model_copy(update={"image_path": _absolute(call.request.image_path), "audio_path": _absolute(call.request.audio_path)})
        features = call.features.model_copy(update={"path": _absolute(call.features.path)}) if call.features else None
        call = call.model_copy(update={
            "request": request, "features": features, "timeout_s": timeout, "progress": call.progress or on_segment is not None,
            "output_path": _absolute(call.output_path) if call.output_path else None, "job_id": call.job_id or uuid.uuid4().hex,
        })
        started_server = self.ensure_running(should_stop)

        def on_event(event: dict[str, Any]) -> None:
            if on_segment is not None and event.get("event") == "segment":
                progress = SegmentEvent.model_validate(event)
                on_segment(progress.segment, progress.segments)

        try:
            data = self._job_exchange(call.to_wire(), timeout + reply_grace_s(timeout), on_event, should_stop)
        except ReplyTimeout:
            raise GenerationTimeout(
                f"the model server at {self.socket_path} sent no result within {timeout:g} s "
                f"(time waiting in its queue included); job {call.job_id} was cancelled there"
            ) from None
        reply = GenerateReply.model_validate(data)
        # The model was loaded for this request, so it was not warm, whatever the server saw.
        return reply.model_copy(update={"warm_model": False}) if started_server else reply

    def encode_audio(self, audio_path: Path, output_path: Path, should_stop: StopCheck | None = None) -> EncodeAudioReply:
        message = EncodeAudioRequest(audio_path=_absolute(audio_path), output_path=_absolute(output_path), job_id=uuid.uuid4().hex)
        started_server = self.ensure_running(should_stop)
        # Encoding waits its turn behind generations in the server's queue: allow it as long.
        timeout = self.settings.generation_timeout_s
        try:
            data = self._job_exchange(message.model_dump(mode="json"), timeout + reply_grace_s(timeout), should_stop=should_stop)
        except ReplyTimeout:
            raise GenerationTimeout(f"the model server at {self.socket_path} did not encode {audio_path} within {timeout:g} s") from None
        reply = EncodeAudioReply.model_validate(data)
        return reply.model_copy(update={"warm_model": False}) if started_server else reply

    def _job_exchange(
        self, message: dict[str, Any], read_timeout: float, on_event: Callable[[dict[str, Any]], None] | None = None,
        should_stop: StopCheck | None = None,
    ) -> dict[str, Any]:
        job_id = message["job_id"]
        if should_stop is not None and (reason := should_stop()):
            raise GenerationCancelled(f"{message['action']} not started: {reason}")
        try:
            return self._exchange(message, read_timeout, on_event, should_stop, on_abandon=lambda: self._cancel_quietly(job_id))
        except StopAsked as stop:
            raise GenerationCancelled(f"{message['action']} stopped: {stop.reason} (job {job_id} was cancelled on the model server)") from None

    # ---- starting the server --------------------------------------------------------------------

    def ensure_running(self, should_stop: StopCheck | None = None) -> bool:
        """Wait until a server is ready, starting one if none runs; True when this call started it.
        A reason from `should_stop` ends the wait with GenerationCancelled (a server being started goes on)."""
        deadline = time.monotonic() + self.settings.server_load_timeout_s
        try:
            self._wait_ready(deadline, should_stop=should_stop)
            return False
        except NoServer:
            if not self.autostart:
                raise ModelServerError(f"no model server runs on {self.socket_path}; start one with `s2v server --socket {self.socket_path}`") from None
        with self._start_lock(deadline):
            for _ in range(MAX_SPAWNS):
                try:
                    # Another client may have started one while this one waited for the lock.
                    self._wait_ready(deadline, should_stop=should_stop)
                    return False
                except NoServer:
                    pass
                process = self._spawn()
                try:
                    self._wait_ready(deadline, process, should_stop)
                    return True
                except NoServer:
                    continue  # it lost the socket to a server that has gone again meanwhile
        raise ModelServerError(f"the model server on {self.socket_path} could not be started; its log {self.files.log} ends with:\n{self.log_tail()}")

    def _wait_ready(self, deadline: float, process: subprocess.Popen | None = None, should_stop: StopCheck | None = None) -> None:
        """Return once a server says ready or busy. NoServer when none answers and none is coming."""
        while True:
            if should_stop is not None and (reason := should_stop()):
                raise GenerationCancelled(f"stopped waiting for the model server on {self.socket_path}: {reason}")
            health = None
            try:
                health = self.health()
            except (NoServer, ConnectionLost) as exc:
                # A server killed a moment ago may still accept, then drop, the connection.
                if process is not None and process.poll() is not None:
                    if process.returncode != protocol.EXIT_ALREADY_RUNNING:
                        raise ModelServerError(
                            f"the model server exited with status {process.returncode} before it was ready; "
                            f"its log {self.files.log} ends with:\n{self.log_tail()}"
                        ) from None
                    process = None  # another server holds the socket: wait for that one instead
                if process is None and not self._lock_held():
                    raise NoServer(str(exc)) from None
            if health is not None and health.status in ("ready", "busy"):
                return
            if health is not None and health.status == "failed":
                self._fail_loaded(started_here=process is not None)
            if time.monotonic() > deadline:
                state = health.status if health else "not answering"
                raise ModelServerError(
                    f"the model server on {self.socket_path} was not ready within {self.settings.server_load_timeout_s:g} s "
                    f"(status: {state}); its log {self.files.log} ends with:\n{self.log_tail()}"
                )
            time.sleep(POLL_S)

    def _fail_loaded(self, started_here: bool) -> None:
        error = self.status().last_error
        if started_here:
            # A server that cannot load is of no use; stopping it lets the next request try afresh.
            with contextlib.suppress(ModelServerError):
                self.shutdown()
        raise ModelServerError(f"the model server on {self.socket_path} could not load the model: {error}; its log {self.files.log} ends with:\n{self.log_tail()}")

    def _lock_held(self) -> bool:
        """True while a server process holds the socket's lock: it is starting or stopping."""
        try:
            fd = os.open(self.files.lock, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock, if taken
        return False

    @contextlib.contextmanager
    def _start_lock(self, deadline: float) -> Iterator[None]:
        """Held by the one client starting a server; the others wait here, then find it running."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.files.start_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ModelServerError(f"another client kept starting the model server on {self.socket_path} past the load timeout") from None
                    time.sleep(POLL_S)
            yield
        finally:
            os.close(fd)

    def _spawn(self) -> subprocess.Popen:
        command = [sys.executable, "-m", "model_runtime.server", "--socket", str(self.socket_path)]
        env = os.environ.copy()
        for name in SERVER_SETTINGS:
            value = getattr(self.settings, name)
            if value is None:
                env.pop(f"S2V_{name.upper()}", None)
            else:
                env[f"S2V_{name.upper()}"] = str(value)
        # The server must run the same code as this client, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
        log_fd = os.open(self.files.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            banner = f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} starts the model server: {' '.join(command)}\n"
            os.write(log_fd, banner.encode())
            # A new session: the server outlives the flow run that started it and ignores its Ctrl-C.
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, env=env, start_new_session=True)
        finally:
            os.close(log_fd)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with open(self.files.log, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 16384))
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- one exchange ---------------------------------------------------------------------------

    def _exchange(
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
        conn.settimeout(self.settings.server_connect_timeout_s)
        try:
            conn.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            conn.close()
            raise NoServer(f"no model server listens on {self.socket_path} ({exc.strerror})") from None
        except TimeoutError:
            conn.close()
            raise ModelServerError(f"connecting to the model server at {self.socket_path} took over {self.settings.server_connect_timeout_s:g} s") from None
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
            f"Its log {self.files.log} ends with:\n{self.log_tail()}"
        )


class ServerRuntime:
    """InProcessRuntime's two calls, served by the model server; errors raise the same exceptions."""

    def __init__(self, settings: Settings | None = None, socket_path: Path | str | None = None):
        self.settings = settings or get_settings()
        self.client = ModelServerClient(socket_path, self.settings)

    def encode_audio(self, audio_path: Path, out_path: Path, should_stop: StopCheck | None = None) -> AudioFeatures:
        reply = self.client.encode_audio(Path(audio_path), Path(out_path), should_stop=interrupt.combined(should_stop))
        return AudioFeatures.model_validate(reply.model_dump(include=set(AudioFeatures.model_fields)))

    def generate(
        self,
        request: GenerationRequest,
        out_path: Path,
        features: AudioFeatures | None = None,
        on_segment: Callable[[int, int], None] | None = None,
        should_stop: StopCheck | None = None,
    ) -> GenerationResult:
        """As InProcessRuntime.generate; `should_stop` (and Ctrl-C, interrupt.py) is asked every
        STOP_POLL_S while the server works, and a reason cancels the job there (GenerationCancelled)."""
        call = GenerateCall(request=request, output_path=Path(out_path), features=features, timeout_s=self.settings.generation_timeout_s)
        reply = self.client.generate(call, on_segment=on_segment, should_stop=interrupt.combined(should_stop))
        return GenerationResult.model_validate(reply.model_dump(include=set(GenerationResult.model_fields)))


def runtime_for(settings: Settings | None = None) -> InProcessRuntime | ServerRuntime:
    """The model server when one is configured (settings.model_server), else this process's model."""
    settings = settings or get_settings()
    return ServerRuntime(settings) if settings.model_server else InProcessRuntime(settings)


def _absolute(path: Path | str) -> Path:
    return Path(path).expanduser().absolute()
