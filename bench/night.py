"""A night bench (issue #17): how busy the fleet keeps each GPU, and how fast a lost host's row runs again.

Everything is the production fleet on this machine (tools/local_fleet.py): a Prefect server on PostgreSQL
with basic auth, the deployments of prefect.yaml, process workers, GPU hosts started by
deployments/start_warm.sh, a control worker, inputs downloaded over HTTP (a loopback http.server, a
distinct URL per row), the output and its ledger on S3 (moto's server on loopback). Everything but the
model: each GPU host's S2V_BIN is bench/bench_s2v_shim.sh, whose `server` is the BENCH-ONLY stand-in
bench/bench_only_model_server.py (the production socket, protocol and job queue; a generate job takes
exactly --generate-s seconds and returns a real MP4, an encode job --encode-s). Its per-job log gives
each host's GPU-busy time; the ledger (read from S3) gives each row's stages.

    .venv/bin/python bench/night.py share --hosts 2 --rows 40 --generate-s 25 [--encode-s 1]
        per host: GPU-busy share = time inside generate jobs / (last job end - first job start); the gaps
        between consecutive generate jobs and what fills them; per row: download_s, encode_s, upload_s,
        total_time - generate_s, from the ledger. Table + one JSON line; bench/results/night_share_<g>s.json
    .venv/bin/python bench/night.py recovery [--rows 4 --generate-s 60]
        2 GPU hosts; when a host's server is inside a generate job, the whole host is SIGKILLed
        (LocalFleet.kill_host); seconds from the kill to that row's new run (row-<n>-<clip>-try2) being
        Running on the other host, with the steps between. bench/results/night_recovery.json

bench/night_control.py, when present, adds its own subcommands (`add_commands(subparsers)`).
Needs PostgreSQL on 127.0.0.1:5432 (trust auth), like tests/test_fleet.py.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from tools.local_fleet import EXAMPLES, LocalFleet  # noqa: E402

RESULTS = BENCH / "results"
SHIM = BENCH / "bench_s2v_shim.sh"
BUCKET = "night-out"
PORTRAIT = EXAMPLES / "portrait_anna.jpg"
SPEECH = EXAMPLES / "speech_short.wav"


def _start_script_limit() -> int:
    """The worker limit deployments/start_warm.sh gives a host that sets none."""
    import re

    text = (ROOT / "deployments" / "start_warm.sh").read_text()
    return int(re.search(r"LIMIT=\$\{S2V_WORKER_LIMIT:-(\d+)\}", text).group(1))


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the world around the fleet: inputs over HTTP, the output on S3 -----------------------------------

class InputServer:
    """Serves the portrait at any path ending .jpg and the speech at any path ending .wav; counts downloads."""

    def __init__(self):
        files = {".jpg": PORTRAIT.read_bytes(), ".wav": SPEECH.read_bytes()}
        self.hits: dict[str, int] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.hits[self.path] = owner.hits.get(self.path, 0) + 1
                body = files.get(os.path.splitext(self.path.split("?")[0])[1])
                self.send_response(200 if body else 404)
                body = body or b"no such file"
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, row: int, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/rows/{row}/{name}?row={row}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LoadSampler:
    """The 1-minute load average every few seconds while the bench runs (the machine is shared)."""

    def __init__(self, every_s: float = 5.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._stop.set()
        samples = self.samples or [os.getloadavg()[0]]
        return {"cpu_cores": os.cpu_count(), "load1_min": round(min(samples), 2),
                "load1_mean": round(statistics.mean(samples), 2), "load1_max": round(max(samples), 2),
                "samples": len(samples)}


class NightFleet:
    """LocalFleet + moto S3 + the input server, GPU hosts on the bench-only stand-in."""

    def __init__(self, hosts: int, generate_s: float, encode_s: float, worker_limit: int | None = None):
        self.tmp = tempfile.TemporaryDirectory(prefix="s2v-night-")
        self.base = Path(self.tmp.name)
        self.hosts = [f"gpu-{n}" for n in range(1, hosts + 1)]
        self.generate_s, self.encode_s, self.worker_limit = generate_s, encode_s, worker_limit
        self.fleet = LocalFleet(self.base / "fleet")
        self.moto = None
        self.inputs: InputServer | None = None

    def job_log(self, host: str) -> Path:
        return self.base / f"jobs-{host}.jsonl"

    def start(self) -> None:
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request

        credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(credentials)  # this process reads the ledger with boto3
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint)
        self.s3.create_bucket(Bucket=BUCKET)
        self.inputs = InputServer()
        self.fleet.env.update(credentials, S2V_S3_ENDPOINT_URL=self.endpoint, S2V_ALLOWED_HOSTS="127.0.0.1",
                              S2V_OUTPUT=f"s3://{BUCKET}/default")
        say(f"starting the Prefect server, pools and deployments ({self.base})")
        self.fleet.start()
        # This process asks the same API about the runs (set before prefect is first imported here).
        os.environ.update({k: v for k, v in self.fleet.env.items() if k.startswith("PREFECT_")})
        for host in self.hosts:
            self.start_host(host)
        self.fleet.start_control()
        say(f"waiting for GPU workers {', '.join(self.hosts)}")
        self.fleet.wait_workers(self.hosts)
        say("fleet ready")

    def start_host(self, host: str) -> None:
        extra = dict(S2V_BIN=str(SHIM), BENCH_PYTHON=sys.executable, BENCH_GENERATE_S=str(self.generate_s),
                     BENCH_ENCODE_S=str(self.encode_s), BENCH_JOB_LOG=str(self.job_log(host)))
        if self.worker_limit:
            extra["S2V_WORKER_LIMIT"] = str(self.worker_limit)
        self.fleet.start_gpu_host(host, **extra)

    def manifest(self, tag: str, rows: int) -> str:
        lines = [f"{tag}-{n},{self.inputs.url(n, PORTRAIT.name)},{self.inputs.url(n, SPEECH.name)}" for n in range(rows)]
        return "clip_id,image,audio\n" + "\n".join(lines) + "\n"

    def records(self, prefix: str) -> list[dict]:
        """Every ledger record under s3://BUCKET/<prefix>/ledger/, read from S3 as any reader would."""
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/ledger/"):
            for item in page.get("Contents", []):
                out.append(json.loads(self.s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()))
        return out

    def jobs(self) -> list[dict]:
        lines = []
        for host in self.hosts:
            path = self.job_log(host)
            if path.exists():
                lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return lines

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.fleet.stop()
        if self.inputs is not None:
            self.inputs.stop()
        if self.moto is not None:
            with contextlib.suppress(Exception):
                self.moto.stop()
        self.tmp.cleanup()


def row_runs() -> list[dict]:
    """The s2v-row runs on the API: name, clip, state, created/start/end (epoch seconds)."""
    from prefect.client.orchestration import get_client

    def epoch(value) -> float | None:
        return value.timestamp() if value is not None else None

    runs = []
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_flow_runs(limit=200, offset=offset)
            for run in page:
                if not run.name.startswith("row-"):
                    continue
                runs.append({"id": str(run.id), "name": run.name, "clip_id": run.parameters.get("clip_id"),
                             "state": run.state_type.value if run.state_type else None, "created": epoch(run.created),
                             "start": epoch(run.start_time), "end": epoch(run.end_time)})
            if len(page) < 200:
                return runs
            offset += 200


def run_states(run_id: str) -> list[dict]:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(UUID(run_id))
    return [{"type": s.type.value, "name": s.name, "at": s.timestamp.timestamp(), "message": s.message}
            for s in sorted(states, key=lambda s: s.timestamp)]


# ---- share ------------------------------------------------------------------------------------------

def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(values), "mean": round(statistics.mean(values), 3), "median": round(statistics.median(values), 3),
            "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3), "min": round(ordered[0], 3),
            "max": round(ordered[-1], 3), "sum": round(sum(values), 3)}


def host_figures(jobs: list[dict]) -> dict:
    """Per host, from the stand-in's job log: span, busy time, and the gaps between generate jobs."""
    by_host: dict[str, list[dict]] = {}
    for job in jobs:
        if job["event"] == "end":
            by_host.setdefault(job["host"], []).append(job)
    figures = {}
    for host, ended in sorted(by_host.items()):
        ended.sort(key=lambda j: j["start"])
        gens = [j for j in ended if j["kind"] == "generate" and j["outcome"] == "done"]
        encs = [j for j in ended if j["kind"] == "encode_audio" and j["outcome"] == "done"]
        span = max(j["end"] for j in ended) - min(j["start"] for j in ended)
        gen_busy = sum(j["end"] - j["start"] for j in gens)
        enc_busy = sum(j["end"] - j["start"] for j in encs)
        gaps, gap_encode, gap_idle = [], [], []
        for first, second in zip(gens, gens[1:]):
            gap = second["start"] - first["end"]
            inside = sum(max(0.0, min(e["end"], second["start"]) - max(e["start"], first["end"])) for e in encs)
            gaps.append(gap)
            gap_encode.append(inside)
            gap_idle.append(gap - inside)
        figures[host] = {
            "generate_jobs": len(gens), "encode_jobs": len(encs), "span_s": round(span, 3),
            "generate_busy_s": round(gen_busy, 3), "encode_busy_s": round(enc_busy, 3),
            "gpu_busy_share": round(gen_busy / span, 4) if span else None,
            "gpu_jobs_share": round((gen_busy + enc_busy) / span, 4) if span else None,
            "gap_s": _stats(gaps), "gap_encode_s": _stats(gap_encode), "gap_idle_s": _stats(gap_idle),
            "first_job_start": min(j["start"] for j in ended), "last_job_end": max(j["end"] for j in ended),
            "encode_queue_s": _stats([j.get("queue_s", 0.0) for j in encs]),
            "generate_queue_s": _stats([j.get("queue_s", 0.0) for j in gens]),
        }
    return figures


def row_figures(records: list[dict], jobs: list[dict], runs: list[dict]) -> dict:
    """Per row (succeeded records), the ledger's stages and what the stand-in and the API saw of it."""
    made = [r for r in records if r["status"] == "succeeded"]
    enc_queue = {j["clip_id"]: j.get("queue_s", 0.0) for j in jobs if j["event"] == "end" and j["kind"] == "encode_audio"}
    fields: dict[str, list[float]] = {name: [] for name in (
        "download_s", "encode_s", "generate_s", "upload_s", "qc_s", "total_time", "non_generate_s",
        "encode_queue_wait_s", "non_generate_minus_queue_wait_s", "generate_client_overhead_s")}
    for record in made:
        for name in ("download_s", "encode_s", "generate_s", "upload_s", "qc_s", "total_time"):
            if record.get(name) is not None:
                fields[name].append(record[name])
        if record.get("total_time") is not None and record.get("generate_s") is not None:
            non_generate = record["total_time"] - record["generate_s"]
            wait = enc_queue.get(record["clip_id"], 0.0)
            fields["non_generate_s"].append(non_generate)
            fields["encode_queue_wait_s"].append(wait)
            fields["non_generate_minus_queue_wait_s"].append(non_generate - wait)
        if record.get("generate_s") is not None and record.get("generation_time") is not None:
            fields["generate_client_overhead_s"].append(record["generate_s"] - record["generation_time"])
    # Per row run on the API: waiting to be picked up, and the run's life around the row's own total_time.
    total_by_clip = {r["clip_id"]: r.get("total_time") for r in made}
    pickup, outside = [], []
    for run in runs:
        if run["state"] != "COMPLETED" or run["start"] is None or run["end"] is None:
            continue
        pickup.append(run["start"] - run["created"])
        if total_by_clip.get(run["clip_id"]) is not None:
            outside.append(run["end"] - run["start"] - total_by_clip[run["clip_id"]])
    # A host's worker takes a new run when one of its slots frees: from the latest end of a run on that host
    # to the next run's start (worker poll, process start, imports, the flow's start) - for runs after the first ones.
    worker_of = {r["clip_id"]: r.get("worker") for r in made}
    refill = []
    by_host: dict[str, list[dict]] = {}
    for run in runs:
        if run["start"] is not None and worker_of.get(run["clip_id"]):
            by_host.setdefault(worker_of[run["clip_id"]], []).append(run)
    for host_runs in by_host.values():
        for run in host_runs:
            ended = [other["end"] for other in host_runs if other["end"] is not None and other["end"] <= run["start"]]
            if ended:
                refill.append(run["start"] - max(ended))
    figures = {name: _stats(values) for name, values in fields.items()}
    figures["slot_free_to_next_run_start_s"] = _stats(refill)
    figures["run_created_to_start_s"] = _stats(pickup)
    figures["run_time_outside_row_s"] = _stats(outside)
    figures["succeeded"] = len(made)
    figures["statuses"] = {s: sum(1 for r in records if r["status"] == s) for s in sorted({r["status"] for r in records})}
    figures["workers"] = {w: sum(1 for r in made if r.get("worker") == w) for w in sorted({r.get("worker") for r in made})}
    return figures


def overlap_figures(hosts: dict, rows: dict, generate_s: float) -> dict:
    """How much of a row's work outside generate the other slot's generate hides.

    With two runs per host, the next row's run must start (a slot frees when a run ends, then worker poll,
    process start, imports, flow start) and do its own work up to its encode request while the current
    row generates; whatever does not fit shows as idle GPU between generate jobs."""
    gaps = [h["gap_s"]["mean"] for h in hosts.values() if h["gap_s"].get("n")]
    idle = [h["gap_idle_s"]["mean"] for h in hosts.values() if h["gap_idle_s"].get("n")]
    mean = lambda name: rows.get(name, {}).get("mean") or 0.0  # noqa: E731
    own = mean("non_generate_minus_queue_wait_s")
    per_run = mean("slot_free_to_next_run_start_s") + mean("run_time_outside_row_s")
    figures = {
        "mean_gap_between_generates_s": round(statistics.mean(gaps), 3) if gaps else None,
        "mean_idle_in_gap_s": round(statistics.mean(idle), 3) if idle else None,
        "mean_row_non_generate_s": mean("non_generate_s"),
        "mean_row_non_generate_minus_queue_wait_s": round(own, 3),
        "mean_run_overhead_outside_row_s": round(per_run, 3),
        "serial_work_per_row_outside_generate_s": round(own + per_run, 3),
        "generate_s": generate_s,
    }
    if gaps and own + per_run > 0:
        figures["hidden_share_of_serial_work"] = round(1 - statistics.mean(gaps) / (own + per_run), 4)
    if gaps and mean("non_generate_s"):
        figures["hidden_share_of_non_generate"] = round(1 - statistics.mean(gaps) / mean("non_generate_s"), 4)
    return figures


def share(args: argparse.Namespace) -> int:
    t0 = time.time()
    load = LoadSampler()
    night = NightFleet(args.hosts, args.generate_s, args.encode_s, args.worker_limit)
    result: dict = {"bench": "night-share", "hosts": args.hosts, "rows": args.rows, "generate_s": args.generate_s,
                    "encode_s": args.encode_s, "worker_limit": args.worker_limit or _start_script_limit(),
                    "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        night.start()
        setup_s = time.time() - t0
        prefix = f"share-{int(t0)}"
        manifest = night.manifest("night", args.rows)
        say(f"scale-out of {args.rows} rows onto {args.hosts} hosts, generate {args.generate_s:g} s each")
        started = time.time()
        run = night.fleet.run_deployment("s2v-scale-out/scale-out",
                                         {"manifest": manifest, "output": f"s3://{BUCKET}/{prefix}"},
                                         timeout=args.timeout)
        scale_out_s = time.time() - started
        say(f"scale-out ended {run['state']} after {scale_out_s:.0f} s")
        jobs, records, runs = night.jobs(), night.records(prefix), row_runs()
        hosts = host_figures(jobs)
        rows = row_figures(records, jobs, runs)
        busy = sum(h["generate_busy_s"] for h in hosts.values())
        result.update({
            "scale_out_state": run["state"], "scale_out_message": run.get("message"),
            "setup_s": round(setup_s, 1), "scale_out_wall_s": round(scale_out_s, 1),
            "ideal_wall_s": round(args.rows * args.generate_s / args.hosts, 1),
            "fleet_gpu_busy_share_of_scale_out_wall": round(busy / (args.hosts * scale_out_s), 4),
            "hosts_figures": hosts, "rows_figures": rows,
            "input_downloads": sum(night.inputs.hits.values()), "input_urls": len(night.inputs.hits),
        })
        result["overlap"] = overlap_figures(hosts, rows, args.generate_s)
    finally:
        result["load"] = load.stop()
        say("stopping the fleet")
        night.stop()
        result["total_wall_s"] = round(time.time() - t0, 1)
    print_share(result)
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"night_share_{args.generate_s:g}s.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, separators=(",", ":")))
    say(f"wrote {out}")
    return 0 if result.get("scale_out_state") == "Completed" else 1


def print_share(result: dict) -> None:
    hosts = result.get("hosts_figures", {})
    print()
    print(f"night share: {result['rows']} rows, {result['hosts']} hosts, generate {result['generate_s']:g} s, "
          f"encode {result['encode_s']:g} s; scale-out {result.get('scale_out_state')} in "
          f"{result.get('scale_out_wall_s')} s (ideal {result.get('ideal_wall_s')} s); total {result['total_wall_s']} s; "
          f"load avg {result['load']['load1_mean']} (max {result['load']['load1_max']}) on {result['load']['cpu_cores']} cores")
    print(f"{'host':8} {'gens':>5} {'span s':>8} {'gen busy':>9} {'share':>6} {'+enc':>6} {'gap mean':>9} "
          f"{'gap med':>8} {'gap max':>8} {'in gap: enc':>12} {'idle':>6}")
    for host, h in hosts.items():
        print(f"{host:8} {h['generate_jobs']:5d} {h['span_s']:8.1f} {h['generate_busy_s']:9.1f} "
              f"{100 * (h['gpu_busy_share'] or 0):5.1f}% {100 * (h['gpu_jobs_share'] or 0):5.1f}% "
              f"{h['gap_s'].get('mean', 0):9.2f} {h['gap_s'].get('median', 0):8.2f} {h['gap_s'].get('max', 0):8.2f} "
              f"{h['gap_encode_s'].get('mean', 0):12.2f} {h['gap_idle_s'].get('mean', 0):6.2f}")
    rows = result.get("rows_figures", {})
    if rows:
        print(f"per row ({rows['succeeded']} succeeded; {rows['statuses']}; by worker {rows['workers']}):")
        print(f"  {'stage':34} {'mean':>8} {'median':>8} {'p90':>8} {'max':>8}")
        for name in ("download_s", "encode_s", "encode_queue_wait_s", "generate_s", "generate_client_overhead_s",
                     "upload_s", "qc_s", "total_time", "non_generate_s", "non_generate_minus_queue_wait_s",
                     "slot_free_to_next_run_start_s", "run_created_to_start_s", "run_time_outside_row_s"):
            s = rows.get(name, {})
            if s.get("n"):
                print(f"  {name:34} {s['mean']:8.2f} {s['median']:8.2f} {s['p90']:8.2f} {s['max']:8.2f}")
    if result.get("overlap", {}).get("mean_gap_between_generates_s") is not None:
        o = result["overlap"]
        print(f"overlap: mean gap between generate jobs {o['mean_gap_between_generates_s']:.2f} s "
              f"({o['mean_idle_in_gap_s']:.2f} s idle) vs a row's non-generate time {o['mean_row_non_generate_s']:.2f} s "
              f"({o['mean_row_non_generate_minus_queue_wait_s']:.2f} s without waiting in the server's queue) + "
              f"{o['mean_run_overhead_outside_row_s']:.2f} s of its run outside the row (slot refill, flow start/end) = "
              f"{o['serial_work_per_row_outside_generate_s']:.2f} s of serial work per row, "
              f"{100 * o.get('hidden_share_of_serial_work', 0):.1f}% of it hidden behind the other slot's "
              f"{o['generate_s']:g} s generate")
    print()


# ---- recovery ---------------------------------------------------------------------------------------

def recovery(args: argparse.Namespace) -> int:
    import subprocess

    t0 = time.time()
    load = LoadSampler()
    night = NightFleet(2, args.generate_s, args.encode_s)
    result: dict = {"bench": "night-recovery", "hosts": 2, "rows": args.rows, "generate_s": args.generate_s,
                    "kill_after_s": args.kill_after_s,
                    "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    parent = None
    try:
        night.start()
        prefix = f"recovery-{int(t0)}"
        code = ("import json, sys\nfrom prefect.deployments import run_deployment\n"
                "run = run_deployment('s2v-scale-out/scale-out', parameters=json.loads(sys.argv[1]), timeout=float(sys.argv[2]))\n"
                "print(json.dumps({'state': run.state_name, 'message': run.state.message}))\n")
        params = {"manifest": night.manifest("rec", args.rows), "output": f"s3://{BUCKET}/{prefix}"}
        say(f"scale-out of {args.rows} rows, generate {args.generate_s:g} s; waiting for a generate job to kill")
        started = time.time()
        parent_log = open(night.base / "parent.log", "w")  # a file: Prefect's chatter must not fill a pipe
        parent = subprocess.Popen([sys.executable, "-c", code, json.dumps(params), str(args.timeout)], env=night.fleet.env,
                                  stdout=subprocess.PIPE, stderr=parent_log, text=True)
        victim = None
        while victim is None:
            begun = {j["job_id"]: j for j in night.jobs() if j["event"] == "start" and j["kind"] == "generate"}
            for job in night.jobs():
                if job["event"] == "end":
                    begun.pop(job["job_id"], None)
            ready = [j for j in begun.values() if time.time() - j["start"] >= args.kill_after_s]
            if ready:
                victim = min(ready, key=lambda j: j["start"])
            elif parent.poll() is not None or time.time() - started > args.timeout:
                raise RuntimeError(f"no generate job to kill; parent: {parent.communicate()}\n{night.fleet.tail()}")
            else:
                time.sleep(0.2)
        host, clip = victim["host"], victim["clip_id"]
        killed_at = time.time()
        night.fleet.kill_host(host)
        say(f"killed {host} {killed_at - victim['start']:.1f} s into the generate job of {clip}")
        survivor = next(h for h in night.hosts if h != host)
        try2 = None
        while True:
            runs = [r for r in row_runs() if r["clip_id"] == clip]
            retries = [r for r in runs if r["name"].endswith("-try2")]
            if retries and retries[0]["start"] is not None:
                try2 = retries[0]
                break
            if parent.poll() is not None or time.time() - killed_at > args.timeout:
                raise RuntimeError(f"{clip} never ran again; parent {parent.poll()}\n{night.fleet.tail()}")
            time.sleep(1.0)
        seen_running = time.time()
        first = next(r for r in runs if not r["name"].endswith(("-try2", "-try3")))
        first_states, second_states = run_states(first["id"]), run_states(try2["id"])
        crashed_at = next((s["at"] for s in first_states if s["type"] == "CRASHED"), None)
        running_at = next((s["at"] for s in second_states if s["type"] == "RUNNING"), try2["start"])
        say(f"{clip}: new run {try2['name']} Running {running_at - killed_at:.1f} s after the kill")
        # Which host made it: the survivor's stand-in starts a generate job for the clip.
        rerun_job = None
        deadline = time.time() + args.generate_s + 300
        while rerun_job is None and time.time() < deadline:
            rerun_job = next((j for j in night.jobs() if j["host"] == survivor and j["clip_id"] == clip
                              and j["event"] == "start" and j["kind"] == "generate" and j["start"] > killed_at), None)
            time.sleep(0.5)
        stdout, _ = parent.communicate(timeout=args.timeout)
        parent_state = (json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else
                        {"state": None, "message": (night.base / "parent.log").read_text()[-2000:]})
        ended = time.time()
        records = night.records(prefix)
        made = [r for r in records if r["status"] == "succeeded"]
        result.update({
            "victim_host": host, "survivor_host": survivor, "clip_id": clip, "killed_into_generate_s": round(killed_at - victim["start"], 2),
            "kill_to_new_run_running_s": round(running_at - killed_at, 2),
            "kill_to_running_seen_by_bench_s": round(seen_running - killed_at, 2),
            "steps": {
                "kill_to_first_run_crashed_s": round(crashed_at - killed_at, 2) if crashed_at else None,
                "crashed_to_try2_created_s": round(try2["created"] - crashed_at, 2) if crashed_at else None,
                "try2_created_to_running_s": round(running_at - try2["created"], 2),
            },
            "try2_run": try2["name"],
            "kill_to_rerun_generate_start_s": round(rerun_job["start"] - killed_at, 2) if rerun_job else None,
            "rerun_host": rerun_job["host"] if rerun_job else None,
            "first_run_states": [{k: s[k] for k in ("name", "message")} | {"t_from_kill_s": round(s["at"] - killed_at, 2)}
                                 for s in first_states],
            "try2_run_states": [{k: s[k] for k in ("name", "message")} | {"t_from_kill_s": round(s["at"] - killed_at, 2)}
                                for s in run_states(try2["id"])],
            # What the survivor's GPU did meanwhile: a try2 waits for one of its worker's slots.
            "survivor_jobs": [{"kind": j["kind"], "clip_id": j["clip_id"], "start_from_kill_s": round(j["start"] - killed_at, 2),
                               "end_from_kill_s": round(j["end"] - killed_at, 2)}
                              for j in sorted(night.jobs(), key=lambda j: j["start"])
                              if j["host"] == survivor and j["event"] == "end"],
            "parent_state": parent_state.get("state"), "parent_message": parent_state.get("message"),
            "scale_out_wall_s": round(ended - started, 1),
            "records": {r["clip_id"]: {"status": r["status"], "worker": r.get("worker"), "attempts": r.get("attempts")}
                        for r in sorted(records, key=lambda r: r["finished_at"])},
            "made_once_each": sorted(r["clip_id"] for r in made) == [f"rec-{n}" for n in range(args.rows)],
        })
    finally:
        if parent is not None and parent.poll() is None:
            parent.kill()
        result["load"] = load.stop()
        say("stopping the fleet")
        night.stop()
        result["total_wall_s"] = round(time.time() - t0, 1)
    print()
    print(f"night recovery: killed {result.get('victim_host')} {result.get('killed_into_generate_s')} s into the generate "
          f"job of {result.get('clip_id')}; its new run Running on {result.get('rerun_host')} "
          f"{result.get('kill_to_new_run_running_s')} s after the kill ({result.get('steps')}); its generate began "
          f"{result.get('kill_to_rerun_generate_start_s')} s after the kill; parent {result.get('parent_state')}; "
          f"each row made once: {result.get('made_once_each')}; total {result['total_wall_s']} s; "
          f"load avg {result['load']['load1_mean']} (max {result['load']['load1_max']})")
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / "night_recovery.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, separators=(",", ":")))
    say(f"wrote {out}")
    return 0 if result.get("parent_state") == "Completed" and result.get("made_once_each") else 1


# ---- entry ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="night.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("share", help="GPU-busy share per host and per-row overhead by stage")
    one.add_argument("--hosts", type=int, default=2)
    one.add_argument("--rows", type=int, default=40)
    one.add_argument("--generate-s", type=float, default=25.0)
    one.add_argument("--encode-s", type=float, default=1.0)
    one.add_argument("--worker-limit", type=int, default=None, help="S2V_WORKER_LIMIT of each host (default: start_warm.sh's)")
    one.add_argument("--timeout", type=float, default=4 * 3600, help="seconds the scale-out may take")
    one.add_argument("--out", help="JSON path (default bench/results/night_share_<generate_s>s.json)")
    one.set_defaults(func=share)
    two = commands.add_parser("recovery", help="seconds from a host's SIGKILL to its row running on the other host")
    two.add_argument("--rows", type=int, default=4)
    two.add_argument("--generate-s", type=float, default=60.0)
    two.add_argument("--encode-s", type=float, default=1.0)
    two.add_argument("--kill-after-s", type=float, default=5.0, help="seconds into the generate job the host dies")
    two.add_argument("--timeout", type=float, default=1800)
    two.add_argument("--out", help="JSON path (default bench/results/night_recovery.json)")
    two.set_defaults(func=recovery)
    control = night_control()
    if control is not None:
        control.add_commands(commands)
    return parser


def night_control():
    """bench/night_control.py (another engineer's subcommands), or None when it is not there."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    try:
        import night_control as module
    except ModuleNotFoundError as exc:
        if exc.name != "night_control":
            raise  # it is there but needs something missing: say so
        return None
    return module if hasattr(module, "add_commands") else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:  # a night_control subcommand that set no func: hand it the arguments
        control = night_control()
        func = getattr(control, "run", None) or getattr(control, "main")
    return func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
