"""The batch flows end to end under Prefect's test harness, on the tiny checkpoint (CPU)."""
import json
import shutil

import boto3
import pytest
from prefect.states import StateType

from flows.batch import batch, retry_failed
from flows.clip import clip
from model_runtime.video import probe
from records.ledger import LedgerStore, load_ledger
from s2v.errors import TransientError
from s2v.settings import load_settings
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.slow
PORTRAIT, SPEECH = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_short.wav"


@pytest.fixture
def env(s2v_env, monkeypatch):
    monkeypatch.setenv("S2V_ALLOWED_HOSTS", "127.0.0.1")
    monkeypatch.setenv("S2V_DOWNLOAD_TIMEOUT_S", "10")


def _csv(*lines: str) -> str:
    return "\n".join(["clip_id,image,audio,sample_steps,prompt", *lines]) + "\n"


def _playable_with_speech(path) -> bool:
    info = probe(path)
    return (info.video_codec, info.audio_codec) == ("h264", "aac")


def _summary(state) -> dict:
    """A run's summary, whatever its final state (a Failed run carries it in its BatchFailed)."""
    data = state.result(raise_on_failure=False)
    return getattr(data, "summary", data)


def _ledger(out):
    return load_ledger(str(out), load_settings())


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
    state = batch(manifest=manifest, output=str(out), return_state=True)
    summary = _summary(state)
    # Some rows failed: the run is Failed (red in the runs list, a failure on the dashboard) and named so.
    assert state.type == StateType.FAILED and state.name == "Partial (4 of 6 failed)"
    assert "4 of 6 row(s) failed" in state.message
    latest = _ledger(out).latest()
    assert set(latest) == {"good-local", "good-http", "bad-steps", "no-image", "bad-audio", "gone"}
    assert (summary["succeeded"], summary["failed"]) == (2, 4)
    for clip_id in ("good-local", "good-http"):
        record = latest[clip_id]
        assert record.status == "succeeded", record.error
        assert _playable_with_speech(record.output_uri)
        assert record.image_sha256 and record.generate_s > 0 and record.sample_steps == 15
        assert record.total_time >= record.download_s + record.encode_s + record.generate_s  # the row's own time
        # The record says what was made: a tiny-model video of this size and length, and its picture.
        assert record.tiny_checkpoint is True and record.width and record.height and record.duration > 0
        assert record.frames > 0 and record.poster_url and (out / f"{clip_id}.poster.jpg").is_file()
    assert "row 4" in latest["bad-steps"].error and "sample_steps='99'" in latest["bad-steps"].error
    assert latest["no-image"].error.startswith("row 5: image=") and "not found" in latest["no-image"].error
    # A missing local file is known when the manifest is read: its row fails before any video is made.
    assert latest["no-image"].finished_at < min(latest[c].finished_at for c in ("good-local", "good-http"))
    assert latest["bad-audio"].error.startswith("row 6: audio=")
    assert "404" in latest["gone"].error and http_server.hits["/nothing-here.jpg"] == 1  # not retried
    assert (out / "results.csv").read_text().count("\n") == 7  # header + 6 rows
    assert not list((load_settings().cache_dir / "work" / "rows").glob("*"))  # input copies gone with their rows


def test_all_rows_failed_fails_the_run(prefect_harness, env, tmp_path):
    state = batch(manifest=_csv(f"a,{tmp_path / 'no.jpg'},{SPEECH},15,", f"b,{tmp_path / 'no.jpg'},{SPEECH},15,"),
                  output=str(tmp_path / "out"), return_state=True)
    assert state.type == StateType.FAILED and "all 2 row(s) failed" in state.message


def test_rerun_skips_what_is_done_and_retry_fixes_failed_rows(prefect_harness, env, tmp_path):
    portrait = tmp_path / "face.jpg"
    portrait.write_text("corrupt upload")
    manifest = _csv(f"ok,{PORTRAIT},{SPEECH},15,", f"fixme,{portrait},{SPEECH},15,")
    out = tmp_path / "out"
    first = _summary(batch(manifest=manifest, output=str(out), return_state=True))
    assert (first["succeeded"], first["failed"]) == (1, 1)
    video = out / "ok.mp4"
    made_at = video.stat().st_mtime_ns

    again = _summary(batch(manifest=manifest, output=str(out), return_state=True))
    assert (again["skipped"], again["failed"]) == (1, 1)
    assert video.stat().st_mtime_ns == made_at  # nothing finished is generated twice

    shutil.copy(PORTRAIT, portrait)  # the person fixes the input
    retried = retry_failed(output=str(out))
    assert [r["clip_id"] for r in retried["records"]] == ["fixme"]
    latest = _ledger(out).latest()
    assert latest["fixme"].status == "succeeded" and latest["fixme"].attempts == 3
    assert latest["ok"].status == "skipped" and video.stat().st_mtime_ns == made_at


def test_retry_finds_the_failed_rows_of_every_manifest(prefect_harness, env, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("half an upload")
    out = tmp_path / "out"
    batch(manifest=_csv(f"mon-ok,{PORTRAIT},{SPEECH},15,", f"mon-bad,{broken},{SPEECH},15,"), output=str(out),
          return_state=True)
    batch(manifest=_csv(f"tue-bad,{broken},{SPEECH},15,", f"tue-ok,{PORTRAIT},{SPEECH},15,"), output=str(out),
          return_state=True)
    ledger = _ledger(out)
    assert len({r.manifest for r in ledger.records}) == 2 and len(list((out / "manifests").glob("*.csv"))) == 2
    shutil.copy(PORTRAIT, broken)
    retried = retry_failed(output=str(out))
    assert sorted(r["clip_id"] for r in retried["records"]) == ["mon-bad", "tue-bad"]
    assert all(r.status == "succeeded" for r in _ledger(out).latest().values())


def test_a_storage_error_in_the_resume_check_retries_or_fails_only_that_row(prefect_harness, env, tmp_path, monkeypatch):
    calls: dict[str, int] = {}
    real = LedgerStore.clip_records

    def flaky(self, clip_id):
        calls[clip_id] = calls.get(clip_id, 0) + 1
        if clip_id == "once" and calls[clip_id] == 1:
            raise TransientError("reading the ledger failed: SlowDown")
        if clip_id == "always":
            raise TransientError("reading the ledger failed: ServiceUnavailable")
        return real(self, clip_id)

    monkeypatch.setattr(LedgerStore, "clip_records", flaky)
    from tasks import history

    monkeypatch.setattr(history.read_row_history, "retry_delay_seconds", [0, 0, 0])  # keep the test short
    out = tmp_path / "out"
    summary = _summary(batch(manifest=_csv(f"once,{PORTRAIT},{SPEECH},15,", f"always,{PORTRAIT},{SPEECH},15,",
                                           f"fine,{PORTRAIT},{SPEECH},15,"), output=str(out), return_state=True))
    latest = {r["clip_id"]: r for r in summary["records"]}
    assert latest["once"]["status"] == "succeeded" and latest["fine"]["status"] == "succeeded"
    assert latest["always"]["status"] == "failed" and "ServiceUnavailable" in latest["always"]["error"]
    assert calls["always"] >= 4  # the one retry policy: 3 retries, then only this row fails


def test_a_failed_upload_keeps_the_video_and_retry_uploads_it_without_generating(prefect_harness, env, tmp_path,
                                                                               monkeypatch):
    import tasks.upload
    from model_runtime import generate as generate_module

    made = []
    real_generate = generate_module.generate_video

    def counted(*args, **kwargs):
        made.append(1)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(generate_module, "generate_video", counted)
    real_put = tasks.upload.put_output
    outage = {"on": True}

    def put(path, output, key, settings, content_type="video/mp4"):
        if outage["on"]:
            raise TransientError("writing failed: ServiceUnavailable")
        return real_put(path, output, key, settings, content_type=content_type)

    monkeypatch.setattr(tasks.upload, "put_output", put)
    monkeypatch.setattr(tasks.upload.upload_video, "retry_delay_seconds", [0, 0, 0])
    out = tmp_path / "out"
    record = _summary(batch(manifest=_csv(f"kept,{PORTRAIT},{SPEECH},15,"), output=str(out), return_state=True))["records"][0]
    assert record["status"] == "failed" and record["kept_video"] and "`s2v retry` uploads it" in record["error"]
    assert len(made) == 1
    outage["on"] = False
    retried = retry_failed(output=str(out))
    assert retried["records"][0]["status"] == "succeeded" and len(made) == 1  # uploaded, not generated again
    assert _playable_with_speech(out / "kept.mp4")
    assert retried["records"][0]["poster_url"] and (out / "kept.poster.jpg").is_file()  # a poster made from the kept copy


def test_clip_flow_makes_one_clip_into_the_ledger(prefect_harness, env, tmp_path):
    result = clip(image=str(PORTRAIT), audio=str(SPEECH), sample_steps=15, seed=5, clip_id="ui-clip",
                  output=str(tmp_path / "out"))
    record = result["records"][0]
    assert record["status"] == "succeeded" and record["seed"] == 5
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
    assert s3.head_object(Bucket="media-out", Key="nightly/s3-clip.poster.jpg")["ContentType"] == "image/jpeg"
    ledger_lines = s3.get_object(Bucket="media-out", Key="nightly/results.jsonl")["Body"].read().decode().splitlines()
    assert json.loads(ledger_lines[-1])["status"] == "succeeded"
    assert summary["records"][0]["url"].startswith(s3_endpoint)  # a presigned link a browser can open
    local = tmp_path / "got.mp4"
    s3.download_file("media-out", "nightly/s3-clip.mp4", str(local))
    assert _playable_with_speech(local)


def test_a_run_whose_row_was_taken_over_mid_generation_uploads_nothing(prefect_harness, env, tmp_path, monkeypatch):
    """A host cut off from the API past the crash window: its run was marked Crashed and the row handed to
    another run, which claimed it; this run, still generating, must not make the row a second time."""
    from prefect import task

    from flows import pipeline
    from records.claims import RowClaims

    real = pipeline.generate_video

    @task(name="generate_video")
    def generate_while_cut_off(clip_id, request, features, path, settings):
        second = RowClaims(settings, run_id="second-run", run_is_over=lambda flow_run_id: True)
        assert second.claim(clip_id) is None  # the first run is "over" for Prefect: its claim is taken over
        return real.fn(clip_id, request, features, path, settings)

    monkeypatch.setattr(pipeline, "generate_video", generate_while_cut_off)
    out = tmp_path / "out"
    state = batch(manifest=_csv(f"cut-off,{PORTRAIT},{SPEECH},15,"), output=str(out), return_state=True)
    assert state.is_cancelled() and "holds the row now" in state.message  # the row is the second run's
    assert _ledger(out).records == []
    assert not list(out.glob("*.mp4"))
