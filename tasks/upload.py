"""The upload stage: put one row's finished files (the video, its poster) in the configured store."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from s2v.settings import Settings
from s2v.storage.locations import output_location
from s2v.storage.outputs import put_output
from tasks.io_retries import IO_TASK_OPTIONS


@task(name="upload-video", **IO_TASK_OPTIONS)
def upload_video(files: dict[str, tuple[Path, str]], output: str, settings: Settings) -> dict[str, str]:
    """Put each `key: (local file, content type)` at `output`/key; returns the URL to hand out per key.

    Retried only on transient storage errors. `s2v.storage.locations.output_location(output, key)`
    gives the stored location for the ledger (a URL may be presigned and expire).
    """
    urls = {}
    for key, (path, content_type) in files.items():
        urls[key] = put_output(Path(path), output, key, settings, content_type=content_type)
        get_run_logger().info("uploaded %s to %s", Path(path).name, output_location(output, key))
    return urls
