"""BENCH-ONLY stand-in for the model server. Never used in production.

It exists so bench/night.py can measure the fleet's own overhead (Prefect runs, downloads, uploads, the
ledger, the hand-out) around a GPU job of a known length, on a machine without a GPU. No production
package (cli, deployments, flows, tasks, records, model_runtime, s2v) may import it;
tests/test_bench_only_server.py checks that.

What is real: the socket, the wire format and the job queue are the production server's own
(model_runtime.server: ModelServer's transport, answers, FIFO JobQueue with cancel and client-gone
detection, model_runtime.protocol), so a row run's ModelServerClient talks to it exactly as to the real
one. What is not: the model. There is no model; instead
  - `encode_audio` takes --encode-s seconds and writes a small placeholder features file;
  - `generate` takes --generate-s seconds (from leaving the queue to the reply) and returns a real,
    playable MP4: the portrait as a still at the request's resolution with the speech muxed in as AAC
    (imageio-ffmpeg's ffmpeg), plus a poster JPEG beside it. Its result says `tiny_checkpoint: true` and
    `checkpoint: "bench-only-stand-in"`, so no record could pass for a real video.
Both stop before their next 0.1 s tick when cancelled or when their client has gone, as the real server
stops before its next denoising step.

Per job it appends one JSON line to the job log (--job-log, else $BENCH_JOB_LOG): host, kind (generate or
encode_audio), job_id, clip_id (from the output path), start and end (time.time()), outcome. A
`"event": "start"` line is written when a job leaves the queue, so a watcher can see a job in progress.

Commands (what deployments/start_warm.sh calls through S2V_BIN, see bench/bench_s2v_shim.sh):
    bench_only_model_server.py server --socket PATH [--generate-s S] [--encode-s S] [--load-s S] [--job-log FILE]
    bench_only_model_server.py server-status --socket PATH
Options fall back to $BENCH_GENERATE_S, $BENCH_ENCODE_S, $BENCH_LOAD_S, $BENCH_JOB_LOG.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model_runtime.protocol import (  # noqa: E402
    EncodeAudioReply,
    EncodeAudioRequest,
    GenerateReply,
    StatusReply,
    error_reply,
)
from model_runtime.request import FPS, PRESETS, output_size, size_preset  # noqa: E402
from model_runtime.server.jobs import Job, JobQueue  # noqa: E402
from model_runtime.server.model_server import ModelServer  # noqa: E402
from s2v.errors import GenerationCancelled, GenerationError, S2VError  # noqa: E402
from s2v.settings import Settings  # noqa: E402

log = logging.getLogger("bench_only_model_server")

CHECKPOINT = "bench-only-stand-in"
TICK_S = 0.1  # how often a job looks for a cancel or a vanished client
FRAMES_PER_SEGMENT = 80
# flows/pipeline.py: a row's inputs under work/rows/<clip_id>-<hex8>/, its video at videos/<clip_id>-<hash12>.mp4
_CLIP_FROM_WORK = re.compile(r"/rows/(?P<clip>[^/]+)-[0-9a-f]{8}/")
_CLIP_FROM_OUTPUT = re.compile(r"^(?P<clip>.+)-[0-9a-f]{12}$")


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _audio_seconds(path: Path) -> float:
    from model_runtime.video import probe

    return probe(path).duration or 0.0


class JobLog:
    def __init__(self, path: Path | None, host: str):
        self.path, self.host = path, host
        self._lock = threading.Lock()

    def write(self, **fields) -> None:
        if self.path is None:
            return
        line = json.dumps({"host": self.host, "pid": os.getpid(), **fields}) + "\n"
        with self._lock, open(self.path, "a") as handle:
            handle.write(line)
            handle.flush()


class BenchWorker:
    """Stands where ModelServer's ModelWorker stands: `state`, `work(jobs)` and the status fields."""

    def __init__(self, generate_s: float, encode_s: float, load_s: float, job_log: JobLog, stop: threading.Event):
        self.generate_s, self.encode_s, self.load_s = generate_s, encode_s, load_s
        self.job_log = job_log
        self.stop = stop
        self.device = "bench"
        self.checkpoint = CHECKPOINT
        self.timing_device = None
        self.load_time: float | None = None
        self.last_error: str | None = None
        self.generation_count = 0
        self.model = None
        self._loaded = threading.Event()
        self._busy = False
        self.loader_running = False

    @property
    def state(self) -> str:
        if not self._loaded.is_set():
            return "loading"
        return "busy" if self._busy else "ready"

    def memory_in_use(self) -> tuple[float, str]:
        import psutil

        return psutil.Process().memory_info().rss / 2**30, "rss"

    def start_loading(self) -> None:
        def load() -> None:
            started = time.perf_counter()
            self.stop.wait(self.load_s)
            self.load_time = time.perf_counter() - started
            self.model = CHECKPOINT
            self._loaded.set()
            log.info("bench-only stand-in 'loaded' in %.1f s (generate %.1f s, encode %.1f s per job)",
                     self.load_time, self.generate_s, self.encode_s)

        threading.Thread(target=load, name="bench-loader", daemon=True).start()

    # ---- jobs -------------------------------------------------------------------------------------

    def work(self, jobs: JobQueue) -> None:
        while (job := jobs.take()) is not None:
            try:
                job.reply = self._run(job)
            except Exception as exc:  # every job is answered
                log.error("bench job failed", exc_info=True)
                job.reply = error_reply(GenerationError(f"{type(exc).__name__}: {exc}"), job_id=job.job_id)
            finally:
                self._busy = False
                jobs.finish(job)

    def _run(self, job: Job):
        while not self._loaded.wait(TICK_S):
            if self.stop.is_set() or job.stop_reason():
                break
        if reason := (job.stop_reason() or ("the server is stopping" if self.stop.is_set() else None)):
            return error_reply(GenerationCancelled(f"not started: {reason}"), job_id=job.job_id)
        kind = job.call.action
        clip_id = _clip_id(job.call)
        self._busy = True
        start = time.time()
        queue_time = time.monotonic() - job.arrived
        log.info("%s job %s started after %.1f s in the queue", kind, job.job_id, queue_time)
        self.job_log.write(event="start", kind=kind, job_id=job.job_id, clip_id=clip_id, start=start, queue_s=round(queue_time, 3))
        outcome, reply = "done", None
        try:
            if isinstance(job.call, EncodeAudioRequest):
                reply = self._encode(job, start)
            else:
                reply = self._generate(job, start, queue_time)
            return reply
        except GenerationCancelled as exc:
            outcome = "cancelled"
            log.info("job %s stopped after %.1f s: %s", job.job_id, time.time() - start, exc)
            return error_reply(exc, job_id=job.job_id)
        except S2VError as exc:
            outcome = "failed"
            self.last_error = str(exc)
            return error_reply(exc, job_id=job.job_id)
        finally:
            end = time.time()
            log.info("%s job %s %s in %.1f s", kind, job.job_id, outcome, end - start)
            self.job_log.write(event="end", kind=kind, job_id=job.job_id, clip_id=clip_id, start=start, end=end,
                               queue_s=round(queue_time, 3), outcome=outcome)

    def _wait_until(self, job: Job, deadline: float, process: subprocess.Popen | None = None) -> None:
        """Until time.time() reaches `deadline` (and `process` has ended); raises on a cancel or a lost client."""
        while True:
            if reason := job.stop_reason():
                if process is not None and process.poll() is None:
                    process.kill()
                raise GenerationCancelled(f"stopped: {reason}")
            if self.stop.is_set():
                raise GenerationCancelled("stopped: the bench server is stopping")
            done = process is None or process.poll() is not None
            left = deadline - time.time()
            if done and left <= 0:
                return
            time.sleep(min(TICK_S, max(left, 0.01)))

    def _encode(self, job: Job, start: float) -> EncodeAudioReply:
        call: EncodeAudioRequest = job.call
        duration = _audio_seconds(call.audio_path)
        call.output_path.parent.mkdir(parents=True, exist_ok=True)
        call.output_path.write_bytes(b"bench-only placeholder features; no model made these\n")
        self._wait_until(job, start + self.encode_s)
        frames = max(1, math.ceil(duration * FPS))
        return EncodeAudioReply(
            path=call.output_path, audio_path=call.audio_path, duration=duration, frames=frames,
            segments=max(1, math.ceil(frames / FRAMES_PER_SEGMENT)), frames_per_segment=FRAMES_PER_SEGMENT,
            checkpoint=CHECKPOINT, encode_seconds=round(time.time() - start, 3), warm_model=True, job_id=job.job_id)

    def _generate(self, job: Job, start: float, queue_time: float) -> GenerateReply:
        from PIL import Image

        call = job.call
        request = call.request
        output = call.output_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{job.job_id}.mp4"
        output.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(request.image_path) as image:
            preset = size_preset(request.size) if request.size else PRESETS[request.resolution]
            width, height = output_size(image.width, image.height, preset)
            poster = output.with_name(f"{output.stem}.poster.jpg")
            image.convert("RGB").resize((width, height)).save(poster, quality=88)
        duration = _audio_seconds(request.audio_path)
        if request.max_segments:
            duration = min(duration, request.max_segments * FRAMES_PER_SEGMENT / FPS)
        partial = output.with_name(f".{output.stem}.partial.mp4")
        command = [_ffmpeg(), "-y", "-loglevel", "error", "-loop", "1", "-framerate", str(FPS), "-i", str(poster),
                   "-i", str(request.audio_path), "-t", f"{duration:.3f}", "-map", "0:v:0", "-map", "1:a:0",
                   "-c:v", "libx264", "-preset", "ultrafast", "-tune", "stillimage", "-pix_fmt", "yuv420p",
                   "-c:a", "aac", "-b:a", "128k", "-shortest", "-movflags", "+faststart", "-f", "mp4", str(partial)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_until(job, start + self.generate_s, process)
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if process.returncode != 0 or not partial.is_file():
            partial.unlink(missing_ok=True)
            raise GenerationError(f"bench-only MP4 could not be written: {stderr[-400:]}")
        os.replace(partial, output)
        self.generation_count += 1
        frames = max(1, round(duration * FPS))
        finished = time.time()
        return GenerateReply(
            video_path=output, poster_path=poster, generation_time=round(finished - start, 3),
            pipeline_time=round(finished - start, 3), total_time=round(finished - start + queue_time, 3),
            video_size_mb=round(output.stat().st_size / 2**20, 4), resolution=request.resolution,
            sample_steps=request.effective_steps, warm_model=job.model_was_loaded, frames=frames, fps=FPS,
            duration=round(frames / FPS, 3), seed=request.seed if request.seed is not None else 0,
            segments=max(1, math.ceil(frames / FRAMES_PER_SEGMENT)), width=width, height=height,
            guidance_scale=request.effective_guidance, load_time=0.0, queue_time=round(queue_time, 3),
            checkpoint=CHECKPOINT, tiny_checkpoint=True, mode=request.mode, size=request.size,
            sample_shift=request.sample_shift, max_segments=request.max_segments,
            start_from_ref=request.start_from_ref, started_at=start, finished_at=finished, job_id=job.job_id)


def _clip_id(call) -> str | None:
    """The row's clip id, read from the paths the pipeline chose (for the bench's log only)."""
    audio = call.audio_path if isinstance(call, EncodeAudioRequest) else call.request.audio_path
    if match := _CLIP_FROM_WORK.search(str(audio)):
        return match.group("clip")
    path = getattr(call, "output_path", None)
    if path is None:
        return None
    match = _CLIP_FROM_OUTPUT.match(Path(path).stem)
    return match.group("clip") if match else Path(path).stem


class BenchOnlyModelServer(ModelServer):
    """The production ModelServer (socket, answers, queue, cancel) with the BenchWorker in the model's place."""

    def __init__(self, socket_path: Path, worker_args: dict, job_log: JobLog):
        super().__init__(socket_path, Settings(_env_file=None, cache_dir=Path(socket_path).parent / "bench-cache"))
        self.model = BenchWorker(stop=self._stop, job_log=job_log, **worker_args)

    def status(self) -> StatusReply:
        worker = self.model
        running, queued = self.jobs.ids()
        memory_gb, kind = worker.memory_in_use()
        return StatusReply(
            model_loaded=worker.model is not None, vram_allocated_gb=round(memory_gb, 3), memory_kind=kind,
            generation_count=worker.generation_count, uptime_s=round(time.monotonic() - self.started, 3),
            load_time=None if worker.load_time is None else round(worker.load_time, 3),
            load_count=1 if worker.model is not None else 0, queue_length=len(queued), status=worker.state,
            last_error=worker.last_error, pid=os.getpid(), device=worker.device, checkpoint=worker.checkpoint,
            job_id=running, queued_job_ids=queued)


def _float(value: float | None, env: str, default: float) -> float:
    if value is not None:
        return value
    return float(os.environ.get(env) or default)


def serve(args: argparse.Namespace) -> int:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if args.log_file:
        handlers.append(logging.FileHandler(args.log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    job_log_path = args.job_log or os.environ.get("BENCH_JOB_LOG")
    job_log = JobLog(Path(job_log_path) if job_log_path else None,
                     os.environ.get("S2V_WORKER_NAME") or socket.gethostname())
    worker_args = dict(generate_s=_float(args.generate_s, "BENCH_GENERATE_S", 25.0),
                       encode_s=_float(args.encode_s, "BENCH_ENCODE_S", 1.0),
                       load_s=_float(args.load_s, "BENCH_LOAD_S", 0.0))
    log.warning("BENCH-ONLY model server stand-in (no model) on %s: %s", args.socket, worker_args)
    server = BenchOnlyModelServer(Path(args.socket).expanduser().absolute(), worker_args, job_log)
    try:
        return server.serve()
    except (S2VError, OSError) as exc:
        log.error("cannot start the bench-only server on %s: %s", args.socket, exc)
        return 1


def server_status(args: argparse.Namespace) -> int:
    """Prints the status reply as JSON (start_warm.sh reads its "status"); exit 1 when nothing answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5.0)
            conn.connect(str(args.socket))
            conn.sendall(b'{"action": "status"}\n')
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        print(f"error: no bench server answers on {args.socket}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(json.loads(data), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="BENCH-ONLY model server stand-in (never used in production)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("server", help="serve until SIGTERM or a shutdown request")
    run.add_argument("--socket", type=Path, required=True)
    run.add_argument("--generate-s", type=float)
    run.add_argument("--encode-s", type=float)
    run.add_argument("--load-s", type=float)
    run.add_argument("--job-log", type=Path)
    run.add_argument("--log-file", type=Path)
    run.add_argument("--checkpoint", help="ignored (start_warm.sh's contract)")
    run.add_argument("--device", help="ignored")
    status = commands.add_parser("server-status", help="print the server's status as JSON")
    status.add_argument("--socket", type=Path, required=True)
    args = parser.parse_args(argv)
    return serve(args) if args.command == "server" else server_status(args)


if __name__ == "__main__":
    sys.exit(main())
