"""The batch flows end to end under Prefect's test harness, on the tiny checkpoint (CPU)."""
import json
import shutil

import boto3
import pytest

from flows.batch import batch, clip, retry_failed
from flows.ledger import load_ledger
from model_runtime.video import probe
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.slow
PORTRAIT, SPEECH = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_short.wav"


@pytest.fixture
def env(s2v_env, monkeypatch):
    monkeypatch.setenv("S2V_ALLOWED_HOSTS", '["127.0.0.1"]')
    monkeypatch.setenv("S2V_DOWNLOAD_TIMEOUT_S", "10")


def _csv(*lines: str) -> str:
    return "\n".join(["clip_id,image,audio,sample_steps,prompt", *lines]) + "\n"


def _playable_with_speech(path) -> bool:
    info = probe(path)
    return (info.video_codec, info.audio_codec) == ("h264", "aac")


def test_mixed_manifest_ends_every_row_in_the_ledger(prefect_harness, env, tmp_path, http_server):
    broken_audio = tmp_path / "broken.wav"
    broken_audio.write_text("not audio at all")
    manifest = _csv(
        f'good-local,{PORTRAIT},{SPEECH},15,"A person, speaking"',
        f"good-http,{http_server.url('/portrait.jpg')},{SPEECH},15,",
        f"bad-steps,{PORTRAIT},{SPEECH},99,",
        f"no-image,{tmp_path / 'missing.jpg'},{SPEECH},15,",
        f"bad-audio,{PORTRAIT},{broken_audio},15,",
        f"gone,{http_server.url('/nothing-here.jpg')},{SPEECH},15,",
    )
    out = tmp_path / "out"
    summary = batch(manifest=manifest, output=str(out))

    latest = load_ledger(str(out)).latest()
    assert set(latest) == {"good-local", "good-http", "bad-steps", "no-image", "bad-audio", "gone"}
    assert (summary["succeeded"], summary["failed"]) == (2, 4)
    for clip_id in ("good-local", "good-http"):
        record = latest[clip_id]
        assert record.status == "succeeded", record.error
        assert _playable_with_speech(record.output_uri)
        assert record.image_sha256 and record.generate_s > 0 and record.sample_steps == 15
    assert "row 4" in latest["bad-steps"].error and "sample_steps='99'" in latest["bad-steps"].error
    assert latest["no-image"].error.startswith("image=") and "not found" in latest["no-image"].error
    assert latest["bad-audio"].error.startswith("audio=")
    assert "404" in latest["gone"].error and http_server.hits["/nothing-here.jpg"] == 1  # not retried
    assert (out / "results.csv").read_text().count("\n") == 7  # header + 6 rows


def test_rerun_skips_what_is_done_and_retry_fixes_failed_rows(prefect_harness, env, tmp_path):
    portrait = tmp_path / "face.jpg"
    portrait.write_text("corrupt upload")
    manifest = _csv(f"ok,{PORTRAIT},{SPEECH},15,", f"fixme,{portrait},{SPEECH},15,")
    out = tmp_path / "out"
    first = batch(manifest=manifest, output=str(out))
    assert (first["succeeded"], first["failed"]) == (1, 1)
    video = out / "ok.mp4"
    made_at = video.stat().st_mtime_ns

    again = batch(manifest=manifest, output=str(out))
    assert (again["skipped"], again["failed"]) == (1, 1)
    assert video.stat().st_mtime_ns == made_at  # nothing finished is generated twice

    shutil.copy(PORTRAIT, portrait)  # the person fixes the input
    retried = retry_failed(output=str(out))
    assert [r["clip_id"] for r in retried["records"]] == ["fixme"]
    latest = load_ledger(str(out)).latest()
    assert latest["fixme"].status == "succeeded" and latest["fixme"].attempts == 3
    assert latest["ok"].status == "skipped" and video.stat().st_mtime_ns == made_at


def test_clip_flow_makes_one_clip_into_the_ledger(prefect_harness, env, tmp_path):
    result = clip(image=str(PORTRAIT), audio=str(SPEECH), sample_steps=15, seed=5, clip_id="ui-clip",
                  output=str(tmp_path / "out"))
    assert result["record"]["status"] == "succeeded" and result["record"]["seed"] == 5
    assert _playable_with_speech(tmp_path / "out" / "ui-clip.mp4")


def test_s3_inputs_and_outputs(prefect_harness, env, tmp_path, s3_endpoint, monkeypatch):
    monkeypatch.setenv("S2V_S3_ENDPOINT_URL", s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.upload_file(str(PORTRAIT), "media-in", "faces/anna.jpg")
    s3.upload_file(str(SPEECH), "media-in", "speech/thanks.wav")
    manifest = _csv("s3-clip,s3://media-in/faces/anna.jpg,s3://media-in/speech/thanks.wav,15,")
    summary = batch(manifest=manifest, output="s3://media-out/nightly")
    assert summary["succeeded"] == 1, summary["records"]
    head = s3.head_object(Bucket="media-out", Key="nightly/s3-clip.mp4")
    assert head["ContentType"] == "video/mp4"
    ledger_lines = s3.get_object(Bucket="media-out", Key="nightly/results.jsonl")["Body"].read().decode().splitlines()
    assert json.loads(ledger_lines[-1])["status"] == "succeeded"
    local = tmp_path / "got.mp4"
    s3.download_file("media-out", "nightly/s3-clip.mp4", str(local))
    assert _playable_with_speech(local)
