"""Seconds from `s2v run` to its first row starting, side by side in one run:

  - embedded: the batch flow on Prefect's temporary in-process server (what `s2v run` did before, and
    what a bare `python -c 'batch(...)'` still does): every run starts its own server on SQLite;
  - local API, cold: the first `s2v run` on a machine, which starts the shared local Prefect API;
  - local API, warm: every later `s2v run` (the target: under 10 s).

Each is a one-row manifest on the tiny checkpoint. "First row started" is when the row's record says
it started (its finish time minus its total time), measured from the moment the command was launched.

    .venv/bin/python bench/cli_start.py [--repeat 2]
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
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def first_row_delay(command: list[str], env: dict, out: Path) -> float:
    launched = time.time()
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed:\n{proc.stderr[-3000:]}")
    records = [json.loads(p.read_text()) for p in (out / "ledger").glob("*/*.json")]
    started = min(datetime.fromisoformat(r["finished_at"]).timestamp() - r["total_time"] for r in records)
    return started - launched


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="s2v-cli-start-") as tmp:
        work = Path(tmp)
        manifest = work / "one.csv"
        manifest.write_text(f"clip_id,image,audio,sample_steps\none,{EXAMPLES / 'portrait_anna.jpg'},"
                            f"{EXAMPLES / 'speech_short.wav'},15\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
        env.update(S2V_CHECKPOINT="tiny", S2V_CACHE_DIR=str(work / "cache"), S2V_DEVICE="cpu", S2V_LOCAL_INPUTS="true",
                   S2V_LOCAL_API_DIR=str(work / "api"), PREFECT_HOME=str(work / "prefect-home"),
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
        # Prefect's home and the tiny checkpoint exist before anything is timed (a machine in use has both).
        subprocess.run([sys.executable, "-c", "from cli.main import app; app()", "make-tiny-checkpoint",
                        str(work / "cache" / "tiny-checkpoint")], env=env, cwd=ROOT, check=True, capture_output=True)
        embedded_code = ("import sys\nfrom flows.batch import batch\n"
                         "batch(manifest=sys.argv[1], output=sys.argv[2], checkpoint='tiny')\n")
        results: dict[str, list[float]] = {"embedded": [], "local API, cold": [], "local API, warm": []}
        try:
            for n in range(args.repeat):
                out = work / f"embedded-{n}"
                results["embedded"].append(first_row_delay(
                    [sys.executable, "-c", embedded_code, str(manifest), str(out)], env, out))
                subprocess.run([sys.executable, "-c", "from cli.main import app; app()", "local-api", "stop"], env=env,
                               cwd=ROOT, capture_output=True)
                for kind in ("local API, cold", "local API, warm"):
                    out = work / f"{kind.replace(' ', '').replace(',', '-')}-{n}"
                    results[kind].append(first_row_delay(
                        [sys.executable, "-c", "from cli.main import app; app()", "run", str(manifest), "--output", str(out)],
                        env, out))
        finally:
            subprocess.run([sys.executable, "-c", "from cli.main import app; app()", "local-api", "stop"], env=env,
                           cwd=ROOT, capture_output=True)
    print("seconds from the command to its first row starting (median of", args.repeat, "runs)")
    medians = {kind: statistics.median(values) for kind, values in results.items()}
    for kind, value in medians.items():
        print(f"  {kind:18} {value:6.1f} s   {', '.join(f'{v:.1f}' for v in results[kind])}")
    print(f"embedded / local API warm: x{medians['embedded'] / medians['local API, warm']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
