"""K requests through one model server vs K cold `s2v generate` processes, same inputs, tiny checkpoint.

Each request on either side is a fresh Python process, as a Prefect process worker makes one per flow
run: a cold process loads the model itself; a warm one is a light client of the server (which the first
one starts). Prints both side by side with their ratio, and the latency of `health` while the server
is busy generating (median, p99).

    .venv/bin/python bench/server_warm.py [--requests 3] [--audio examples/speech_short.wav]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# One flow run's worth of work on the warm side: the pipeline's generate call through runtime_for.
_CLIENT = """
import json, sys
from model_runtime.client import runtime_for
from model_runtime.request import GenerationRequest
request = GenerationRequest.parse({"image_path": sys.argv[1], "audio_path": sys.argv[2], "sample_steps": int(sys.argv[3]), "seed": 0})
print(runtime_for().generate(request, sys.argv[4]).model_dump_json())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--image", type=Path, default=ROOT / "examples/portrait_anna.jpg")
    parser.add_argument("--audio", type=Path, default=ROOT / "examples/speech_short.wav")
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()

    from model_runtime.client import ModelServerClient
    from model_runtime.tiny_checkpoint import make_tiny_checkpoint
    from s2v.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="s2v-sw-", dir="/tmp"))  # short: Unix socket paths are limited
    settings = Settings(checkpoint=make_tiny_checkpoint(work / "ckpt"), device="cpu", cache_dir=work / "cache", model_server=work / "s.sock")
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "S2V_CHECKPOINT": str(settings.checkpoint), "S2V_DEVICE": "cpu",
        "S2V_CACHE_DIR": str(settings.cache_dir), "S2V_MODEL_SERVER": str(settings.model_server),
    }
    image, audio = str(args.image.resolve()), str(args.audio.resolve())

    cold, cold_records = [], []
    for i in range(args.requests):
        command = [sys.executable, "-c", "from cli.main import app; app()", "generate", "--image", image, "--audio", audio,
                   "--sample-steps", str(args.steps), "--seed", "0", "--out", str(work / f"cold{i}.mp4")]
        cold_env = {k: v for k, v in env.items() if k != "S2V_MODEL_SERVER"}
        wall, record = _timed(command, cold_env)
        cold.append(wall)
        cold_records.append(record)

    client = ModelServerClient(settings.model_server, settings, autostart=False)
    latencies: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll_health, args=(client, latencies, stop), daemon=True)
    poller.start()
    warm, warm_records = [], []
    try:
        for i in range(args.requests):
            wall, record = _timed([sys.executable, "-c", _CLIENT, image, audio, str(args.steps), str(work / f"warm{i}.mp4")], env)
            warm.append(wall)
            warm_records.append(record)
        server = client.status()
    finally:
        stop.set()
        poller.join()
        try:
            client.shutdown()
        except Exception as exc:  # report, but keep the figures already measured
            print(f"(could not stop the server: {exc})", file=sys.stderr)

    first = cold_records[0]
    print(f"server_warm: {args.requests} requests, tiny checkpoint, CPU, {first['width']}x{first['height']}, "
          f"{first['frames']} frames in {first['segments']} segments, {args.steps} steps, {args.audio.name}")
    print(f"{'':26}{'cold s2v generate':>20}{'warm server':>14}")
    for i, (c, w) in enumerate(zip(cold, warm), start=1):
        note = "  (starts the server: load included)" if i == 1 else ""
        print(f"{f'request {i} wall':26}{c:>18.1f} s{w:>12.1f} s{note}")
    print(f"{'  of which generation':26}{statistics.mean(r['generation_time'] for r in cold_records):>18.1f} s"
          f"{statistics.mean(r['generation_time'] for r in warm_records):>12.1f} s   (mean)")
    print(f"{'total wall':26}{sum(cold):>18.1f} s{sum(warm):>12.1f} s   cold/warm = {sum(cold) / sum(warm):.2f}x")
    if args.requests > 1:
        later_cold, later_warm = statistics.mean(cold[1:]), statistics.mean(warm[1:])
        print(f"{'requests 2..K, mean':26}{later_cold:>18.1f} s{later_warm:>12.1f} s   cold/warm = {later_cold / later_warm:.2f}x")
    print(f"server: load_time {server.load_time:.1f} s, load_count {server.load_count}, generation_count {server.generation_count}, "
          f"warm_model per request {[r['warm_model'] for r in warm_records]}")
    if latencies:
        ordered = sorted(latencies)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        print(f"health while busy: {len(ordered)} samples, median {statistics.median(ordered) * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms")
    shutil.rmtree(work, ignore_errors=True)


def _timed(command: list[str], env: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"request failed: {proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout)


def _poll_health(client, latencies: list[float], stop: threading.Event) -> None:
    from s2v.errors import ModelServerError

    while not stop.is_set():
        started = time.perf_counter()
        try:
            busy = client.health().status == "busy"
        except ModelServerError:  # not started yet, or between requests
            busy = False
        if busy:
            latencies.append(time.perf_counter() - started)
        stop.wait(0.05)


if __name__ == "__main__":
    main()
