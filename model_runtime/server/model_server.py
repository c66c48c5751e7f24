"""The model server itself: answers each connection's requests, and ties socket, queue and model together.

Health, status, shutdown and cancel are answered at once on the connection's thread; generate and
encode_audio become jobs that the connection's thread waits on, then answers.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from pydantic import BaseModel

from model_runtime import estimate, protocol
from model_runtime.protocol import (
    CancelRequest,
    HealthReply,
    HealthRequest,
    ShutdownReply,
    ShutdownRequest,
    StatusReply,
    StatusRequest,
    error_reply,
)
from model_runtime.server.jobs import Job, JobQueue
from model_runtime.server.transport import ClaimedSocket, LineReader, LineTooLong, send
from model_runtime.server.worker import ModelWorker
from s2v.errors import InputError, ModelServerError
from s2v.settings import Settings

log = logging.getLogger("model_runtime.server")

REPLY_DRAIN_S = 10.0  # at shutdown, how long finished jobs' replies get to reach their clients


class ModelServer:
    def __init__(self, socket_path: Path, settings: Settings):
        self.socket_path = socket_path
        self.settings = settings
        self.started = time.monotonic()
        self._stop = threading.Event()
        self.jobs = JobQueue()
        self.model = ModelWorker(settings, self._stop)

    @property
    def loader_running(self) -> bool:
        return self.model.loader_running

    def health(self) -> HealthReply:
        return HealthReply(model_loaded=self.model.model is not None, status=self.model.state)

    def status(self) -> StatusReply:
        worker = self.model
        memory_gb, kind = worker.memory_in_use()
        loaded = worker.model is not None
        running, queued = self.jobs.ids()
        figures = estimate.figures(self.settings, worker.checkpoint, worker.timing_device) if worker.timing_device else {}
        return StatusReply(
            model_loaded=loaded,
            vram_allocated_gb=round(memory_gb, 3),
            memory_kind=kind,
            generation_count=worker.generation_count,
            uptime_s=round(time.monotonic() - self.started, 3),
            load_time=None if worker.load_time is None else round(worker.load_time, 3),
            load_count=sys.modules["model_runtime.warm_cache"].load_count if loaded else 0,
            queue_length=len(queued),
            status=worker.state,
            last_error=worker.last_error,
            pid=os.getpid(),
            device=worker.device,
            checkpoint=worker.checkpoint,
            job_id=running,
            queued_job_ids=queued,
            seconds_per_dit_pass={name: round(seconds, 6) for name, seconds in figures.items()},
        )

    # ---- life cycle -------------------------------------------------------------------------------

    def serve(self) -> int:
        """Claim the socket, load the model in the background and serve until told to stop."""
        claimed = ClaimedSocket.claim(self.socket_path)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.model.start_loading()
        worker = threading.Thread(target=self.model.work, args=(self.jobs,), name="job-worker", daemon=True)
        worker.start()
        log.info("listening on %s (pid %d)", self.socket_path, os.getpid())
        try:
            claimed.accept_until(self._stop, self._serve_connection)
        finally:
            self._close(claimed, worker)
        return 0

    def _on_signal(self, signum: int, _frame) -> None:
        log.info("%s received: finishing the current job, then exiting", signal.Signals(signum).name)
        self._stop.set()

    def _close(self, claimed: ClaimedSocket, worker: threading.Thread) -> None:
        self._stop.set()
        claimed.stop_listening()
        self.jobs.close()  # after every job already queued: the worker fails those, then exits
        worker.join()
        self.jobs.drain(REPLY_DRAIN_S)
        claimed.release()
        log.info("stopped after %d generation(s)", self.model.generation_count)

    # ---- connections ------------------------------------------------------------------------------

    def _serve_connection(self, conn: socket.socket) -> None:
        reader = LineReader(conn)
        with conn:
            while True:
                try:
                    line = reader.next_line()
                except LineTooLong as exc:
                    reason = f"a request line may be at most {protocol.MAX_LINE_BYTES} bytes"
                    if not send(conn, error_reply(InputError("request", f"{exc.size} bytes", reason))):
                        return
                    continue
                except OSError:  # timed out idle, or the client vanished
                    return
                if line is None:
                    return
                if not line.strip():
                    continue
                try:
                    reply, job = self._answer(line, conn)
                except Exception as exc:  # a bug answering one request must not drop the client unanswered
                    log.error("answering a request failed", exc_info=True)
                    reply, job = error_reply(ModelServerError(f"{type(exc).__name__}: {exc}")), None
                sent = send(conn, reply)
                if job is not None:
                    self.jobs.sent(job)
                if not sent:
                    return

    def _answer(self, line: bytes, conn: socket.socket) -> tuple[BaseModel, Job | None]:
        try:
            request = protocol.parse_request(protocol.decode_line(line))
        except InputError as exc:
            return error_reply(exc), None
        if isinstance(request, HealthRequest):
            return self.health(), None
        if isinstance(request, StatusRequest):
            return self.status(), None
        if isinstance(request, ShutdownRequest):
            log.info("shutdown requested by a client")
            self._stop.set()
            return ShutdownReply(), None
        if isinstance(request, CancelRequest):
            return self.jobs.cancel(request.job_id), None
        job_id = request.job_id or uuid.uuid4().hex
        job = Job(call=request, conn=conn, job_id=job_id, model_was_loaded=self.model.model is not None)
        if (refused := self.jobs.submit(job)) is not None:
            return refused, None
        job.done.wait()  # the worker answers every job it takes, shutdown included
        return job.reply, job
