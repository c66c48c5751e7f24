"""A batch's outcome: its counts, and the run's final state that tells the truth about them.

Completed only when no row failed; Failed named "Partial (f of M failed)" when some did (the UI colours and
counts states by type, never by name, so a Completed named anything is a green success in the runs list and
the dashboard); Failed when all did.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from prefect.states import Completed, Failed, State

from s2v.errors import BatchFailed


def summarize(records: Sequence[dict], gpu_cost_per_hour: float) -> dict:
    counts = Counter(r["status"] for r in records)
    generation_s = sum(r.get("generation_time") or 0.0 for r in records if r["status"] == "succeeded")
    return {
        "rows": len(records),
        "succeeded": counts["succeeded"],
        "failed": counts["failed"],
        "skipped": counts["skipped"],
        "interrupted": counts["interrupted"],
        "generation_s": round(generation_s, 1),
        "estimated_cost_usd": round(generation_s / 3600 * gpu_cost_per_hour, 4),
        "tiny_checkpoint": any(r.get("tiny_checkpoint") for r in records),
    }


def final_state(summary: dict, title: str) -> State:
    """Failed when every row failed; Failed named "Partial (f of M failed)" when some did; else Completed."""
    failed = summary["failed"] + summary["interrupted"]
    rows = summary["rows"]
    if rows and failed == rows:
        message = f"{title}: all {rows} row(s) failed"
        return Failed(message=message, data=BatchFailed(message, summary))
    if failed:
        message = f"{title}: {failed} of {rows} row(s) failed, {summary['succeeded'] + summary['skipped']} made or kept"
        return Failed(message=message, name=f"Partial ({failed} of {rows} failed)", data=BatchFailed(message, summary))
    return Completed(message=f"{title}: {summary['succeeded']} succeeded, {summary['skipped']} skipped", data=summary)
