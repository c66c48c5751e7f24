"""N clips in one warm process vs N cold `s2v generate` processes, same inputs, tiny checkpoint.

Prints both side by side with their ratio, and the warm per-clip overhead beyond DiffSynth's
pipeline calls (target <= 5%).

    .venv/bin/python bench/warm_vs_cold.py [--clips 3] [--audio examples/speech_hello.wav]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--image", type=Path, default=ROOT / "examples/portrait_anna.jpg")
    parser.add_argument("--audio", type=Path, default=ROOT / "examples/speech_hello.wav")
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()

    from model_runtime.tiny_checkpoint import make_tiny_checkpoint

    work = Path(tempfile.mkdtemp(prefix="s2v-bench-"))
    checkpoint = make_tiny_checkpoint(work / "ckpt")
    common = ["--image", str(args.image), "--audio", str(args.audio), "--sample-steps", str(args.steps), "--seed", "0",
              "--checkpoint", str(checkpoint), "--device", "cpu"]

    cold_walls, cold_records = [], []
    for i in range(args.clips):
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", "from cli.main import app; app()", "generate", *common, "--out", str(work / f"cold{i}.mp4")],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        cold_walls.append(time.perf_counter() - started)
        if proc.returncode != 0:
            sys.exit(f"cold run failed: {proc.stderr[-2000:]}")
        cold_records.append(json.loads(proc.stdout))

    from model_runtime.request import GenerationRequest
    from model_runtime.service import InProcessRuntime
    from s2v.settings import Settings

    started = time.perf_counter()
    runtime = InProcessRuntime(Settings(checkpoint=checkpoint, device="cpu"))
    request = GenerationRequest.parse(
        {"image_path": args.image, "audio_path": args.audio, "sample_steps": args.steps, "seed": 0}
    )
    warm_walls, warm_records = [], []
    for i in range(args.clips):
        clip_started = time.perf_counter()
        warm_records.append(runtime.generate(request, work / f"warm{i}.mp4"))
        warm_walls.append(time.perf_counter() - clip_started)
    warm_total = time.perf_counter() - started

    cold_total = sum(cold_walls)
    # Clips after the first: the steady state a batch lives in.
    steady = list(zip(warm_walls[1:], warm_records[1:])) or list(zip(warm_walls, warm_records))
    overhead = statistics.mean((wall - r.pipeline_time) / r.pipeline_time for wall, r in steady)
    print(f"tiny checkpoint, {args.clips} clips of {args.audio.name}, {args.steps} steps, CPU")
    print(f"{'':28}{'cold (1 process/clip)':>24}{'warm (1 process)':>20}")
    print(f"{'total wall s':28}{cold_total:>24.2f}{warm_total:>20.2f}")
    print(f"{'per clip wall s (median)':28}{statistics.median(cold_walls):>24.2f}{statistics.median(warm_walls):>20.2f}")
    print(f"{'pipeline s per clip (median)':28}{statistics.median(r['pipeline_time'] for r in cold_records):>24.2f}"
          f"{statistics.median(r.pipeline_time for r in warm_records):>20.2f}")
    print(f"cold/warm total ratio: {cold_total / warm_total:.2f}x")
    print(f"warm per-clip overhead beyond the pipeline calls (clips 2..N): {overhead * 100:.1f}% (target <= 5%)")


if __name__ == "__main__":
    main()
