"""The clip check stage: a made clip checked on the worker's CPU while the upload runs and the next row
generates. It never fails a row: a video that is made stays made, and the check's verdict (or why it
could not run) goes in the record's qc_* fields."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger

from s2v.settings import Settings


@task(name="check-clip", task_run_name="check-clip-{clip_id}", cache_policy=NO_CACHE)
def check_clip_quality(clip_id: str, video: Path, portrait: Path | None) -> dict:
    """{"check": ClipCheck or None, "seconds": float, "error": why it could not run, or None}."""
    from s2v.quality.clip import check_clip

    started = time.perf_counter()
    try:
        check, error = check_clip(Path(video), Path(portrait) if portrait else None), None
    except Exception as exc:  # a check that cannot run says so in the record; the row stays succeeded
        check, error = None, f"{type(exc).__name__}: {exc}"
        get_run_logger().warning("clip check of %s could not run: %s", clip_id, error)
    if check is not None and check.flags:
        get_run_logger().info("clip %s flagged: %s", clip_id, check.problem())  # the summary shows it too
    return {"check": check, "seconds": time.perf_counter() - started, "error": error}


def submit_clip_check(clip_id: str, video: Path, portrait: Path | None, settings: Settings) -> PrefectFuture | None:
    """The check started beside the upload; None when S2V_CLIP_CHECK or S2V_FACE_CHECK turn it off."""
    if not settings.clip_check or settings.face_check == "off":
        return None
    return check_clip_quality.submit(clip_id, video, portrait)


def clip_check_fields(future: PrefectFuture | None, portrait) -> dict:
    """The record's qc_* fields from the portrait check and the clip check (waited for if still running)."""
    from s2v.quality.fields import qc_fields

    if future is None:
        return qc_fields(portrait, None)
    try:
        outcome = future.result()
    except Exception as exc:  # the task itself crashed: the record says so, the row stands
        return qc_fields(portrait, None, error=f"{type(exc).__name__}: {exc}")
    return qc_fields(portrait, outcome["check"], outcome["seconds"], outcome["error"])
