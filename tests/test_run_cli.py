"""`s2v run` and `s2v retry` as a person runs them: separate processes on Prefect's embedded API."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import EXAMPLES, ROOT

pytestmark = pytest.mark.slow
PORTRAIT, SPEECH = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_short.wav"


@pytest.fixture
def cli_env(tiny_checkpoint, tmp_path, tmp_path_factory):
    return {
        **os.environ,
        "S2V_CHECKPOINT": str(tiny_checkpoint),
        "S2V_CACHE_DIR": str(tmp_path / "cache"),
        "S2V_DEVICE": "cpu",
        # One Prefect home for the session: its database migrations run once.
        "PREFECT_HOME": str(tmp_path_factory.getbasetemp() / "prefect-home"),
    }


def _s2v(*args) -> list[str]:
    return [sys.executable, "-c", "from s2v.cli import app; app()", *args]


def _records(out):
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_killed_batch_loses_nothing_and_regenerates_nothing(cli_env, tmp_path):
    manifest = tmp_path / "manifest.csv"
    rows = [f"clip-{i},{PORTRAIT},{SPEECH},15" for i in range(3)]
    manifest.write_text("clip_id,image,audio,sample_steps\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"

    first = subprocess.Popen(_s2v("run", str(manifest), "--output", str(out)), env=cli_env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 400
    while not any(r["status"] == "succeeded" for r in _records(out)):
        assert first.poll() is None, "the batch ended before it could be killed"
        assert time.monotonic() < deadline, "no row finished in time"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done_before = {r["clip_id"] for r in _records(out) if r["status"] == "succeeded"}
    assert 1 <= len(done_before) < 3
    made_at = {clip_id: (out / f"{clip_id}.mp4").stat().st_mtime_ns for clip_id in done_before}

    second = subprocess.run(_s2v("run", str(manifest), "--output", str(out)), env=cli_env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Traceback" not in second.stderr + second.stdout
    records = _records(out)
    latest = {r["clip_id"]: r for r in records}
    assert set(latest) == {"clip-0", "clip-1", "clip-2"}
    for clip_id in done_before:
        assert latest[clip_id]["status"] == "skipped"
        assert (out / f"{clip_id}.mp4").stat().st_mtime_ns == made_at[clip_id]
    generated = [r["clip_id"] for r in records if r["status"] == "succeeded"]
    assert sorted(generated) == ["clip-0", "clip-1", "clip-2"]  # each generated exactly once


def test_failed_row_exits_nonzero_then_retry_fixes_it(cli_env, tmp_path):
    broken = tmp_path / "face.jpg"
    broken.write_bytes(b"\xff\xd8 truncated upload")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"clip_id,image,audio,sample_steps\ngood,{PORTRAIT},{SPEECH},15\nbroken,{broken},{SPEECH},15\n")
    out = tmp_path / "out"

    run = subprocess.run(_s2v("run", str(manifest), "--output", str(out)), env=cli_env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 1
    assert "not a decodable image" in run.stderr and "Traceback" not in run.stderr + run.stdout
    assert "1 succeeded, 1 failed" in run.stderr
    assert {r["clip_id"]: r for r in _records(out)}["good"]["warm_model"] is False  # loaded for this row

    shutil.copy(PORTRAIT, broken)
    retry = subprocess.run(_s2v("retry", str(out)), env=cli_env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-3000:]
    latest = {r["clip_id"]: r for r in _records(out)}
    assert latest["broken"]["status"] == "succeeded" and latest["good"]["status"] == "succeeded"
    assert [r["clip_id"] for r in _records(out)].count("good") == 1  # retry left the good row alone


def test_broken_manifest_fails_before_any_work(cli_env, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("picture,sound\na.jpg,b.wav\n")
    run = subprocess.run(_s2v("run", str(manifest), "--output", str(tmp_path / "out")), env=cli_env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "missing column(s) image, audio" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
