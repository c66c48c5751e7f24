"""The model server: one warm model, many clients, one job at a time (`s2v server`).

A Prefect process worker starts a new Python process for every flow run, so a model cached in a flow
run's process dies with it. This long-lived process keeps the model loaded across runs; tasks reach it
over a Unix socket with the seed's protocol (protocol.py), through client.py.

Threads: the main thread accepts connections; each connection gets a thread that reads its requests
and answers health and status at once; generate and encode_audio become jobs on one FIFO queue worked
by a single worker thread, so the device runs one job at a time in arrival order; the model loads in
its own thread so that health answers `loading` meanwhile. Torch is imported by the loader thread
only: the socket is listening before the seconds of import start.

Cancel: `cancel` is answered at once like health. A queued job it names is answered and dropped; a
running one is stopped by the generation's should_stop hook, asked before every denoising step, which
also stops a job whose client has closed its connection (one poll(2) per step).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import queue
import select
import signal
import socket
import stat
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from model_runtime import estimate, protocol
from model_runtime.protocol import (
    CancelReply, CancelRequest, EncodeAudioReply, EncodeAudioRequest, GenerateCall, GenerateReply, HealthReply,
    HealthRequest, SegmentEvent, ServerState, ShutdownReply, ShutdownRequest, StatusReply, StatusRequest, error_reply,
)
from s2v.errors import (
    ConfigError, GenerationCancelled, GenerationError, GenerationTimeout, InputError, ModelServerError, S2VError,
)
from s2v.settings import DEFAULT_SOCKET, Settings, load_settings

log = logging.getLogger("model_runtime.server")

IDLE_TIMEOUT_S = 600.0  # a connection silent this long is closed, so vanished clients free their thread
ACCEPT_POLL_S = 0.25  # how soon the accept loop notices a stop request
REPLY_DRAIN_S = 10.0  # at shutdown, how long finished jobs' replies get to reach their clients
LOCK_RETRY_S = 1.0  # a client probing the lock holds it for microseconds; do not mistake that for a server


class AlreadyRunning(ModelServerError):
    """A live server holds the socket."""


class LineTooLong(Exception):
    def __init__(self, size: int):
        self.size = size


CLIENT_GONE = "its client disconnected"


@dataclass(eq=False)
class Job:
    call: GenerateCall | EncodeAudioRequest
    conn: socket.socket
    job_id: str
    model_was_loaded: bool  # when it arrived: decides the seed's warm_model
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    reply: BaseModel | None = None
    cancel_reason: str | None = None  # set once: the job stops before its next denoising step
    steps_begun: int = 0  # denoising steps begun, to log where a cancel took effect
    steps_at_cancel: int | None = None


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
                # The seed's clients may send one JSON object without the newline and then wait.
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


class ModelServer:
    def __init__(self, socket_path: Path, settings: Settings):
        self.socket_path = socket_path
        self.settings = settings
        self.started = time.monotonic()
        self.device: str | None = None
        self.checkpoint: str | None = str(settings.checkpoint) if settings.checkpoint else None
        self.load_time: float | None = None
        self.last_error: str | None = None
        self.generation_count = 0
        self._model = None  # warm_cache.WarmModel once loaded
        self._load_error: S2VError | None = None
        self._loaded = threading.Event()  # the load ended, either way
        self._busy = False
        self._stop = threading.Event()
        self._jobs: queue.Queue[Job | None] = queue.Queue()  # cancelled jobs stay in it; the worker skips them
        self._jobs_lock = threading.Lock()  # guards _waiting and _running
        self._waiting: dict[str, Job] = {}  # queued jobs by id, in queue order
        self._running: Job | None = None
        self._timing_device: str | None = None  # the device's name in the timings file, once loaded
        self._submit_lock = threading.Lock()  # orders job submission against shutdown's final marker
        self._closing = False
        self._unsent: set[Job] = set()
        self._unsent_changed = threading.Condition()
        self._lock_file: int | None = None
        self._listener: socket.socket | None = None
        self._socket_inode: int | None = None
        self._loader: threading.Thread | None = None

    # ---- state ------------------------------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        if self._load_error is not None:
            return "failed"
        if not self._loaded.is_set():
            return "loading"
        return "busy" if self._busy else "ready"

    @property
    def loader_running(self) -> bool:
        return self._loader is not None and self._loader.is_alive()

    def health(self) -> HealthReply:
        return HealthReply(model_loaded=self._model is not None, status=self.state)

    def status(self) -> StatusReply:
        memory_gb, kind = self._memory_in_use()
        loaded = self._model is not None
        with self._jobs_lock:
            running = self._running.job_id if self._running is not None else None
            queued = list(self._waiting)
        figures = estimate.figures(self.settings, self.checkpoint, self._timing_device) if self._timing_device else {}
        return StatusReply(
            model_loaded=loaded,
            vram_allocated_gb=round(memory_gb, 3),
            memory_kind=kind,
            generation_count=self.generation_count,
            uptime_s=round(time.monotonic() - self.started, 3),
            load_time=None if self.load_time is None else round(self.load_time, 3),
            load_count=sys.modules["model_runtime.warm_cache"].load_count if loaded else 0,
            queue_length=len(queued),
            status=self.state,
            last_error=self.last_error,
            pid=os.getpid(),
            device=self.device,
            checkpoint=self.checkpoint,
            job_id=running,
            queued_job_ids=queued,
            seconds_per_dit_pass={name: round(seconds, 6) for name, seconds in figures.items()},
        )

    def cancel(self, job_id: str) -> CancelReply:
        """Stop a running job at its next denoising step, or answer and drop a queued one."""
        reason = f"job {job_id} was cancelled"
        with self._jobs_lock:
            running = self._running
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

    def _memory_in_use(self) -> tuple[float, str]:
        if self._model is not None and self.device is not None:
            from model_runtime.warm_cache import memory_in_use_gb

            return memory_in_use_gb(self.device)
        # Before the load finishes, importing warm_cache here would wait on the loader's torch import.
        import psutil

        return psutil.Process().memory_info().rss / 2**30, "rss"

    # ---- life cycle -------------------------------------------------------------------------------

    def serve(self) -> int:
        """Claim the socket, load the model in the background and serve until told to stop."""
        self._claim_socket()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._loader.start()
        worker = threading.Thread(target=self._work, name="job-worker", daemon=True)
        worker.start()
        log.info("listening on %s (pid %d)", self.socket_path, os.getpid())
        try:
            self._accept_until_stopped()
        finally:
            self._close(worker)
        return 0

    def _on_signal(self, signum: int, _frame) -> None:
        log.info("%s received: finishing the current job, then exiting", signal.Signals(signum).name)
        self._stop.set()

    def _claim_socket(self) -> None:
        path = self.socket_path
        protocol.check_socket_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _take_lock(protocol.server_files(path).lock, path)
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
        self._listener = listener
        self._socket_inode = os.stat(path).st_ino

    def _accept_until_stopped(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(IDLE_TIMEOUT_S)
            threading.Thread(target=self._serve_connection, args=(conn,), name="connection", daemon=True).start()

    def _close(self, worker: threading.Thread) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        with self._submit_lock:
            self._closing = True
        self._jobs.put(None)  # after every job already queued: the worker fails those, then exits
        worker.join()
        with self._unsent_changed:
            self._unsent_changed.wait_for(lambda: not self._unsent, timeout=REPLY_DRAIN_S)
        self._remove_socket()
        if self._lock_file is not None:
            os.close(self._lock_file)  # releases the lock; the file stays so no one races on its inode
        log.info("stopped after %d generation(s)", self.generation_count)

    def _remove_socket(self) -> None:
        # A newer server may already have replaced the file: remove it only if it is still ours.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.socket_path).st_ino == self._socket_inode:
                self.socket_path.unlink()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            from model_runtime import warm_cache
            from model_runtime.loader import resolve_device
            from model_runtime.service import device_name

            self.device = resolve_device(self.settings.device)
            model, _ = warm_cache.get_model(self.settings.checkpoint, self.settings)
            self.checkpoint = str(model.checkpoint)
            self._timing_device = device_name(model.loaded.device)
            self.load_time = time.perf_counter() - started
            self._model = model
            log.info("model loaded from %s on %s in %.1f s", self.checkpoint, self.device, self.load_time)
        except Exception as exc:  # the server stays up to report why; clients read it in status
            self._load_error = exc if isinstance(exc, S2VError) else ModelServerError(f"{type(exc).__name__}: {exc}")
            self.last_error = f"model load failed: {self._load_error}"
            log.error("model load failed", exc_info=True)
        finally:
            self._loaded.set()

    # ---- connections ------------------------------------------------------------------------------

    def _serve_connection(self, conn: socket.socket) -> None:
        reader = LineReader(conn)
        with conn:
            while True:
                try:
                    line = reader.next_line()
                except LineTooLong as exc:
                    reason = f"a request line may be at most {protocol.MAX_LINE_BYTES} bytes"
                    if not self._send(conn, error_reply(InputError("request", f"{exc.size} bytes", reason))):
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
                sent = self._send(conn, reply)
                if job is not None:
                    with self._unsent_changed:
                        self._unsent.discard(job)
                        self._unsent_changed.notify_all()
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
            return self.cancel(request.job_id), None
        job = Job(call=request, conn=conn, job_id=request.job_id or uuid.uuid4().hex, model_was_loaded=self._model is not None)
        with self._submit_lock:
            if self._closing:
                return error_reply(_shutting_down(), job_id=job.job_id), None
            with self._jobs_lock:
                if job.job_id in self._waiting or (self._running is not None and self._running.job_id == job.job_id):
                    return error_reply(InputError("job_id", job.job_id, "is already queued or running here; send a new id for each job")), None
                self._waiting[job.job_id] = job
            with self._unsent_changed:
                self._unsent.add(job)
            self._jobs.put(job)
        job.done.wait()  # the worker answers every job it takes, shutdown included
        return job.reply, job

    @staticmethod
    def _send(conn: socket.socket, message: BaseModel) -> bool:
        try:
            conn.sendall(protocol.encode(message))
            return True
        except OSError as exc:
            log.info("could not answer a client (%s); it has gone", exc)
            return False

    # ---- jobs -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._jobs_lock:
                if self._waiting.pop(job.job_id, None) is not job:
                    continue  # cancelled while queued, and answered then
                self._running = job
            try:
                job.reply = self._run(job)
            except Exception as exc:  # a waiting client must get an answer whatever went wrong
                log.error("job crashed the worker's bookkeeping", exc_info=True)
                job.reply = error_reply(ModelServerError(f"{type(exc).__name__}: {exc}"), job_id=job.job_id)
            finally:
                with self._jobs_lock:
                    self._running = None
                job.done.set()

    def _run(self, job: Job) -> BaseModel:
        while not self._loaded.wait(ACCEPT_POLL_S):  # jobs sent during the load wait for it
            if self._stop.is_set() or self._stop_reason(job):
                break
        if self._stop.is_set():
            return error_reply(_shutting_down(), job_id=job.job_id)
        if self._load_error is not None:
            return error_reply(self._load_error, "the model server could not load the model: ", job_id=job.job_id)
        if reason := self._stop_reason(job):
            log.info("job %s not started: %s", job.job_id, reason)
            return error_reply(GenerationCancelled(f"not started: {reason}"), job_id=job.job_id)
        self._busy = True
        started = time.monotonic()
        log.info("%s job %s started after %.1f s in the queue", job.call.action, job.job_id, started - job.arrived)
        try:
            reply = self._execute(job)
            log.info("%s job %s done in %.1f s", job.call.action, job.job_id, time.monotonic() - started)
            return reply
        except GenerationCancelled as exc:  # asked for: not an error of the server's
            after = "" if job.steps_at_cancel is None else f" ({job.steps_begun - job.steps_at_cancel} step(s) began after the cancel)"
            log.info("job %s stopped after %d denoising step(s): %s%s", job.job_id, job.steps_begun, job.cancel_reason, after)
            self._release_cached_memory()
            return error_reply(exc, job_id=job.job_id)
        except S2VError as exc:
            reply = error_reply(exc, job_id=job.job_id)
        except Exception as exc:  # e.g. torch.cuda.OutOfMemoryError outside the denoising loop
            log.error("job failed", exc_info=True)
            reply = error_reply(GenerationError(f"{type(exc).__name__}: {exc}"), job_id=job.job_id)
            self._release_cached_memory()
        finally:
            self._busy = False
        self.last_error = f"{reply.error_type}: {reply.error}"
        log.warning("job %s failed: %s", job.job_id, self.last_error)
        return reply

    def _stop_reason(self, job: Job) -> str | None:
        """Why the job must stop (cancelled, or its client has gone), None to go on."""
        if job.cancel_reason is None and _peer_gone(job.conn):
            job.cancel_reason = CLIENT_GONE
        return job.cancel_reason

    def _execute(self, job: Job) -> BaseModel:
        from model_runtime.service import GENERATION_LIMIT_NAME, InProcessRuntime

        call = job.call
        if isinstance(call, EncodeAudioRequest):
            runtime = InProcessRuntime(self.settings, self._model.checkpoint)
            features = runtime.encode_audio(call.audio_path, call.output_path, should_stop=lambda: self._stop_reason(job))
            return EncodeAudioReply(**features.model_dump(), job_id=job.job_id)
        settings, limit_name = self.settings, f"{GENERATION_LIMIT_NAME} of the model server"
        if call.timeout_s is not None:
            waited = time.monotonic() - job.arrived
            if waited >= call.timeout_s:
                raise GenerationTimeout(f"the request waited {waited:.1f} s in the queue, past its {call.timeout_s:g} s limit; it was not started")
            left = call.timeout_s - waited
            if left < settings.generation_timeout_s:
                settings = settings.model_copy(update={"generation_timeout_s": left})
                limit_name = f"the request's timeout_s of {call.timeout_s:g} s, less {waited:.1f} s in the queue"

        def should_stop() -> str | None:
            reason = self._stop_reason(job)
            if reason is None:
                job.steps_begun += 1
            return reason

        def on_segment(done: int, total: int) -> None:
            self._send(job.conn, SegmentEvent(segment=done, segments=total, job_id=job.job_id))

        started_at = time.time()
        result = InProcessRuntime(settings, self._model.checkpoint, limit_name=limit_name).generate(
            call.request, call.output_path or self._default_output(), features=call.features,
            on_segment=on_segment if call.progress else None, should_stop=should_stop,
        )
        self.generation_count += 1
        return GenerateReply(
            **{**result.model_dump(), "warm_model": result.warm_model and job.model_was_loaded},
            started_at=started_at, finished_at=time.time(), job_id=job.job_id,
        )

    def _default_output(self) -> Path:
        # The seed named outputs <model>_<timestamp>_<n>.mp4; the pid keeps two servers apart.
        stamp = time.strftime("%Y%m%d_%H%M%S")
        return self.settings.cache_dir / "server-output" / f"s2v_{stamp}_{os.getpid()}_{self.generation_count + 1}.mp4"

    def _release_cached_memory(self) -> None:
        if self.device and self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def _shutting_down() -> ModelServerError:
    return ModelServerError("the model server is shutting down; the request was not run, send it again")


def _take_lock(lock_path: Path, socket_path: Path) -> int:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + LOCK_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise AlreadyRunning(
                    f"a model server (pid {holder}) already runs on {socket_path}; use it, or stop it first "
                    f"(send {{\"action\": \"shutdown\"}} or SIGTERM), or pick another --socket"
                ) from None
            time.sleep(0.05)
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


def _peer_gone(conn: socket.socket) -> bool:
    """True when the client closed its end. A client that only shut down writing still waits."""
    poller = select.poll()
    poller.register(conn, select.POLLHUP)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


# ---- entry points -------------------------------------------------------------------------------

def run(socket_path: Path | str, settings: Settings, log_file: Path | None = None) -> int:
    """Serve until SIGTERM or a `shutdown` request; the exit status (0 after a clean stop)."""
    _setup_logging(log_file)
    server = ModelServer(Path(socket_path).expanduser().absolute(), settings)
    try:
        # Library chatter printed to stdout would interleave with whatever started us; logs go to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            code = server.serve()
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return protocol.EXIT_ALREADY_RUNNING
    except (S2VError, OSError) as exc:  # e.g. a socket folder this user cannot write
        log.error("cannot start the model server on %s: %s", socket_path, exc)
        return 1
    if server.loader_running:
        # A load cut short leaves torch mid-import; interpreter teardown under it can crash.
        logging.shutdown()
        os._exit(code)
    return code


def _setup_logging(log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s2v server", description="Keep the Wan2.2-S2V model warm and serve it over a Unix socket.")
    parser.add_argument("--socket", type=Path, help=f"Unix socket to listen on (default: S2V_MODEL_SERVER, else {DEFAULT_SOCKET})")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: S2V_CHECKPOINT, else the tiny one)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: S2V_DEVICE, else auto")
    parser.add_argument("--log-file", type=Path, help="also append the log to this file")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"checkpoint": args.checkpoint, "device": args.device}.items() if v is not None}
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(args.socket or settings.model_server or DEFAULT_SOCKET, settings, args.log_file)


if __name__ == "__main__":
    sys.exit(main())
