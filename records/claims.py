"""Row claims at an output location: a run claims a row before its expensive work, so no row is made twice.

    claims/<clip_id>/<slot>.json   one claim per slot, created write-once (s2v/storage/write_once.py)

A run claims a clip by creating the next slot after the newest one, when the newest is released or its
lease has expired; two runs racing for one slot cannot both create it, so exactly one wins. The newest
slot names the row's current run: a run that finds a newer slot than its own (it was cut off and given up
for dead, and the row handed to another run; or its parent gave the row up) has lost the row and stops
before it generates or uploads (`RowClaims.taken_over`), so no row is made twice. The winner
renews its lease while it works (a thread here, every third of the lease) and releases the claim with the
row's final record. A run that finds a live claim of another run leaves the row to it. A claim whose
lease expired without release, and with no record after it, is a row whose run died (kill -9, a lost
host): `sweep_dead_claims` records it `interrupted`, so `s2v retry` and the next run see it.

Local folders, S3 and R2 alike; the fleet's row runs go through the same pipeline, so through this too.
"""
from __future__ import annotations

import logging
import posixpath
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from pydantic import BaseModel, ValidationError

from s2v.errors import TransientError
from s2v.settings import Settings
from s2v.storage.locations import output_location
from s2v.storage.outputs import filesystem, write_output_text
from s2v.storage.transient import transient_as
from s2v.storage.write_once import AlreadyWritten, create_output_text

log = logging.getLogger(__name__)

CLAIMS_FOLDER = "claims"
RACE_TRIES = 3  # a lost race re-reads the newest claim; more losses than this mean someone holds it
_active: set["RowClaims"] = set()  # this process's runs holding claims: what a forced exit leaves behind


class RowClaim(BaseModel):
    clip_id: str
    slot: int
    run_id: str
    flow_run_id: str | None = None  # the Prefect flow run holding it: the next command marks it Crashed if it died
    worker: str
    row: int | None = None
    manifest: str | None = None
    started_at: datetime
    expires_at: datetime
    released: bool = False
    reason: str | None = None  # why a parent revoked the row (`revoke_claim`)

    def live(self, now: datetime | None = None) -> bool:
        return not self.released and self.expires_at > (now or _now())

    @property
    def key(self) -> str:
        return f"{CLAIMS_FOLDER}/{self.clip_id}/{self.slot:08d}.json"


class RowClaims:
    """The claims one run holds at `settings.output`, renewed while it works; a context manager."""

    def __init__(self, settings: Settings, run_id: str, flow_run_id: str | None = None,
                 run_is_over: Callable[[str], bool] = lambda flow_run_id: False):
        # run_is_over(flow run id): Prefect already says that run ended (a dead host's run is marked Crashed
        # and its row handed out again before the lease runs out): its claim is dead whatever its lease says.
        self.run_is_over = run_is_over
        self.settings = settings
        self.run_id = run_id
        self.flow_run_id = flow_run_id
        self.lease = timedelta(seconds=settings.claim_lease_s)
        self.held: dict[str, RowClaim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, name="s2v-claim-renewer", daemon=True)

    def __enter__(self) -> "RowClaims":
        self._renewer.start()
        _active.add(self)
        return self

    def __exit__(self, *exc) -> None:
        _active.discard(self)
        self._stop.set()
        self._renewer.join(timeout=5)

    def claim(self, clip_id: str, row: int | None = None, manifest: str | None = None) -> RowClaim | None:
        """None when this run now holds the clip; else the live claim of the run that does."""
        for _ in range(RACE_TRIES):
            newest = read_newest_claim(self.output, clip_id, self.settings)
            if newest is not None and newest.live() and newest.run_id != self.run_id \
                    and not (newest.flow_run_id and self.run_is_over(newest.flow_run_id)):
                return newest
            now = _now()
            claim = RowClaim(clip_id=clip_id, slot=(newest.slot + 1) if newest else 1, run_id=self.run_id,
                             flow_run_id=self.flow_run_id, worker=self.settings.worker_name, row=row,
                             manifest=manifest, started_at=now, expires_at=now + self.lease)
            try:
                create_output_text(output_location(self.output, claim.key), claim.model_dump_json(), self.settings)
            except AlreadyWritten:
                continue  # another run took this slot first: look at what it holds
            if newest is not None and not newest.released:
                log.warning("row %s (%s): took over the expired claim of run %s on %s", row, clip_id,
                            newest.run_id, newest.worker)
            with self._lock:
                self.held[clip_id] = claim
            return None
        return read_newest_claim(self.output, clip_id, self.settings)

    def taken_over(self, clip_id: str) -> RowClaim | None:
        """The newer claim of another run when this run no longer holds the clip, else None; storage errors
        propagate (a run that cannot tell whether the row is still its own must not make it)."""
        with self._lock:
            held = self.held.get(clip_id)
        if held is None:
            return None
        newest = read_newest_claim(self.output, clip_id, self.settings)
        if newest is None or newest.slot == held.slot:
            return None
        with self._lock:
            self.held.pop(clip_id, None)  # never renewed nor released again: the slot is history now
        return newest

    def release(self, clip_id: str) -> None:
        """After the row's final record; a claim that cannot be released just expires."""
        with self._lock:
            claim = self.held.pop(clip_id, None)
        if claim is not None:
            self._write(claim.model_copy(update={"released": True}))

    @property
    def output(self) -> str:
        return self.settings.output

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease.total_seconds() / 3):
            with self._lock:
                held = list(self.held.values())
            for claim in held:
                renewed = claim.model_copy(update={"expires_at": _now() + self.lease})
                with self._lock:
                    if claim.clip_id not in self.held:  # released meanwhile: never un-release it
                        continue
                    self.held[claim.clip_id] = renewed
                self._write(renewed)

    def _write(self, claim: RowClaim) -> None:
        # Only the holder ever rewrites its own slot, so this plain overwrite races with nobody.
        try:
            write_output_text(output_location(self.output, claim.key), claim.model_dump_json(), self.settings,
                              content_type="application/json")
        except Exception as exc:
            log.warning("claim %s at %s not written (%s); it expires on its own", claim.key, self.output, exc)


def revoke_claim(output: str, clip_id: str, by: str, reason: str, settings: Settings) -> RowClaim:
    """Take the row from whichever run holds it: a released claim in the next slot, so the holder stops
    at its next look (`RowClaims.taken_over`) and a later run may claim the row again. Used by a parent
    that gives a row up (time limit, no GPU worker) before it records the row failed."""
    for _ in range(RACE_TRIES):
        newest = read_newest_claim(output, clip_id, settings)
        now = _now()
        claim = RowClaim(clip_id=clip_id, slot=(newest.slot + 1) if newest else 1, run_id=by, worker=settings.worker_name,
                         row=newest.row if newest else None, manifest=newest.manifest if newest else None,
                         started_at=now, expires_at=now, released=True, reason=reason)
        try:
            create_output_text(output_location(output, claim.key), claim.model_dump_json(), settings)
            return claim
        except AlreadyWritten:
            continue  # a run claimed the row meanwhile: revoke that claim
    raise TransientError(f"could not revoke the claim of {clip_id} at {output}: runs keep claiming it")


def read_newest_claim(output: str, clip_id: str, settings: Settings) -> RowClaim | None:
    """The clip's newest claim (highest slot), None when it never was claimed; storage errors propagate."""
    claims = _read_claims(output_location(output, f"{CLAIMS_FOLDER}/{clip_id}"), settings, recursive=False)
    return claims[-1] if claims else None


def read_newest_claims(output: str, settings: Settings) -> dict[str, RowClaim]:
    """The newest claim of every clip at `output`, by clip id (one listing)."""
    newest: dict[str, RowClaim] = {}
    for claim in _read_claims(output_location(output, CLAIMS_FOLDER), settings, recursive=True):
        newest[claim.clip_id] = claim
    return newest


def dead_claims(output: str, settings: Settings) -> list[RowClaim]:
    """Newest claims that were never released and whose lease has expired: their runs died mid-row."""
    now = _now()
    return [claim for claim in read_newest_claims(output, settings).values()
            if not claim.released and claim.expires_at <= now]


def _read_claims(folder: str, settings: Settings, recursive: bool) -> list[RowClaim]:
    fs, path = filesystem(folder, settings)
    with transient_as(f"reading the claims at {folder}"):
        try:
            found = fs.find(path) if recursive else fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        wanted = [name for name in found
                  if name.endswith(".json") and not posixpath.basename(name).startswith(".")]
        contents = fs.cat(wanted, on_error="omit") if wanted else {}
    claims = []
    for name, data in contents.items():
        try:
            claims.append(RowClaim.model_validate_json(data))
        except ValidationError:
            log.warning("%s is not a row claim and was ignored", name)
    return sorted(claims, key=lambda claim: (claim.clip_id, claim.slot))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def record_dead_claims(output: str, settings: Settings) -> list[RowClaim]:
    """Record `interrupted` every row whose run died holding its claim and left no record after it; returns
    those claims. Idempotent: once recorded, the record stands after the claim and it is not recorded again."""
    from records.ledger import LedgerRecord, LedgerStore

    store = LedgerStore(output, settings)
    recorded = []
    for claim in dead_claims(output, settings):
        records = store.clip_records(claim.clip_id)
        # A skip by another run says nothing about how this run's row ended.
        if any(r.status != "skipped" and r.finished_at >= claim.started_at for r in records):
            continue
        store.append(LedgerRecord(
            row=claim.row, clip_id=claim.clip_id, status="interrupted", manifest=claim.manifest, worker=claim.worker,
            flow_run_id=claim.flow_run_id, attempts=1 + sum(1 for r in records if r.status != "skipped"),
            error=f"row {claim.row}: its run ({claim.run_id} on {claim.worker}) stopped while making it and did not "
                  f"come back (claim expired {claim.expires_at:%Y-%m-%d %H:%M:%S} UTC); `s2v retry` makes it",
        ))
        recorded.append(claim)
    if recorded:
        log.warning("%d row(s) whose run died mid-row recorded as interrupted: %s", len(recorded),
                    ", ".join(claim.clip_id for claim in recorded))
    return recorded


def remove_stale_work(settings: Settings, older_than_s: float = 24 * 3600) -> int:
    """Remove row work folders (input copies) untouched for a day: left by runs that were killed. No row
    runs that long (a generation ends within S2V_GENERATION_TIMEOUT_S), so none of them has a live claim."""
    import shutil
    import time

    rows = settings.cache_dir / "work" / "rows"
    removed = 0
    cutoff = time.time() - older_than_s
    for folder in rows.glob("*") if rows.is_dir() else ():
        try:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except OSError:
            continue  # removed by another run meanwhile
    return removed


def abandon_held_claims(reason: str) -> int:
    """Before this process exits without finishing its rows (its API lost, a stop past its grace time):
    record each row it holds `interrupted` and release it, so a rerun at once makes it instead of
    skipping it as another run's. Returns how many."""
    from records.ledger import LedgerRecord, LedgerStore

    abandoned = 0
    for claims in list(_active):
        store = LedgerStore(claims.output, claims.settings)
        for claim in list(claims.held.values()):
            try:
                store.append(LedgerRecord(row=claim.row, clip_id=claim.clip_id, status="interrupted",
                                          manifest=claim.manifest, worker=claim.worker, flow_run_id=claim.flow_run_id,
                                          error=f"row {claim.row}: {reason}; a rerun of the manifest resumes this row"))
            except Exception as exc:  # the claim still expires, and the next run records the row then
                log.warning("row %s not recorded as interrupted (%s)", claim.clip_id, exc)
                continue
            claims.release(claim.clip_id)
            abandoned += 1
    return abandoned
