import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter at the project's root: what it imports is what a process of its own pays."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


HEAVY = ("torch", "diffsynth", "transformers", "librosa", "prefect")
TORCH_STACK = {"torch", "diffsynth", "transformers", "librosa"}


def heavy_imports_after(code: str, timeout: float = 300) -> set[str]:
    """Which of the heavy packages (HEAVY) a fresh interpreter holds after running `code`."""
    proc = run_python(f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))", timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(ast.literal_eval(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """One tiny random-weight checkpoint in the real layout, shared by the whole session."""
    from model_runtime.tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "Wan2.2-S2V-tiny")


@pytest.fixture(scope="module")
def own_settings(tiny_checkpoint, tmp_path_factory):
    """Settings on a test module's own copy of the tiny checkpoint: the warm cache is per process, and
    another module may have loaded (and changed the options of) the shared one."""
    from s2v.settings import Settings

    checkpoint = tmp_path_factory.mktemp("own") / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    return Settings(checkpoint=checkpoint, device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))


def tiny_request(image, audio, **overrides):
    """A generation request as small as the tiny model allows: 15 steps, a fixed seed."""
    from model_runtime.request import GenerationRequest

    return GenerationRequest.parse({"image_path": image, "audio_path": audio, "sample_steps": 15, "seed": 0, **overrides})


@pytest.fixture
def s2v_env(tmp_path, tiny_checkpoint, monkeypatch):
    """Settings pointing at the tiny checkpoint and a private cache, as S2V_* variables."""
    monkeypatch.setenv("S2V_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.setenv("S2V_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("S2V_DEVICE", "cpu")
    monkeypatch.setenv("S2V_LOCAL_INPUTS", "true")  # the tests' inputs are the example files
    return os.environ


@pytest.fixture
def portrait() -> Path:
    return EXAMPLES / "portrait_anna.jpg"


@pytest.fixture
def speech() -> Path:
    return EXAMPLES / "speech_hello.wav"


@pytest.fixture
def short_speech() -> Path:
    return EXAMPLES / "speech_short.wav"


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for the session: it takes ~30 s to start here, so it starts once."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def http_server():
    """A file server on loopback with 404, 503-once, oversized, slow and redirect routes."""
    from tests.servers import FileServer

    server = FileServer()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on loopback, dummy credentials, buckets media-in, media-out and ledgers."""
    from tests.servers import moto_server

    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env.setenv(name, value)
        server, endpoint = moto_server(("media-in", "media-out", "ledgers"))
        yield endpoint
        server.stop()
