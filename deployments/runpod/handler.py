"""RunPod serverless handler with the original server's API.

Input:  {"image_url", "audio_url", "prompt"?, "resolution"? (480p|720p), "sample_steps"? (15..50),
         "negative_prompt"?, "seed"?, "guidance_scale"?}; other keys are ignored, as the original server did.
Output: {"video_url", "generation_time", "total_time", "video_size_mb", "resolution", "sample_steps",
         "warm_model"}; a bad input returns {"error": "<field>=<value>: <reason>"}.

Every field that names a file (image_url, audio_url, and the options lora and pose_video) is a URL
(http(s)://, s3://) fetched and checked here, before the model server sees the job. Local paths and
file:// are refused before the filesystem is touched, unless the operator names the folders they may
come from in S2V_INPUT_ROOTS (S2V_LOCAL_INPUTS does not apply here: a caller must not read the worker's
files); outside them, an existing and a missing path get the same reply, and no reply quotes a file's
content. Input copies live in a temporary folder removed when the job ends; replies name inputs by
their source, never by those copies.
The worker refuses to start without S2V_CHECKPOINT (S2V_CHECKPOINT=tiny: the tiny test checkpoint).

HANDLER_VERSION=v2 (default) runs the pipeline's own stages in this process against the warm model
server, which the first job starts if none is running (as the original server did). HANDLER_VERSION=v1 runs each
job as a fresh `s2v generate` process (cold, for comparison).

    python -m deployments.runpod.handler                                  # on RunPod
    python deployments/runpod/handler.py --test_input '{"input": {...}}'  # locally
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from s2v.errors import InputError, S2VError
from s2v.settings import TINY, Settings, get_settings, load_settings

if TYPE_CHECKING:
    from model_runtime.request import GenerationRequest
    from s2v.storage.fetch import FetchedInput

log = logging.getLogger("s2v.runpod")
URL_FIELDS = ("image_url", "audio_url")
FILE_FIELDS = (*URL_FIELDS, "lora", "pose_video")  # each one fetched by _fetch, never passed on as given


def handler(job: dict) -> dict:
    started = time.perf_counter()
    try:
        return _handle(job.get("input"), started)
    except S2VError as exc:
        return {"error": str(exc)}
    except Exception as exc:
        # The SDK would hand an uncaught exception's traceback to the caller; it stays in the worker log.
        log.exception("job %s failed", job.get("id"))
        return {"error": f"internal error ({type(exc).__name__}); the worker log has the details of job {job.get('id')}"}


def _handle(job_input: object, started: float) -> dict:
    from model_runtime.request import GenerationOptions, GenerationRequest
    from s2v.storage.outputs import put_output

    if not isinstance(job_input, dict):
        raise InputError("input", job_input, "must be a JSON object")
    for field in URL_FIELDS:
        if not isinstance(job_input.get(field), str) or not job_input[field].strip():
            raise InputError(field, job_input.get(field), "required: a URL (http(s)://, s3://)")
    options = {k: v for k, v in job_input.items() if k in GenerationOptions.model_fields and v is not None}
    # Validated before anything is downloaded or the model server is started; the paths come later.
    request = GenerationRequest.parse({"image_path": job_input["image_url"], "audio_path": job_input["audio_url"], **options})

    settings = load_settings(local_inputs=False)
    with tempfile.TemporaryDirectory(prefix="s2v-runpod-") as work:
        work = Path(work)
        inputs: tuple[FetchedInput, ...] = ()
        try:
            inputs = _fetch(job_input, work, settings)
            image, audio, *option_files = inputs
            request = request.model_copy(update={
                "image_path": image.path, "audio_path": audio.path,
                # The model server reads only the checked copies, never a path the caller named.
                **{fetched.field: str(fetched.path) for fetched in option_files},
            })
            video = work / "video.mp4"
            if os.environ.get("HANDLER_VERSION", "v2") == "v1":
                result = _generate_cold(request, video)
            else:
                result = _generate_warm(request, video, settings)
            url = put_output(video, settings.output, f"runpod/{uuid.uuid4().hex}.mp4", settings)
        except S2VError as exc:
            # The runtime names the copies it was given; the caller knows its inputs by their URLs.
            raise S2VError(_without_work_paths(str(exc), work, inputs)) from None
    return {
        "video_url": url,
        "generation_time": result["generation_time"],
        "total_time": round(time.perf_counter() - started, 3),  # download and upload included
        "video_size_mb": result["video_size_mb"],
        "resolution": result["resolution"],
        "sample_steps": result["sample_steps"],
        "warm_model": result["warm_model"],
    }


def _fetch(job_input: dict, work: Path, settings: Settings) -> tuple[FetchedInput, ...]:
    """The download stage's steps (tasks/download.py) without its Prefect task wrapper: every field
    that names a file, fetched under the one input policy and checked (a LoRA by its header against
    this model's DiT), before the model server sees the job."""
    from records.row_checks import check_fetched
    from s2v.storage.fetch import fetch_input

    fetched = []
    for field in FILE_FIELDS:
        if job_input.get(field):
            fetched.append(fetch_input(str(job_input[field]), work / "inputs", field, settings))
            check_fetched(fetched[-1], settings)
    return tuple(fetched)


def _without_work_paths(message: str, work: Path, inputs: tuple[FetchedInput, ...]) -> str:
    for fetched in inputs:
        message = message.replace(str(fetched.path), fetched.source)
    for folder in {str(work), os.path.realpath(work)}:
        message = message.replace(folder, "<job folder>")
    return message


def _generate_warm(request: GenerationRequest, video: Path, settings: Settings) -> dict:
    """v2: the warm model server encodes the speech and generates (started by the first job if needed)."""
    from model_runtime.client import ServerRuntime

    # One call: the client knows whether it had to start (load) the server for it, which is what
    # warm_model reports.
    return ServerRuntime(settings).generate(request, video).model_dump(mode="json")


def _generate_cold(request: GenerationRequest, video: Path) -> dict:
    """v1: a fresh process loads the model for this job alone, as the original server's first handler did."""
    options = request.model_dump(exclude={"image_path", "audio_path"}, exclude_none=True, exclude_defaults=True)
    flags = [f"--{name.replace('_', '-')}" + ("" if value is True else f"={value}") for name, value in options.items()]
    command = [sys.executable, "-c", "from cli.main import app; app()", "generate", "--image", str(request.image_path),
               "--audio", str(request.audio_path), "--out", str(video), *flags]
    proc = subprocess.run(command, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)  # the whole story goes to the worker log, only the error line to the caller
        errors = [line.removeprefix("error: ") for line in proc.stderr.splitlines() if line.startswith("error: ")]
        raise S2VError(errors[-1] if errors else f"`s2v generate` exited with status {proc.returncode}")
    return json.loads(proc.stdout)


def startup_problem(settings: Settings) -> str | None:
    """Why this worker must not start, or None: a serverless worker without a real checkpoint
    would otherwise answer every job with the tiny test model's noise."""
    checkpoint = settings.checkpoint_path()
    if checkpoint is None:
        return ("S2V_CHECKPOINT is not set: point it at the Wan2.2-S2V-14B folder "
                f"(S2V_CHECKPOINT={TINY} runs the tiny test checkpoint, for tests and demos only)")
    if checkpoint != TINY and not checkpoint.is_dir():
        return f"S2V_CHECKPOINT={checkpoint}: no such folder"
    return None


if __name__ == "__main__":
    problem = startup_problem(get_settings())
    if problem:
        sys.exit(f"error: {problem}")

    import runpod

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    runpod.serverless.start({"handler": handler})
