import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """One tiny random-weight checkpoint in the real layout, shared by the whole session."""
    from model_runtime.tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "Wan2.2-S2V-tiny")


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
