"""What a night of 10,000 rows costs the control side: refreshing the people's view, and the parent run.

Two commands, added to bench/night.py's parser by `add_commands` (each sets `func`, which returns the exit code):

  compaction  On moto's S3 server on loopback: 10,000 ledger records, compacted. Then, after adding 10, 100
              and 1,000 new records, side by side in one run: a full `LedgerStore.compact()` (what the
              fleet's parent did every minute; the first view is written straight from the records unless
              --first-compact) against `LedgerStore.compact_clips` on a held `LedgerView`
              (only the changed clips read): seconds and S3 requests of each, and the ratios.
              -> bench/results/night_compaction.json
  control     The control plane at --rows rows (default 10,000): a Prefect server on PostgreSQL with the
              deployments of prefect.yaml (tools/local_fleet.py) and no GPU host, so the row runs stay
              Scheduled; the scale-out parent runs as the real flow in its own process. Measured: seconds
              until all row runs exist, the parent's CPU (% of one core) and RSS each minute while the runs
              are open (--watch-minutes), and the Prefect database's growth per 1,000 rows.
              -> bench/results/night_control.json

    .venv/bin/python bench/night.py compaction [--records 10000] [--added 10 100 1000]
    .venv/bin/python bench/night.py control [--rows 10000] [--watch-minutes 5]
(or the same with bench/night_control.py, which runs alone too)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def add_commands(subparsers) -> None:
    """`compaction` and `control` on an argparse subparsers object (from `parser.add_subparsers()`)."""
    compaction = subparsers.add_parser("compaction", help="full compact() against the held view's refresh, on moto S3")
    compaction.add_argument("--records", type=int, default=10000, help="records already in the ledger")
    compaction.add_argument("--added", type=int, nargs="+", default=[10, 100, 1000], help="new records per refresh")
    compaction.add_argument("--first-compact", action="store_true",
                            help="make the first view with a full compact() (reads every record object) instead of "
                                 "writing it straight from the records")
    compaction.set_defaults(func=run_compaction)
    control = subparsers.add_parser("control", help="the scale-out parent and Prefect server at N rows, no GPU hosts")
    control.add_argument("--rows", type=int, default=10000)
    control.add_argument("--watch-minutes", type=float, default=5.0, help="how long to sample the parent once all runs exist")
    control.add_argument("--create-timeout-minutes", type=float, default=40.0,
                         help="give up waiting for the row runs to exist after this long")
    control.set_defaults(func=run_control)


# ---- compaction ------------------------------------------------------------------------------------

def make_record(n: int):
    from records.ledger import LedgerRecord

    return LedgerRecord(
        clip_id=f"clip-{n:06d}", status="succeeded", row=n + 2, url=f"https://cdn.example.com/videos/clip-{n:06d}.mp4",
        output_uri=f"s3://studio/videos/clip-{n:06d}.mp4", generation_time=171.3, total_time=190.2, video_size_mb=4.2,
        warm_model=True, tiny_checkpoint=False, width=832, height=480, duration=5.0, frames=80, segments=1,
        resolution="480p", mode="standard", sample_steps=20, seed=1234, attempts=1, image_sha256="i" * 64,
        audio_sha256="a" * 64, options_hash="o" * 16, manifest="0123456789abcdef", worker="gpu-1",
        finished_at=T0 + timedelta(seconds=n), record_id=f"{T0 + timedelta(seconds=n):%Y%m%dT%H%M%S%fZ}-bench-{n:06d}",
    )


def put_records(out: str, numbers: range, settings) -> list[str]:
    """Record objects in `LedgerStore.append`'s key layout, written concurrently; returns their clip ids."""
    from records.ledger import RECORDS_FOLDER
    from s2v.storage.outputs import filesystem

    fs, root = filesystem(out, settings)
    records = [make_record(n) for n in numbers]
    fs.pipe({f"{root}/{RECORDS_FOLDER}/{r.clip_id}/{r.record_id}.json": r.model_dump_json().encode() for r in records})
    return [r.clip_id for r in records]


class Requests:
    """S3 requests sent (botocore's before-send events), by operation."""

    def __init__(self, out: str, settings):
        from s2v.storage.outputs import filesystem

        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        fs, _ = filesystem(out, settings)  # fsspec hands every caller this same instance
        fs.connect()
        fs.s3.meta.events.register("before-send.s3.*", self._count)
        fs.s3.meta.events.register("after-call.s3.*", self._received)

    def _count(self, event_name: str = "", request=None, **_):
        with self._lock:
            self.counts[event_name.rsplit(".", 1)[-1]] += 1
            if request is not None:
                self.counts["bytes up"] += int(request.headers.get("Content-Length", 0) or 0)

    def _received(self, event_name: str = "", http_response=None, **_):
        with self._lock:
            if http_response is not None and not event_name.endswith("HeadObject"):  # a HEAD has no body
                self.counts["bytes down"] += int(http_response.headers.get("Content-Length", 0) or 0)

    def taken(self) -> Counter[str]:
        with self._lock:
            taken, self.counts = self.counts, Counter()
        return taken


def run_compaction(args) -> int:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from records.ledger import CSV_NAME, JSONL_NAME, Ledger, LedgerStore
    from s2v.settings import Settings
    from s2v.storage.locations import output_location
    from s2v.storage.outputs import read_output_text, write_output_text

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    results: dict = {"records": args.records, "store": "moto S3 server on loopback", "refreshes": []}
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench-night")
        with tempfile.TemporaryDirectory(prefix="s2v-night-compaction-") as tmp:
            settings = Settings(cache_dir=Path(tmp) / "cache", s3_endpoint_url=endpoint)
            out = "s3://bench-night/output"
            store = LedgerStore(out, settings)
            requests = Requests(out, settings)
            started = time.perf_counter()
            put_records(out, range(args.records), settings)
            results["populate_s"] = time.perf_counter() - started
            requests.taken()
            started = time.perf_counter()
            if args.first_compact:  # reads every record object once: minutes on moto
                store.compact()
            else:  # the view files as that compaction writes them, straight from the records
                whole = Ledger([make_record(n) for n in range(args.records)])
                write_output_text(output_location(out, JSONL_NAME), whole.to_jsonl(), settings)
                write_output_text(output_location(out, CSV_NAME), whole.to_csv(), settings)
            results["first_full_compact"] = {"seconds": time.perf_counter() - started, "requests": dict(requests.taken()),
                                             "read_every_object": args.first_compact}
            started = time.perf_counter()
            view = store.view()
            results["view_built"] = {"seconds": time.perf_counter() - started, "requests": dict(requests.taken())}
            print(f"{args.records:,} records on moto S3 (written in {results['populate_s']:.1f} s); first view "
                  f"{results['first_full_compact']['seconds']:.2f} s; view held after one read in "
                  f"{results['view_built']['seconds']:.2f} s")
            print(f"{'new records':>11} | {'full compact s':>14} {'requests':>8} | {'view refresh s':>14} {'requests':>8} "
                  f"| {'seconds x':>9} {'requests x':>10} | same files")
            next_number = args.records
            for added in args.added:
                clip_ids = put_records(out, range(next_number, next_number + added), settings)
                next_number += added
                requests.taken()
                # The full compaction first, while the view file lacks the new records (as each minute of the
                # parent found it); the refresh reads only the changed clips' objects, whatever the file holds.
                started = time.perf_counter()
                store.compact()
                full_s, full_requests = time.perf_counter() - started, requests.taken()
                full_files = (read_output_text(output_location(out, "results.jsonl"), settings),
                              read_output_text(output_location(out, "results.csv"), settings))
                requests.taken()
                started = time.perf_counter()
                new = store.compact_clips(view, clip_ids)
                view_s, view_requests = time.perf_counter() - started, requests.taken()
                same = full_files == (read_output_text(output_location(out, "results.jsonl"), settings),
                                      read_output_text(output_location(out, "results.csv"), settings))
                requests.taken()
                full_bytes = {"up": full_requests.pop("bytes up", 0), "down": full_requests.pop("bytes down", 0)}
                view_bytes = {"up": view_requests.pop("bytes up", 0), "down": view_requests.pop("bytes down", 0)}
                row = {"added": added, "new_in_view": new, "total_records": next_number,
                       "full": {"seconds": full_s, "requests": sum(full_requests.values()), "by_operation": dict(full_requests),
                                "bytes": full_bytes},
                       "view": {"seconds": view_s, "requests": sum(view_requests.values()), "by_operation": dict(view_requests),
                                "bytes": view_bytes},
                       "seconds_ratio": full_s / view_s, "requests_ratio": sum(full_requests.values()) / sum(view_requests.values()),
                       "bytes_down_ratio": full_bytes["down"] / max(view_bytes["down"], 1),
                       "identical_files": same}
                results["refreshes"].append(row)
                print(f"{added:>11,} | {full_s:>14.3f} {row['full']['requests']:>8,} | {view_s:>14.3f} "
                      f"{row['view']['requests']:>8,} | {row['seconds_ratio']:>9.1f} {row['requests_ratio']:>10.2f} | {same}")
                print(f"{'':>11}   full: {dict(full_requests)}, {full_bytes['down'] / 1e6:.2f} MB down, "
                      f"{full_bytes['up'] / 1e6:.2f} MB up")
                print(f"{'':>11}   view: {dict(view_requests)}, {view_bytes['down'] / 1e6:.2f} MB down, "
                      f"{view_bytes['up'] / 1e6:.2f} MB up")
    finally:
        server.stop()
    write_results("night_compaction.json", results)
    return 0 if all(row["identical_files"] for row in results["refreshes"]) else 1


# ---- control ---------------------------------------------------------------------------------------

PARENT = """
import sys
from flows.scale_out import scale_out
state = scale_out(manifest=sys.argv[1], output=sys.argv[2], max_wait_hours=float(sys.argv[3]), return_state=True)
print("parent ended", state.type.value, state.message)
"""


def _database_size(database: str) -> int:
    from tools.local_fleet import PG

    found = subprocess.run(["psql", "-h", PG["host"], "-p", PG["port"], "-U", "postgres", "-d", "test", "-At", "-c",
                            f"SELECT pg_database_size('{database}')"], check=True, capture_output=True, text=True,
                           timeout=60)
    return int(found.stdout.strip())


class RowRuns:
    """Counts the row deployment's flow runs through the REST API (no Prefect client in this process)."""

    def __init__(self, fleet, deployment: str):
        import httpx

        from tools.local_fleet import AUTH

        user, password = AUTH.split(":", 1)
        self.http = httpx.Client(base_url=fleet.env["PREFECT_API_URL"].rstrip("/") + "/", auth=(user, password),
                                 timeout=60)
        answer = self.http.get(f"deployments/name/{deployment}")
        answer.raise_for_status()
        self.deployment_id = answer.json()["id"]

    def count(self, **state_filter) -> int:
        body = {"deployments": {"id": {"any_": [self.deployment_id]}}}
        if state_filter:
            body["flow_runs"] = {"state": state_filter}
        answer = self.http.post("flow_runs/count", json=body)
        answer.raise_for_status()
        return int(answer.json())


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children so far."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for member in members:
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _manifest(path: Path, rows: int) -> None:
    from tools.local_fleet import EXAMPLES

    image, audio = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_short.wav"
    lines = [f"night-{n:05d},{image},{audio}" for n in range(rows)]
    path.write_text("clip_id,image,audio\n" + "\n".join(lines) + "\n", encoding="utf-8")


def _handed(log: Path) -> bool:
    return log.exists() and "handed " in log.read_text(errors="replace")


def run_control(args) -> int:
    import psutil

    from flows.fleet import ROW_DEPLOYMENT
    from tools.local_fleet import EXAMPLES, LocalFleet

    results: dict = {"rows": args.rows, "watch_minutes": args.watch_minutes, "cpus": os.cpu_count(),
                     "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory(prefix="s2v-night-control-") as tmp:
        base = Path(tmp)
        fleet = LocalFleet(base)
        parent = None
        try:
            started = time.perf_counter()
            fleet.start()
            results["fleet_start_s"] = time.perf_counter() - started
            runs = RowRuns(fleet, ROW_DEPLOYMENT)
            size_before = _database_size(fleet.database)
            manifest = base / "night.csv"
            _manifest(manifest, args.rows)
            log = fleet.logs / "parent.log"
            env = {**fleet.env, "S2V_NO_WORKER_TIMEOUT_S": "1000000", "S2V_CACHE_DIR": str(base / "parent-cache"),
                   "S2V_WORKER_NAME": "control-bench", "PYTHONPATH": str(ROOT),
                   "S2V_INPUT_ROOTS": f"{base},{EXAMPLES}"}  # the manifest file here; its rows' files
            print(f"fleet up in {results['fleet_start_s']:.0f} s (database {fleet.database}, "
                  f"{size_before / 1e6:.1f} MB); starting the scale-out parent with {args.rows:,} rows", flush=True)
            started = time.perf_counter()
            parent = fleet.launch("parent", [sys.executable, "-c", PARENT, str(manifest), str(base / "out"), "24"], env)
            process = psutil.Process(parent.pid)
            process.cpu_percent(None)
            creating: list[dict] = []
            deadline = started + args.create_timeout_minutes * 60
            count = 0
            while True:
                time.sleep(5)
                count = runs.count()
                elapsed = time.perf_counter() - started
                creating.append({"t_s": round(elapsed, 1), "runs": count, "cpu_percent": process.cpu_percent(None),
                                 "rss_mb": process.memory_info().rss / 2**20, "load_1m": os.getloadavg()[0]})
                if len(creating) % 6 == 0:
                    print(f"  {elapsed:6.0f} s: {count:,} row runs exist; parent CPU "
                          f"{creating[-1]['cpu_percent']:.0f} %, RSS {creating[-1]['rss_mb']:.0f} MB", flush=True)
                if count >= args.rows:
                    break
                if parent.poll() is not None:
                    raise RuntimeError(f"the parent ended early ({parent.returncode})\n{fleet.tail()}")
                if time.perf_counter() > deadline:
                    break
            results["all_runs_exist_s"] = time.perf_counter() - started if count >= args.rows else None
            results["runs_created"] = count
            results["creation_samples"] = creating
            handed_wait = time.perf_counter() + 120
            while not _handed(log) and time.perf_counter() < handed_wait and parent.poll() is None:
                time.sleep(1)
            results["handed_line_after_s"] = time.perf_counter() - started if _handed(log) else None
            results["runs_per_s"] = count / (results["all_runs_exist_s"] or (time.perf_counter() - started))
            print(f"{count:,} of {args.rows:,} row runs exist after "
                  f"{results['all_runs_exist_s'] or float('nan'):.0f} s ({results['runs_per_s']:.1f} runs/s)", flush=True)

            # While every run is open: the parent's CPU and memory, sampled every 10 s, summed up per minute.
            samples = []
            watch_started = time.perf_counter()
            process.cpu_percent(None)
            cpu_times = process.cpu_times()
            server_before = _tree_cpu_s(fleet.processes["server"].pid)
            while time.perf_counter() - watch_started < args.watch_minutes * 60 and parent.poll() is None:
                time.sleep(10)
                samples.append({"t_s": round(time.perf_counter() - watch_started, 1), "cpu_percent": process.cpu_percent(None),
                                "rss_mb": process.memory_info().rss / 2**20})
            server_cpu_s = _tree_cpu_s(fleet.processes["server"].pid) - server_before
            watched_s = time.perf_counter() - watch_started
            after_times = process.cpu_times() if parent.poll() is None else cpu_times
            minutes = []
            for minute in range(int(-(-watched_s // 60))):
                inside = [s for s in samples if minute * 60 < s["t_s"] <= (minute + 1) * 60 + 1]
                if inside:
                    minutes.append({"minute": minute + 1,
                                    "cpu_percent": sum(s["cpu_percent"] for s in inside) / len(inside),
                                    "rss_mb": max(s["rss_mb"] for s in inside)})
            cpu_s = (after_times.user + after_times.system) - (cpu_times.user + cpu_times.system)
            results["watch"] = {"seconds": watched_s, "cpu_seconds": cpu_s, "cpu_percent_mean": 100 * cpu_s / watched_s,
                                "per_minute": minutes, "samples": samples,
                                "open_runs": runs.count(type={"any_": ["SCHEDULED", "PENDING", "RUNNING"]}),
                                "server_cpu_percent_mean": 100 * server_cpu_s / watched_s,
                                "load_average_1m_at_end": os.getloadavg()[0]}
            results["parent_alive_at_end"] = parent.poll() is None
            size_after = _database_size(fleet.database)
            results["database"] = {"name": fleet.database, "bytes_before": size_before, "bytes_after": size_after,
                                   "bytes_per_1000_rows": (size_after - size_before) / max(count, 1) * 1000}
            print(f"parent while {results['watch']['open_runs']:,} runs were open ({watched_s:.0f} s): "
                  f"{results['watch']['cpu_percent_mean']:.1f} % of one core on average; the Prefect server "
                  f"{results['watch']['server_cpu_percent_mean']:.1f} %; machine load {os.getloadavg()[0]:.1f} "
                  f"on {os.cpu_count()} CPUs", flush=True)
            for minute in minutes:
                print(f"  minute {minute['minute']}: CPU {minute['cpu_percent']:5.1f} %, RSS {minute['rss_mb']:6.0f} MB")
            print(f"Prefect database: {size_before / 1e6:.1f} MB -> {size_after / 1e6:.1f} MB = "
                  f"{results['database']['bytes_per_1000_rows'] / 1e6:.2f} MB per 1,000 rows", flush=True)
            text = log.read_text(errors="replace")
            results["parent_log_tail"] = text[-4000:]
            results["parent_warnings"] = sum(1 for line in text.splitlines() if "WARNING" in line or "ERROR" in line)
        finally:
            if parent is not None and parent.poll() is None:
                try:
                    os.killpg(parent.pid, signal.SIGTERM)
                    parent.wait(timeout=30)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(parent.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            fleet.stop()
    write_results("night_control.json", results)
    return 0 if results.get("all_runs_exist_s") is not None else 1


def write_results(name: str, results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
