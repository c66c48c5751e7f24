"""Prefect artifacts of a batch: the ledger as a table, a summary with the cost, a link per video."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

_TABLE_COLUMNS = (
    "row", "clip_id", "status", "error", "url", "generation_time", "total_time", "video_size_mb",
    "warm_model", "resolution", "sample_steps", "seed", "attempts", "worker",
)


def summarize(records: Sequence[dict], gpu_cost_per_hour: float) -> dict:
    counts = Counter(r["status"] for r in records)
    generation_s = sum(r.get("generation_time") or 0.0 for r in records if r["status"] == "succeeded")
    return {
        "rows": len(records),
        "succeeded": counts["succeeded"],
        "failed": counts["failed"],
        "skipped": counts["skipped"],
        "generation_s": round(generation_s, 1),
        "estimated_cost_usd": round(generation_s / 3600 * gpu_cost_per_hour, 4),
    }


def summary_markdown(summary: dict, gpu_cost_per_hour: float, ledger_location: str) -> str:
    return "\n".join([
        "## S2V batch",
        "",
        "| rows | succeeded | failed | skipped | generation time | estimated GPU cost |",
        "|---|---|---|---|---|---|",
        f"| {summary['rows']} | {summary['succeeded']} | {summary['failed']} | {summary['skipped']} "
        f"| {summary['generation_s']:.1f} s | ${summary['estimated_cost_usd']:.4f} at ${gpu_cost_per_hour:.2f}/h |",
        "",
        f"Ledger: `{ledger_location}`",
    ])


def publish_batch_artifacts(records: Sequence[dict], gpu_cost_per_hour: float, ledger_location: str) -> dict:
    summary = summarize(records, gpu_cost_per_hour)
    create_table_artifact(
        key="s2v-ledger",
        table=[{column: record.get(column) for column in _TABLE_COLUMNS} for record in records],
        description="One row per manifest row: status, URL, timings",
    )
    create_markdown_artifact(
        key="s2v-summary", markdown=summary_markdown(summary, gpu_cost_per_hour, ledger_location)
    )
    for record in records:
        if record["status"] == "succeeded" and record.get("url"):
            create_link_artifact(link=record["url"], link_text=f"{record['clip_id']}.mp4",
                                 description=f"row {record['row']}")
    return summary
