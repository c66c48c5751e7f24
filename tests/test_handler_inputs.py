"""What the RunPod handler accepts as inputs, what its replies show, and when it refuses to start.

The handler is called in-process with the model call replaced (these are input tests); the real
model path is covered by the slow tests in test_deployment_artifacts.py.
"""
import os
import subprocess
import sys
import tempfile

import pytest

from deployments.runpod import handler as runpod_handler
from s2v.errors import InputError
from s2v.settings import load_settings
from tests.conftest import EXAMPLES, ROOT, heavy_imports_after
from tests.test_storage import FileAccess

PORTRAIT, SPEECH = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_short.wav"


@pytest.fixture
def job_env(monkeypatch, tmp_path):
    """No S2V_* variable from the outside; a private cache and output; temporary folders under tmp_path."""
    for name in [name for name in os.environ if name.startswith("S2V_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("S2V_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("S2V_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path


def job(image: str, audio: str = str(SPEECH)) -> dict:
    return {"id": "job-1", "input": {"image_url": image, "audio_url": audio}}


@pytest.mark.parametrize("form", ["{}", "file://{}"])
def test_local_paths_are_refused_without_reading_them(job_env, monkeypatch, form):
    monkeypatch.setenv("S2V_LOCAL_INPUTS", "true")  # an operator's setting for the CLI must not open the worker's files
    access = FileAccess(monkeypatch, "/etc/")
    replies = {}
    for path in ("/etc/passwd", "/etc/hostname", "/etc/no-such-file-s2v"):
        uri = form.format(path)
        reply = runpod_handler.handler(job(uri))
        assert "S2V_INPUT_ROOTS" in reply["error"] and "not accepted" in reply["error"]
        replies[path] = reply["error"].replace(repr(uri), "<uri>")
    assert len(set(replies.values())) == 1  # an existing and a missing file get the same reply
    assert access.calls == []


def test_outside_input_roots_an_existing_and_a_missing_path_get_the_same_reply(job_env, monkeypatch):
    monkeypatch.setenv("S2V_INPUT_ROOTS", str(EXAMPLES))
    replies = [runpod_handler.handler(job(path))["error"].replace(path, "<path>")
               for path in ("/etc/hostname", "/etc/no-such-file-s2v")]
    assert replies[0] == replies[1] == "image_url='<path>': outside the allowed input folders (S2V_INPUT_ROOTS)"


def test_input_copies_are_removed_and_replies_name_sources_not_copies(job_env, monkeypatch):
    monkeypatch.setenv("S2V_INPUT_ROOTS", str(EXAMPLES))
    seen = []

    def runtime_refuses(request, video, settings):
        # What a model server says about a bad input: it knows only the copy it was given.
        seen.append(request.image_path)
        assert request.image_path.is_file() and request.image_path.is_relative_to(job_env / "tmp")
        raise InputError("image", str(request.image_path), "the face could not be found")

    monkeypatch.setattr(runpod_handler, "_generate_warm", runtime_refuses)
    reply = runpod_handler.handler(job(str(PORTRAIT)))
    assert reply == {"error": f"image='{PORTRAIT}': the face could not be found"}
    assert seen and not seen[0].exists()
    assert list((job_env / "tmp").iterdir()) == []  # the job's folder is gone


def test_a_bad_image_reply_names_the_source(job_env, monkeypatch):
    folder = job_env / "in"
    folder.mkdir()
    (folder / "fake.jpg").write_bytes(b"GIF89a but not really")
    monkeypatch.setenv("S2V_INPUT_ROOTS", str(folder))
    reply = runpod_handler.handler(job(str(folder / "fake.jpg")))
    assert reply["error"].startswith(f"image_url='{folder / 'fake.jpg'}': not a decodable image")
    assert "s2v-runpod-" not in reply["error"] and str(job_env / "tmp") not in reply["error"]


def test_the_handler_and_its_input_checks_import_neither_prefect_nor_torch():
    code = (
        "from pathlib import Path\n"
        "from deployments.runpod import handler\n"
        "from s2v.settings import load_settings\n"
        f"settings = load_settings(input_roots=[{str(EXAMPLES)!r}], cache_dir='/nonexistent-s2v-cache')\n"
        "import tempfile\n"
        "with tempfile.TemporaryDirectory() as work:\n"
        f"    handler._fetch({{'image_url': {str(PORTRAIT)!r}, 'audio_url': {str(SPEECH)!r}}}, Path(work), settings)\n"
    )
    assert heavy_imports_after(code) == set()


def test_the_worker_refuses_to_start_without_a_checkpoint(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("S2V_")}
    proc = subprocess.run([sys.executable, str(ROOT / "deployments/runpod/handler.py")], cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1 and "S2V_CHECKPOINT is not set" in proc.stderr


def test_startup_accepts_a_folder_or_tiny(tmp_path):
    assert runpod_handler.startup_problem(load_settings(checkpoint="tiny")) is None
    assert runpod_handler.startup_problem(load_settings(checkpoint=tmp_path)) is None
    assert "no such folder" in runpod_handler.startup_problem(load_settings(checkpoint=tmp_path / "missing"))
