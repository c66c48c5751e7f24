"""The Docker image definition, the GPU host start script and the seed's RunPod handler."""
import ast
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT

BIN = Path(sys.executable).parent
PORTRAIT, SPEECH = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_short.wav"


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([str(BIN / "hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_installs_what_ci_tests():
    dockerfile = (ROOT / "Dockerfile").read_text()
    constraints = (ROOT / "requirements/constraints.txt").read_text()
    torch = re.search(r"^torch==(\S+)$", constraints, re.M).group(1)
    assert f"torch=={torch}" in dockerfile
    assert dockerfile.count("-c requirements/constraints.txt") >= 2
    assert "S2V_CHECKPOINT=/runpod-volume/models/Wan2.2-S2V-14B" in dockerfile
    assert re.search(r"^USER \d+", dockerfile, re.M) and "HEALTHCHECK" in dockerfile
    # dependencies are installed before the code is copied, so code changes reuse those layers
    assert dockerfile.index("pip install -c requirements/constraints.txt -r") < dockerfile.index("COPY s2v/")


def test_start_script_passes_shellcheck():
    proc = subprocess.run([str(BIN / "shellcheck"), "deployments/start_warm.sh"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _fake_worker(folder: Path) -> Path:
    """Stands in for `prefect worker start`: records the model server's state when it was started."""
    script = folder / "prefect"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'"{BIN}/s2v" server-status > "{folder}/status-at-worker-start.json"\n'
        f'echo "$@" > "{folder}/worker-args"\n'
        f"trap 'echo stopped > \"{folder}/worker-stopped\"; exit 0' TERM\n"
        "while true; do sleep 0.2; done\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.slow
def test_start_script_starts_server_then_worker_and_stops_both(tiny_checkpoint, tmp_path):
    sock_dir = Path(tempfile.mkdtemp(prefix="s2v-", dir="/tmp"))
    socket_path = sock_dir / "model.sock"
    env = {**os.environ, "S2V_CHECKPOINT": str(tiny_checkpoint), "S2V_DEVICE": "cpu", "S2V_MODEL_SERVER": str(socket_path),
           "S2V_BIN": str(BIN / "s2v"), "PREFECT_BIN": str(_fake_worker(tmp_path)), "S2V_WORKER_NAME": "gpu-a",
           "S2V_SERVER_READY_TIMEOUT_S": "300"}
    proc = subprocess.Popen([str(ROOT / "deployments/start_warm.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "worker-args").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert json.loads((tmp_path / "status-at-worker-start.json").read_text())["status"] == "ready"
    assert "--pool s2v-gpu" in (tmp_path / "worker-args").read_text() and "--name gpu-a" in (tmp_path / "worker-args").read_text()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    assert (tmp_path / "worker-stopped").exists()
    assert not socket_path.exists()  # the server shut down and removed its socket


def test_start_script_fails_when_the_server_never_gets_ready(tmp_path):
    fake_s2v = tmp_path / "s2v"
    fake_s2v.write_text('#!/usr/bin/env bash\nif [ "$1" = server ]; then exec sleep 600; fi\nexit 1\n')
    fake_s2v.chmod(0o755)
    env = {**os.environ, "S2V_BIN": str(fake_s2v), "PREFECT_BIN": str(_fake_worker(tmp_path)),
           "S2V_SERVER_READY_TIMEOUT_S": "4", "S2V_MODEL_SERVER": str(tmp_path / "none.sock")}
    proc = subprocess.run([str(ROOT / "deployments/start_warm.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "not ready after 4s" in proc.stdout
    assert not (tmp_path / "worker-args").exists()


def _runpod_job(job_input: dict, env: dict) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "deployments/runpod/handler.py", "--test_input", json.dumps({"input": job_input})],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def _job_output(log: str) -> dict:
    result = re.search(r"Job result: (\{.*\})", log).group(1)
    return ast.literal_eval(result)["output"]


@pytest.mark.slow
def test_runpod_handler_keeps_the_seed_api_and_stays_warm(tiny_checkpoint, tmp_path):
    from model_runtime.client import ModelServerClient
    from s2v.settings import Settings

    socket_path = Path(tempfile.mkdtemp(prefix="s2v-", dir="/tmp")) / "rp.sock"
    env = {**os.environ, "S2V_CHECKPOINT": str(tiny_checkpoint), "S2V_DEVICE": "cpu", "S2V_MODEL_SERVER": str(socket_path),
           "S2V_OUTPUT": str(tmp_path / "out"), "S2V_CACHE_DIR": str(tmp_path / "cache")}
    job = {"image_url": str(PORTRAIT), "audio_url": f"file://{SPEECH}", "prompt": "A person speaking", "resolution": "480p",
           "sample_steps": 15}
    try:
        code, log = _runpod_job(job, env)
        assert code == 0, log[-3000:]
        first = _job_output(log)
        assert set(first) == {"video_url", "generation_time", "total_time", "video_size_mb", "resolution",
                              "sample_steps", "warm_model"}
        assert Path(first["video_url"]).is_file() and first["sample_steps"] == 15 and first["resolution"] == "480p"
        code, log = _runpod_job(job, env)
        assert code == 0, log[-3000:]
        assert _job_output(log)["warm_model"] is True  # the server the first job started is still warm

        code, log = _runpod_job({**job, "sample_steps": 99}, env)
        assert code == 1 and "sample_steps=99" in log and "Traceback" not in log
        code, log = _runpod_job({"image_url": str(PORTRAIT)}, env)
        assert code == 1 and "audio_url=None: required" in log
    finally:
        ModelServerClient(socket_path, Settings(), autostart=False).shutdown() if socket_path.exists() else None
