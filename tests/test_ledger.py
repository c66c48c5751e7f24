"""The results ledger: durable per-row appends, resume, retry-failed, shard merging, S3 location."""
from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import boto3
import pandas as pd
import pytest

from flows.ledger import CSV_NAME, JSONL_NAME, Ledger, LedgerRecord, LedgerWriter, load_ledger, merge_ledgers, write_ledger
from s2v.settings import Settings
from tests.conftest import ROOT

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def record(clip_id: str, status: str = "succeeded", minutes: int = 0, **fields) -> LedgerRecord:
    values = {"row": 2, "image_sha256": "i" * 64, "audio_sha256": "a" * 64, "options_hash": "o" * 16, **fields}
    return LedgerRecord(clip_id=clip_id, status=status, finished_at=T0 + timedelta(minutes=minutes), **values)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(cache_dir=tmp_path / "cache")


def test_appends_write_jsonl_and_csv_copy(tmp_path, settings):
    writer = LedgerWriter(str(tmp_path / "out"), settings)
    writer.append(record("a", url="/out/a.mp4", generate_s=12.5, warm_model=True))
    writer.append(record("b", status="failed", row=3, error="row 3: audio='x': not found"))
    table = pd.read_csv(tmp_path / "out" / CSV_NAME, dtype=str, keep_default_na=False)
    assert list(table["clip_id"]) == ["a", "b"] and list(table["status"]) == ["succeeded", "failed"]
    assert table.loc[1, "error"] == "row 3: audio='x': not found" and table.loc[0, "generate_s"] == "12.5"
    assert list(table.columns) == list(LedgerRecord.model_fields)
    loaded = load_ledger(str(tmp_path / "out"), settings)
    assert [r.clip_id for r in loaded.records] == ["a", "b"] and loaded.records[0].warm_model is True


def test_records_survive_a_crash_mid_batch(tmp_path):
    """The writer's process is killed without closing anything; every appended row is on disk."""
    out = tmp_path / "out"
    script = f"""
import os, signal
from flows.ledger import LedgerRecord, LedgerWriter
from s2v.settings import Settings
writer = LedgerWriter({str(out)!r}, Settings(cache_dir={str(tmp_path / 'cache')!r}))
for n in range(3):
    writer.append(LedgerRecord(clip_id=f"clip-{{n}}", status="succeeded", row=n + 2))
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert [r.clip_id for r in load_ledger(str(out)).records] == ["clip-0", "clip-1", "clip-2"]
    assert len(pd.read_csv(out / CSV_NAME)) == 3


def test_torn_last_line_is_skipped_and_appends_continue(tmp_path, settings):
    out = tmp_path / "out"
    LedgerWriter(str(out), settings).append(record("a"))
    with open(out / JSONL_NAME, "a") as handle:
        handle.write('{"clip_id": "b", "sta')  # the power went out here
    writer = LedgerWriter(str(out), settings)
    writer.append(record("c"))
    assert [r.clip_id for r in load_ledger(str(out), settings).records] == ["a", "c"]
    assert list(pd.read_csv(out / CSV_NAME)["clip_id"]) == ["a", "c"]


def test_appends_from_many_threads(tmp_path, settings):
    writer = LedgerWriter(str(tmp_path / "out"), settings)

    def work(thread: int):
        for n in range(25):
            writer.append(record(f"t{thread}-{n}", error="a, \"quoted\"\nmultiline error"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(load_ledger(str(tmp_path / "out"), settings).records) == 200
    table = pd.read_csv(tmp_path / "out" / CSV_NAME, dtype=str, keep_default_na=False)
    assert len(table) == 200 and set(table["error"]) == {"a, \"quoted\"\nmultiline error"}


def test_find_done_needs_same_content_options_and_an_existing_video(tmp_path, settings):
    video = tmp_path / "out" / "a.mp4"
    video.parent.mkdir()
    video.write_bytes(b"video")
    ledger = Ledger([
        record("a", minutes=0, output_uri=str(video)),
        record("a", status="failed", minutes=5, error="GPU out of memory"),
    ])
    hashes = ("i" * 64, "a" * 64, "o" * 16)
    assert ledger.find_done("a", *hashes, settings=settings).output_uri == str(video)
    assert ledger.find_done("a", "i" * 64, "a" * 64, "other-options", settings=settings) is None
    assert ledger.find_done("a", "changed" * 9, "a" * 64, "o" * 16, settings=settings) is None
    assert ledger.find_done("b", *hashes, settings=settings) is None
    video.unlink()
    assert ledger.find_done("a", *hashes, settings=settings) is None


def test_failed_rows_are_the_latest_failures_in_row_order(settings):
    ledger = Ledger([
        record("c", status="failed", row=4, minutes=0),
        record("a", status="failed", row=2, minutes=1),
        record("b", status="failed", row=3, minutes=2),
        record("b", status="succeeded", row=3, minutes=3),  # a retry fixed it
        record("d", status="skipped", row=5, minutes=4),
    ])
    assert [r.clip_id for r in ledger.failed_rows()] == ["a", "c"]
    assert ledger.counts() == {"succeeded": 1, "failed": 2, "skipped": 1}


def test_merge_shard_ledgers_latest_wins(tmp_path, settings):
    shard_a = Ledger([record("x", status="failed", minutes=1), record("y", minutes=2)])
    shard_b = Ledger([record("z", minutes=0), record("x", minutes=3, url="/x.mp4")])
    merged = merge_ledgers([shard_a, shard_b])
    assert [r.clip_id for r in merged.records] == ["z", "x", "y", "x"]
    assert merged.latest()["x"].status == "succeeded" and merged.failed_rows() == []
    write_ledger(merged, str(tmp_path / "merged"), settings)
    assert len(load_ledger(str(tmp_path / "merged"), settings).records) == 4
    assert len(pd.read_csv(tmp_path / "merged" / CSV_NAME)) == 4


def test_s3_ledger_uploads_after_each_append_and_resumes(tmp_path, s3_endpoint):
    settings = Settings(cache_dir=tmp_path / "cache", s3_endpoint_url=s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    location = "s3://ledgers/nightly/2026-01-01"
    writer = LedgerWriter(location, settings, work_dir=tmp_path / "work-1")
    writer.append(record("a", minutes=0))
    body = s3.get_object(Bucket="ledgers", Key="nightly/2026-01-01/results.jsonl")["Body"].read().decode()
    assert len(body.splitlines()) == 1
    writer.append(record("b", status="failed", minutes=1))
    head = s3.head_object(Bucket="ledgers", Key="nightly/2026-01-01/results.csv")
    assert head["ContentType"] == "text/csv"

    # A second machine (fresh working copy) picks the ledger up from S3 and carries on.
    again = LedgerWriter(location, settings, work_dir=tmp_path / "work-2")
    assert [r.clip_id for r in again.ledger.failed_rows()] == ["b"]
    again.append(record("b", minutes=2))
    assert [r.clip_id for r in load_ledger(location, settings).records] == ["a", "b", "b"]
    assert load_ledger(location, settings).failed_rows() == []


def test_s3_ledger_keeps_records_a_crash_kept_from_uploading(tmp_path, s3_endpoint):
    settings = Settings(cache_dir=tmp_path / "cache", s3_endpoint_url=s3_endpoint)
    location = "s3://ledgers/crashed"
    LedgerWriter(location, settings, work_dir=tmp_path / "work").append(record("a", minutes=0))
    with open(tmp_path / "work" / JSONL_NAME, "a") as handle:  # appended locally, never uploaded
        handle.write(record("b", minutes=1).model_dump_json() + "\n")
    reopened = LedgerWriter(location, settings, work_dir=tmp_path / "work")
    assert [r.clip_id for r in reopened.ledger.records] == ["a", "b"]
    reopened.sync()
    assert [r.clip_id for r in load_ledger(location, settings).records] == ["a", "b"]


def test_s3_upload_failure_keeps_the_row_and_sync_reports_it(tmp_path, s3_endpoint, caplog):
    settings = Settings(cache_dir=tmp_path / "cache", s3_endpoint_url=s3_endpoint)
    writer = LedgerWriter("s3://no-such-bucket/batch", settings, work_dir=tmp_path / "work")
    writer.append(record("a"))
    assert "ledger upload to s3://no-such-bucket/batch failed" in caplog.text
    assert [r.clip_id for r in Ledger.from_jsonl((tmp_path / "work" / JSONL_NAME).read_text()).records] == ["a"]
    with pytest.raises(Exception, match="NoSuchBucket"):
        writer.sync()
