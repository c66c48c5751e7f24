"""The product's flows: a batch over a manifest, one clip from the UI, and retry of failed rows."""
from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Annotated

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.ledger import JSONL_NAME, LedgerRecord, LedgerWriter, load_ledger
from flows.logs import hide_input_error_tracebacks
from flows.manifest import manifest_text, parse_manifest
from flows.pipeline import record_invalid_rows, run_rows
from flows.report import publish_batch_artifacts
from model_runtime.request import GenerationOptions, Resolution
from s2v.errors import ManifestError
from s2v.settings import Settings
from s2v.storage.locations import output_location
from s2v.storage.outputs import put_output, read_output_text

MANIFEST_COPY = "manifest.csv"
BATCH_PARAMETERS = "batch.json"
# Downloads ahead + one encode + one generation + uploads; bounded so a big manifest cannot start
# hundreds of downloads at once.
_RUNNER = ThreadPoolTaskRunner(max_workers=6)


def flow_settings(output: str | None, checkpoint: str | None, model_server: str | None) -> Settings:
    overrides = {"output": output, "checkpoint": checkpoint, "model_server": model_server}
    return Settings(**{k: v for k, v in overrides.items() if v})


@flow(name="s2v-batch", task_runner=_RUNNER, log_prints=False)
def batch(
    manifest: str,
    output: str | None = None,
    defaults: GenerationOptions = GenerationOptions(),
    checkpoint: str | None = None,
    model_server: str | None = None,
    lookahead: Annotated[int, Field(ge=1, le=16)] = 2,
) -> dict:
    """Every manifest row -> download, audio-encode, generate, upload; every row ends in the ledger.

    Args:
        manifest: path or URI (file://, http(s)://, s3://) of a CSV manifest, or the CSV text itself
        output: local folder or s3://bucket/prefix for the videos and the ledger (default S2V_OUTPUT)
        defaults: generation options for the rows that leave them empty
        checkpoint: Wan2.2-S2V checkpoint folder (default S2V_CHECKPOINT)
        model_server: Unix socket of the warm model server (default S2V_MODEL_SERVER)
        lookahead: rows fetched ahead of the one generating
    """
    hide_input_error_tracebacks()
    settings = flow_settings(output, checkpoint, model_server)
    text = manifest_text(manifest, settings)
    parsed = parse_manifest(text, defaults, settings)
    ledger = LedgerWriter(settings.output, settings)
    keep_batch_inputs(text, defaults, settings)
    return _run(parsed.rows, parsed.invalid, settings, ledger, lookahead)


@flow(name="s2v-clip", task_runner=_RUNNER)
def clip(
    image: str,
    audio: str,
    prompt: Annotated[str, Field(max_length=4000)] = GenerationOptions.model_fields["prompt"].default,
    resolution: Resolution = "480p",
    sample_steps: Annotated[int, Field(ge=15, le=50)] = 20,
    seed: Annotated[int | None, Field(ge=0, le=2**32 - 1)] = None,
    guidance_scale: Annotated[float, Field(ge=1.0, le=20.0)] = 4.5,
    negative_prompt: Annotated[str, Field(max_length=4000)] = "",
    clip_id: str | None = None,
    output: str | None = None,
    checkpoint: str | None = None,
    model_server: str | None = None,
) -> dict:
    """One clip, as a form in the Prefect UI; it lands in the output's ledger like a batch row.

    Args:
        image: the portrait: path, file://, http(s):// or s3:// URI
        audio: the speech: path, file://, http(s):// or s3:// URI
        prompt: what the video shows
        resolution: 480p (max 832x480 area) or 720p (max 1280x720 area)
        sample_steps: denoising steps, 15..50: more is slower and finer
        seed: fixed seed for a repeatable clip (empty: random, recorded in the ledger)
        guidance_scale: classifier-free guidance strength
        negative_prompt: what to avoid
        clip_id: name of the clip and its video (default: derived from its content)
        output: local folder or s3://bucket/prefix (default S2V_OUTPUT)
        checkpoint: Wan2.2-S2V checkpoint folder (default S2V_CHECKPOINT)
        model_server: Unix socket of the warm model server (default S2V_MODEL_SERVER)
    """
    hide_input_error_tracebacks()
    settings = flow_settings(output, checkpoint, model_server)
    row = {"image": image, "audio": audio, "prompt": prompt, "negative_prompt": negative_prompt,
           "resolution": resolution, "sample_steps": sample_steps, "seed": "" if seed is None else seed,
           "guidance_scale": guidance_scale, "clip_id": clip_id or ""}
    parsed = parse_manifest(_csv_text([row]), None, settings)
    summary = _run(parsed.rows, parsed.invalid, settings, LedgerWriter(settings.output, settings), lookahead=1)
    return {**summary, "record": summary["records"][-1] if summary["records"] else None}


@flow(name="s2v-retry-failed", task_runner=_RUNNER)
def retry_failed(
    output: str,
    checkpoint: str | None = None,
    model_server: str | None = None,
    lookahead: Annotated[int, Field(ge=1, le=16)] = 2,
) -> dict:
    """Rerun only the rows whose latest ledger record failed, appending to the same ledger.

    Args:
        output: the earlier batch's output location, which holds its ledger and manifest copy
        checkpoint: Wan2.2-S2V checkpoint folder (default S2V_CHECKPOINT)
        model_server: Unix socket of the warm model server (default S2V_MODEL_SERVER)
        lookahead: rows fetched ahead of the one generating
    """
    hide_input_error_tracebacks()
    settings = flow_settings(output, checkpoint, model_server)
    failed = {record.clip_id for record in load_ledger(output, settings).failed_rows()}
    manifest = read_output_text(output_location(output, MANIFEST_COPY), settings)
    stored = read_output_text(output_location(output, BATCH_PARAMETERS), settings)
    if manifest is None or stored is None:
        raise ManifestError(f"{output} holds no {MANIFEST_COPY}/{BATCH_PARAMETERS}: is it a batch's output location?")
    get_run_logger().info("%d failed row(s) to retry in %s", len(failed), output)
    parsed = parse_manifest(manifest, json.loads(stored)["defaults"], settings)
    rows = [row for row in parsed.rows if row.clip_id in failed]
    invalid = [row for row in parsed.invalid if row.clip_id in failed]
    return _run(rows, invalid, settings, LedgerWriter(output, settings), lookahead)


def _run(rows, invalid, settings: Settings, ledger: LedgerWriter, lookahead: int) -> dict:
    logger = get_run_logger()
    total = len(rows) + len(invalid)
    ended: list[LedgerRecord] = []
    progress = create_progress_artifact(progress=0.0, key="s2v-progress", description="rows ended")

    def on_row_end(record: LedgerRecord) -> None:
        ended.append(record)
        update_progress_artifact(progress, progress=100.0 * len(ended) / max(total, 1))

    for bad in invalid:
        logger.warning("row %d is invalid: %s", bad.row, bad.error)
    record_invalid_rows(invalid, ledger, settings.worker_name, on_row_end)
    run_rows(rows, settings=settings, output=settings.output, ledger=ledger,
             work_dir=settings.cache_dir / "work", lookahead=lookahead, on_row_end=on_row_end)
    ledger.sync()
    records = [record.model_dump(mode="json") for record in ended]
    location = output_location(settings.output, JSONL_NAME)
    summary = publish_batch_artifacts(records, settings.gpu_cost_per_hour, location)
    logger.info("batch ended: %s; ledger %s", summary, location)
    return {**summary, "ledger": location, "records": records}


def keep_batch_inputs(text: str, defaults: GenerationOptions, settings: Settings) -> None:
    """Store the manifest and defaults beside the ledger, so retry-failed can rerun rows later."""
    with tempfile.TemporaryDirectory(prefix="s2v-batch-") as tmp:
        copy = Path(tmp) / MANIFEST_COPY
        copy.write_text(text, encoding="utf-8")
        put_output(copy, settings.output, MANIFEST_COPY, settings, content_type="text/csv")
        params = Path(tmp) / BATCH_PARAMETERS
        params.write_text(json.dumps({"defaults": defaults.model_dump()}, indent=2))
        put_output(params, settings.output, BATCH_PARAMETERS, settings, content_type="application/json")


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
