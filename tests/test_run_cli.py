"""`s2v run`, `s2v retry` and `s2v check` as a person runs them: separate processes on the machine's shared
local Prefect API (started by the first command, stopped when the session ends)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import boto3
import pytest

from tests.conftest import EXAMPLES, ROOT

pytestmark = pytest.mark.slow
PORTRAIT, SPEECH = EXAMPLES / "portrait_anna.jpg", EXAMPLES / "speech_short.wav"


@pytest.fixture(scope="module")
def local_api_dir(tmp_path_factory):
    """One local Prefect API for these tests, as on a person's machine; stopped at the end."""
    from cli.local_api import stop_local_api
    from s2v.settings import Settings

    folder = tmp_path_factory.mktemp("local-api")
    yield folder
    stop_local_api(Settings(local_api_dir=folder))


@pytest.fixture
def cli_env(tiny_checkpoint, tmp_path, local_api_dir):
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API_URL")}
    return {
        **env,
        "S2V_CHECKPOINT": str(tiny_checkpoint),
        "S2V_CACHE_DIR": str(tmp_path / "cache"),
        "S2V_DEVICE": "cpu",
        "S2V_LOCAL_API_DIR": str(local_api_dir),
    }


def _s2v(*args) -> list[str]:
    return [sys.executable, "-c", "from cli.main import app; app()", *args]


def _records(out):
    """Every record stored at a local output, oldest first (the write-once objects, not the view)."""
    folder = out / "ledger"
    found = [json.loads(p.read_text()) for p in folder.glob("*/*.json")] if folder.exists() else []
    return sorted(found, key=lambda r: (r["finished_at"], r["record_id"]))


def _manifest(tmp_path, name: str, rows: list[str]):
    manifest = tmp_path / name
    manifest.write_text("clip_id,image,audio,sample_steps\n" + "\n".join(rows) + "\n")
    return manifest


def _claimed_unfinished(out) -> set[str]:
    """Clips claimed at a local output whose row has no record yet: rows in progress."""
    claimed = {p.parent.name for p in (out / "claims").glob("*/*.json")} if (out / "claims").exists() else set()
    return claimed - {r["clip_id"] for r in _records(out)}


def test_killed_batch_loses_nothing_and_regenerates_nothing(cli_env, tmp_path):
    cli_env = {**cli_env, "S2V_CLAIM_LEASE_S": "3"}  # a killed run's row is seen as interrupted 3 s after
    manifest = _manifest(tmp_path, "manifest.csv", [f"clip-{i},{PORTRAIT},{SPEECH},15" for i in range(3)])
    out = tmp_path / "out"

    first = subprocess.Popen(_s2v("run", str(manifest), "--output", str(out)), env=cli_env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 400
    while not (any(r["status"] == "succeeded" for r in _records(out)) and _claimed_unfinished(out)):
        assert first.poll() is None, "the batch ended before it could be killed"
        assert time.monotonic() < deadline, "no row finished in time"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # mid-row: that row has a claim and no record
    first.wait()
    done_before = {r["clip_id"] for r in _records(out) if r["status"] == "succeeded"}
    assert 1 <= len(done_before) < 3
    made_at = {clip_id: (out / f"{clip_id}.mp4").stat().st_mtime_ns for clip_id in done_before}

    killed_mid_row = _claimed_unfinished(out)
    time.sleep(3.5)  # its lease runs out
    retry = subprocess.run(_s2v("retry", str(out)), env=cli_env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert f"{len(killed_mid_row)} failed row(s) to retry" in retry.stderr
    latest = {r["clip_id"]: r for r in _records(out)}
    assert all(latest[clip_id]["status"] == "succeeded" for clip_id in killed_mid_row)
    assert any(r["status"] == "interrupted" and "stopped while making it" in r["error"] for r in _records(out))

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


def test_ctrl_c_stops_the_generation_and_a_rerun_finishes_the_batch(cli_env, tmp_path):
    news = EXAMPLES / "speech_news.flac"  # a long speech: several segments, time to press Ctrl-C
    manifest = _manifest(tmp_path, "manifest.csv", [f"first,{PORTRAIT},{SPEECH},15", f"long,{PORTRAIT},{news},50",
                                                   f"later,{PORTRAIT},{SPEECH},15"])
    out = tmp_path / "out"
    run = subprocess.Popen(_s2v("run", str(manifest), "--output", str(out)), env=cli_env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while not any(r["clip_id"] == "first" for r in _records(out)):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
        time.sleep(0.2)
    time.sleep(2)  # the long row is generating now
    pressed = time.monotonic()
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130 and time.monotonic() - pressed < 10, stderr[-3000:]
    assert "Traceback" not in stderr
    latest = {r["clip_id"]: r for r in _records(out)}
    assert latest["first"]["status"] == "succeeded" and latest["long"]["status"] == "interrupted"
    assert "later" not in latest  # never started: the rerun makes it

    rerun = subprocess.run(_s2v("run", str(manifest), "--output", str(out)), env=cli_env, cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    made = [r["clip_id"] for r in _records(out) if r["status"] == "succeeded"]
    assert sorted(made) == ["first", "later", "long"]  # nothing generated twice


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_runs_at_once_into_one_output_both_finish(cli_env, tmp_path, where, request):
    env = dict(cli_env)
    if where == "s3":
        env["S2V_S3_ENDPOINT_URL"] = request.getfixturevalue("s3_endpoint")
        env.update({k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
        out = f"s3://media-out/two-runs-{tmp_path.name}"
    else:
        out = str(tmp_path / "out")
    manifest = _manifest(tmp_path, "m.csv", [f"clip-{i},{PORTRAIT},{SPEECH},15" for i in range(4)])
    runs = [subprocess.Popen(_s2v("run", str(manifest), "--output", out), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    if where == "local":
        deadline = time.monotonic() + 400
        while not _records(tmp_path / "out"):  # both runs are on the local API by now
            assert time.monotonic() < deadline and all(run.poll() is None for run in runs), "no row ended in time"
            time.sleep(0.2)
        stop = subprocess.run(_s2v("local-api", "stop"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert stop.returncode == 1 and "refused" in stop.stderr, stop.stdout + stop.stderr
    for run in runs:
        stdout, stderr = run.communicate(timeout=900)
        assert run.returncode == 0, stderr[-3000:]
        assert "Traceback" not in stdout + stderr
    if where == "s3":
        s3 = boto3.client("s3", endpoint_url=env["S2V_S3_ENDPOINT_URL"])
        listed = s3.list_objects_v2(Bucket="media-out", Prefix=f"{out.split('/', 3)[3]}/ledger/")["Contents"]
        records = [json.loads(s3.get_object(Bucket="media-out", Key=o["Key"])["Body"].read()) for o in listed]
    else:
        records = _records(tmp_path / "out")
    # Each row made once, by one of the two runs; the other skipped it.
    assert sorted(r["clip_id"] for r in records if r["status"] == "succeeded") == [f"clip-{i}" for i in range(4)]
    assert {r["status"] for r in records} <= {"succeeded", "skipped"}


def test_failed_row_exits_nonzero_then_retry_fixes_it(cli_env, tmp_path):
    broken = tmp_path / "face.jpg"
    broken.write_bytes(b"\xff\xd8 truncated upload")
    manifest = _manifest(tmp_path, "manifest.csv", [f"good,{PORTRAIT},{SPEECH},15", f"broken,{broken},{SPEECH},15"])
    out = tmp_path / "out"

    run = subprocess.run(_s2v("run", str(manifest), "--output", str(out)), env=cli_env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 1
    assert "not a decodable image" in run.stderr and "Traceback" not in run.stderr + run.stdout
    assert "1 succeeded, 1 failed" in run.stderr
    assert "| WARNING" not in run.stderr and "| ERROR" not in run.stderr  # Prefect's lines only with -v
    assert run.stderr.index("\n2\tgood\tsucceeded\t") < run.stderr.index("\n3\tbroken\tfailed\t")  # plain, manifest order
    assert {r["clip_id"]: r for r in _records(out)}["good"]["warm_model"] is False  # loaded for this row

    (out / "manifests").rename(tmp_path / "kept")  # the rows' kept manifest is gone: retry cannot take them up
    lost = subprocess.run(_s2v("retry", str(out)), env=cli_env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert lost.returncode == 1 and "cannot be retried" in lost.stderr and "Traceback" not in lost.stderr, lost.stderr[-3000:]
    assert "0 succeeded, 1 failed" in lost.stderr
    (tmp_path / "kept").rename(out / "manifests")

    shutil.copy(PORTRAIT, broken)
    retry = subprocess.run(_s2v("retry", str(out)), env=cli_env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert "1 failed row(s) to retry" in retry.stderr
    latest = {r["clip_id"]: r for r in _records(out)}
    assert latest["broken"]["status"] == "succeeded" and latest["good"]["status"] == "succeeded"
    assert [r["clip_id"] for r in _records(out)].count("good") == 1  # retry left the good row alone


def test_broken_and_empty_manifests_fail_before_any_work(cli_env, tmp_path):
    for text, words in (("picture,sound\na.jpg,b.wav\n", "missing column(s) image, audio"),
                        ("image,audio\n", "no rows, only a header")):
        manifest = tmp_path / "manifest.csv"
        manifest.write_text(text)
        run = subprocess.run(_s2v("run", str(manifest), "--output", str(tmp_path / "out")), env=cli_env, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 1 and words in run.stderr and "Traceback" not in run.stderr
        assert not (tmp_path / "out").exists()


def test_check_reports_every_row_without_the_model(cli_env, tmp_path):
    broken = tmp_path / "face.jpg"
    broken.write_bytes(b"\xff\xd8 truncated upload")
    manifest = _manifest(tmp_path, "manifest.csv", [f"good,{PORTRAIT},{SPEECH},15", f"broken,{broken},{SPEECH},15",
                                                   f"gone,{tmp_path / 'nope.jpg'},{SPEECH},15", f"steps,{PORTRAIT},{SPEECH},99"])
    code = "import sys\nfrom cli.main import app\ntry:\n    app()\nfinally:\n    assert 'torch' not in sys.modules\n"
    check = subprocess.run([sys.executable, "-c", code, "check", str(manifest)], env={**cli_env, "COLUMNS": "200"},
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert check.returncode == 1, check.stderr[-2000:]
    assert "1 ok, 3 bad" in check.stdout and "Traceback" not in check.stdout + check.stderr
    for words in ("not a decodable image", "file not found", "sample_steps"):
        assert words in check.stdout


def test_lost_local_api_ends_the_batch_in_seconds_and_a_rerun_resumes(cli_env, tmp_path, local_api_dir):
    manifest = _manifest(tmp_path, "manifest.csv", [f"clip-{i},{PORTRAIT},{SPEECH},15" for i in range(2)])
    out = tmp_path / "out"
    run = subprocess.Popen(_s2v("run", str(manifest), "--output", str(out)), env=cli_env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while not (_records(out) and _claimed_unfinished(out)):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
        time.sleep(0.2)
    api = json.loads((local_api_dir / "api.json").read_text())
    os.killpg(api["pid"], signal.SIGKILL)  # the API dies (an OOM kill, a stop with --force)
    lost = time.monotonic()
    _, stderr = run.communicate(timeout=60)
    assert time.monotonic() - lost < 30 and run.returncode != 0, stderr[-3000:]
    assert "Traceback" not in stderr and "went away" in stderr
    assert "clip-0" in {r["clip_id"] for r in _records(out) if r["status"] == "succeeded"}  # finished rows stay

    rerun = subprocess.run(_s2v("run", str(manifest), "--output", str(out)), env=cli_env, cwd=ROOT,
                           capture_output=True, text=True, timeout=600)  # starts a new local API
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(r["clip_id"] for r in _records(out) if r["status"] == "succeeded") == ["clip-0", "clip-1"]
