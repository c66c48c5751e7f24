"""The nightly batch: every manifest waiting in the inbox, one after another."""
from __future__ import annotations

import posixpath
from typing import Annotated

from prefect import flow
from prefect.logging import get_run_logger
from pydantic import Field

from flows.batch import batch, flow_settings
from flows.inbox import Inbox
from flows.logs import hide_input_error_tracebacks
from flows.scale_out import scale_out
from model_runtime.request import GenerationOptions
from s2v.errors import S2VError
from s2v.storage.locations import output_location


@flow(name="s2v-nightly")
def nightly(
    inbox: str,
    output: str | None = None,
    shards: Annotated[int, Field(ge=1, le=64)] = 1,
    defaults: GenerationOptions = GenerationOptions(),
    checkpoint: str | None = None,
    model_server: str | None = None,
) -> list[dict]:
    """Run each waiting manifest as a batch, then move it to done/ (or failed/) so it never runs twice.

    Args:
        inbox: folder or s3:// prefix where manifests (*.csv) wait
        output: root of the outputs; each manifest gets a folder named after it (default S2V_OUTPUT)
        shards: GPU workers to spread each manifest over (1: one worker runs it)
        defaults: generation options for the rows that leave them empty
        checkpoint: Wan2.2-S2V checkpoint folder (default S2V_CHECKPOINT)
        model_server: Unix socket of the warm model server (default S2V_MODEL_SERVER)
    """
    hide_input_error_tracebacks()
    logger = get_run_logger()
    settings = flow_settings(output, checkpoint, model_server)
    box = Inbox(inbox, settings)
    results = []
    for path in box.waiting():
        claimed = box.claim(path)
        stem = posixpath.splitext(posixpath.basename(claimed))[0]
        target = output_location(settings.output, stem)
        common = dict(manifest=box.uri(claimed), output=target, defaults=defaults,
                      checkpoint=checkpoint, model_server=model_server)
        try:
            summary = batch(**common) if shards == 1 else scale_out(shards=shards, **common)
        except S2VError as exc:  # this manifest is unusable; the others still run tonight
            logger.error("manifest %s failed: %s", posixpath.basename(claimed), exc)
            box.finish(claimed, ok=False)
            results.append({"manifest": stem, "output": target, "error": str(exc)})
            continue
        moved = box.finish(claimed, ok=True)
        logger.info("manifest %s done (%s succeeded, %s failed) -> %s", stem, summary["succeeded"], summary["failed"], moved)
        results.append({"manifest": stem, "output": target, **{k: summary[k] for k in ("succeeded", "failed", "skipped")}})
    if not results:
        logger.info("inbox %s is empty", inbox)
    return results
