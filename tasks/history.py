"""The resume check: what earlier runs already did for a row, read from the ledger before any GPU work."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task

from tasks.download import DownloadedInputs
from tasks.io_retries import IO_TASK_OPTIONS

if TYPE_CHECKING:  # the flows hand the ledger in; tasks sit below flows
    from records.ledger import LedgerRecord, LedgerStore


@dataclass(frozen=True)
class RowHistory:
    attempts: int  # earlier runs that worked on the row (skips are no attempt)
    done: "LedgerRecord | None"  # its video exists, made from the same inputs and options: skip the row
    kept: "LedgerRecord | None"  # a video made earlier whose upload failed, still on this worker: upload it


@task(name="read-row-history", task_run_name="read-row-history-{clip_id}", **IO_TASK_OPTIONS)
def read_row_history(store: "LedgerStore", clip_id: str, inputs: DownloadedInputs, options_hash: str) -> RowHistory:
    """Storage errors retry like any I/O; if they persist, the row fails alone and the batch goes on."""
    records = store.clip_records(clip_id)
    done = store.find_done(clip_id, inputs.image_sha256, inputs.audio_sha256, options_hash, records)
    same = (inputs.image_sha256, inputs.audio_sha256, options_hash)
    kept = next((r for r in reversed(records)
                 if r.kept_video and (r.image_sha256, r.audio_sha256, r.options_hash) == same
                 and _holds(Path(r.kept_video), r.video_sha256)), None)
    return RowHistory(attempts=sum(1 for r in records if r.status != "skipped"), done=done, kept=kept)


def _holds(path: Path, sha256: str | None) -> bool:
    """The kept file is here and is the video that was made (checked by content hash)."""
    if not sha256 or not path.is_file():
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == sha256
