"""The batch's results ledger: one record per manifest row, appended as each row ends.

`results.jsonl` is the ledger; `results.csv` is a copy for people and spreadsheets. Both live at the
batch's output location: a local folder, or an s3:// prefix. S3 has no append, so for S3 the
writer keeps a working copy in a local folder and uploads both files after every append. Local
appends are flushed and fsynced, so a crash mid-batch loses no finished row; a torn last line is
skipped on load. Within one ledger the latest record of a clip wins.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import socket
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from s2v.settings import Settings, get_settings
from s2v.storage.locations import is_s3, output_location
from s2v.storage.outputs import exists, put_output, read_output_text

log = logging.getLogger(__name__)

JSONL_NAME = "results.jsonl"
CSV_NAME = "results.csv"

Status = Literal["succeeded", "failed", "skipped"]


class LedgerRecord(BaseModel):
    """How one manifest row ended. `url` is what to hand out; `output_uri` where the video is stored."""

    model_config = ConfigDict(extra="ignore")  # records written by newer code still load

    row: int | None = None
    clip_id: str
    status: Status
    error: str | None = None
    url: str | None = None
    output_uri: str | None = None
    download_s: float | None = None
    encode_s: float | None = None
    generate_s: float | None = None
    upload_s: float | None = None
    generation_time: float | None = None
    pipeline_time: float | None = None  # inside the model's pipeline calls: GPU-busy time
    total_time: float | None = None
    video_size_mb: float | None = None
    warm_model: bool | None = None
    resolution: str | None = None
    sample_steps: int | None = None
    seed: int | None = None
    attempts: int = 1
    image_sha256: str | None = None
    audio_sha256: str | None = None
    options_hash: str | None = None
    worker: str = Field(default_factory=socket.gethostname)
    finished_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


COLUMNS = tuple(LedgerRecord.model_fields)


class Ledger:
    """The records of one or more runs over a manifest, oldest first."""

    def __init__(self, records: Iterable[LedgerRecord] = ()):
        self.records: list[LedgerRecord] = list(records)

    @classmethod
    def from_jsonl(cls, text: str) -> "Ledger":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(LedgerRecord.model_validate_json(line))
            except ValidationError:
                # A crash can tear the last line; a hand-edited ledger can hold anything.
                log.warning("ledger line %d is not a record and was skipped", number)
        return cls(records)

    def to_jsonl(self) -> str:
        return "".join(record.model_dump_json() + "\n" for record in self.records)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(_csv_row(record) for record in self.records)
        return buffer.getvalue()

    def latest(self) -> dict[str, LedgerRecord]:
        """The last record of each clip, by clip id."""
        return {record.clip_id: record for record in self.records}

    def find_done(
        self,
        clip_id: str,
        image_sha256: str,
        audio_sha256: str,
        options_hash: str,
        settings: Settings | None = None,
    ) -> LedgerRecord | None:
        """The newest succeeded record of `clip_id` made from the same inputs and options whose video
        is still where it was stored; None when the clip must be (re)made."""
        settings = settings or get_settings()
        for record in reversed(self.records):
            if (
                record.clip_id == clip_id
                and record.status == "succeeded"
                and (record.image_sha256, record.audio_sha256, record.options_hash) == (image_sha256, audio_sha256, options_hash)
                and record.output_uri
                and exists(record.output_uri, settings)
            ):
                return record
        return None

    def failed_rows(self) -> list[LedgerRecord]:
        """Clips whose latest record failed, in manifest order: what a retry-failed run takes up."""
        failed = [record for record in self.latest().values() if record.status == "failed"]
        return sorted(failed, key=lambda record: (record.row is None, record.row or 0))

    def counts(self) -> dict[str, int]:
        """How many clips ended in each status (latest record per clip)."""
        counts = {"succeeded": 0, "failed": 0, "skipped": 0}
        for record in self.latest().values():
            counts[record.status] += 1
        return counts


def merge_ledgers(ledgers: Iterable[Ledger]) -> Ledger:
    """One ledger from shard ledgers: every record, ordered by `finished_at`, so the latest wins."""
    records = [record for ledger in ledgers for record in ledger.records]
    # sorted() is stable: records finished at the same instant keep the order they were given in.
    return Ledger(sorted(records, key=lambda record: record.finished_at))


def load_ledger(location: str, settings: Settings | None = None) -> Ledger:
    """The ledger at an output `location` (local folder or s3://bucket/prefix); empty when none."""
    settings = settings or get_settings()
    text = read_output_text(output_location(location, JSONL_NAME), settings)
    return Ledger.from_jsonl(text or "")


def write_ledger(ledger: Ledger, location: str, settings: Settings | None = None) -> None:
    """Write `ledger` as results.jsonl and results.csv at `location`, replacing what is there."""
    settings = settings or get_settings()
    folder = _working_folder(location, settings)
    _write_atomically(folder / JSONL_NAME, ledger.to_jsonl())
    _write_atomically(folder / CSV_NAME, ledger.to_csv())
    if is_s3(location):
        _upload(folder, location, settings)


class LedgerWriter:
    """Appends records to the ledger at `location` as rows end; safe to call from many threads.

    For an s3:// location the working copy lives in `work_dir` (default: a folder under
    `settings.cache_dir` named after the location). On opening, records already at the location
    are kept, and so are records in the working copy that a crash kept from being uploaded.
    """

    def __init__(self, location: str, settings: Settings | None = None, work_dir: Path | None = None):
        self.location = location
        self.settings = settings or get_settings()
        self.folder = Path(work_dir) if work_dir is not None else _working_folder(location, self.settings)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.ledger = self._open()

    @property
    def jsonl_path(self) -> Path:
        return self.folder / JSONL_NAME

    @property
    def csv_path(self) -> Path:
        return self.folder / CSV_NAME

    def append(self, record: LedgerRecord) -> None:
        """Write `record` durably (fsync) to both files, then upload them when the location is S3.

        A failed upload is logged, not raised: the next append or `sync()` uploads everything."""
        with self._lock:
            _append_line(self.jsonl_path, record.model_dump_json() + "\n")
            buffer = io.StringIO()
            csv.DictWriter(buffer, fieldnames=COLUMNS).writerow(_csv_row(record))
            _append_line(self.csv_path, buffer.getvalue())
            self.ledger.records.append(record)
            if is_s3(self.location):
                try:
                    self._sync_locked()
                except Exception as exc:
                    # The record is safe on local disk and goes up with the next append or `sync()`;
                    # a storage hiccup must not fail a row that is already done.
                    log.warning("ledger upload to %s failed (%s); will retry", self.location, type(exc).__name__)

    def sync(self) -> None:
        """Upload the working copy now (S3 locations); raises if it cannot. Call when the batch ends."""
        with self._lock:
            if is_s3(self.location):
                self._sync_locked()

    def _sync_locked(self) -> None:
        # Called under the lock, so an older upload can never land after a newer one.
        _upload(self.folder, self.location, self.settings)

    def _open(self) -> Ledger:
        local_text = self.jsonl_path.read_text(encoding="utf-8") if self.jsonl_path.exists() else ""
        ledger = Ledger.from_jsonl(local_text)
        if is_s3(self.location):
            remote = load_ledger(self.location, self.settings)
            known = {record.model_dump_json() for record in remote.records}
            unsent = [record for record in ledger.records if record.model_dump_json() not in known]
            ledger = merge_ledgers([remote, Ledger(unsent)])
        # Rewritten whole: drops a torn last line and brings the CSV copy in step with the JSONL.
        _write_atomically(self.jsonl_path, ledger.to_jsonl())
        _write_atomically(self.csv_path, ledger.to_csv())
        return ledger


def _csv_row(record: LedgerRecord) -> dict:
    return {name: ("" if value is None else value) for name, value in record.model_dump(mode="json").items()}


def local_ledger_file(location: str, settings: Settings) -> Path:
    """The local results.jsonl a LedgerWriter for `location` appends to (its working copy for S3)."""
    return _working_folder(location, settings) / JSONL_NAME


def _working_folder(location: str, settings: Settings) -> Path:
    if not is_s3(location):
        return Path(output_location(location, JSONL_NAME)).parent
    name = hashlib.sha256(location.encode()).hexdigest()[:16]
    return settings.cache_dir / "ledgers" / name


def _append_line(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    with open(partial, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _upload(folder: Path, location: str, settings: Settings) -> None:
    put_output(folder / JSONL_NAME, location, JSONL_NAME, settings, content_type="application/x-ndjson")
    put_output(folder / CSV_NAME, location, CSV_NAME, settings, content_type="text/csv")
