"""The model server's model: loaded on a thread of its own, then used by one worker thread that runs the jobs.

Torch is imported by the loader thread only, so the socket is listening before the seconds of import
start and health answers `loading` meanwhile. One worker runs the jobs in arrival order: the device
runs one job at a time.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from pydantic import BaseModel

from model_runtime.protocol import EncodeAudioReply, EncodeAudioRequest, GenerateReply, SegmentEvent, ServerState, error_reply
from model_runtime.runtime import seen_warm
from model_runtime.server.jobs import Job, JobQueue, shutting_down
from model_runtime.server.transport import ACCEPT_POLL_S, send
from s2v.errors import GenerationCancelled, GenerationError, GenerationTimeout, ModelServerError, S2VError
from s2v.settings import Settings

log = logging.getLogger("model_runtime.server")


class ModelWorker:
    def __init__(self, settings: Settings, stop: threading.Event):
        self.settings = settings
        self.stop = stop  # the server is stopping: jobs not yet started are refused
        self.device: str | None = None
        self.checkpoint: str | None = str(settings.checkpoint) if settings.checkpoint else None
        self.load_time: float | None = None
        self.last_error: str | None = None
        self.generation_count = 0
        self.model = None  # warm_cache.WarmModel once loaded
        self.timing_device: str | None = None  # the device's name in the timings file, once loaded
        self._load_error: S2VError | None = None
        self._loaded = threading.Event()  # the load ended, either way
        self._busy = False
        self._loader: threading.Thread | None = None

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

    def memory_in_use(self) -> tuple[float, str]:
        if self.model is not None and self.device is not None:
            from model_runtime.warm_cache import memory_in_use_gb

            return memory_in_use_gb(self.device)
        # Before the load finishes, importing warm_cache here would wait on the loader's torch import.
        import psutil

        return psutil.Process().memory_info().rss / 2**30, "rss"

    # ---- loading ----------------------------------------------------------------------------------

    def start_loading(self) -> None:
        self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            from model_runtime import warm_cache
            from model_runtime.loader import resolve_device
            from model_runtime.service import device_name

            self.device = resolve_device(self.settings.device)
            model, _ = warm_cache.get_model(self.settings.checkpoint, self.settings)
            self.checkpoint = str(model.checkpoint)
            self.timing_device = device_name(model.loaded.device)
            self.load_time = time.perf_counter() - started
            self.model = model
            log.info("model loaded from %s on %s in %.1f s", self.checkpoint, self.device, self.load_time)
        except Exception as exc:  # the server stays up to report why; clients read it in status
            self._load_error = exc if isinstance(exc, S2VError) else ModelServerError(f"{type(exc).__name__}: {exc}")
            self.last_error = f"model load failed: {self._load_error}"
            log.error("model load failed", exc_info=True)
        finally:
            self._loaded.set()

    # ---- jobs -------------------------------------------------------------------------------------

    def work(self, jobs: JobQueue) -> None:
        """The job worker thread: every job taken is answered, whatever happens to it."""
        while (job := jobs.take()) is not None:
            try:
                job.reply = self._run(job)
            except Exception as exc:  # a waiting client must get an answer whatever went wrong
                log.error("job crashed the worker's bookkeeping", exc_info=True)
                job.reply = error_reply(ModelServerError(f"{type(exc).__name__}: {exc}"), job_id=job.job_id)
            finally:
                jobs.finish(job)

    def _run(self, job: Job) -> BaseModel:
        while not self._loaded.wait(ACCEPT_POLL_S):  # jobs sent during the load wait for it
            if self.stop.is_set() or job.stop_reason():
                break
        if self.stop.is_set():
            return error_reply(shutting_down(), job_id=job.job_id)
        if self._load_error is not None:
            return error_reply(self._load_error, "the model server could not load the model: ", job_id=job.job_id)
        if reason := job.stop_reason():
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

    def _execute(self, job: Job) -> BaseModel:
        from model_runtime.service import GENERATION_LIMIT_NAME, InProcessRuntime

        call = job.call
        if isinstance(call, EncodeAudioRequest):
            runtime = InProcessRuntime(self.settings, self.model.checkpoint)
            features = runtime.encode_audio(call.audio_path, call.output_path, should_stop=job.stop_reason)
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
            reason = job.stop_reason()
            if reason is None:
                job.steps_begun += 1
            return reason

        def on_segment(done: int, total: int) -> None:
            send(job.conn, SegmentEvent(segment=done, segments=total, job_id=job.job_id))

        started_at = time.time()
        result = InProcessRuntime(settings, self.model.checkpoint, limit_name=limit_name).generate(
            call.request, call.output_path or self._default_output(), features=call.features,
            on_segment=on_segment if call.progress else None, should_stop=should_stop,
        )
        self.generation_count += 1
        result = seen_warm(result, job.model_was_loaded)
        return GenerateReply(**result.model_dump(), started_at=started_at, finished_at=time.time(), job_id=job.job_id)

    def _default_output(self) -> Path:
        # The original server named outputs <model>_<timestamp>_<n>.mp4; the pid keeps two servers apart.
        stamp = time.strftime("%Y%m%d_%H%M%S")
        return self.settings.cache_dir / "server-output" / f"s2v_{stamp}_{os.getpid()}_{self.generation_count + 1}.mp4"

    def _release_cached_memory(self) -> None:
        if self.device and self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
