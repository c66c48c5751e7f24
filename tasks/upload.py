"""The upload stage: put one finished video in the configured store and return its URL."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from s2v.settings import Settings, get_settings
from tasks.io_retries import IO_TASK_OPTIONS
from s2v.storage.locations import output_location
from s2v.storage.outputs import put_output


@task(name="upload-video", **IO_TASK_OPTIONS)
def upload_video(
    video_path: Path,
    key: str,
    output: str | None = None,
    settings: Settings | None = None,
    content_type: str = "video/mp4",
) -> str:
    """Put `video_path` at `output`/`key` (default `settings.output`) and return the URL to hand out.

    Retried only on transient storage errors. `s2v.storage.locations.output_location(output, key)` gives
    the stored location for the ledger (the URL may be presigned and expire).
    """
    settings = settings or get_settings()
    output = output or settings.output
    url = put_output(Path(video_path), output, key, settings, content_type=content_type)
    get_run_logger().info("uploaded %s to %s", Path(video_path).name, output_location(output, key))
    return url
