"""The results ledger of an output location: write-once records, merged on read.

At an output location (a local folder or an s3:// prefix):

    ledger/<clip_id>/<finished>-<writer>-<n>.json   one record per object, written once, never rewritten
    results.jsonl, results.csv                       a compacted view of every record, for people and tools

Many runs on many hosts append to one output at once (a fleet's row runs, two `s2v run`s, a UI clip):
each record is its own object, so no writer can erase another's, and appending costs one small write
whatever the ledger's size. Readers merge: the view, plus the record objects the view does not hold yet,
plus (on this machine) records that could not be uploaded yet. Any run may rewrite the view
(`compact`) without losing a record it did not read, because the objects stay. Grouping records by clip
lets a row read its own history (resume, attempts) with one small listing.

Within a ledger the latest record of a clip wins (by `finished_at`, then record id).

A long-lived writer (a fleet's parent) refreshes the view often; it holds a `LedgerView` and rewrites the
view from it with `compact_clips`, which reads only the clips that changed: its storage work grows with
the records added since, not with the ledger.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import logging
import posixpath
import socket
import threading
import uuid
from bisect import insort
from collections.abc import Iterable, Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from s2v.settings import Settings
from s2v.storage.atomic import write_atomically
from s2v.storage.locations import is_s3, output_location
from s2v.storage.outputs import exists, filesystem, read_output_text, write_output_text
from s2v.storage.transient import transient_as

log = logging.getLogger(__name__)

JSONL_NAME = "results.jsonl"
CSV_NAME = "results.csv"
RECORDS_FOLDER = "ledger"
CLIP_READERS = 8  # clips read at once by `compact_clips`
LISTING_PAGE = 1000  # keys per S3 listing request (ListObjectsV2's most)

Status = Literal["succeeded", "failed", "skipped", "interrupted"]
# Statuses a retry takes up: the row did not end with a video.
RETRYABLE: frozenset[str] = frozenset({"failed", "interrupted"})


class LedgerRecord(BaseModel):
    """How one manifest row ended. `url` is what to hand out; `output_uri` where the video is stored."""

    model_config = ConfigDict(extra="ignore")  # records written by newer code still load

    row: int | None = None
    clip_id: str
    status: Status
    error: str | None = None
    url: str | None = None
    output_uri: str | None = None
    poster_url: str | None = None
    download_s: float | None = None
    encode_s: float | None = None
    generate_s: float | None = None
    upload_s: float | None = None
    generation_time: float | None = None
    pipeline_time: float | None = None  # inside the model's pipeline calls: GPU-busy time
    total_time: float | None = None
    video_size_mb: float | None = None
    warm_model: bool | None = None
    tiny_checkpoint: bool | None = None  # True: a random-weight test model made this video (noise)
    checkpoint: str | None = None
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    frames: int | None = None
    segments: int | None = None
    resolution: str | None = None
    size: str | None = None
    mode: str | None = None
    sample_steps: int | None = None
    sample_shift: float | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    lora: str | None = None
    lora_strength: float | None = None
    max_segments: int | None = None
    start_from_ref: bool | None = None
    pose_video: str | None = None
    attempts: int = 1
    image_sha256: str | None = None
    audio_sha256: str | None = None
    options_hash: str | None = None
    # A finished video whose upload failed stays on its worker; retry uploads it instead of generating again.
    kept_video: str | None = None
    video_sha256: str | None = None
    # Quality checks (s2v/quality, README "Quality checks"): the portrait's before the GPU, the clip's after it.
    qc_portrait_faces: int | None = None
    qc_portrait_face_share: float | None = None
    qc_portrait_face_cut: bool | None = None
    qc_portrait: str | None = None  # why the portrait has not exactly one usable face (S2V_FACE_CHECK=warn)
    qc_face_frames: float | None = None
    qc_face_drift: float | None = None
    qc_face_size_change: float | None = None
    qc_mouth_sync: float | None = None
    qc_mouth_lag_s: float | None = None
    qc_flags: str | None = None  # why the clip needs a person's eye; None: nothing found
    qc_error: str | None = None  # why the clip check could not run
    qc_s: float | None = None
    manifest: str | None = None  # id of the manifest copy under manifests/ that this row came from
    # The Prefect flow run that wrote it: a fleet's parent matches its rows' outcomes by run id, never by
    # comparing hosts' clocks.
    flow_run_id: str | None = None
    worker: str = Field(default_factory=socket.gethostname)
    finished_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    record_id: str | None = None  # the record's object name; None for records of older ledgers

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.finished_at, self.record_id or "")


COLUMNS = tuple(LedgerRecord.model_fields)


class Ledger:
    """The records of an output location, oldest first."""

    def __init__(self, records: Iterable[LedgerRecord] = ()):
        self.records: list[LedgerRecord] = sorted(records, key=lambda record: record.order)

    @classmethod
    def from_jsonl(cls, text: str) -> "Ledger":
        return cls(_parse_lines(text.splitlines(), "results.jsonl"))

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

    def retryable(self) -> list[LedgerRecord]:
        """Clips whose latest record failed or was interrupted, in row order: what a retry takes up."""
        found = [record for record in self.latest().values() if record.status in RETRYABLE]
        return sorted(found, key=lambda record: (record.row is None, record.row or 0, record.clip_id))

    def flagged(self) -> list[LedgerRecord]:
        """Clips whose latest record is a video the clip check flagged, in row order: what `retry --flagged` remakes."""
        found = [record for record in self.latest().values()
                 if record.status in ("succeeded", "skipped") and record.qc_flags]
        return sorted(found, key=lambda record: (record.row is None, record.row or 0, record.clip_id))

    def counts(self) -> dict[str, int]:
        """How many clips ended in each status (latest record per clip)."""
        counts = dict.fromkeys(("succeeded", "failed", "skipped", "interrupted"), 0)
        for record in self.latest().values():
            counts[record.status] += 1
        return counts

    def attempts(self, clip_id: str) -> int:
        """Runs that worked on `clip_id` so far (a skip is no attempt)."""
        return sum(1 for record in self.records if record.clip_id == clip_id and record.status != "skipped")


class LedgerView:
    """results.jsonl and results.csv as text, held by a long-lived writer between refreshes.

    Each record is serialised once, when it is added: a refresh joins the held lines, so its cost on
    this side is a string join, and on the storage side only the reads of what changed (`compact_clips`)
    and the two writes. Lines are kept in the ledger's order (`finished_at`, then record id), so the
    files are byte for byte what `LedgerStore.compact` writes for the same records.
    """

    def __init__(self, records: Iterable[LedgerRecord] = ()):
        self._entries: list[tuple[tuple[datetime, str], str, str]] = []  # (order, JSONL line, CSV row)
        self._ids: set[str] = set()
        self.add(records)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def record_ids(self) -> AbstractSet[str]:
        """The ids of the records held (not a copy: read it, never change it)."""
        return self._ids

    def add(self, records: Iterable[LedgerRecord]) -> int:
        """Take in the records not held yet (a record id seen before counts once); returns how many were new."""
        added = 0
        for record in records:
            if record.record_id:
                if record.record_id in self._ids:
                    continue
                self._ids.add(record.record_id)
            # A newer record lands at the end: an append, not a shift. Equal orders keep arrival order,
            # as the ledger's stable sort does.
            insort(self._entries, (record.order, record.model_dump_json() + "\n", _csv_line(record)),
                   key=lambda entry: entry[0])
            added += 1
        return added

    def to_jsonl(self) -> str:
        return "".join(entry[1] for entry in self._entries)

    def to_csv(self) -> str:
        return _CSV_HEADER + "".join(entry[2] for entry in self._entries)

    def write(self, store: "LedgerStore") -> None:
        """Rewrite results.jsonl and results.csv at `store` from the held lines."""
        write_output_text(output_location(store.output, JSONL_NAME), self.to_jsonl(), store.settings,
                          content_type="application/x-ndjson")
        write_output_text(output_location(store.output, CSV_NAME), self.to_csv(), store.settings,
                          content_type="text/csv")


class LedgerStore:
    """The ledger at `output`: appends from any number of threads, processes and hosts; merged reads.

    For an s3:// output a record is first written to a spool folder on this machine, then uploaded;
    one that cannot be uploaded now stays there (readers on this machine still see it) and goes up
    with a later append or `flush()`. A local output is written to directly.
    """

    def __init__(self, output: str, settings: Settings):
        self.output = output
        self.settings = settings
        self.remote = is_s3(output)
        self.spool = _spool_folder(output, settings) if self.remote else None
        self._writer = uuid.uuid4().hex[:12]
        self._sequence = itertools.count(1)
        self._lock = threading.Lock()

    # ---- writing ------------------------------------------------------------------------------------

    def append(self, record: LedgerRecord) -> LedgerRecord:
        """Store `record` once, durably; returns it with its record id. Never rewrites anything."""
        with self._lock:
            number = next(self._sequence)
        record = record.model_copy(update={
            "record_id": f"{record.finished_at.astimezone(timezone.utc):%Y%m%dT%H%M%S%fZ}-{self._writer}-{number:06d}",
        })
        key = _record_key(record)
        text = record.model_dump_json()
        if not self.remote:
            write_atomically(Path(output_location(self.output, key)), text, fsync=True)
            return record
        write_atomically(self.spool / key, text, fsync=True)
        self._upload_spooled(self.spool / key, key)
        return record

    def flush(self) -> int:
        """Upload every spooled record of this output; returns how many are still waiting."""
        if not self.remote:
            return 0
        waiting = 0
        for path in sorted(self.spool.glob(f"{RECORDS_FOLDER}/*/*.json")):
            if not self._upload_spooled(path, path.relative_to(self.spool).as_posix()):
                waiting += 1
        return waiting

    def _upload_spooled(self, path: Path, key: str) -> bool:
        try:
            write_output_text(output_location(self.output, key), path.read_text(encoding="utf-8"), self.settings,
                              content_type="application/json")
        except Exception as exc:
            # The record is safe on this machine; a storage hiccup must not fail a row that is done.
            log.warning("ledger record %s not uploaded to %s yet (%s); it stays in %s", key, self.output,
                        type(exc).__name__, self.spool)
            return False
        path.unlink(missing_ok=True)
        return True

    # ---- reading ------------------------------------------------------------------------------------

    def clip_records(self, clip_id: str) -> list[LedgerRecord]:
        """Every record of one clip (its resume and attempt history), oldest first; cost: one listing."""
        folder = output_location(self.output, f"{RECORDS_FOLDER}/{clip_id}")
        records = _read_objects(folder, self.settings, recursive=False)
        records += self._spooled(f"{RECORDS_FOLDER}/{clip_id}/*.json")
        return Ledger(_unique(records)).records

    def read(self) -> Ledger:
        """Every record: the view, the record objects it does not hold yet, and this machine's spool."""
        view = Ledger.from_jsonl(read_output_text(output_location(self.output, JSONL_NAME), self.settings) or "")
        seen = {record.record_id for record in view.records if record.record_id}
        folder = output_location(self.output, RECORDS_FOLDER)
        newer = _read_objects(folder, self.settings, recursive=True, skip=seen)
        return Ledger(_unique([*view.records, *newer, *self._spooled(f"{RECORDS_FOLDER}/*/*.json")]))

    def compact(self) -> Ledger:
        """Rewrite results.jsonl and results.csv from everything `read` finds; returns that ledger."""
        self.flush()
        ledger = self.read()
        write_output_text(output_location(self.output, JSONL_NAME), ledger.to_jsonl(), self.settings,
                          content_type="application/x-ndjson")
        write_output_text(output_location(self.output, CSV_NAME), ledger.to_csv(), self.settings,
                          content_type="text/csv")
        return ledger

    def view(self) -> LedgerView:
        """Every record `read` finds, held for `compact_clips`: the one full read of a long-lived writer."""
        return LedgerView(self.read().records)

    def compact_clips(self, view: LedgerView, clip_ids: Iterable[str]) -> int:
        """Add the records of `clip_ids` to `view` and rewrite results.jsonl and results.csv from it.

        For a writer that knows which clips changed (a fleet's parent: the rows whose runs ended): one
        listing per clip, or one listing of every record when that takes fewer requests (a listing page
        holds 1,000 keys), and the reads of the records not held yet; the view file is neither read nor
        rewritten from parsed records. Records of other clips written meanwhile reach the files with the
        next `compact` (or with this one, when it lists every record). Returns how many records were new.
        Spooled records are read too; uploading them stays with `append`, `flush` and `compact`.
        """
        clips = list(dict.fromkeys(clip_ids))
        if len(clips) > len(view) // LISTING_PAGE + 1:
            # More clips than pages of one listing of every record: that listing is fewer requests, and
            # still only the records not held yet are read.
            folder = output_location(self.output, RECORDS_FOLDER)
            found = [_read_objects(folder, self.settings, recursive=True, skip=view.record_ids),
                     self._spooled(f"{RECORDS_FOLDER}/*/*.json")]
        else:
            with ThreadPoolExecutor(max_workers=CLIP_READERS) as readers:  # listings wait on the network, not here
                found = list(readers.map(self.clip_records, clips))
        added = sum(view.add(records) for records in found)
        view.write(self)
        return added

    def find_done(self, clip_id: str, image_sha256: str, audio_sha256: str, options_hash: str,
                  records: list[LedgerRecord] | None = None) -> LedgerRecord | None:
        """The newest succeeded record of `clip_id` made from the same inputs and options whose video is
        still where it was stored; None when the clip must be (re)made. `records`: the clip's records
        when already read. Storage errors propagate."""
        for record in reversed(records if records is not None else self.clip_records(clip_id)):
            if (
                record.status == "succeeded"
                and (record.image_sha256, record.audio_sha256, record.options_hash) == (image_sha256, audio_sha256, options_hash)
                and record.output_uri
                and exists(record.output_uri, self.settings)
            ):
                return record
        return None

    def _spooled(self, pattern: str) -> list[LedgerRecord]:
        if self.spool is None:
            return []
        return _parse_lines((path.read_text(encoding="utf-8") for path in sorted(self.spool.glob(pattern))), str(self.spool))


def load_ledger(output: str, settings: Settings) -> Ledger:
    """Every record at `output` (local folder or s3://bucket/prefix); empty when there is none."""
    return LedgerStore(output, settings).read()


def _read_objects(folder: str, settings: Settings, recursive: bool, skip: set[str] = frozenset()) -> list[LedgerRecord]:
    fs, path = filesystem(folder, settings)
    with transient_as(f"reading the ledger at {folder}"):
        try:
            found = fs.find(path) if recursive else [entry for entry in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
        wanted = [name for name in found
                  if name.endswith(".json") and not posixpath.basename(name).startswith(".")
                  and posixpath.basename(name)[:-5] not in skip]
        # Many small objects: fetched concurrently (s3fs) in one call, one GET each (s3fs would first ask
        # each object's size with a HEAD, to fetch a big one in parts).
        options = {"max_concurrency": 1} if is_s3(folder) else {}
        contents = fs.cat(wanted, on_error="omit", **options) if wanted else {}
    return _parse_lines((data.decode("utf-8") for _, data in sorted(contents.items())), folder)


def _parse_lines(lines: Iterable[str], where: str) -> list[LedgerRecord]:
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(LedgerRecord.model_validate_json(line))
        except ValidationError:
            # A hand-edited view can hold anything; one bad line must not hide the others.
            log.warning("ledger entry %d in %s is not a record and was skipped", number, where)
    return records


def _unique(records: Iterable[LedgerRecord]) -> list[LedgerRecord]:
    """Records found twice (in the view and as an object, or spooled and uploaded meanwhile) count once."""
    by_id: dict[str, LedgerRecord] = {}
    legacy = []
    for record in records:
        if record.record_id:
            by_id.setdefault(record.record_id, record)
        else:
            legacy.append(record)
    return [*legacy, *by_id.values()]


def _record_key(record: LedgerRecord) -> str:
    return f"{RECORDS_FOLDER}/{record.clip_id}/{record.record_id}.json"


def _spool_folder(output: str, settings: Settings) -> Path:
    return settings.cache_dir / "ledger-spool" / hashlib.sha256(output.encode()).hexdigest()[:16]


def _csv_line(record: LedgerRecord) -> str:
    """One record as `Ledger.to_csv` writes its row, line end included."""
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=COLUMNS).writerow(_csv_row(record))
    return buffer.getvalue()


def _csv_header() -> str:
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=COLUMNS).writeheader()
    return buffer.getvalue()


_CSV_HEADER = _csv_header()


def _csv_row(record: LedgerRecord) -> dict:
    return {name: ("" if value is None else value) for name, value in record.model_dump(mode="json").items()}
