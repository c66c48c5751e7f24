"""generate stage: the video on the warm model (in-process, or the model server's socket)."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import task

from s2v.settings import Settings

# Only this stage holds the GPU: a Prefect tag concurrency limit named "gpu" (created on the server,
# see README) caps it across flow runs; inside a process the warm model's lock and the server's queue
# are the real guard, which stays right even if a killed run orphans a Prefect slot.
GPU_TAG = "gpu"


@task(name="generate-video", task_run_name="generate-video-{clip_id}", tags=[GPU_TAG])
def generate_video(clip_id: str, request, features, out_path: Path, settings: Settings):
    """Returns the runtime's GenerationResult. No Prefect retries: a failed generation is not transient,
    and a retry would spend GPU minutes on the same failure."""
    from model_runtime.client import runtime_for

    started = time.perf_counter()
    result = runtime_for(settings).generate(request, Path(out_path), features=features)
    return {"result": result, "seconds": time.perf_counter() - started}
