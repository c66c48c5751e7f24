"""Scale-out: one manifest over every GPU worker of the pool, a row at a time as workers free up.

Runs on the CPU control pool and never loads a model (flows/fleet.py hands the rows out).
"""
from __future__ import annotations

import posixpath
from typing import Annotated

from prefect import flow
from prefect.states import State
from pydantic import Field

from flows.context import flow_settings
from flows.fleet import ROW_DEPLOYMENT, FleetLimits, hand_out
from flows.form import Internal, options_field, titled
from flows.logs import hide_input_error_tracebacks, run_warning
from flows.outcome import final_state
from flows.report import BatchReport
from flows.run_names import manifest_label, name_run
from model_runtime.request import GenerationOptions
from records.kept_manifests import keep_manifest, manifest_id
from records.manifest import parse_manifest
from records.manifest_text import is_csv_text
from s2v.errors import NoGpuWorker
from s2v.settings import Settings
from s2v.storage.redaction import redact
from tasks.manifest import fetch_manifest


def run_on_fleet(title: str, text: str, name: str, defaults: GenerationOptions, settings: Settings,
                 limits: FleetLimits, checkpoint: str, model_server: str, row_deployment: str,
                 label: str = "") -> State:
    """Parse and keep the manifest, hand its rows to the GPU pool, wait, report; the run's final state."""
    chosen = defaults.model_dump(mode="json")
    # Local files are checked by each row's run, on the GPU host that reads them.
    parsed = parse_manifest(text, chosen, settings, manifest_id=manifest_id(text, chosen), warn=run_warning)
    keep_manifest(text, chosen, settings.output, settings, name=name)
    order = sorted([*parsed.rows, *parsed.invalid], key=lambda row: row.row)
    if label:  # a nightly run holds many manifests: only scale-out is named after its one
        name_run(label, len(order))
    report = BatchReport(title, [row.clip_id for row in order], settings)
    handed = hand_out(parsed.rows, parsed.invalid, settings, row_deployment=row_deployment, limits=limits,
                      checkpoint=checkpoint, model_server=model_server, tags=["s2v", name],
                      on_progress=report.fleet_progress)
    for record in handed.records:
        report.row_ended(record, publish=False)
    report.publish()
    summary = report.finish(f"contact-sheets/{title.replace(' ', '-')}.jpg")
    if handed.no_worker:  # not the manifest's fault: the run says what to start, in one line
        raise NoGpuWorker(f"{title}: {handed.no_worker}")
    summary["records"] = [record.model_dump(mode="json") for record in handed.records]
    summary["output"] = settings.output
    return final_state(summary, title)


@flow(name="s2v-scale-out")
def scale_out(
    manifest: Annotated[str, titled("Manifest (a path, a URI, or the CSV text pasted here)")],
    output: Annotated[str, titled("Output (folder or s3://bucket/prefix)")] = "",
    defaults: Annotated[GenerationOptions, options_field()] = GenerationOptions(),
    max_wait_hours: Annotated[float, titled("Hours to wait at most", gt=0, le=72)] = 12.0,
    checkpoint: Internal[str] = "",
    model_server: Internal[str] = "",
    row_deployment: Internal[str] = ROW_DEPLOYMENT,
    shards: Internal[Annotated[int, Field(ge=0, le=64)]] = 0,
) -> State:
    """Spread one manifest over the GPU pool: every row a run of the row deployment, taken as workers free up.

    Args:
        manifest: a path or URI (http(s)://, s3://) of a CSV manifest, or the CSV text itself (header line first: image,audio,prompt,...)
        output: local folder or s3://bucket/prefix for the videos and the ledger (empty: S2V_OUTPUT)
        defaults: generation options for the rows that leave them empty
        max_wait_hours: the run ends by then, whatever the fleet does; rows not made by then are recorded as failed
        checkpoint: Wan2.2-S2V checkpoint folder for the GPU workers (empty: their S2V_CHECKPOINT)
        model_server: Unix socket of the GPU workers' model servers (empty: their S2V_MODEL_SERVER)
        row_deployment: the deployment that makes one row on a GPU worker
        shards: not used any more (rows are handed out one by one as workers free up); kept so older scripts still run
    """
    hide_input_error_tracebacks()
    settings = flow_settings(output, makes_videos=False)
    text = fetch_manifest(manifest, settings)
    name = "pasted manifest" if is_csv_text(manifest) else posixpath.basename(redact(manifest).split("?")[0])
    return run_on_fleet(f"scale-out {name}", text, name, defaults, settings,
                        FleetLimits(max_wait_s=max_wait_hours * 3600), checkpoint, model_server, row_deployment,
                        label=manifest_label(manifest))
