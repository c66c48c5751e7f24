"""`s2v-retry-flagged`: remake the clips the clip check flagged, each with a new seed.

A flagged clip is a made video a person should look at (no face, a drifting face, a mouth that does
not follow the speech). Another seed is the cheap second try; the new record supersedes the flagged one
and the video is stored under the same name. A clip whose portrait already failed its face check is left
alone: a new seed cannot give a picture the face it lacks.
"""
from __future__ import annotations

import secrets
from collections import defaultdict
from typing import Annotated

from prefect import flow
from prefect.logging import get_run_logger
from prefect.states import State
from pydantic import Field

from flows.batch import RUNNER
from flows.context import flow_settings
from flows.execute import execute_rows
from flows.form import Internal, titled
from flows.logs import hide_input_error_tracebacks, run_warning
from records.kept_manifests import load_manifest
from records.ledger import LedgerRecord, load_ledger
from records.manifest import ClipRow, options_hash_of, parse_manifest
from s2v.errors import ManifestError
from s2v.settings import Settings


@flow(name="s2v-retry-flagged", task_runner=RUNNER)
def retry_flagged(
    output: Annotated[str, titled("Output of earlier batches")],
    lookahead: Internal[Annotated[int, Field(ge=1, le=16)]] = 2,
    checkpoint: Internal[str] = "",
    model_server: Internal[str] = "",
) -> State:
    """Remake, each with a new seed, every clip whose latest video the clip check flagged.

    Args:
        output: the output location of earlier batches (local folder or s3://bucket/prefix)
        lookahead: rows fetched ahead of the one generating (1..16; not in the form: `s2v run --lookahead`)
        checkpoint: Wan2.2-S2V checkpoint folder (empty: S2V_CHECKPOINT of the worker; not in the form)
        model_server: Unix socket of the warm model server (empty: S2V_MODEL_SERVER of the worker; not in the form)
    """
    hide_input_error_tracebacks()
    settings = flow_settings(output, checkpoint, model_server)
    rows = flagged_rows(load_ledger(settings.output, settings).flagged(), settings)
    return execute_rows("retry flagged", rows, [], settings, lookahead)


def flagged_rows(flagged: list[LedgerRecord], settings: Settings) -> list[ClipRow]:
    """The manifest rows of `flagged` records whose portrait passed, each with a seed none of them had."""
    logger = get_run_logger()
    by_manifest: dict[str | None, dict[str, LedgerRecord]] = defaultdict(dict)
    for record in flagged:
        if record.qc_portrait:
            logger.warning("clip %s not remade: its portrait failed the face check (%s)", record.clip_id,
                           record.qc_portrait)
        else:
            by_manifest[record.manifest][record.clip_id] = record
    rows = []
    for kept_id, wanted in by_manifest.items():
        try:
            kept = load_manifest(settings.output, kept_id, settings)
        except ManifestError as exc:  # the other manifests' clips are still remade
            logger.error("%d flagged clip(s) cannot be remade: %s", len(wanted), exc)
            continue
        parsed = parse_manifest(kept.text, kept.defaults, settings, manifest_id=kept_id, warn=run_warning)
        rows += [with_new_seed(row, wanted[row.clip_id].seed) for row in parsed.rows if row.clip_id in wanted]
    return sorted(rows, key=lambda row: row.row)


def with_new_seed(row: ClipRow, old_seed: int | None) -> ClipRow:
    """The row with a random seed other than `old_seed`; its options hash follows, so no resume skips it."""
    seed = old_seed
    while seed == old_seed:
        seed = secrets.randbelow(2**32)
    options = row.options().model_copy(update={"seed": seed})
    return row.model_copy(update={"seed": seed, "options_hash": options_hash_of(options.model_dump(mode="json"))})
