"""The model server's client: the protocol's requests as calls, and a server started when none answers.

Every job the client sends carries a fresh job id. A client that stops waiting for its job's reply
for any reason but a dead server (its own time limit, `should_stop` giving a reason, Ctrl-C, any
exception while waiting) sends `cancel` for that job before it gives up, so the server does not go
on generating for nobody. A server this client starts is detached, so it outlives the flow run that
started it, and the client waits until it has loaded the model.
"""
from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_runtime import protocol
from model_runtime.client.exchange import LOG_TAIL_LINES, ConnectionLost, Exchange, NoServer, ReplyTimeout, StopAsked, log_tail
from model_runtime.client.spawn import MAX_SPAWNS, POLL_S, server_running, spawn, start_lock
from model_runtime.protocol import (
    CancelReply,
    EncodeAudioReply,
    EncodeAudioRequest,
    GenerateCall,
    GenerateReply,
    HealthReply,
    SegmentEvent,
    StatusReply,
)
from model_runtime.runtime import OnSegment, StopCheck, seen_warm
from s2v.errors import GenerationCancelled, GenerationTimeout, ModelServerError
from s2v.settings import DEFAULT_SOCKET, Settings, get_settings

CANCEL_TIMEOUT_S = 2.0  # a best-effort cancel on the way out must not hold up the exception it precedes


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
        self._exchange = Exchange(self.socket_path, self.settings.server_connect_timeout_s)

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

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.files.log, lines)

    # ---- jobs (start a server when none answers) -------------------------------------------------

    def generate(self, call: GenerateCall, on_segment: OnSegment | None = None, should_stop: StopCheck | None = None) -> GenerateReply:
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
        # The model was loaded for this request, so it was not warm, whatever the server saw.
        return seen_warm(GenerateReply.model_validate(data), not started_server)

    def encode_audio(self, audio_path: Path, output_path: Path, should_stop: StopCheck | None = None) -> EncodeAudioReply:
        message = EncodeAudioRequest(audio_path=_absolute(audio_path), output_path=_absolute(output_path), job_id=uuid.uuid4().hex)
        started_server = self.ensure_running(should_stop)
        # Encoding waits its turn behind generations in the server's queue: allow it as long.
        timeout = self.settings.generation_timeout_s
        try:
            data = self._job_exchange(message.model_dump(mode="json"), timeout + reply_grace_s(timeout), should_stop=should_stop)
        except ReplyTimeout:
            raise GenerationTimeout(f"the model server at {self.socket_path} did not encode {audio_path} within {timeout:g} s") from None
        return seen_warm(EncodeAudioReply.model_validate(data), not started_server)

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
        with start_lock(self.socket_path, self.files, deadline):
            for _ in range(MAX_SPAWNS):
                try:
                    # Another client may have started one while this one waited for the lock.
                    self._wait_ready(deadline, should_stop=should_stop)
                    return False
                except NoServer:
                    pass
                process = spawn(self.socket_path, self.files, self.settings)
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
        return server_running(self.files)


def _absolute(path: Path | str) -> Path:
    return Path(path).expanduser().absolute()
