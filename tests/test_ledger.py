"""The results ledger: write-once records from many writers, merged reads, compacted views, S3 and local."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import boto3
import pandas as pd
import pytest

from records.ledger import CSV_NAME, JSONL_NAME, Ledger, LedgerRecord, LedgerStore, load_ledger
from s2v.settings import Settings
from tests.conftest import ROOT

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def record(clip_id: str, status: str = "succeeded", minutes: int = 0, **fields) -> LedgerRecord:
    values = {"row": 2, "image_sha256": "i" * 64, "audio_sha256": "a" * 64, "options_hash": "o" * 16, **fields}
    return LedgerRecord(clip_id=clip_id, status=status, finished_at=T0 + timedelta(minutes=minutes), **values)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(cache_dir=tmp_path / "cache")


@pytest.fixture
def s3_settings(tmp_path, s3_endpoint) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", s3_endpoint_url=s3_endpoint)


def test_appends_are_readable_at_once_and_compact_writes_both_views(tmp_path, settings):
    out = str(tmp_path / "out")
    store = LedgerStore(out, settings)
    store.append(record("a", url="/out/a.mp4", generate_s=12.5, warm_model=True))
    store.append(record("b", status="failed", row=3, minutes=1, error="row 3: audio='x': not found"))
    assert [r.clip_id for r in load_ledger(out, settings).records] == ["a", "b"]  # before any view exists
    store.compact()
    table = pd.read_csv(tmp_path / "out" / CSV_NAME, dtype=str, keep_default_na=False)
    assert list(table["clip_id"]) == ["a", "b"] and list(table["status"]) == ["succeeded", "failed"]
    assert table.loc[1, "error"] == "row 3: audio='x': not found" and table.loc[0, "generate_s"] == "12.5"
    assert list(table.columns) == list(LedgerRecord.model_fields)
    view = Ledger.from_jsonl((tmp_path / "out" / JSONL_NAME).read_text())
    assert [r.record_id for r in view.records] == [r.record_id for r in load_ledger(out, settings).records]
    assert view.records[0].warm_model is True


def test_latest_record_wins_and_retry_takes_failed_and_interrupted(settings, tmp_path):
    store = LedgerStore(str(tmp_path / "out"), settings)
    store.append(record("a", status="failed", row=4))
    store.append(record("a", minutes=5, row=4))
    store.append(record("b", status="failed", row=3, minutes=1))
    store.append(record("c", status="interrupted", row=2, minutes=2))
    store.append(record("d", status="skipped", row=5, minutes=3))
    ledger = store.read()
    assert [r.clip_id for r in ledger.retryable()] == ["c", "b"]
    assert ledger.counts() == {"succeeded": 1, "failed": 1, "skipped": 1, "interrupted": 1}
    assert ledger.attempts("a") == 2 and ledger.attempts("d") == 0


def test_a_clip_reads_its_own_history_only(settings, tmp_path):
    store = LedgerStore(str(tmp_path / "out"), settings)
    for n in range(5):
        store.append(record(f"other-{n}", minutes=n))
    store.append(record("mine", status="failed"))
    store.append(record("mine", minutes=9))
    assert [r.status for r in store.clip_records("mine")] == ["failed", "succeeded"]


def test_find_done_needs_same_content_options_and_an_existing_video(tmp_path, settings):
    video = tmp_path / "out" / "a.mp4"
    video.parent.mkdir()
    video.write_bytes(b"mp4")
    store = LedgerStore(str(tmp_path / "out"), settings)
    store.append(record("a", output_uri=str(video)))
    assert store.find_done("a", "i" * 64, "a" * 64, "o" * 16) is not None
    assert store.find_done("a", "x" * 64, "a" * 64, "o" * 16) is None  # other image content
    assert store.find_done("a", "i" * 64, "a" * 64, "p" * 16) is None  # other options
    video.unlink()
    assert store.find_done("a", "i" * 64, "a" * 64, "o" * 16) is None  # video gone: make it again


def test_records_of_an_older_ledger_stay_through_compaction(tmp_path, settings):
    out = tmp_path / "out"
    out.mkdir()
    (out / JSONL_NAME).write_text(record("old").model_dump_json(exclude={"record_id"}) + "\nnot json\n")
    store = LedgerStore(str(out), settings)
    store.append(record("new", minutes=1))
    store.compact()
    store.compact()
    assert [r.clip_id for r in load_ledger(str(out), settings).records] == ["old", "new"]


_WRITER = """
import sys
from records.ledger import LedgerRecord, LedgerStore
from s2v.errors import TransientError
from s2v.settings import Settings
out, cache, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = LedgerStore(out, Settings(cache_dir=cache))
for n in range(count):
    store.append(LedgerRecord(clip_id=f"{name}-{n:03d}", status="succeeded", row=n + 2))
    print(n, flush=True)
    if n % 10 == 9:
        try:
            store.compact()  # views rewritten while the others append: they must not lose anything
        except TransientError:
            # moto's server sometimes answers 500 to PUTs of one key from four processes at once (real S3
            # does not); a view refresh that failed loses no record, which is what this test checks.
            print("compaction failed transiently", file=sys.stderr, flush=True)
"""


def _writers(out: str, tmp_path, env: dict, names: list[str], count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", _WRITER, out, str(tmp_path / f"cache-{name}"), name, str(count)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in names]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_four_writer_processes_lose_no_record(where, tmp_path, request):
    endpoint = request.getfixturevalue("s3_endpoint") if where == "s3" else None
    env = dict(os.environ)  # after the fixture: it sets the S3 credentials
    if where == "s3":
        env["S2V_S3_ENDPOINT_URL"] = endpoint
        out, settings = "s3://ledgers/four-writers", Settings(cache_dir=tmp_path / "reader", s3_endpoint_url=endpoint)
    else:
        out, settings = str(tmp_path / "out"), Settings(cache_dir=tmp_path / "reader")
    names = ["w0", "w1", "w2", "w3"]
    for process in _writers(out, tmp_path, env, names, 50):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]
    ledger = LedgerStore(out, settings).compact()
    expected = {f"{name}-{n:03d}" for name in names for n in range(50)}
    assert {r.clip_id for r in ledger.records} == expected and len(ledger.records) == 200
    store = LedgerStore(out, settings)
    jsonl = Ledger.from_jsonl(store_text(out, JSONL_NAME, settings))
    csv_rows = pd.read_csv(io.StringIO(store_text(out, CSV_NAME, settings)), dtype=str)
    assert {r.clip_id for r in jsonl.records} == set(csv_rows["clip_id"]) == expected
    assert store.read().counts()["succeeded"] == 200


def store_text(out: str, name: str, settings: Settings) -> str:
    from s2v.storage.locations import output_location
    from s2v.storage.outputs import read_output_text

    return read_output_text(output_location(out, name), settings)


def test_a_writer_killed_mid_append_loses_at_most_its_own_unfinished_record(tmp_path):
    out = str(tmp_path / "out")
    survivors = _writers(out, tmp_path, dict(os.environ), ["calm-a", "calm-b"], 40)
    victim = _writers(out, tmp_path, dict(os.environ), ["victim"], 100_000)[0]
    confirmed = []
    while len(confirmed) < 30:
        confirmed.append(int(victim.stdout.readline()))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for process in survivors:
        assert process.wait(timeout=600) == 0
    found = {r.clip_id for r in load_ledger(out, Settings(cache_dir=tmp_path / "reader")).records}
    assert {f"calm-{x}-{n:03d}" for x in "ab" for n in range(40)} <= found
    victims = sorted(int(c.rsplit("-", 1)[1]) for c in found if c.startswith("victim-"))
    # Every append it confirmed is there; at most the one it was in the middle of is not.
    assert victims[: len(confirmed)] == confirmed and victims == list(range(len(victims)))


def test_appends_from_many_threads(tmp_path, settings):
    store = LedgerStore(str(tmp_path / "out"), settings)
    threads = [threading.Thread(target=lambda n=n: store.append(record(f"clip-{n}", row=n))) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.record_id for r in store.read().records}) == 40


def test_s3_record_that_cannot_be_uploaded_stays_on_this_machine_and_goes_up_later(tmp_path, s3_endpoint, caplog):
    settings = Settings(cache_dir=tmp_path / "cache", s3_endpoint_url=s3_endpoint)
    out = "s3://outage-bucket/batch"
    store = LedgerStore(out, settings)
    store.append(record("during-outage", status="failed", error="row 2: ..."))  # the bucket does not exist yet
    assert "not uploaded" in caplog.text
    # A retry on this machine still finds the failed row, from the spool.
    assert [r.clip_id for r in load_ledger(out, settings).retryable()] == ["during-outage"]
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="outage-bucket")
    assert LedgerStore(out, settings).flush() == 0
    other_machine = Settings(cache_dir=tmp_path / "elsewhere", s3_endpoint_url=s3_endpoint)
    assert [r.clip_id for r in load_ledger(out, other_machine).records] == ["during-outage"]


def test_append_costs_the_same_whatever_the_ledger_holds(tmp_path, settings):
    """One small object per append: the bytes written do not grow with the ledger (bench/ledger_append.py
    measures seconds and bytes at 10, 1,000 and 10,000 records)."""
    out = tmp_path / "out"
    store = LedgerStore(str(out), settings)
    sizes = []
    for n in range(300):
        before = _bytes_under(out)
        store.append(record(f"clip-{n:04d}", minutes=n))
        sizes.append(_bytes_under(out) - before)
        if n == 100:
            store.compact()
    assert max(sizes) - min(sizes) < 64  # a longer clip id or number, not a growing file


def _bytes_under(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.json")) if folder.exists() else 0
