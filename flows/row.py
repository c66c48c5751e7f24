"""One manifest row on one GPU worker (`s2v-row`): the unit the fleet hands out (flows/fleet.py)."""
from __future__ import annotations

from prefect import flow
from prefect.states import State

from flows.batch import RUNNER
from flows.context import flow_settings
from flows.execute import execute_rows
from flows.logs import hide_input_error_tracebacks, run_warning
from records.kept_manifests import load_manifest_row
from records.manifest import ClipRow, Manifest, check_local_files
from records.row_checks import FILE_FIELDS


@flow(name="s2v-row", task_runner=RUNNER)
def row(output: str, manifest: str, clip_id: str, row: int = 0, checkpoint: str = "", model_server: str = "",
        files: dict[str, str] = {}) -> State:  # noqa: B006 (Prefect copies parameters; never mutated here)
    """Make the video of one row of a manifest kept under the output; its record joins the output's ledger.

    Args:
        output: the output location (local folder or s3://bucket/prefix) that keeps the manifest under manifests/
        manifest: id of the kept manifest (manifests/<id>.csv)
        clip_id: the row's clip id
        row: the row's number in the manifest (shown in the run's name)
        checkpoint: Wan2.2-S2V checkpoint folder (empty: S2V_CHECKPOINT of the worker)
        model_server: Unix socket of the warm model server (empty: S2V_MODEL_SERVER of the worker)
        files: the row's file URIs as its manifest gave them, credentials included (the kept copy has none)
    """
    hide_input_error_tracebacks()
    settings = flow_settings(output, checkpoint, model_server)
    # The host's parse of the manifest, read for this row alone: the other rows are other runs' work.
    found = load_manifest_row(settings.output, manifest, clip_id, settings, warn=run_warning)
    if isinstance(found, ClipRow):
        given = {name: uri for name, uri in files.items() if name in FILE_FIELDS}
        one = check_local_files(Manifest(rows=[found.model_copy(update=given)], invalid=[]), settings)
    else:
        one = Manifest(rows=[], invalid=[found])
    # The parent refreshes the output's views; a row run only adds its record.
    return execute_rows(f"row {found.row} ({clip_id})", one.rows, one.invalid, settings, lookahead=1,
                        compact=False, shared_cards=False)
