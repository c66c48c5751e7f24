"""bench/bench_only_model_server.py: a stand-in for the model server used by bench/night.py only.

Two things hold: no production package imports anything under bench/ (so the stand-in can never serve a
real night), and the stand-in answers the real ModelServerClient with a playable MP4, so the bench measures
the fleet's real client path around it.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT

PRODUCTION = ("cli", "deployments", "flows", "tasks", "records", "model_runtime", "s2v")
BENCH_MODULES = {p.stem for p in (ROOT / "bench").glob("*.py")}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.append(str(node.args[0].value))
    return names


def test_no_production_module_imports_anything_under_bench():
    offenders = []
    for package in PRODUCTION:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in _imports(path):
                top = name.split(".")[0]
                if top == "bench" or top in BENCH_MODULES or "bench_only" in name:
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
            text = path.read_text()
            # Also a path or a command line naming the stand-in (e.g. a subprocess started by file name).
            if "bench_only_model_server" in text or "bench_s2v_shim" in text:
                offenders.append(f"{path.relative_to(ROOT)}: names the bench-only server")
    # The GPU host's start script, the Dockerfile and prefect.yaml must not reach for the bench's stand-in either.
    scripts = [p for p in (ROOT / "deployments").rglob("*") if p.is_file() and p.suffix in ("", ".sh", ".yaml", ".yml")]
    for script in [*scripts, ROOT / "Dockerfile", ROOT / "prefect.yaml"]:
        text = script.read_text(errors="replace") if script.is_file() else ""
        if any(mark in text for mark in ("bench/", "bench_only", "bench_s2v_shim", "BENCH_")):
            offenders.append(f"{script.relative_to(ROOT)}: names the bench-only server")
    assert offenders == [], offenders


def test_the_stand_in_says_it_is_bench_only():
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("bench_only_model_server_doc", ROOT / "bench" / "bench_only_model_server.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__doc__.startswith("BENCH-ONLY") and "Never used in production" in module.__doc__


@pytest.fixture
def bench_server():
    """The stand-in on a short socket under /tmp, generate 0.5 s; killed and cleaned up after."""
    folder = Path(tempfile.mkdtemp(prefix="s2vb-", dir="/tmp"))
    sock = folder / "b.sock"
    job_log = folder / "jobs.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S2V_", "PREFECT_", "BENCH_"))}
    env.update(S2V_WORKER_NAME="bench-test", S2V_CACHE_DIR=str(folder / "cache"))
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bench_only_model_server.py"), "server", "--socket", str(sock),
         "--generate-s", "0.5", "--encode-s", "0.1", "--job-log", str(job_log)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"), start_new_session=True)
    try:
        yield sock, job_log, folder
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_stand_in_answers_the_real_client_with_a_playable_mp4(bench_server, tmp_path):
    from model_runtime.client import ModelServerClient
    from model_runtime.protocol import GenerateCall
    from model_runtime.request import GenerationRequest
    from model_runtime.video import probe
    from s2v.settings import Settings

    sock, job_log, folder = bench_server
    started = time.monotonic()
    settings = Settings(_env_file=None, cache_dir=tmp_path / "client-cache", generation_timeout_s=60,
                        server_load_timeout_s=20)
    client = ModelServerClient(sock, settings, autostart=False)
    deadline = time.monotonic() + 20
    while True:  # the stand-in's socket appears within a second or two
        try:
            if client.health().status == "ready":
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, (folder / "server.log").read_text()
        time.sleep(0.1)
    speech = EXAMPLES / "speech_short.wav"
    features = client.encode_audio(speech, tmp_path / "derived" / "f.safetensors")
    request = GenerationRequest(image_path=EXAMPLES / "portrait_anna.jpg", audio_path=speech)
    out = tmp_path / "videos" / "clip-7-0123456789ab.mp4"
    reply = client.generate(GenerateCall(request=request, output_path=out, features=features))
    elapsed = time.monotonic() - started
    assert reply.success and Path(reply.video_path) == out and out.is_file()
    info = probe(out)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac"), info
    assert info.duration and abs(info.duration - features.duration) < 0.5, (info, features)
    assert (info.width, info.height) == (reply.width, reply.height)
    assert reply.poster_path is not None and Path(reply.poster_path).is_file()
    assert reply.tiny_checkpoint is True and reply.checkpoint == "bench-only-stand-in"
    assert reply.generation_time >= 0.5
    assert elapsed < 30
    status = client.status()
    assert status.generation_count == 1 and status.status == "ready"
    lines = [json.loads(line) for line in job_log.read_text().splitlines()]
    ends = [line for line in lines if line["event"] == "end"]
    assert [(e["kind"], e["outcome"]) for e in ends] == [("encode_audio", "done"), ("generate", "done")]
    assert ends[1]["clip_id"] == "clip-7" and ends[1]["end"] - ends[1]["start"] >= 0.5
    # start_warm.sh reads the status through `S2V_BIN server-status`.
    printed = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_only_model_server.py"), "server-status",
                              "--socket", str(sock)], capture_output=True, text=True, timeout=30)
    assert printed.returncode == 0 and '"status": "ready"' in printed.stdout
