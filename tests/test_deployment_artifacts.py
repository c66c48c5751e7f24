"""The Docker image definition, the GPU host start script and the RunPod handler with the original server's API."""
import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT

BIN = Path(sys.executable).parent
PORTRAIT, SPEECH = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_short.wav"


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([str(BIN / "hadolint"), "Dockerfile"], cwd=ROOT, check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_installs_what_ci_tests():
    dockerfile = (ROOT / "Dockerfile").read_text()
    constraints = (ROOT / "requirements/constraints.txt").read_text()
    for package in ("torch", "torchvision"):  # the CUDA build: pinned in the Dockerfile as in constraints
        version = re.search(rf"^{package}==(\S+)$", constraints, re.MULTILINE).group(1)
        assert f"{package}=={version}" in dockerfile
    assert dockerfile.count("pip install -c requirements/constraints.txt") == 2
    assert "pyproject.toml" in dockerfile and "['dependencies']" in dockerfile
    # every package pyproject ships is copied into the image, and .dockerignore keeps none of them out
    ignored = set((ROOT / ".dockerignore").read_text().split())
    for package in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]:
        name = package.rstrip("*")
        assert f"COPY {name}/ {name}/" in dockerfile and name not in ignored
    assert "S2V_CHECKPOINT=/runpod-volume/models/Wan2.2-S2V-14B" in dockerfile
    assert re.search(r"^USER \d+", dockerfile, re.MULTILINE) and "HEALTHCHECK" in dockerfile
    assert 'ENTRYPOINT ["deployments/start_warm.sh"]' in dockerfile
    # dependencies are installed before the code is copied, so code changes reuse those layers
    assert dockerfile.index("pip install -c requirements/constraints.txt -r") < dockerfile.index("COPY s2v/")


def test_start_script_passes_shellcheck():
    proc = subprocess.run([str(BIN / "shellcheck"), "deployments/start_warm.sh"], cwd=ROOT, check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.fixture
def socket_dir():
    """A short folder for sockets: a Unix socket path must stay under ~100 bytes, pytest's tmp_path may not."""
    folder = Path(tempfile.mkdtemp(prefix="s2v-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _fake_worker(folder: Path) -> Path:
    """Stands in for `prefect worker start`: records its arguments and the model server's state when started."""
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


def _start_warm(env: dict, **popen) -> subprocess.Popen:
    return subprocess.Popen([str(ROOT / "deployments/start_warm.sh")], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.slow
def test_start_script_starts_server_then_worker_and_stops_both(tiny_checkpoint, tmp_path, socket_dir):
    socket_path = socket_dir / "model.sock"
    proc = _start_warm({"S2V_CHECKPOINT": str(tiny_checkpoint), "S2V_DEVICE": "cpu", "S2V_MODEL_SERVER": str(socket_path),
                        "S2V_BIN": str(BIN / "s2v"), "PREFECT_BIN": str(_fake_worker(tmp_path)),
                        "S2V_WORKER_NAME": "gpu-a", "S2V_SERVER_READY_TIMEOUT_S": "300"})
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "worker-args").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the worker was not started"
            time.sleep(0.5)
        # the worker started only once the model was loaded (the fake wrote this before its arguments)
        status = json.loads((tmp_path / "status-at-worker-start.json").read_text())
        assert status["status"] == "ready" and status["model_loaded"] is True
        assert (tmp_path / "worker-args").read_text().split() == [
            "worker", "start", "--pool", "s2v-gpu", "--type", "process", "--name", "gpu-a", "--limit", "3"]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert (tmp_path / "worker-stopped").exists(), log
    assert "stopped after 0 generation(s)" in log  # the server's own clean-exit line, on the script's stdout
    assert not socket_path.exists()  # the server shut down and removed its socket


def test_start_script_fails_when_the_server_never_gets_ready(tmp_path):
    fake_s2v = tmp_path / "s2v"  # a server that runs but never answers
    fake_s2v.write_text('#!/usr/bin/env bash\nif [ "$1" = server ]; then exec sleep 600; fi\nexit 1\n')
    fake_s2v.chmod(0o755)
    started = time.monotonic()
    proc = _start_warm({"S2V_BIN": str(fake_s2v), "PREFECT_BIN": str(_fake_worker(tmp_path)), "S2V_CHECKPOINT": "tiny",
                        "S2V_SERVER_READY_TIMEOUT_S": "4", "S2V_MODEL_SERVER": str(tmp_path / "none.sock")})
    assert proc.wait(timeout=60) == 1
    assert time.monotonic() - started < 15
    assert "not ready after 4s (state: down)" in proc.stdout.read()
    assert not (tmp_path / "worker-args").exists()


@pytest.mark.parametrize("checkpoint, words", [(None, "S2V_CHECKPOINT is not set"),
                                                ("/nowhere/Wan2.2-S2V-14B", "S2V_CHECKPOINT=/nowhere/Wan2.2-S2V-14B is not a folder")])
def test_start_script_refuses_to_start_without_a_real_checkpoint(tmp_path, checkpoint, words):
    env = {key: value for key, value in os.environ.items() if key != "S2V_CHECKPOINT"}
    if checkpoint:
        env["S2V_CHECKPOINT"] = checkpoint
    started = time.monotonic()
    proc = subprocess.run([str(ROOT / "deployments/start_warm.sh")], env={**env, "PREFECT_BIN": str(_fake_worker(tmp_path))},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and time.monotonic() - started < 10
    assert words in proc.stdout and not (tmp_path / "worker-args").exists()


@pytest.mark.slow
def test_start_script_fails_fast_when_the_model_cannot_load(tmp_path, socket_dir):
    (tmp_path / "empty-checkpoint").mkdir()
    started = time.monotonic()
    proc = _start_warm({"S2V_CHECKPOINT": str(tmp_path / "empty-checkpoint"), "S2V_DEVICE": "cpu", "S2V_BIN": str(BIN / "s2v"),
                        "S2V_MODEL_SERVER": str(socket_dir / "bad.sock"), "PREFECT_BIN": str(_fake_worker(tmp_path))})
    assert proc.wait(timeout=120) == 1
    # the default 30-minute load timeout is not waited out: the server said it failed
    assert time.monotonic() - started < 120
    log = proc.stdout.read()
    assert "could not load the model" in log and "missing config.json" in log
    assert not (tmp_path / "worker-args").exists() and not (socket_dir / "bad.sock").exists()


def _runpod_job(job_input: dict, env: dict) -> tuple[int, str]:
    # PYTHONPATH: a script's own folder comes first on sys.path, so the checkout's packages must be named
    proc = subprocess.run([sys.executable, "deployments/runpod/handler.py", "--test_input", json.dumps({"input": job_input})],
                          cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, check=False, capture_output=True, text=True,
                          timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def _job_output(log: str) -> dict:
    # runpod's local test mode logs the job result as a Python repr
    return ast.literal_eval(re.search(r"Job result: (\{.*\})", log).group(1))["output"]


@pytest.mark.slow
def test_runpod_handler_keeps_the_original_api_and_stays_warm(tiny_checkpoint, tmp_path, socket_dir):
    from model_runtime.client import ModelServerClient
    from s2v.settings import load_settings

    socket_path = socket_dir / "rp.sock"
    env = {**os.environ, "S2V_CHECKPOINT": str(tiny_checkpoint), "S2V_DEVICE": "cpu", "S2V_MODEL_SERVER": str(socket_path),
           "S2V_OUTPUT": str(tmp_path / "out"), "S2V_CACHE_DIR": str(tmp_path / "cache"), "S2V_INPUT_ROOTS": str(EXAMPLES)}
    job = {"image_url": str(PORTRAIT), "audio_url": f"file://{SPEECH}", "prompt": "A person speaking", "resolution": "480p",
           "sample_steps": 15}
    server = ModelServerClient(socket_path, load_settings(), autostart=False)
    try:
        code, log = _runpod_job(job, env)
        assert code == 0, log[-3000:]
        first = _job_output(log)
        assert set(first) == {"video_url", "generation_time", "total_time", "video_size_mb", "resolution",
                              "sample_steps", "warm_model"}
        assert Path(first["video_url"]).is_file() and Path(first["video_url"]).is_relative_to(tmp_path / "out")
        assert first["sample_steps"] == 15 and first["resolution"] == "480p" and first["warm_model"] is False
        assert first["video_size_mb"] > 0 and first["total_time"] >= first["generation_time"] > 0
        server_pid = server.status().pid  # the first job left its server running, detached

        code, log = _runpod_job(job, env)  # a new process: only the detached server can be warm
        assert code == 0, log[-3000:]
        second = _job_output(log)
        assert second["warm_model"] is True and second["video_url"] != first["video_url"]
        status = server.status()  # the same server did both jobs and loaded the model once
        assert (status.pid, status.load_count, status.generation_count) == (server_pid, 1, 2)

        code, log = _runpod_job({**job, "sample_steps": 99}, env)
        assert code == 1 and "sample_steps=99" in log and "Traceback" not in log
        code, log = _runpod_job({"image_url": str(PORTRAIT)}, env)
        assert code == 1 and "audio_url=None: required" in log and "Traceback" not in log
        code, log = _runpod_job({**job, "image_url": str(EXAMPLES / "nope.jpg")}, env)
        assert code == 1 and "image_url=" in log and "file not found" in log and "Traceback" not in log
        code, log = _runpod_job({**job, "image_url": "/etc/hostname"}, env)
        assert code == 1 and "outside the allowed input folders (S2V_INPUT_ROOTS)" in log
    finally:
        if socket_path.exists():
            server.shutdown()


@pytest.mark.slow
def test_runpod_handler_v1_runs_a_cold_process_per_job(tiny_checkpoint, tmp_path, socket_dir):
    env = {**os.environ, "HANDLER_VERSION": "v1", "S2V_CHECKPOINT": str(tiny_checkpoint), "S2V_DEVICE": "cpu",
           "S2V_MODEL_SERVER": str(socket_dir / "unused.sock"), "S2V_OUTPUT": str(tmp_path / "out"),
           "S2V_CACHE_DIR": str(tmp_path / "cache"), "S2V_INPUT_ROOTS": str(EXAMPLES)}
    code, log = _runpod_job({"image_url": str(PORTRAIT), "audio_url": str(SPEECH), "sample_steps": 15}, env)
    assert code == 0, log[-3000:]
    output = _job_output(log)
    assert output["warm_model"] is False and output["sample_steps"] == 15 and Path(output["video_url"]).is_file()
    assert not (socket_dir / "unused.sock").exists()  # v1 never starts the model server


def test_runpod_handler_hides_internal_errors(monkeypatch, caplog):
    from deployments.runpod import handler as runpod_handler

    def broken(*args):
        raise RuntimeError("disk full under /srv/private")

    monkeypatch.setattr(runpod_handler, "_fetch", broken)
    result = runpod_handler.handler({"id": "job-1", "input": {"image_url": str(PORTRAIT), "audio_url": str(SPEECH)}})
    # the caller gets no traceback or internals; the worker log keeps them
    assert result == {"error": "internal error (RuntimeError); the worker log has the details of job job-1"}
    assert "disk full under /srv/private" in caplog.text
    assert runpod_handler.handler({"id": "job-2", "input": ["not", "an", "object"]}) == {
        "error": "input=['not', 'an', 'object']: must be a JSON object"}
