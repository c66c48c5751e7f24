"""Scale-out across GPU hosts: a manifest split into shards, each a deployment run on the GPU pool.

Every GPU worker keeps its own warm model and takes one shard; Prefect's work pool is the scheduler.
Each shard writes its own ledger under `<output>/shard-<k>`; the parent merges them into the
output's ledger with the row numbers of the original manifest.
"""
from __future__ import annotations

import csv
import io
import time
from typing import Annotated

from prefect import flow, get_client
from prefect.deployments import run_deployment
from prefect.logging import get_run_logger
from pydantic import Field

from flows.batch import flow_settings, keep_batch_inputs
from flows.ledger import Ledger, LedgerRecord, load_ledger, merge_ledgers, write_ledger
from flows.logs import hide_input_error_tracebacks
from flows.manifest import OPTION_COLUMNS, ClipRow, manifest_text, parse_manifest
from flows.report import publish_batch_artifacts
from model_runtime.request import GenerationOptions
from s2v.storage.locations import output_location

SHARD_DEPLOYMENT = "s2v-batch/batch"
_SHARD_COLUMNS = ("clip_id", "image", "audio", *OPTION_COLUMNS, "output_name")


def split_rows(rows: list[ClipRow], shards: int) -> list[list[ClipRow]]:
    """Round-robin, so every shard gets a similar mix of long and short rows; empty shards dropped."""
    return [part for part in (rows[k::shards] for k in range(shards)) if part]


def shard_manifest(rows: list[ClipRow]) -> str:
    """CSV text of resolved rows: every option written out, so a shard needs no defaults."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_SHARD_COLUMNS)
    writer.writeheader()
    for row in rows:
        values = row.model_dump(include=set(_SHARD_COLUMNS))
        writer.writerow({k: "" if v is None else v for k, v in values.items()})
    return buffer.getvalue()


@flow(name="s2v-scale-out")
def scale_out(
    manifest: str,
    output: str | None = None,
    shards: Annotated[int, Field(ge=1, le=64)] = 2,
    defaults: GenerationOptions = GenerationOptions(),
    checkpoint: str | None = None,
    model_server: str | None = None,
    shard_deployment: str = SHARD_DEPLOYMENT,
) -> dict:
    """Split the manifest, run each shard as a deployment run, wait for all, merge their ledgers.

    Args:
        manifest: path or URI of a CSV manifest, or the CSV text itself
        output: local folder or s3://bucket/prefix (default S2V_OUTPUT)
        shards: shard runs, one per available GPU worker
        defaults: generation options for the rows that leave them empty
        checkpoint: Wan2.2-S2V checkpoint folder (default S2V_CHECKPOINT)
        model_server: Unix socket of the warm model server (default S2V_MODEL_SERVER)
        shard_deployment: the deployment that runs each shard
    """
    hide_input_error_tracebacks()
    logger = get_run_logger()
    settings = flow_settings(output, checkpoint, model_server)
    text = manifest_text(manifest, settings)
    parsed = parse_manifest(text, defaults, settings)
    keep_batch_inputs(text, defaults, settings)
    parts = split_rows(parsed.rows, shards)
    shard_outputs = [output_location(settings.output, f"shard-{k}") for k in range(len(parts))]
    launched = [
        run_deployment(
            shard_deployment,
            parameters={"manifest": shard_manifest(part), "output": shard_output,
                        "checkpoint": checkpoint, "model_server": model_server},
            flow_run_name=f"shard-{k}-of-{len(parts)}",
            timeout=0,  # start them all, then wait: they run side by side on different workers
        )
        for k, (part, shard_output) in enumerate(zip(parts, shard_outputs))
    ]
    for finished in _wait_for(launched):
        logger.info("shard run %s ended %s", finished.name, finished.state_name)

    rows_by_clip = {row.clip_id: row.row for row in parsed.rows}
    merged = merge_ledgers(load_ledger(location, settings) for location in shard_outputs)
    for record in merged.records:
        record.row = rows_by_clip.get(record.clip_id, record.row)
    ended = {record.clip_id for record in merged.records}
    # A shard run that crashed before a row ended: the row is failed, never silently missing.
    unfinished = [
        LedgerRecord(row=row, clip_id=clip_id, status="failed", worker=settings.worker_name,
                     error="its shard run ended before this row did; run the manifest again to resume")
        for clip_id, row in rows_by_clip.items() if clip_id not in ended
    ]
    invalid = [
        LedgerRecord(row=bad.row, clip_id=bad.clip_id, status="failed", error=str(bad.error),
                     worker=settings.worker_name)
        for bad in parsed.invalid
    ]
    # The output's ledger becomes its own records plus the shards', each record once; the output's
    # own are kept because a retry-failed run appends there.
    kept = {(r.clip_id, r.finished_at, r.status): r for r in [*load_ledger(settings.output, settings).records, *merged.records]}
    ledger = Ledger([*merge_ledgers([Ledger(kept.values())]).records, *unfinished, *invalid])
    write_ledger(ledger, settings.output, settings)
    latest = ledger.latest()
    records = [latest[clip_id].model_dump(mode="json") for clip_id in [*rows_by_clip, *(b.clip_id for b in parsed.invalid)]]
    summary = publish_batch_artifacts(records, settings.gpu_cost_per_hour, output_location(settings.output, "results.jsonl"))
    return {**summary, "ledger": output_location(settings.output, "results.jsonl"), "records": records,
            "shard_runs": [run.id.hex for run in launched]}


def _wait_for(runs, poll_s: float = 5.0):
    """The shard runs once each reached a final state (completed, failed, crashed or cancelled)."""
    pending = {run.id for run in runs}
    final = {}
    with get_client(sync_client=True) as client:
        while pending:
            for run_id in list(pending):
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    final[run_id] = run
                    pending.discard(run_id)
            if pending:
                time.sleep(poll_s)
    return [final[run.id] for run in runs]
