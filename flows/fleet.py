"""Rows handed out to the GPU fleet: one `s2v-row` run per row, taken by whichever GPU worker frees up.

The parent (scale-out or the nightly batch, on the CPU control pool) never loads a model: it parses and
keeps the manifest, records its invalid rows, creates one flow run of the row deployment per valid row
on the GPU pool, and waits. Each GPU worker takes the next run as it frees up, so a slow host costs
only its own rows; each row is a run in the UI with its own logs and Retry button.

A run whose host died is marked Crashed by the heartbeat automation (flows/zombies.py) about 95 s after
its last heartbeat; the parent then hands its row out again (up to `max_runs_per_row` runs). A run a
worker took and never started (Pending past `lost_after_s`) is treated the same. The parent always
ends: when every row's run is final, or at `max_wait_s`, when the runs still waiting are cancelled and
their rows recorded as failed. Every row ends in the ledger exactly once per run that made it: a row
made by a run that died after recording it is found by the next run's resume check and skipped.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from uuid import UUID

from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from flows.pipeline import record_invalid_rows
from flows.zombies import GPU_TAG, ensure_zombie_automation
from records.ledger import LedgerRecord, LedgerStore
from records.manifest import ClipRow, InvalidRow
from records.row_checks import row_files
from s2v.settings import Settings

ROW_DEPLOYMENT = "s2v-row/row"
POLL_S = 5.0
READ_BATCH = 200
COMPACT_EVERY_S = 60.0  # refresh results.jsonl/results.csv for people while the rows run


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
) -> list[LedgerRecord]:
    """Run every row on the GPU pool; returns each row's latest record from this hand-out, in row order."""
    from prefect.client.orchestration import get_client

    logger = get_run_logger()
    started = datetime.now(timezone.utc)
    store = LedgerStore(settings.output, settings)
    record_invalid_rows(invalid, store, settings)
    if ensure_zombie_automation():
        logger.info("created the automation that marks runs of dead hosts Crashed")
    parent = (flow_run.id or "local")[:8]
    pending = {row.clip_id: HandedOut(row) for row in rows}
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(row_deployment)

        def submit(item: HandedOut) -> None:
            attempt = len(item.runs) + 1
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"output": settings.output, "manifest": item.row.manifest, "clip_id": item.row.clip_id,
                            "row": item.row.row, "checkpoint": checkpoint, "model_server": model_server,
                            # The kept manifest has no credentials; the row's URLs travel with its run.
                            "files": row_files(item.row)},
                name=f"row-{item.row.row}-{item.row.clip_id}" + (f"-try{attempt}" if attempt > 1 else ""),
                tags=[*tags, GPU_TAG, f"s2v-parent-{parent}"],
                idempotency_key=f"{flow_run.id or parent}-{item.row.clip_id}-{attempt}",
            )
            item.runs.append(run.id)

        for item in pending.values():
            submit(item)
        logger.info("handed %d row(s) to %s", len(pending), row_deployment)
        deadline = time.monotonic() + limits.max_wait_s
        next_compaction = time.monotonic() + COMPACT_EVERY_S
        while any(item.state is None for item in pending.values()):
            if time.monotonic() > deadline:
                _give_up(client, pending, limits, logger)
                break
            try:
                _poll(client, pending, limits, submit, logger)
            except Exception as exc:  # the API away for a moment must not end the night: look again
                logger.warning("could not read the row runs' states (%s: %s); trying again", type(exc).__name__, exc)
            if on_progress:
                on_progress(sum(1 for item in pending.values() if item.state is not None), len(pending))
            if time.monotonic() > next_compaction:
                _compact_quietly(store, logger)
                next_compaction = time.monotonic() + COMPACT_EVERY_S
            time.sleep(POLL_S)
    return _outcomes(store, rows, invalid, pending, started, settings)


def _poll(client, pending: dict[str, HandedOut], limits: FleetLimits, submit, logger) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    open_items = {item.runs[-1]: item for item in pending.values() if item.state is None}
    ids = list(open_items)
    runs = []
    for start in range(0, len(ids), READ_BATCH):  # the API answers at most 200 runs per request
        part = ids[start:start + READ_BATCH]
        runs += client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=part)), limit=len(part))
    now = datetime.now(timezone.utc)
    for run in runs:
        item = open_items[run.id]
        state = run.state
        if state is None:
            continue
        if state.type == StateType.PENDING and (now - state.timestamp).total_seconds() > limits.lost_after_s:
            # Taken by a worker that vanished before the run could start: nothing will ever end it.
            client.set_flow_run_state(run.id, Crashed(message=f"pending for over {limits.lost_after_s:g} s: its worker is gone"),
                                      force=True)
            state = Crashed()
        if state.type == StateType.CRASHED and len(item.runs) < limits.max_runs_per_row:
            logger.warning("row %s (%s): run %s crashed (%s); handing the row out again", item.row.row, item.row.clip_id,
                           run.name, state.message or "its host died")
            submit(item)
            continue
        if state.is_final():
            item.state = state.type.value
            if state.type in (StateType.CRASHED, StateType.CANCELLED):
                item.note = f"its run {run.name} ended {state.type.value.lower()}: {state.message or 'no message'}"


def _give_up(client, pending: dict[str, HandedOut], limits: FleetLimits, logger) -> None:
    from prefect.states import Cancelled

    for item in pending.values():
        if item.state is None:
            client.set_flow_run_state(item.runs[-1], Cancelled(message="the batch reached its time limit"), force=True)
            item.state = "CANCELLED"
            item.note = (f"no GPU worker finished it within {limits.max_wait_s:g} s (max_wait_s); "
                         "are GPU workers running on the pool?")
    logger.error("time limit reached: %d row(s) never finished", sum(1 for i in pending.values() if i.note))


def _outcomes(store: LedgerStore, rows, invalid, pending: dict[str, HandedOut], started: datetime,
              settings: Settings) -> list[LedgerRecord]:
    """Each row's outcome since `started`: a made video wins over the skip of a rerun that found it."""
    since = [record for record in store.read().records if record.finished_at >= started]
    by_clip: dict[str, LedgerRecord] = {}
    for record in since:
        kept = by_clip.get(record.clip_id)
        if kept is None or not (kept.status == "succeeded" and record.status == "skipped"):
            by_clip[record.clip_id] = record
    for clip_id, item in pending.items():
        if clip_id not in by_clip:
            by_clip[clip_id] = store.append(LedgerRecord(
                row=item.row.row, clip_id=clip_id, status="failed", manifest=item.row.manifest,
                worker=settings.worker_name, attempts=len(item.runs),
                error=item.note or "its run ended without recording the row; `s2v retry` runs it again",
            ))
    order = sorted([*rows, *invalid], key=lambda row: row.row)
    return [by_clip[row.clip_id] for row in order if row.clip_id in by_clip]


def _compact_quietly(store: LedgerStore, logger) -> None:
    try:
        store.compact()
    except Exception as exc:  # only the people's view is late; the records are safe
        logger.warning("results.jsonl/results.csv not refreshed (%s)", type(exc).__name__)
