"""What an operator sees of a batch in the Prefect UI, kept current as rows end.

Per run, with readable keys in reading order, named after the output (so two outputs never overwrite
each other's cards; `1-progress-videos-nightly-3fa2`):
- progress with live counts: "k/M ended: s made, k already made, f failed, w waiting";
- the ledger as a table, one row per manifest row in manifest order, clip, status, link, error, seconds first;
- the videos: per row (manifest order) its clip id, status, a picture of it and a link a browser can
  open (presigned or public URL for S3/R2; for a local output the path, which is on the worker);
- at the end, a summary with the cost estimate and a contact sheet (flows/contact_sheet.py).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.contact_sheet import contact_sheet, picture_source
from flows.outcome import summarize
from records.ledger import LedgerRecord
from s2v.quality.fields import qc_flag_text
from s2v.settings import Settings
from s2v.storage.outputs import put_output

log = logging.getLogger(__name__)

# (heading, ledger field): what a person looks for first leads, so it fits the screen; the rest follows.
TABLE_COLUMNS = (
    ("clip", "clip_id"), ("status", "status"), ("link", "url"), ("error", "error"), ("seconds", "total_time"),
    ("row", "row"), ("flagged", "qc_flags"), ("portrait check", "qc_portrait"), ("generation s", "generation_time"),
    ("video s", "duration"), ("width", "width"), ("height", "height"), ("MB", "video_size_mb"),
    ("warm model", "warm_model"), ("tiny checkpoint", "tiny_checkpoint"), ("resolution", "resolution"), ("size", "size"),
    ("mode", "mode"), ("steps", "sample_steps"), ("seed", "seed"), ("attempts", "attempts"), ("worker", "worker"),
)
INLINE_SHEET_CLIPS = 48  # a picture inlined into a card stays a few hundred KB
TINY_NOTE = ("**Made with the tiny random-weight test checkpoint: these videos are coloured noise.** "
             "Set S2V_CHECKPOINT to the Wan2.2-S2V-14B folder for real videos.")


CARDS = ("progress", "ledger", "videos", "summary")  # the order a person reads them in


def artifact_key(output: str, name: str) -> str:
    """A readable key (lower-case letters, digits and dashes): the card's place and name, then the output's
    last two path parts and 4 hex of its whole URI, so two outputs never share cards; e.g.
    `2-ledger-videos-nightly-3fa2`."""
    tail = re.sub(r"[^a-z0-9]+", "-", "/".join(output.rstrip("/").split("/")[-2:]).lower()).strip("-")[-40:]
    digest = hashlib.sha256(output.encode()).hexdigest()[:4]
    return f"{CARDS.index(name) + 1}-{name}-{tail.strip('-') or 'output'}-{digest}"


class BatchReport:
    """The run's cards, created when the batch starts and updated as each row ends."""

    def __init__(self, title: str, clip_ids: Sequence[str], settings: Settings, shared: bool = True):
        """`shared`: cards keyed by the output (the latest batch into an output shows under its keys);
        a row run of the fleet keeps its cards to itself."""
        from prefect.client.orchestration import get_client

        self.title, self.settings = title, settings
        self.output, self.gpu_cost_per_hour = settings.output, settings.gpu_cost_per_hour
        output = self.output
        self.order = list(dict.fromkeys(clip_ids))
        self.key = (lambda name: artifact_key(output, name)) if shared else (lambda name: None)
        self.records: dict[str, dict] = {}
        self.pictures: dict[str, str] = {}  # clip id -> image source the UI can show
        self._client = get_client(sync_client=True)
        self.progress_id = create_progress_artifact(
            progress=0.0, key=self.key("progress"), description=self._progress_text())
        self.table_id = create_table_artifact(
            key=self.key("ledger"), table=self._table(), description=f"{title}: the ledger, in manifest order")
        self.videos_id = create_markdown_artifact(
            key=self.key("videos"), markdown=self._videos_markdown(), description=f"{title}: the videos")

    def row_ended(self, record: LedgerRecord, publish: bool = True) -> None:
        """Take the row's record; `publish=False` leaves the cards for one `publish()` after many rows."""
        data = record.model_dump(mode="json")
        if record.clip_id not in self.order:
            self.order.append(record.clip_id)
        self.records[record.clip_id] = data
        picture = picture_source(record, self.settings)
        if picture:
            self.pictures[record.clip_id] = picture
        if publish:
            self.publish()

    def publish(self) -> None:
        ended = sum(1 for clip_id in self.order if clip_id in self.records)
        update_progress_artifact(self.progress_id, progress=100.0 * ended / max(len(self.order), 1),
                                 description=self._progress_text())
        self._update(self.table_id, json.dumps(self._table()))
        self._update(self.videos_id, self._videos_markdown())

    def fleet_progress(self, ended: int, total: int) -> None:
        """Progress of rows handed to the fleet, before their records are read back."""
        update_progress_artifact(self.progress_id, progress=100.0 * ended / max(total, 1),
                                 description=f"{self.title}: {ended}/{total} row runs ended")

    def finish(self, sheet_key: str) -> dict:
        """The summary card, with the contact sheet stored at `sheet_key` under the output; the summary."""
        records = [self.records[c] for c in self.order if c in self.records]
        summary = summarize(records, self.gpu_cost_per_hour)
        sheet = None
        if records:
            try:
                sheet = self._store_contact_sheet(records, sheet_key)
            except Exception as exc:  # a picture must never fail a batch whose videos are made
                log.warning("contact sheet not made: %s: %s", type(exc).__name__, exc)
        create_markdown_artifact(key=self.key("summary"),
                                 markdown=self._summary_markdown(summary, sheet),
                                 description=f"{self.title}: summary")
        return summary

    def _store_contact_sheet(self, records: list[dict], key: str) -> str:
        with tempfile.TemporaryDirectory(prefix="s2v-sheet-") as tmp:
            path = Path(tmp) / "sheet.jpg"
            path.write_bytes(contact_sheet(records, self.settings))
            url = put_output(path, self.output, key, self.settings, content_type="image/jpeg")
            if url.startswith(("http://", "https://")):
                return url
            # A local output: the browser cannot load the worker's file, so the picture travels inline.
            shown = records[:INLINE_SHEET_CLIPS]
            return "data:image/jpeg;base64," + base64.b64encode(contact_sheet(shown, self.settings)).decode()

    # ---- rendering ---------------------------------------------------------------------------------

    def _counts_text(self) -> str:
        """Live counts, for the cards a person reads while the batch runs."""
        statuses = Counter(self.records[c]["status"] for c in self.order if c in self.records)
        failed = statuses["failed"] + statuses["interrupted"]
        waiting = len(self.order) - sum(statuses.values())
        return (f"{sum(statuses.values())}/{len(self.order)} ended: {statuses['succeeded']} made, "
                f"{statuses['skipped']} already made, {failed} failed, {waiting} waiting")

    def _progress_text(self) -> str:
        return f"{self.title}: {self._counts_text()}"

    def _table(self) -> list[dict[str, Any]]:
        rows = []
        for clip_id in self.order:
            record = self.records.get(clip_id, {"clip_id": clip_id, "status": "waiting"})
            rows.append({heading: record.get(field) for heading, field in TABLE_COLUMNS})
        return rows

    def _videos_markdown(self) -> str:
        lines = [f"## {self.title}: videos", "", f"**{self._counts_text()}**", ""]
        if any(r.get("tiny_checkpoint") for r in self.records.values()):
            lines += [TINY_NOTE, ""]
        local = not self.output.startswith("s3://")
        for clip_id in self.order:
            record = self.records.get(clip_id)
            if record is None:
                lines += [f"### {clip_id}", "waiting", ""]
                continue
            lines.append(f"### {clip_id} ({record['status']})")
            if flags := qc_flag_text(record):
                lines.append(f"**Flagged for a look:** {_one_line(flags)}")
            if clip_id in self.pictures:
                lines.append(f"![{clip_id}]({self.pictures[clip_id]})")
            if record["status"] in ("succeeded", "skipped") and record.get("url"):
                if local and not record["url"].startswith(("http://", "https://")):
                    lines.append(f"Stored on the worker's disk at `{record['url']}` (not reachable from a browser; "
                                 "set S2V_PUBLIC_BASE_URL or use an s3:// output for links)")
                else:
                    lines.append(f"[{Path(record['url'].split('?')[0]).name}]({record['url']})")
            elif record.get("error"):
                lines.append(f"`{_one_line(record['error'])}`")
            lines.append("")
        return "\n".join(lines)

    def _summary_markdown(self, summary: dict, sheet: str | None) -> str:
        failed = summary["failed"] + summary["interrupted"]
        lines = [
            f"## {self.title}",
            "",
            f"| rows | succeeded | failed | skipped | generation time | {self._cost_heading()} |",
            "|---|---|---|---|---|---|",
            f"| {summary['rows']} | {summary['succeeded']} | {failed} | {summary['skipped']} "
            f"| {summary['generation_s']:.1f} s | ${summary['estimated_cost_usd']:.4f} at ${self.gpu_cost_per_hour:.2f}/h |",
            "",
            f"Output: `{self.output}` (ledger: `results.jsonl`, `results.csv`)",
        ]
        if summary["tiny_checkpoint"]:
            lines += ["", TINY_NOTE]
        if sheet:
            if sheet.startswith("data:") and summary["rows"] > INLINE_SHEET_CLIPS:
                lines += ["", f"Contact sheet (the first {INLINE_SHEET_CLIPS} of {summary['rows']} clips; the whole "
                              "sheet is under `contact-sheets/` in the output):"]
            lines += ["", f"![contact sheet]({sheet})"]
        return "\n".join(lines)

    def _cost_heading(self) -> str:
        # S2V_GPU_COST_PER_HOUR prices the generation time; on a CPU run there was no GPU to pay for.
        return "estimated cost (CPU run)" if self.settings.device == "cpu" else "estimated GPU cost"

    def _update(self, artifact_id, data: str) -> None:
        from prefect.client.schemas.actions import ArtifactUpdate

        self._client.update_artifact(artifact_id=artifact_id, artifact=ArtifactUpdate(data=data))


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split()).replace("`", "'")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
