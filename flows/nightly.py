"""The nightly batch: every manifest waiting in the inbox, its rows handed to the GPU fleet.

Runs on the CPU control pool and never loads a model. Each manifest goes to `<output>/<its name>`,
then moves to done/ (or failed/ when it cannot be used at all) so it never runs twice. A night that died
(its control host lost: the heartbeat automation marks it Crashed) leaves its manifest in processing/:
the next nightly run takes it first and watches the row runs still open for it instead of handing those
rows out again (flows/fleet.py), and the ledger's resume skips the rows already made. With no GPU worker
online the manifest stays in processing/ too, and the night ends Failed naming the pool.
"""
from __future__ import annotations

import posixpath
from typing import Annotated

from prefect import flow
from prefect.logging import get_run_logger
from pydantic import Field

from flows.context import flow_settings
from flows.fleet import ROW_DEPLOYMENT, FleetLimits
from flows.form import Internal, options_field, titled
from flows.logs import hide_input_error_tracebacks
from flows.scale_out import run_on_fleet
from model_runtime.request import GenerationOptions
from records.inbox import Inbox
from s2v.errors import BatchFailed, NoGpuWorker, S2VError, TransientError
from s2v.storage.locations import output_location
from s2v.storage.reachability import check_output_reachable, with_start_retries
from tasks.manifest import read_inbox_manifest


@flow(name="s2v-nightly")
def nightly(
    inbox: Annotated[str, titled("Inbox (folder or s3:// prefix of waiting manifests)")],
    output: Annotated[str, titled("Output (root folder or s3://bucket/prefix)")] = "",
    defaults: Annotated[GenerationOptions, options_field()] = GenerationOptions(),
    max_wait_hours: Annotated[float, titled("Hours to wait at most, per manifest", gt=0, le=72)] = 12.0,
    checkpoint: Internal[str] = "",
    model_server: Internal[str] = "",
    row_deployment: Internal[str] = ROW_DEPLOYMENT,
    shards: Internal[Annotated[int, Field(ge=0, le=64)]] = 0,
) -> list[dict]:
    """Run each waiting manifest on the GPU fleet, then move it to done/ (or failed/) so it never runs twice.

    Args:
        inbox: folder or s3:// prefix where manifests (*.csv) wait
        output: root of the outputs; each manifest gets a folder named after it (empty: S2V_OUTPUT)
        defaults: generation options for the rows that leave them empty
        max_wait_hours: each manifest's rows end by then, whatever the fleet does
        checkpoint: Wan2.2-S2V checkpoint folder for the GPU workers (empty: their S2V_CHECKPOINT)
        model_server: Unix socket of the GPU workers' model servers (empty: their S2V_MODEL_SERVER)
        row_deployment: the deployment that makes one row on a GPU worker
        shards: not used any more (rows are handed out one by one as workers free up); kept so older scripts still run
    """
    hide_input_error_tracebacks()
    logger = get_run_logger()
    settings = flow_settings(output, makes_videos=False)
    box = Inbox(inbox, settings)
    # Storage that is down now is tried again, then the night stops in one line with every manifest
    # left in the inbox: an outage must not send tonight's manifests to failed/.
    waiting = with_start_retries("the inbox", inbox, box.waiting)
    check_output_reachable(settings)
    results = []
    for path in waiting:
        claimed = box.claim(path)
        stem = posixpath.splitext(posixpath.basename(claimed))[0]
        target = output_location(settings.output, stem)
        try:
            text = read_inbox_manifest(box.uri(claimed), settings)
            state = run_on_fleet(f"nightly {stem}", text, posixpath.basename(claimed), defaults,
                                 settings.model_copy(update={"output": target}), FleetLimits(max_wait_s=max_wait_hours * 3600),
                                 checkpoint, model_server, row_deployment)
            summary = state.result(raise_on_failure=False)
            if isinstance(summary, BatchFailed):
                summary = summary.summary
        except (TransientError, NoGpuWorker) as exc:  # storage or the GPU fleet away: it waits in processing/
            logger.error("manifest %s stays in the inbox for the next night: %s", posixpath.basename(claimed), exc)
            results.append({"manifest": stem, "output": target, "error": str(exc)})
            if isinstance(exc, NoGpuWorker):  # the other manifests would wait for nobody too
                raise
            break
        except S2VError as exc:  # this manifest is unusable; the others still run tonight
            logger.error("manifest %s failed: %s", posixpath.basename(claimed), exc)
            box.finish(claimed, ok=False)
            results.append({"manifest": stem, "output": target, "error": str(exc)})
            continue
        moved = box.finish(claimed, ok=True)
        logger.info("manifest %s done (%s succeeded, %s failed) -> %s", stem, summary["succeeded"], summary["failed"], moved)
        results.append({"manifest": stem, "output": target,
                        **{k: summary[k] for k in ("succeeded", "failed", "skipped", "interrupted")}})
    if not results:
        logger.info("inbox %s is empty", inbox)
    return results
