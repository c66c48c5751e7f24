"""Flow runs named after what they ran (`nightly/2026-11-29.csv · 412 rows`), so the UI's runs list says which
manifest a batch was; Prefect's default names (`adamant-pegasus`) say nothing."""
from __future__ import annotations

import logging

from records.manifest_text import is_csv_text
from s2v.storage.redaction import redact

log = logging.getLogger(__name__)


def manifest_label(manifest: str) -> str:
    """The manifest's last folder and file name, with any signature or credential left out."""
    if is_csv_text(manifest):
        return "pasted manifest"
    path = redact(manifest).split("?")[0].rstrip("/")
    return "/".join(part for part in path.split("/")[-2:] if part and not part.endswith(":"))


def name_run(label: str, rows: int) -> None:
    """Rename this flow run once its size is known; the name is a courtesy, so a failure only logs."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id=flow_run.id, name=f"{label} · {rows} row{'s' if rows != 1 else ''}")
    except Exception as exc:  # the batch matters more than its name in a list
        log.warning("flow run not renamed: %s: %s", type(exc).__name__, exc)
