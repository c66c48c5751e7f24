"""Deployments as production runs them: a Prefect server on PostgreSQL, process workers, prefect.yaml.

Two GPU-pool workers (one flow run each at a time) and one control-pool worker on this machine; the
deployments are created by `prefect deploy --all` from the repository's prefect.yaml.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import EXAMPLES, ROOT

pytestmark = pytest.mark.slow
PORTRAIT, SPEECH = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_short.wav"
PG = dict(host=os.environ.get("S2V_TEST_PG_HOST", "127.0.0.1"), port=os.environ.get("S2V_TEST_PG_PORT", "5432"))
PREFECT = str(Path(sys.executable).parent / "prefect")


def _psql(sql: str) -> None:
    subprocess.run(["psql", "-h", PG["host"], "-p", PG["port"], "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1",
                    "-c", sql], check=True, capture_output=True, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory, tiny_checkpoint):
    """Server on a fresh PostgreSQL database, pools, deployments from prefect.yaml, and the workers."""
    base = tmp_path_factory.mktemp("prefect-pg")
    database = f"s2v_test_{uuid.uuid4().hex[:8]}"
    _psql(f"CREATE DATABASE {database}")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(base / "home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "S2V_PROJECT_DIR": str(ROOT),
        "S2V_INBOX": str(base / "inbox"),
        "S2V_OUTPUT": str(base / "out"),
        "S2V_CHECKPOINT": str(tiny_checkpoint),
        "S2V_CACHE_DIR": str(base / "cache"),
        "S2V_DEVICE": "cpu",
    }
    server_env = {**env, "PREFECT_API_DATABASE_CONNECTION_URL":
                  f"postgresql+asyncpg://postgres@{PG['host']}:{PG['port']}/{database}"}
    server_env.pop("PREFECT_API_URL")
    processes = []
    logs = base / "logs"
    logs.mkdir()

    def start(name, args, extra=None):
        log = open(logs / f"{name}.log", "w")
        processes.append(subprocess.Popen(args, env={**(extra or env)}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))

    try:
        start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], server_env)
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (logs / "server.log").read_text()[-3000:]
            time.sleep(1)
        for pool in ("s2v-gpu", "s2v-control"):
            subprocess.run([PREFECT, "work-pool", "create", pool, "--type", "process"], env=env, check=True,
                           capture_output=True, timeout=120)
        deploy = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], env=env, cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        for name in ("gpu-1", "gpu-2"):
            # The GPU workers run flows with the in-process model here (no socket) to keep the test light.
            start(name, [PREFECT, "worker", "start", "--pool", "s2v-gpu", "--name", name, "--limit", "1"],
                  {**env, "S2V_WORKER_NAME": name})
        start("control", [PREFECT, "worker", "start", "--pool", "s2v-control", "--name", "control", "--limit", "2"])
        yield {"env": env, "api": api, "base": base, "logs": logs}
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, 15)
            except ProcessLookupError:
                pass
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
        subprocess.run(["psql", "-h", PG["host"], "-p", PG["port"], "-U", "postgres", "-d", "test", "-c",
                        f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"], capture_output=True, timeout=60)


def _run_deployment(server, name: str, parameters: dict, timeout: int = 900) -> dict:
    """Runs the deployment from a separate client process, as the UI or an operator would."""
    code = (
        "import json, sys\n"
        "from prefect.deployments import run_deployment\n"
        "run = run_deployment(sys.argv[1], parameters=json.loads(sys.argv[2]), timeout=int(sys.argv[3]))\n"
        "print(json.dumps({'state': run.state_name, 'id': str(run.id)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, name, json.dumps(parameters), str(timeout)],
                          env=server["env"], capture_output=True, text=True, timeout=timeout + 60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ledger(folder: Path) -> dict:
    lines = (folder / "results.jsonl").read_text().splitlines()
    return {record["clip_id"]: record for record in map(json.loads, lines)}


def _worker_logs(server) -> str:
    return "\n".join(p.read_text()[-2000:] for p in server["logs"].iterdir())


def test_manifest_split_in_two_shards_runs_one_on_each_gpu_worker(prefect_server):
    out = prefect_server["base"] / "sharded"
    rows = "\n".join(f"row-{i},{PORTRAIT},{SPEECH},15" for i in range(4))
    run = _run_deployment(prefect_server, "s2v-scale-out/scale-out",
                          {"manifest": f"clip_id,image,audio,sample_steps\n{rows}\n", "output": str(out), "shards": 2})
    assert run["state"] == "Completed", _worker_logs(prefect_server)
    ledger = _ledger(out)
    assert sorted(ledger) == ["row-0", "row-1", "row-2", "row-3"]
    assert all(r["status"] == "succeeded" for r in ledger.values()), ledger
    assert {r["worker"] for r in ledger.values()} == {"gpu-1", "gpu-2"}
    assert sorted(r["row"] for r in ledger.values()) == [2, 3, 4, 5]  # the original manifest's row numbers
    assert all(Path(r["output_uri"]).is_file() for r in ledger.values())


def test_clip_and_retry_failed_as_deployment_runs(prefect_server):
    out = prefect_server["base"] / "ui"
    clip = _run_deployment(prefect_server, "s2v-clip/clip",
                           {"image": str(PORTRAIT), "audio": str(SPEECH), "sample_steps": 15, "clip_id": "from-ui",
                            "output": str(out)})
    assert clip["state"] == "Completed", _worker_logs(prefect_server)
    assert _ledger(out)["from-ui"]["status"] == "succeeded"

    broken = prefect_server["base"] / "broken.jpg"
    broken.write_text("half an upload")
    retry_out = prefect_server["base"] / "retry"
    manifest = f"clip_id,image,audio,sample_steps\nfine,{PORTRAIT},{SPEECH},15\nfixme,{broken},{SPEECH},15\n"
    assert _run_deployment(prefect_server, "s2v-batch/batch", {"manifest": manifest, "output": str(retry_out)})["state"] == "Completed"
    assert _ledger(retry_out)["fixme"]["status"] == "failed"
    shutil.copy(PORTRAIT, broken)
    assert _run_deployment(prefect_server, "s2v-retry-failed/retry-failed", {"output": str(retry_out)})["state"] == "Completed"
    ledger = _ledger(retry_out)
    assert ledger["fixme"]["status"] == "succeeded" and ledger["fine"]["attempts"] == 1


def test_deployment_forms_have_types_and_limits(prefect_server):
    code = (
        "import asyncio, json\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as client:\n"
        "        out = {}\n"
        "        for name in ('s2v-clip/clip', 's2v-batch/batch', 's2v-nightly/nightly-batch'):\n"
        "            d = await client.read_deployment_by_name(name)\n"
        "            out[name] = {'schema': d.parameter_openapi_schema, 'parameters': d.parameters,\n"
        "                         'schedules': [s.schedule.model_dump(mode='json') for s in d.schedules],\n"
        "                         'pool': d.work_pool_name}\n"
        "        print(json.dumps(out))\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=prefect_server["env"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout)
    clip = info["s2v-clip/clip"]["schema"]["properties"]
    assert clip["resolution"]["enum"][:2] == ["480p", "720p"]
    assert (clip["sample_steps"]["minimum"], clip["sample_steps"]["maximum"]) == (15, 50)
    assert clip["seed"]["anyOf"][0]["maximum"] == 2**32 - 1
    assert "portrait" in clip["image"]["description"]  # the form explains each field
    batch = info["s2v-batch/batch"]
    assert batch["schema"]["required"] == ["manifest"] and batch["pool"] == "s2v-gpu"
    options = batch["schema"]["definitions"]["GenerationOptions"]["properties"]
    assert (options["sample_steps"]["minimum"], options["sample_steps"]["maximum"]) == (15, 50)
    nightly = info["s2v-nightly/nightly-batch"]
    assert nightly["schedules"][0]["cron"] == "0 2 * * *" and nightly["schedules"][0]["timezone"]
    assert nightly["parameters"]["inbox"] == prefect_server["env"]["S2V_INBOX"] and nightly["pool"] == "s2v-control"
