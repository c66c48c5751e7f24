"""generate stage: the video on the warm model (in-process, or the model server's socket)."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import task

from s2v.settings import Settings

# Only this stage (and audio-encode) uses the GPU. The guard is per host: the warm model's lock in a
# process, the model server's one-job-at-a-time queue across the runs of a host. There is no fleet-wide
# Prefect limit, which would let N hosts generate one video at a time.


@task(name="generate-video", task_run_name="generate-video-{clip_id}")
def generate_video(clip_id: str, request, features, out_path: Path, settings: Settings) -> dict:
    """Returns {"result": GenerationResult, "seconds": float}. No Prefect retries: a failed generation is
    not transient, and a retry would spend GPU minutes on the same failure."""
    from model_runtime.client import runtime_for

    started = time.perf_counter()
    result = runtime_for(settings).generate(request, Path(out_path), features=features)
    return {"result": result, "seconds": time.perf_counter() - started}
