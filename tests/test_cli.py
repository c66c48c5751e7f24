import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _s2v(*args, env=None):
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import app; app()", *args],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600,
    )


@pytest.mark.slow
def test_generate_prints_the_result_record(tiny_checkpoint, tmp_path, portrait, short_speech):
    out = tmp_path / "clip.mp4"
    proc = _s2v("generate", "--image", str(portrait), "--audio", str(short_speech), "--out", str(out),
                "--sample-steps", "15", "--checkpoint", str(tiny_checkpoint), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    for field in ("video_path", "generation_time", "total_time", "video_size_mb", "resolution", "sample_steps",
                  "warm_model", "frames", "fps", "duration", "seed", "segments"):
        assert field in record, field
    assert out.is_file() and record["video_path"] == str(out)


def test_bad_input_is_a_message_not_a_traceback(tiny_checkpoint, tmp_path, portrait, short_speech):
    proc = _s2v("generate", "--image", str(portrait), "--audio", str(short_speech), "--out", str(tmp_path / "x.mp4"),
                "--sample-steps", "99", "--checkpoint", str(tiny_checkpoint))
    assert proc.returncode == 2
    assert "sample_steps=99" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_checkpoint_file_is_named(tmp_path, portrait, short_speech):
    (tmp_path / "ckpt").mkdir()
    proc = _s2v("generate", "--image", str(portrait), "--audio", str(short_speech), "--out", str(tmp_path / "x.mp4"),
                "--checkpoint", str(tmp_path / "ckpt"))
    assert proc.returncode == 1
    assert "missing config.json" in proc.stderr and "Traceback" not in proc.stderr


def test_make_tiny_checkpoint_refuses_to_overwrite(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    proc = _s2v("make-tiny-checkpoint", str(target))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
