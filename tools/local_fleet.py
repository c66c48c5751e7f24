"""A fleet on one machine, as production runs it: a Prefect server on PostgreSQL with basic auth, the work
pools, the deployments of prefect.yaml, GPU hosts running deployments/start_warm.sh (each its own model
server on its own socket) and control workers. Used by tests/test_fleet.py and bench/row_runs.py.

Needs PostgreSQL on S2V_TEST_PG_HOST:S2V_TEST_PG_PORT (default 127.0.0.1:5432, user postgres, trust auth).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
AUTH = "studio:local-fleet-secret"
PG = dict(host=os.environ.get("S2V_TEST_PG_HOST", "127.0.0.1"), port=os.environ.get("S2V_TEST_PG_PORT", "5432"))


def _psql(sql: str) -> None:
    subprocess.run(["psql", "-h", PG["host"], "-p", PG["port"], "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1",
                    "-c", sql], check=True, capture_output=True, timeout=60)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalFleet:
    """Start with `start()`, stop with `stop()` (every process it started, the database, the sockets)."""

    def __init__(self, base: Path):
        self.base = base
        self.logs = base / "logs"
        self.socket_dir = Path(tempfile.mkdtemp(prefix="s2v-fleet-", dir="/tmp"))  # socket paths must stay short
        self.database = f"s2v_fleet_{uuid.uuid4().hex[:8]}"
        self.processes: dict[str, subprocess.Popen] = {}
        port = _free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "S2V_"))},
            "PREFECT_HOME": str(base / "home"),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_API_AUTH_STRING": AUTH,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "10",
            "S2V_PROJECT_DIR": str(ROOT),
            "S2V_INBOX": str(base / "inbox"),
            "S2V_OUTPUT": str(base / "out"),
            "S2V_DEVICE": "cpu",
        }
        self.port = port

    # ---- processes ---------------------------------------------------------------------------------

    def launch(self, name: str, args: list[str], env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "a")
        process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process

    def start(self) -> None:
        """The server on a new database, the pools, `prefect deploy --all`; no workers yet."""
        self.logs.mkdir(parents=True, exist_ok=True)
        _psql(f"CREATE DATABASE {self.database}")
        server_env = {**self.env, "PREFECT_SERVER_API_AUTH_STRING": AUTH,
                      "PREFECT_API_DATABASE_CONNECTION_URL":
                          f"postgresql+asyncpg://postgres@{PG['host']}:{PG['port']}/{self.database}"}
        server_env.pop("PREFECT_API_URL")
        self.launch("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                    server_env)
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{self.env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start\n{self.tail()}")
            time.sleep(1)
        for pool in ("s2v-gpu", "s2v-control"):
            subprocess.run([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"], env=self.env,
                           check=True, capture_output=True, timeout=120)
        deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env=self.env, cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        if deploy.returncode != 0:
            raise RuntimeError(deploy.stdout[-3000:] + deploy.stderr[-3000:])

    def socket(self, host: str) -> Path:
        return self.socket_dir / f"{host}.sock"

    def host_env(self, host: str, **extra: str) -> dict:
        return {**self.env, "S2V_CHECKPOINT": "tiny", "S2V_CACHE_DIR": str(self.base / host / "cache"),
                "S2V_MODEL_SERVER": str(self.socket(host)), "S2V_WORKER_NAME": host, "S2V_BIN": str(BIN / "s2v"),
                "PREFECT_BIN": str(BIN / "prefect"), "S2V_SERVER_READY_TIMEOUT_S": "600",
                "S2V_INPUT_ROOTS": str(EXAMPLES), **extra}

    def start_gpu_host(self, host: str, **extra: str) -> None:
        self.launch(host, [str(ROOT / "deployments/start_warm.sh")], self.host_env(host, **extra))

    def start_control(self, name: str = "control", **extra: str) -> None:
        self.launch(name, [str(BIN / "prefect"), "worker", "start", "--pool", "s2v-control", "--name", name,
                           "--limit", "2"], {**self.env, **extra})

    def kill_host(self, host: str) -> None:
        """Every process of the host at once, as a power cut would: script, model server, worker, flow runs."""
        root = psutil.Process(self.processes[host].pid)
        victims = [root, *root.children(recursive=True)]
        for process in victims:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=30)
        self.socket(host).unlink(missing_ok=True)

    def freeze(self, host: str, server_only: bool = False) -> list[psutil.Process]:
        """SIGSTOP the host's processes, as a host cut off from everything looks from outside (or only its
        model server: a GPU stuck mid-job); `thaw` them with what this returns."""
        root = psutil.Process(self.processes[host].pid)
        members = [root, *root.children(recursive=True)]
        if server_only:
            members = [p for p in members if {"server", "--socket"} <= set(p.cmdline())]
        for process in members:
            process.send_signal(signal.SIGSTOP)
        return members

    @staticmethod
    def thaw(processes: list[psutil.Process]) -> None:
        for process in processes:
            try:
                process.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass

    def wait_workers(self, names, timeout: float = 600) -> None:
        code = ("from prefect.client.orchestration import get_client\n"
                "with get_client(sync_client=True) as c:\n"
                "    ws = c.read_workers_for_work_pool('s2v-gpu')\n"
                "    print(' '.join(w.name for w in ws if w.status.value == 'ONLINE'))\n")
        deadline = time.monotonic() + timeout
        while True:
            online = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
            if set(names) <= set(online.stdout.split()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"GPU workers not online: {online.stdout} {online.stderr[-500:]}\n{self.tail()}")
            time.sleep(3)

    def run_deployment(self, name: str, parameters: dict, timeout: float = 900, wait: bool = True) -> dict:
        """Runs the deployment from a separate client process, as the UI or an operator would."""
        code = (
            "import json, sys\n"
            "from prefect.deployments import run_deployment\n"
            "run = run_deployment(sys.argv[1], parameters=json.loads(sys.argv[2]), timeout=float(sys.argv[3]))\n"
            "print(json.dumps({'state': run.state_name, 'id': str(run.id), 'message': run.state.message}))\n"
        )
        proc = subprocess.run([sys.executable, "-c", code, name, json.dumps(parameters), str(timeout if wait else 0)],
                              env=self.env, capture_output=True, text=True, timeout=timeout + 120)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def tail(self, chars: int = 2500) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(self.logs.iterdir()))

    def stop(self) -> None:
        for process in self.processes.values():
            try:
                root = psutil.Process(process.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for member in tree:
                try:
                    member.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(tree, timeout=40)
            for member in alive:
                member.kill()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        subprocess.run(["psql", "-h", PG["host"], "-p", PG["port"], "-U", "postgres", "-d", "test", "-c",
                        f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)"], capture_output=True, timeout=60)
