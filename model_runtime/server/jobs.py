"""The model server's job queue: FIFO order, cancel of a queued or running job, and replies owed at shutdown.

A cancelled queued job stays in the underlying queue.Queue (it cannot remove from the middle); it is
answered at once and dropped from `_waiting`, and `take` skips it.
"""
from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field

from pydantic import BaseModel

from model_runtime.protocol import CancelReply, EncodeAudioRequest, ErrorReply, GenerateCall, error_reply
from model_runtime.server.transport import peer_gone
from s2v.errors import GenerationCancelled, InputError, ModelServerError

log = logging.getLogger("model_runtime.server")

CLIENT_GONE = "its client disconnected"


@dataclass(eq=False)
class Job:
    call: GenerateCall | EncodeAudioRequest
    conn: socket.socket
    job_id: str
    model_was_loaded: bool  # when it arrived: decides the original server's warm_model
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    reply: BaseModel | None = None
    cancel_reason: str | None = None  # set once: the job stops before its next denoising step
    steps_begun: int = 0  # denoising steps begun, to log where a cancel took effect
    steps_at_cancel: int | None = None

    def stop_reason(self) -> str | None:
        """Why the job must stop (cancelled, or its client has gone), None to go on."""
        if self.cancel_reason is None and peer_gone(self.conn):
            self.cancel_reason = CLIENT_GONE
        return self.cancel_reason


def shutting_down() -> ModelServerError:
    return ModelServerError("the model server is shutting down; the request was not run, send it again")


class JobQueue:
    def __init__(self) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()  # guards _waiting and running
        self._waiting: dict[str, Job] = {}  # queued jobs by id, in queue order
        self.running: Job | None = None
        self._submit_lock = threading.Lock()  # orders job submission against close's final marker
        self._closing = False
        self._unsent: set[Job] = set()
        self._unsent_changed = threading.Condition()

    def ids(self) -> tuple[str | None, list[str]]:
        """(the running job's id, the queued jobs' ids in order)."""
        with self._lock:
            return (self.running.job_id if self.running is not None else None), list(self._waiting)

    def submit(self, job: Job) -> ErrorReply | None:
        """Queue `job`; an error reply instead when it cannot be."""
        with self._submit_lock:
            if self._closing:
                return error_reply(shutting_down(), job_id=job.job_id)
            with self._lock:
                if job.job_id in self._waiting or (self.running is not None and self.running.job_id == job.job_id):
                    return error_reply(InputError("job_id", job.job_id, "is already queued or running here; send a new id for each job"))
                self._waiting[job.job_id] = job
            with self._unsent_changed:
                self._unsent.add(job)
            self._jobs.put(job)
        return None

    def cancel(self, job_id: str) -> CancelReply:
        """Stop a running job at its next denoising step, or answer and drop a queued one."""
        reason = f"job {job_id} was cancelled"
        with self._lock:
            running = self.running
            queued = self._waiting.pop(job_id, None)
            if running is not None and running.job_id == job_id:
                outcome = "running"
                if running.cancel_reason is None:
                    running.cancel_reason, running.steps_at_cancel = reason, running.steps_begun
            else:
                outcome = "unknown" if queued is None else "queued"
        if queued is not None:
            queued.reply = error_reply(GenerationCancelled(f"{reason} before it started"), job_id=job_id)
            queued.done.set()
        log.info("cancel of job %s: %s", job_id, outcome)
        return CancelReply(job_id=job_id, cancelled=outcome)

    def take(self) -> Job | None:
        """The next job to run, now the running one; None once the queue is closed and worked through."""
        while (job := self._jobs.get()) is not None:
            with self._lock:
                if self._waiting.pop(job.job_id, None) is not job:
                    continue  # cancelled while queued, and answered then
                self.running = job
            return job
        return None

    def finish(self, job: Job) -> None:
        with self._lock:
            self.running = None
        job.done.set()

    def close(self) -> None:
        """Refuse new jobs; `take` returns None after every job already queued."""
        with self._submit_lock:
            self._closing = True
        self._jobs.put(None)

    def sent(self, job: Job) -> None:
        """The job's reply has been sent, or its client has gone."""
        with self._unsent_changed:
            self._unsent.discard(job)
            self._unsent_changed.notify_all()

    def drain(self, timeout: float) -> None:
        """Wait up to `timeout` for the replies of finished jobs to reach their clients."""
        with self._unsent_changed:
            self._unsent_changed.wait_for(lambda: not self._unsent, timeout=timeout)
