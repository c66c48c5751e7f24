"""RunPod serverless handler with the seed's API.

Input:  {"image_url", "audio_url", "prompt"?, "resolution"? (480p|720p), "sample_steps"? (15..50)}
Output: {"video_url", "generation_time", "total_time", "video_size_mb", "resolution", "sample_steps",
         "warm_model"}; a bad input returns {"error": "<field>=<value>: <reason>"}.

HANDLER_VERSION=v2 (default) runs the pipeline's own stages in this process against the warm model
server, which the first job starts if none is running (as the seed did). HANDLER_VERSION=v1 runs each
job as a fresh `s2v generate` process (cold, for comparison).

    python -m deployments.runpod.handler                      # on RunPod
    python deployments/runpod/handler.py --test_input '{"input": {...}}'   # locally
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from pydantic import ValidationError

from s2v.errors import InputError, S2VError
from s2v.settings import get_settings

SEED_FIELDS = ("video_url", "generation_time", "total_time", "video_size_mb", "resolution", "sample_steps", "warm_model")


def handler(job: dict) -> dict:
    started = time.perf_counter()
    try:
        return _handle(job.get("input") or {}, started)
    except S2VError as exc:
        return {"error": str(exc)}


def _handle(job_input: dict, started: float) -> dict:
    from model_runtime.request import GenerationRequest, input_error_from

    for field in ("image_url", "audio_url"):
        if not isinstance(job_input.get(field), str) or not job_input[field]:
            raise InputError(field, job_input.get(field), "required: a URL or path")
    options = {k: job_input[k] for k in ("prompt", "resolution", "sample_steps") if job_input.get(k) is not None}
    try:  # validated before anything is downloaded or the GPU is touched
        GenerationRequest.model_validate({"image_path": "-", "audio_path": "-", **options})
    except ValidationError as exc:
        raise input_error_from(exc, options) from None

    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="s2v-runpod-") as work:
        work = Path(work)
        if os.environ.get("HANDLER_VERSION", "v2") == "v1":
            result = _generate_cold(job_input, options, work, settings)
        else:
            result = _generate_warm(job_input, options, work, settings)
        from tasks.storage import put_output

        url = put_output(Path(result["video_path"]), settings.output, f"runpod/{uuid.uuid4().hex}.mp4", settings)
    return {
        "video_url": url,
        "generation_time": result["generation_time"],
        "total_time": round(time.perf_counter() - started, 3),
        "video_size_mb": result["video_size_mb"],
        "resolution": result["resolution"],
        "sample_steps": result["sample_steps"],
        "warm_model": result["warm_model"],
    }


def _fetch(job_input: dict, work: Path, settings):
    from tasks.download import check_audio, check_image
    from tasks.storage import fetch_input

    image = fetch_input(job_input["image_url"], work / "inputs", "image", settings)
    audio = fetch_input(job_input["audio_url"], work / "inputs", "audio", settings)
    check_image(image)
    check_audio(audio, settings.max_audio_seconds)
    return image.path, audio.path


def _generate_warm(job_input: dict, options: dict, work: Path, settings) -> dict:
    from model_runtime.client import ServerRuntime
    from model_runtime.request import GenerationRequest

    image, audio = _fetch(job_input, work, settings)
    request = GenerationRequest(image_path=image, audio_path=audio, **options)
    return ServerRuntime(settings).generate(request, work / "video.mp4").model_dump(mode="json")


def _generate_cold(job_input: dict, options: dict, work: Path, settings) -> dict:
    image, audio = _fetch(job_input, work, settings)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    proc = subprocess.run(
        [sys.executable, "-c", "from s2v.cli import app; app()", "generate", "--image", str(image), "--audio",
         str(audio), "--out", str(work / "video.mp4"), *args],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise S2VError(proc.stderr.strip().removeprefix("error: ")[-2000:])
    return json.loads(proc.stdout)


if __name__ == "__main__":
    import runpod

    runpod.serverless.start({"handler": handler})
