"""The held view of a long-lived writer: the same files as a full compaction, at the cost of what changed."""
from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import boto3
import pytest

import records.ledger as ledger_module
from records.ledger import CSV_NAME, JSONL_NAME, Ledger, LedgerRecord, LedgerStore, LedgerView
from s2v.settings import Settings
from s2v.storage.locations import output_location
from s2v.storage.outputs import read_output_text, write_output_text

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def record(clip_id: str, status: str = "succeeded", minutes: int = 0, **fields) -> LedgerRecord:
    values = {"row": 2, "image_sha256": "i" * 64, "audio_sha256": "a" * 64, "options_hash": "o" * 16, **fields}
    return LedgerRecord(clip_id=clip_id, status=status, finished_at=T0 + timedelta(minutes=minutes), **values)


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on loopback with dummy credentials (this module's own: conftest's needs the project
    root on sys.path, which `python -m pytest` gives and the bare `pytest` script does not)."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env.setenv(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(cache_dir=tmp_path / "cache")


def files(out: str, settings: Settings) -> tuple[str, str]:
    return (read_output_text(output_location(out, JSONL_NAME), settings),
            read_output_text(output_location(out, CSV_NAME), settings))


def compacted(out: str, settings: Settings) -> tuple[str, str]:
    """What a full compaction writes for the records at `out` now."""
    LedgerStore(out, settings).compact()
    return files(out, settings)


def test_incremental_view_writes_what_a_full_compaction_writes(tmp_path, settings):
    out = str(tmp_path / "out")
    store = LedgerStore(out, settings)
    store.append(record("a", url="/out/a.mp4", generate_s=12.5, warm_model=True))
    store.append(record("b", status="failed", row=3, minutes=2, error='row 3: prompt="x, y": bad\nsecond line'))
    store.compact()
    view = store.view()
    # New records of old and new clips, one older than what the view holds (a slow writer's clock).
    store.append(record("a", status="failed", minutes=5, error="again"))
    store.append(record("c", row=4, minutes=1, seed=7))
    store.append(record("d", status="interrupted", row=5, minutes=3))
    assert store.compact_clips(view, ["a", "c", "d", "c"]) == 3
    incremental = files(out, settings)
    assert incremental == compacted(out, settings)
    assert [r.clip_id for r in Ledger.from_jsonl(incremental[0]).records] == ["a", "c", "b", "d", "a"]


def test_view_of_a_ledger_with_records_without_ids_matches_compaction(tmp_path, settings):
    out = str(tmp_path / "out")
    older = Ledger([record("old-1", minutes=-10), record("old-2", minutes=-10), record("old-3", minutes=-5)])
    write_output_text(output_location(out, JSONL_NAME), older.to_jsonl(), settings)
    store = LedgerStore(out, settings)
    store.append(record("new", minutes=-10))
    view = store.view()
    store.append(record("newer"))
    store.compact_clips(view, ["newer"])
    assert files(out, settings) == compacted(out, settings)


def test_a_record_read_twice_counts_once(tmp_path, settings):
    out = str(tmp_path / "out")
    store = LedgerStore(out, settings)
    stored = [store.append(record("a")), store.append(record("a", minutes=1))]
    view = LedgerView(stored)
    assert view.add(stored) == 0 and len(view) == 2
    assert store.compact_clips(view, ["a", "a"]) == 0  # in the view already, and the same clip named twice
    store.compact()
    jsonl, _ = files(out, settings)
    assert [r.record_id for r in Ledger.from_jsonl(jsonl).records] == [r.record_id for r in stored]
    assert view.to_jsonl() == jsonl


def test_empty_view_writes_the_header_only(tmp_path, settings):
    out = str(tmp_path / "out")
    LedgerView().write(LedgerStore(out, settings))
    jsonl, table = files(out, settings)
    assert jsonl == "" and table == Ledger().to_csv()


class CountingFilesystem:
    """An fsspec filesystem that counts its calls and the objects it reads (from any thread)."""

    lock = threading.Lock()

    def __init__(self, fs, counts: Counter):
        self._fs, self._counts = fs, counts

    def __getattr__(self, name):
        attribute = getattr(self._fs, name)
        if not callable(attribute):
            return attribute

        def counted(*args, **kwargs):
            with self.lock:
                self._counts[name] += 1
                if name == "cat" and isinstance(args[0], list):
                    self._counts["objects read"] += len(args[0])
            return attribute(*args, **kwargs)
        return counted


@pytest.fixture
def counts(monkeypatch) -> Counter:
    """Storage calls the ledger makes (listings, reads, writes) and records it serialises."""
    found: Counter = Counter()
    real_filesystem, real_write = ledger_module.filesystem, ledger_module.write_output_text
    real_read = ledger_module.read_output_text
    real_dump = LedgerRecord.model_dump_json

    def write(location, text, settings, **kwargs):
        found["files written"] += 1
        return real_write(location, text, settings, **kwargs)

    def read(location, settings):
        found["files read"] += 1
        return real_read(location, settings)

    def dump(self, *args, **kwargs):
        found["records serialised"] += 1
        return real_dump(self, *args, **kwargs)

    monkeypatch.setattr(ledger_module, "filesystem",
                        lambda location, settings: (lambda fs, path: (CountingFilesystem(fs, found), path))(
                            *real_filesystem(location, settings)))
    monkeypatch.setattr(ledger_module, "write_output_text", write)
    monkeypatch.setattr(ledger_module, "read_output_text", read)
    monkeypatch.setattr(LedgerRecord, "model_dump_json", dump)
    return found


def populate(store: LedgerStore, clips: int) -> list[LedgerRecord]:
    return [store.append(record(f"clip-{n:05d}", minutes=n)) for n in range(clips)]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_refresh_work_grows_with_the_new_records_not_the_ledger(where, tmp_path, request, counts, monkeypatch):
    if where == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="view-refresh")
        out, settings = "s3://view-refresh/out", Settings(cache_dir=tmp_path / "cache", s3_endpoint_url=endpoint)
    else:
        out, settings = str(tmp_path / "out"), Settings(cache_dir=tmp_path / "cache")
    # 200 records fill 21 listing pages of 10 keys: up to 21 changed clips are listed one by one.
    monkeypatch.setattr(ledger_module, "LISTING_PAGE", 10)
    store = LedgerStore(out, settings)
    populate(store, 200)
    store.compact()
    view = store.view()

    def refresh(new: int, first: int) -> Counter:
        changed = [store.append(record(f"clip-{first + n:05d}", minutes=1000 + first + n)).clip_id for n in range(new)]
        counts.clear()
        store.compact_clips(view, changed)
        return Counter(counts)

    small, large = refresh(2, 1000), refresh(20, 2000)
    # One listing per changed clip and one read per new record; two files written; nothing old re-serialised.
    assert (small["ls"], small["objects read"], small["files written"]) == (2, 2, 2)
    assert (large["ls"], large["objects read"], large["files written"]) == (20, 20, 2)
    assert small["find"] == large["find"] == small["files read"] == large["files read"] == 0  # nor the view file
    assert small["records serialised"] == 2 and large["records serialised"] == 20
    # More changed clips than listing pages: one listing of every key, still only the new records read.
    many = refresh(40, 3000)
    assert (many["find"], many["ls"], many["objects read"], many["records serialised"]) == (1, 0, 40, 40)
    assert many["files read"] == 0
    counts.clear()
    full = compacted(out, settings)
    assert counts["files read"] == 1 and counts["objects read"] == 0 and counts["find"] == 1
    assert counts["records serialised"] >= 262  # every record, each time
    assert (view.to_jsonl(), view.to_csv()) == full
