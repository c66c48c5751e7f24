"""Batches on one worker: a whole manifest (`s2v-batch`), and the rows that failed (`s2v-retry-failed`).

`s2v run` and `s2v retry` run these in their own process; on GPU hosts they are deployments of the
GPU pool. Spreading one manifest over many GPU hosts is `s2v-scale-out`'s job (flows/fleet.py).
"""
from __future__ import annotations

import posixpath
from collections import Counter
from typing import Annotated

from prefect import flow
from prefect.logging import get_run_logger
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.context import flow_settings
from flows.dead_runs import mark_dead_runs_crashed
from flows.execute import execute_rows
from flows.form import Internal, options_field, titled
from flows.logs import hide_input_error_tracebacks, run_warning
from flows.run_names import manifest_label, name_run
from model_runtime.request import GenerationOptions
from records.claims import record_dead_claims
from records.kept_manifests import keep_manifest, load_manifest, manifest_id
from records.ledger import load_ledger
from records.manifest import InvalidRow, check_local_files, parse_manifest
from records.manifest_text import is_csv_text
from s2v.errors import InputError, ManifestError
from s2v.storage.redaction import redact
from tasks.manifest import fetch_manifest

# Downloads ahead + one encode + one generation + uploads; bounded so a big manifest cannot start
# hundreds of downloads at once.
RUNNER = ThreadPoolTaskRunner(max_workers=6)


@flow(name="s2v-batch", task_runner=RUNNER, log_prints=False)
def batch(
    manifest: Annotated[str, titled("Manifest (a path, a URI, or the CSV text pasted here)")],
    output: Annotated[str, titled("Output (folder or s3://bucket/prefix)")] = "",
    defaults: Annotated[GenerationOptions, options_field()] = GenerationOptions(),
    lookahead: Internal[Annotated[int, Field(ge=1, le=16)]] = 2,
    checkpoint: Internal[str] = "",
    model_server: Internal[str] = "",
) -> State:
    """Every manifest row -> download, audio-encode, generate, upload on this worker; every row ends in the ledger.

    Args:
        manifest: a path or URI (http(s)://, s3://) of a CSV manifest, or the CSV text itself: a header line,
            then one line per clip, e.g. "image,audio,prompt" then
            "https://cdn.example.com/anna.jpg,https://cdn.example.com/hello.wav,A woman greets the viewer"
        output: local folder or s3://bucket/prefix for the videos and the ledger (empty: S2V_OUTPUT)
        defaults: generation options for the rows that leave them empty
        lookahead: rows fetched ahead of the one generating (1..16; not in the form: `s2v run --lookahead`)
        checkpoint: Wan2.2-S2V checkpoint folder (empty: S2V_CHECKPOINT of the worker; not in the form)
        model_server: Unix socket of the warm model server (empty: S2V_MODEL_SERVER of the worker; not in the form)
    """
    hide_input_error_tracebacks()
    settings = flow_settings(output, checkpoint, model_server)
    text = fetch_manifest(manifest, settings)
    chosen = defaults.model_dump(mode="json")
    parsed = parse_manifest(text, chosen, settings, manifest_id=manifest_id(text, chosen), warn=run_warning)
    parsed = check_local_files(parsed, settings)
    name = "pasted manifest" if is_csv_text(manifest) else posixpath.basename(redact(manifest).split("?")[0])
    name_run(manifest_label(manifest), len(parsed.rows) + len(parsed.invalid))
    keep_manifest(text, chosen, settings.output, settings, name=name)
    return execute_rows(f"batch {name}", parsed.rows, parsed.invalid, settings, lookahead)


@flow(name="s2v-retry-failed", task_runner=RUNNER)
def retry_failed(
    output: Annotated[str, titled("Output of earlier batches")],
    lookahead: Internal[Annotated[int, Field(ge=1, le=16)]] = 2,
    checkpoint: Internal[str] = "",
    model_server: Internal[str] = "",
) -> State:
    """Rerun every row whose latest ledger record failed or was interrupted, from whichever manifest it came.

    Args:
        output: the output location of earlier batches (local folder or s3://bucket/prefix): it holds their ledger and manifests
        lookahead: rows fetched ahead of the one generating (1..16; not in the form: `s2v run --lookahead`)
        checkpoint: Wan2.2-S2V checkpoint folder (empty: S2V_CHECKPOINT of the worker; not in the form)
        model_server: Unix socket of the warm model server (empty: S2V_MODEL_SERVER of the worker; not in the form)
    """
    hide_input_error_tracebacks()
    logger = get_run_logger()
    settings = flow_settings(output, checkpoint, model_server)
    record_dead_claims(settings.output, settings)  # rows a killed run left behind are retried too
    mark_dead_runs_crashed(settings.output, settings)
    failed = load_ledger(settings.output, settings).retryable()
    by_manifest = Counter(record.manifest for record in failed)
    logger.info("%d row(s) to retry in %s: %s", len(failed), settings.output,
                ", ".join(f"{count} from manifest {kept or 'manifest.csv'}" for kept, count in by_manifest.items()) or "none")
    rows, invalid = [], []
    for kept_id in by_manifest:
        try:
            kept = load_manifest(settings.output, kept_id, settings)
        except ManifestError as exc:  # the other manifests' rows still get their retry
            logger.error("%d row(s) cannot be retried: %s", by_manifest[kept_id], exc)
            invalid += _not_retried([r for r in failed if r.manifest == kept_id], f"cannot be retried: {exc}")
            continue
        wanted = {record.clip_id for record in failed if record.manifest == kept_id}
        parsed = parse_manifest(kept.text, kept.defaults, settings, manifest_id=kept_id, warn=run_warning)
        parsed = check_local_files(parsed, settings)
        rows += [row for row in parsed.rows if row.clip_id in wanted]
        invalid += [row for row in parsed.invalid if row.clip_id in wanted]
        missing = wanted - {row.clip_id for row in [*parsed.rows, *parsed.invalid]}
        if missing:
            logger.warning("%d failed row(s) are no longer in manifest %s: %s", len(missing), kept.id, ", ".join(sorted(missing)))
            invalid += _not_retried([r for r in failed if r.manifest == kept_id and r.clip_id in missing],
                                    f"cannot be retried: the row is no longer in manifest {kept.id}")
    # Rows of several manifests in one batch: each record names the manifest its row came from.
    name_run(f"retry {posixpath.basename(settings.output.rstrip('/')) or settings.output}", len(rows) + len(invalid))
    return execute_rows("retry", sorted(rows, key=lambda r: r.row), invalid, settings, lookahead)


def _not_retried(records, reason: str) -> list[InvalidRow]:
    """Rows a retry cannot take up end failed with the reason, so the retry does not report success."""
    return [InvalidRow(row=r.row or 0, clip_id=r.clip_id, manifest=r.manifest,
                       error=InputError("manifest", r.manifest or "manifest.csv", reason, row=r.row)) for r in records]
