"""One clip from a form in the Prefect UI (`s2v-clip`); it lands in the output's ledger like a batch row.

The form's fields are plain values: an empty text, 0 or -1 means "the default" where the field says so,
so the UI shows no None switches. The values go through the manifest's own parsing, so a bad one is
named with its field exactly as in a batch.
"""
from __future__ import annotations

import csv
import io
from typing import Annotated, Literal

from prefect import flow
from prefect.states import State

from flows.batch import RUNNER
from flows.context import flow_settings
from flows.execute import execute_rows
from flows.form import Internal, titled
from flows.logs import hide_input_error_tracebacks, run_warning
from model_runtime.request import DEFAULT_PROMPT, Size
from records.kept_manifests import keep_manifest, manifest_id
from records.manifest import check_local_files, parse_manifest


@flow(name="s2v-clip", task_runner=RUNNER)
def clip(
    image: Annotated[str, titled("Image", min_length=1, max_length=4000)],
    audio: Annotated[str, titled("Audio", min_length=1, max_length=4000)],
    prompt: Annotated[str, titled("Prompt", max_length=4000)] = DEFAULT_PROMPT,
    resolution: Annotated[Literal["480p", "720p"], titled("Resolution")] = "480p",
    size: Annotated[Size, titled("Size")] = "",
    mode: Annotated[Literal["standard", "fast"], titled("Mode")] = "standard",
    sample_steps: Annotated[int, titled("Sample steps", ge=0, le=50)] = 0,
    guidance_scale: Annotated[float, titled("Guidance scale", ge=0.0, le=20.0)] = 0.0,
    sample_shift: Annotated[float, titled("Sample shift", ge=0.0, le=20.0)] = 0.0,
    seed: Annotated[int, titled("Seed", ge=-1, le=2**32 - 1)] = -1,
    negative_prompt: Annotated[str, titled("Negative prompt", max_length=4000)] = "",
    lora: Annotated[str, titled("LoRA", max_length=4000)] = "",
    lora_strength: Annotated[float, titled("LoRA strength", ge=0.0, le=4.0)] = 1.0,
    pose_video: Annotated[str, titled("Pose video", max_length=4000)] = "",
    max_segments: Annotated[int, titled("Max segments", ge=0, le=1000)] = 0,
    start_from_ref: Annotated[bool, titled("Start from the portrait")] = False,
    clip_id: Annotated[str, titled("Clip id")] = "",
    output: Annotated[str, titled("Output")] = "",
    checkpoint: Internal[str] = "",
    model_server: Internal[str] = "",
) -> State:
    """One clip from a portrait and a speech recording.

    Args:
        image: the portrait: an http(s):// or s3:// URL (local paths only under the worker's S2V_INPUT_ROOTS)
        audio: the speech: an http(s):// or s3:// URL (local paths only under the worker's S2V_INPUT_ROOTS)
        prompt: what the video shows
        resolution: 480p (at most 832x480 pixels) or 720p (at most 1280x720), in the portrait's aspect
        size: one of the official sizes W*H, used as the largest area in the portrait's aspect (empty: resolution decides)
        mode: standard (20 steps with guidance) or fast (few steps with guidance 1; needs a step-distilled LoRA; lower quality)
        sample_steps: denoising steps, 2..50 (below 15 only with a LoRA); 0: the mode's default (standard 20, fast 4)
        guidance_scale: classifier-free guidance strength, 1..20; 0: the mode's default (standard 4.5, fast 1)
        sample_shift: noise schedule shift; 0: the default of the resolution and mode
        seed: fixed seed for a repeatable clip, 0..4294967295; -1: random (the ledger records the one used)
        negative_prompt: what to avoid (standard mode only)
        lora: a LoRA (.safetensors) URL, e.g. a step-distilled "Lightning" LoRA for fast mode (empty: none)
        lora_strength: how strongly the LoRA applies, 0..4
        pose_video: a DWPose video URL that drives the body (empty: none)
        max_segments: make only the first N 5-second segments, a cheap preview of a long speech (0: all)
        start_from_ref: the portrait itself is the video's first frame
        clip_id: name of the clip and its video (empty: derived from its content)
        output: local folder or s3://bucket/prefix for the video and the ledger (empty: S2V_OUTPUT of the worker)
        checkpoint: Wan2.2-S2V checkpoint folder (empty: S2V_CHECKPOINT of the worker; not in the form)
        model_server: Unix socket of the warm model server (empty: S2V_MODEL_SERVER of the worker; not in the form)
    """
    hide_input_error_tracebacks()
    settings = flow_settings(output, checkpoint, model_server)
    cells = {
        "clip_id": clip_id, "image": image, "audio": audio, "prompt": prompt, "negative_prompt": negative_prompt,
        "resolution": resolution, "size": size, "mode": mode,
        "sample_steps": sample_steps or "", "guidance_scale": guidance_scale or "", "sample_shift": sample_shift or "",
        "seed": "" if seed < 0 else seed, "lora": lora, "lora_strength": lora_strength if lora else "",
        "pose_video": pose_video, "max_segments": max_segments or "", "start_from_ref": "true" if start_from_ref else "",
    }
    text = _csv_text(cells)
    parsed = parse_manifest(text, None, settings, manifest_id=manifest_id(text, {}), warn=run_warning)
    parsed = check_local_files(parsed, settings)
    keep_manifest(text, {}, settings.output, settings, name=f"clip {clip_id or 'from the UI'}")
    return execute_rows(f"clip {(parsed.rows or parsed.invalid)[0].clip_id}", parsed.rows, parsed.invalid, settings,
                        lookahead=1)


def _csv_text(cells: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(cells))
    writer.writeheader()
    writer.writerow({name: "" if value is None else value for name, value in cells.items()})
    return buffer.getvalue()
