"""What a flow run per row costs on top of the clip, measured side by side on one GPU worker.

One Prefect server (PostgreSQL), one GPU host (deployments/start_warm.sh: a warm model server and a process
worker taking two runs at a time) and one control worker, as in production (tools/local_fleet.py). After a
warm-up row, the same N rows (new clip ids each time, so nothing is skipped) run:
  - as one `s2v-batch/batch` run: one process, rows overlapped inside it;
  - as `s2v-scale-out/scale-out`: one `s2v-row/row` run per row (a new process and Prefect bookkeeping
    per row), the fleet's way.
The per-row cost of the fleet's way is (scale-out wall - batch wall) / N, reported in seconds and as a share
of a 3-minute GPU clip. Tiny checkpoint on CPU: the rows themselves take seconds here, minutes on a GPU.

    .venv/bin/python bench/row_runs.py [--rows 6]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.local_fleet import EXAMPLES, LocalFleet  # noqa: E402

GPU_CLIP_S = 180.0


def manifest(tag: str, rows: int) -> str:
    lines = [f"{tag}-{n},{EXAMPLES / 'portrait_anna.jpg'},{EXAMPLES / 'speech_short.wav'},15" for n in range(rows)]
    return "clip_id,image,audio,sample_steps\n" + "\n".join(lines) + "\n"


def timed(fleet: LocalFleet, deployment: str, parameters: dict) -> float:
    started = time.perf_counter()
    run = fleet.run_deployment(deployment, parameters, timeout=3600)
    if run["state"] != "Completed":
        raise SystemExit(f"{deployment} ended {run['state']}: {run['message']}\n{fleet.tail()}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="s2v-row-runs-") as tmp:
        fleet = LocalFleet(Path(tmp))
        try:
            fleet.start()
            fleet.start_gpu_host("gpu-1")
            fleet.start_control()
            fleet.wait_workers(["gpu-1"])
            out = str(Path(tmp) / "out")
            timed(fleet, "s2v-batch/batch", {"manifest": manifest("warm", 1), "output": out})  # load + first timings
            batch_s = timed(fleet, "s2v-batch/batch", {"manifest": manifest("batch", args.rows), "output": out})
            fleet_s = timed(fleet, "s2v-scale-out/scale-out", {"manifest": manifest("fleet", args.rows), "output": out})
        finally:
            fleet.stop()
    per_row = (fleet_s - batch_s) / args.rows
    print(f"{args.rows} rows on one GPU worker (tiny checkpoint, CPU)")
    print(f"  one batch run:             {batch_s:7.1f} s  ({batch_s / args.rows:.1f} s per row)")
    print(f"  one row run per row:       {fleet_s:7.1f} s  ({fleet_s / args.rows:.1f} s per row)")
    print(f"  cost of a run per row:     {per_row:7.1f} s per row = {100 * per_row / GPU_CLIP_S:.1f}% of a "
          f"{GPU_CLIP_S:.0f} s GPU clip; ratio {fleet_s / batch_s:.2f}x on this CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
