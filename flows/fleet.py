"""Rows handed out to the GPU fleet: one `s2v-row` run per row, taken by whichever GPU worker frees up.

The parent (scale-out or the nightly batch, on the CPU control pool) never loads a model: it parses and
keeps the manifest, records its invalid rows, creates one flow run of the row deployment per valid row
on the GPU pool, and waits. Each GPU worker takes the next run as it frees up, so a slow host costs
only its own rows; each row is a run in the UI with its own logs and Retry button.

A run whose host died is marked Crashed by the heartbeat automation (flows/zombies.py) about 95 s after
its last heartbeat; the parent then hands its row out again (up to `max_runs_per_row` runs). If that host
was only cut off and its run goes on, the run finds the row's claim taken by the new run before it
generates or uploads, and stops (records/claims.py): a row is never made twice. A run a worker took and
never started (Pending past `lost_after_s`) is treated the same. Row runs open for the same manifest when
the parent starts (a parent that died: the next night picks its manifest up) are watched, not handed out
again. The parent always ends: when every row's run is final; after S2V_NO_WORKER_TIMEOUT_S with no
worker of the GPU pool online; or at `max_wait_s`. When it gives rows up it revokes their claims and
cancels their runs through Cancelling (the worker then stops the run's process, and with it the
generation), waits for those runs to end, and only then records the rows failed, so no `succeeded`
record follows. Outcomes are the records written by the row's own runs, matched by flow-run id.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from uuid import UUID

from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from flows.pipeline import record_invalid_rows
from flows.zombies import GPU_TAG, ensure_zombie_automation
from records.claims import revoke_claim
from records.ledger import LedgerRecord, LedgerStore, LedgerView
from records.manifest import ClipRow, InvalidRow
from records.row_checks import row_files
from s2v.settings import Settings

ROW_DEPLOYMENT = "s2v-row/row"
POLL_S = 5.0
IDS_PER_READ = 1000  # run ids asked about per request; only the runs that changed come back
READ_BATCH = 200  # the API answers at most 200 runs per request
SUBMITTERS = 8  # row runs created at once: 10,000 one after the other would take many minutes
WORKERS_EVERY_S = 30.0  # how often the parent asks whether the GPU pool has a worker online
COMPACT_EVERY_S = 60.0  # refresh results.jsonl/results.csv for people while the rows run
CANCEL_GRACE_S = 120.0  # given-up runs get this long to be stopped by their worker before their rows are recorded


@dataclass
class HandedOut:
    row: ClipRow
    runs: list[UUID] = field(default_factory=list)
    state: str | None = None  # the latest run's final state type, once final
    note: str | None = None  # why the row has no record, if it ends without one


@dataclass(frozen=True)
class FleetLimits:
    max_wait_s: float = 12 * 3600  # the parent ends by then, whatever the fleet does
    lost_after_s: float = 300.0  # a run Pending this long was taken by a worker that vanished
    max_runs_per_row: int = 3  # runs per row when hosts keep dying under it


@dataclass
class FleetResult:
    records: list[LedgerRecord]  # each row's outcome, in row order
    no_worker: str | None = None  # why the parent gave its open rows up when the GPU pool had no worker


def row_run_tags(manifest_id: str | None) -> list[str]:
    """Tags of a manifest's row runs: the GPU pool's, and the manifest's, by which a later parent finds them."""
    return [GPU_TAG, f"s2v-manifest-{manifest_id}"]


def hand_out(
    rows: Sequence[ClipRow],
    invalid: Sequence[InvalidRow],
    settings: Settings,
    *,
    row_deployment: str = ROW_DEPLOYMENT,
    limits: FleetLimits = FleetLimits(),
    checkpoint: str = "",
    model_server: str = "",
    tags: Sequence[str] = (),
    on_progress: Callable[[int, int], None] | None = None,
) -> FleetResult:
    """Run every row on the GPU pool; returns each row's outcome from this hand-out, in row order."""
    from prefect.client.orchestration import get_client

    logger = get_run_logger()
    store = LedgerStore(settings.output, settings)
    record_invalid_rows(invalid, store, settings)
    if ensure_zombie_automation():
        logger.info("created the automation that marks runs of dead hosts Crashed")
    parent = flow_run.id or "local"
    pending = {row.clip_id: HandedOut(row) for row in rows}
    view = store.view()  # the one full read: each refresh then reads only the rows that ended
    ended: set[str] = set()  # clips whose row ended since the view was last written
    stopped = no_worker = None
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(row_deployment)
        pool = deployment.work_pool_name

        def submit(item: HandedOut) -> None:
            attempt = len(item.runs) + 1
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"output": settings.output, "manifest": item.row.manifest, "clip_id": item.row.clip_id,
                            "row": item.row.row, "checkpoint": checkpoint, "model_server": model_server,
                            # The kept manifest has no credentials; the row's URLs travel with its run.
                            "files": row_files(item.row)},
                name=f"row-{item.row.row}-{item.row.clip_id}" + (f"-try{attempt}" if attempt > 1 else ""),
                tags=[*tags, *row_run_tags(item.row.manifest), f"s2v-parent-{parent[:8]}"],
                idempotency_key=f"{parent}-{item.row.clip_id}-{attempt}",
            )
            item.runs.append(run.id)

        adopted = _adopt_open_runs(client, deployment.id, pending)
        if adopted:
            logger.warning("%d row(s) already have an open run from an earlier parent of this manifest (one that "
                           "died?): watching those runs instead of handing the rows out again", adopted)
        with ThreadPoolExecutor(SUBMITTERS) as pool_of_submitters:
            list(pool_of_submitters.map(submit, [item for item in pending.values() if not item.runs]))
        logger.info("handed %d row(s) to %s on work pool %r", len(pending) - adopted, row_deployment, pool)
        deadline = time.monotonic() + limits.max_wait_s
        next_compaction = time.monotonic() + COMPACT_EVERY_S
        workers = _WorkerWatch(client, pool, settings.no_worker_timeout_s)
        while any(item.state is None for item in pending.values()):
            if time.monotonic() > deadline:
                stopped = (f"no GPU worker finished it within {limits.max_wait_s:g} s (max_wait_hours); are GPU "
                           f"workers running on the pool {pool!r}?")
            elif no_worker := workers.none_for_too_long():
                stopped = no_worker
            if stopped:
                _give_up(client, pending, stopped, settings, logger)
                break
            try:
                ended.update(_poll(client, pending, limits, submit, logger))
            except Exception as exc:  # the API or storage away for a moment must not end the night: look again
                logger.warning("could not read the row runs (%s: %s); trying again", type(exc).__name__, exc)
            if on_progress:
                on_progress(sum(1 for item in pending.values() if item.state is not None), len(pending))
            if time.monotonic() > next_compaction:
                _refresh_view_quietly(view, store, ended, logger)
                next_compaction = time.monotonic() + COMPACT_EVERY_S
            time.sleep(POLL_S)
    records = _outcomes(store, rows, invalid, pending, parent, settings)
    view.add(records)
    _refresh_view_quietly(view, store, ended, logger)
    return FleetResult(records, no_worker)


def _adopt_open_runs(client, deployment_id: UUID, pending: dict[str, HandedOut]) -> int:
    """Open row runs of these rows' manifest (an earlier parent's) become the rows' runs; returns how many."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    adopted = 0
    for manifest in {item.row.manifest for item in pending.values()}:
        open_runs = FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
            tags=FlowRunFilterTags(all_=[row_run_tags(manifest)[1]]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[
                StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING])),
        )
        for run in _read_all(client, open_runs):
            item = pending.get(run.parameters.get("clip_id"))
            if item is not None and not item.runs:
                item.runs.append(run.id)
                adopted += 1
    return adopted


def _read_all(client, flow_run_filter) -> list:
    found, offset = [], 0
    while True:
        page = client.read_flow_runs(flow_run_filter=flow_run_filter, limit=READ_BATCH, offset=offset)
        found += page
        if len(page) < READ_BATCH:
            return found
        offset += READ_BATCH


def _poll(client, pending: dict[str, HandedOut], limits: FleetLimits, submit, logger) -> list[str]:
    """Look at the open runs that ended or wait at Pending (only those come back); returns the clips whose
    row ended since the last look."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    open_items = {item.runs[-1]: item for item in pending.values() if item.state is None}
    ids = list(open_items)
    changed = [StateType.PENDING, StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]
    runs = []
    for start in range(0, len(ids), IDS_PER_READ):
        runs += _read_all(client, FlowRunFilter(id=FlowRunFilterId(any_=ids[start:start + IDS_PER_READ]),
                                                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=changed))))
    now = time.time()
    ended = []
    for run in runs:
        item = open_items[run.id]
        state = run.state
        if state is None:
            continue
        if state.type == StateType.PENDING:
            # Taken by a worker that vanished before the run could start: nothing will ever end it. (The
            # server's clock stamped the state; the parent's may differ by a little, not by minutes.)
            if now - state.timestamp.timestamp() <= limits.lost_after_s:
                continue
            client.set_flow_run_state(run.id, Crashed(message=f"pending for over {limits.lost_after_s:g} s: its worker is gone"),
                                      force=True)
            state = Crashed()
        if state.type == StateType.CRASHED and len(item.runs) < limits.max_runs_per_row:
            logger.warning("row %s (%s): run %s crashed (%s); handing the row out again", item.row.row, item.row.clip_id,
                           run.name, state.message or "its host died")
            submit(item)
            continue
        item.state = state.type.value
        if state.type in (StateType.CRASHED, StateType.CANCELLED):
            item.note = f"its run {run.name} ended {state.type.value.lower()}: {state.message or 'no message'}"
        ended.append(item.row.clip_id)
    return ended


class _WorkerWatch:
    """Whether the GPU pool has had no worker online for longer than the limit: then nobody will take the rows."""

    def __init__(self, client, pool: str, limit_s: float):
        self.client, self.pool, self.limit_s = client, pool, limit_s
        self.since = time.monotonic()  # when the pool was last seen with a worker online
        self.next_look = 0.0

    def none_for_too_long(self) -> str | None:
        if time.monotonic() >= self.next_look:
            self.next_look = time.monotonic() + WORKERS_EVERY_S
            try:
                workers = self.client.read_workers_for_work_pool(self.pool)
            except Exception:  # the API away for a moment says nothing about the workers
                return None
            if any(worker.status is not None and worker.status.value == "ONLINE" for worker in workers):
                self.since = time.monotonic()
        idle = time.monotonic() - self.since
        if idle < self.limit_s:
            return None
        return (f"no worker of the GPU work pool {self.pool!r} has been online for {idle:.0f} s "
                f"(S2V_NO_WORKER_TIMEOUT_S={self.limit_s:g}): start GPU hosts (deployments/start_warm.sh) on the "
                f"pool {self.pool!r}, then rerun this manifest; rows already made are skipped")


def _give_up(client, pending: dict[str, HandedOut], reason: str, settings: Settings, logger) -> None:
    """Stop every open row: its claim revoked, its run cancelled through Cancelling (a worker stops a run's
    process only so), then wait for the runs to end, so no record of theirs can follow the parent's."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.states import Cancelled, Cancelling

    parent = flow_run.id or "local"
    open_items = [item for item in pending.values() if item.state is None]
    for item in open_items:
        try:
            revoke_claim(settings.output, item.row.clip_id, by=f"parent {parent}", reason=reason, settings=settings)
        except Exception as exc:  # the run is still cancelled below
            logger.warning("row %s: its claim was not revoked (%s)", item.row.clip_id, exc)
        try:
            client.set_flow_run_state(item.runs[-1], Cancelling(message=f"given up: {reason}"))
        except Exception as exc:
            logger.warning("row %s: its run was not cancelled (%s)", item.row.clip_id, exc)
        item.state, item.note = "CANCELLED", reason
    ids = [item.runs[-1] for item in open_items]
    deadline = time.monotonic() + CANCEL_GRACE_S
    while ids and time.monotonic() < deadline:
        runs = []
        for start in range(0, len(ids), IDS_PER_READ):
            runs += _read_all(client, FlowRunFilter(id=FlowRunFilterId(any_=ids[start:start + IDS_PER_READ])))
        ids = [run.id for run in runs if run.state is not None and not run.state.is_final()]
        if ids:
            time.sleep(POLL_S)
    for run_id in ids:  # no worker stopped them (none online): nothing runs them, so they can simply end
        client.set_flow_run_state(run_id, Cancelled(message=f"given up: {reason}"), force=True)
    logger.error("%d row(s) given up: %s", len(open_items), reason)


def _outcomes(store: LedgerStore, rows, invalid, pending: dict[str, HandedOut], parent: str,
              settings: Settings) -> list[LedgerRecord]:
    """Each row's outcome: the records its own runs wrote (matched by flow-run id, never by clocks), the
    latest run's first; within a run a made video wins over a skip. Rows with none are recorded failed."""
    run_rank = {str(run_id): rank for item in pending.values() for rank, run_id in enumerate(item.runs)}
    mine = [record for record in store.read().records
            if record.flow_run_id in run_rank or (record.flow_run_id == parent and record.clip_id not in pending)]
    by_clip: dict[str, LedgerRecord] = {}
    for record in mine:
        kept = by_clip.get(record.clip_id)
        if kept is None or _rank(record, run_rank) >= _rank(kept, run_rank):
            by_clip[record.clip_id] = record
    for clip_id, item in pending.items():
        if clip_id not in by_clip:
            by_clip[clip_id] = store.append(LedgerRecord(
                row=item.row.row, clip_id=clip_id, status="failed", manifest=item.row.manifest,
                worker=settings.worker_name, attempts=len(item.runs), flow_run_id=parent,
                error=f"row {item.row.row}: " + (item.note or "its run ended without recording the row")
                + "; `s2v retry` runs it again",
            ))
    order = sorted([*rows, *invalid], key=lambda row: row.row)
    return [by_clip[row.clip_id] for row in order if row.clip_id in by_clip]


def _rank(record: LedgerRecord, run_rank: dict[str, int]) -> tuple[int, bool]:
    return run_rank.get(record.flow_run_id or "", -1), record.status != "skipped"


def _refresh_view_quietly(view: LedgerView, store: LedgerStore, ended: set[str], logger) -> None:
    """results.jsonl/results.csv with the records of the rows that ended since the last refresh."""
    try:
        store.compact_clips(view, ended)
        ended.clear()
    except Exception as exc:  # only the people's view is late; the records are safe, and the next refresh tries again
        logger.warning("results.jsonl/results.csv not refreshed (%s: %s)", type(exc).__name__, exc)
