"""One batch of rows on this worker, start to end: ledger, live cards, the pipeline, the final state."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled, State

from flows.dead_runs import flow_run_is_over, mark_dead_runs_crashed
from flows.outcome import final_state
from flows.pipeline import record_invalid_rows, run_rows
from flows.report import BatchReport
from records.claims import RowClaims, record_dead_claims, remove_stale_work
from records.ledger import LedgerRecord, LedgerStore
from records.manifest import ClipRow, InvalidRow
from s2v.settings import Settings

# Called with every record as its row ends, in this process (the CLI's progress bar listens here).
row_listeners: list[Callable[[LedgerRecord], None]] = []


def execute_rows(
    title: str,
    rows: Sequence[ClipRow],
    invalid: Sequence[InvalidRow],
    settings: Settings,
    lookahead: int = 2,
    compact: bool = True,
    shared_cards: bool = True,
) -> State:
    """Every row ends in the ledger at `settings.output`; returns the run's final state (data: summary)."""
    from model_runtime.interrupt import request_stop, stop_requested

    logger = get_run_logger()
    store = LedgerStore(settings.output, settings)
    order = sorted([*rows, *invalid], key=lambda row: row.row)
    report = BatchReport(title, [row.clip_id for row in order], settings, shared=shared_cards)
    ended: list[LedgerRecord] = []
    lost: list[str] = []  # why rows were left to the runs that took them over

    def on_row_end(record: LedgerRecord) -> None:
        ended.append(record)
        report.row_ended(record)
        for listener in list(row_listeners):
            listener(record)

    for bad in invalid:
        logger.warning("row %d is invalid: %s", bad.row, bad.error)
    if compact:  # a whole batch, not one of a fleet's row runs: the dead runs' rows become visible
        _sweep_dead_runs(settings)
    record_invalid_rows(invalid, store, settings, on_row_end)
    try:
        with RowClaims(settings, run_id=flow_run.id or uuid.uuid4().hex, flow_run_id=flow_run.id,
                       run_is_over=flow_run_is_over) as claims:
            run_rows(rows, settings=settings, store=store, lookahead=lookahead,
                     on_row_end=on_row_end, should_stop=stop_requested, claims=claims,
                     on_row_lost=lost.append)
    except BaseException as exc:
        # The run was cancelled (Prefect raises TerminationSignal here) or interrupted: the generation in
        # the task thread stops at its next step too (and cancels its model-server job), instead of
        # keeping this process, and the GPU, busy for nobody.
        request_stop(f"the flow run was stopped ({type(exc).__name__})")
        raise
    waiting = store.flush()
    if waiting:
        logger.warning("%d ledger record(s) could not be uploaded to %s yet; they wait on this machine and go up "
                       "with the next run (or `s2v retry`)", waiting, settings.output)
    elif compact:
        try:
            store.compact()
        except Exception as exc:  # the records are stored; only the people's view is stale
            logger.warning("results.jsonl/results.csv not refreshed (%s: %s); the next run refreshes them",
                           type(exc).__name__, exc)
    stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{(flow_run.id or 'local')[:8]}"
    summary = report.finish(f"contact-sheets/{stamp}.jpg")
    summary["records"] = [record.model_dump(mode="json") for record in ended]
    summary["output"] = settings.output
    logger.info("%s ended: %s", title, {k: v for k, v in summary.items() if k != "records"})
    if lost and not ended:  # nothing of this run counts: say so, not Completed (the UI shows this run too)
        return Cancelled(message="; ".join(lost))
    return final_state(summary, title)


def _sweep_dead_runs(settings: Settings) -> None:
    """Rows whose run died holding them become `interrupted`; those runs are marked Crashed; their work
    folders go."""
    remove_stale_work(settings)
    try:
        record_dead_claims(settings.output, settings)
        mark_dead_runs_crashed(settings.output, settings)
    except Exception as exc:  # the batch itself can still run: its own rows are claimed one by one
        get_run_logger().warning("rows of dead runs not looked for (%s: %s)", type(exc).__name__, exc)
