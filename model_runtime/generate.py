"""One talking-head video from a portrait and a speech file, on the warm pipeline.

Speech longer than one segment (80 frames on the real model) is made as several segments; the last 73 frames of what was generated so far
carry over as the next segment's motion context, as in the official Wan2.2 S2V generate. The official generator's options are here
too: `max_segments` (its --num_clip), `start_from_ref`, `pose_video`, the official sizes, and the fast mode's few-step schedule
with a LoRA fused into the warm DiT.
"""
from __future__ import annotations

import logging
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model_runtime import speed
from model_runtime.media import AUDIO_SAMPLE_RATE, fit_image, load_image, load_speech
from model_runtime.option_files import check_files
from model_runtime.pose import load_pose_frames
from model_runtime.request import (
    FPS,
    PRESETS,
    AudioFeatures,
    GenerationRequest,
    GenerationResult,
    Preset,
    output_size,
    size_preset,
)
from model_runtime.video import mux_speech, write_poster, write_silent_mp4
from model_runtime.warm_cache import WarmModel
from s2v.errors import GenerationCancelled, GenerationError, GenerationTimeout, InputError

log = logging.getLogger(__name__)

MOTION_FRAMES = 73  # fixed by Wan2.2-S2V (DiffSynth asserts it)
DROP_FIRST_FRAMES = 3  # the first segment starts from empty motion context; its first frames are dropped
REFERENCE_MOTION_FRAMES = 6  # start_from_ref: the official generate puts the reference in the last 6 motion frames
_FEATURES_KEY = "audio_embeds"


@dataclass(frozen=True)
class SegmentPlan:
    segments: int  # segments to make
    drop_first: int  # frames dropped from the start of the first segment
    frames: int  # frames of the video


def speech_frames(duration: float) -> int:
    """Video frames that cover `duration` seconds of speech."""
    return max(1, round(duration * FPS))


def plan_segments(frames: int, per_segment: int, start_from_ref: bool = False, max_segments: int | None = None) -> SegmentPlan:
    """How many segments cover `frames` (at most `max_segments`, a preview) and how many frames they give.

    A first segment that starts from empty motion context loses its first frames; one that starts from the
    reference image (start_from_ref) keeps them, as the official generate does.
    """
    drop = 0 if start_from_ref else DROP_FIRST_FRAMES
    segments = math.ceil((frames + drop) / per_segment)
    if max_segments is not None:
        segments = min(segments, max_segments)
    return SegmentPlan(segments=segments, drop_first=drop, frames=min(frames, segments * per_segment - drop))


def encode_audio(model: WarmModel, audio_path: Path, out_path: Path, samples: np.ndarray) -> AudioFeatures:
    """wav2vec2 features for every segment the speech (`samples`, from `audio_path`) needs, saved to `out_path`
    (safetensors). The caller holds model.generation_lock: encoding beside a generation would only slow both."""
    started = time.perf_counter()
    duration = len(samples) / AUDIO_SAMPLE_RATE
    per_segment = model.loaded.frames_per_segment
    frames = speech_frames(duration)
    segments = plan_segments(frames, per_segment).segments
    # Silence after the speech lets the encoder's bucketing cover the frames the first segment drops.
    padded = np.concatenate([samples, np.zeros(AUDIO_SAMPLE_RATE * (DROP_FIRST_FRAMES + 1) // FPS, np.float32)])
    pipe = model.pipe
    with torch.no_grad():
        buckets = pipe.audio_encoder.get_audio_feats_per_inference(
            padded, AUDIO_SAMPLE_RATE, pipe.audio_processor, fps=FPS, batch_frames=per_segment,
            dtype=pipe.torch_dtype, device=pipe.device,
        )
    if len(buckets) < segments:
        raise GenerationError(f"audio encoder made features for {len(buckets)} segments; {segments} are needed")
    embeds = torch.cat(buckets[:segments], dim=0).to("cpu", torch.float32).contiguous()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": str(model.checkpoint), "frames_per_segment": str(per_segment), "duration": repr(duration)}
    save_file({_FEATURES_KEY: embeds}, str(out_path), metadata=meta)
    return AudioFeatures(
        path=out_path, audio_path=Path(audio_path), duration=duration, frames=frames, segments=segments,
        frames_per_segment=per_segment, checkpoint=str(model.checkpoint), encode_seconds=time.perf_counter() - started,
    )


def generate_video(
    model: WarmModel,
    request: GenerationRequest,
    out_path: Path,
    *,
    features: AudioFeatures | None = None,
    timeout_s: float = 1800.0,
    max_audio_seconds: float | None = None,
    on_segment: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], str | None] | None = None,
) -> GenerationResult:
    """Make the MP4 at `out_path` with the speech muxed in. Waits its turn on the model's lock.

    `should_stop` is asked before every denoising step; a reason it returns stops the generation
    there with GenerationCancelled (a cancel request, Ctrl-C, a client that has gone).
    """
    called = time.perf_counter()
    out_path = Path(out_path)
    # Inputs are checked before the queue and the GPU: a bad file fails in milliseconds.
    check_files(request)
    if request.lora and model.speed.fp8:
        raise InputError("lora", request.lora, "S2V_FP8 is on: a LoRA cannot be fused into FP8 weights; turn FP8 off")
    image = load_image(request.image_path)
    preset = _preset(model, request)
    width, height = output_size(*image.size, preset)
    image = fit_image(image, width, height)
    samples = load_speech(request.audio_path, max_seconds=max_audio_seconds) if features is None else None
    if features is not None and (
        features.checkpoint != str(model.checkpoint) or features.frames_per_segment != model.loaded.frames_per_segment
    ):
        raise GenerationError(f"audio features {features.path} were made for another checkpoint ({features.checkpoint})")
    per_segment = model.loaded.frames_per_segment
    frames = features.frames if features is not None else speech_frames(len(samples) / AUDIO_SAMPLE_RATE)
    plan = plan_segments(frames, per_segment, request.start_from_ref, request.max_segments)
    pose = load_pose_frames(request.pose_video, width, height, plan.segments * per_segment, FPS) if request.pose_video else None
    seed = request.seed if request.seed is not None else random.randrange(2**32)
    sampling = Sampling(
        steps=request.effective_steps, guidance=request.effective_guidance, shift=request.effective_shift(preset),
        negative_prompt=request.effective_negative_prompt,
    )

    with tempfile.TemporaryDirectory(prefix="s2v-gen-") as work:
        # The model is held for the model work only: writing and muxing the MP4 happen after it is
        # released, so the next video's generation does not wait on ffmpeg.
        with model.generation_lock:
            started = time.perf_counter()
            deadline = started + timeout_s
            # The LoRA set is part of the warm model's state: it changes only while the model is ours.
            lora_tensors, lora_switch_s = model.lora.use(model.pipe.dit, request.lora, request.lora_strength)
            if features is None:
                features = encode_audio(model, request.audio_path, Path(work) / "features.safetensors", samples)
            embeds = load_file(str(features.path))[_FEATURES_KEY]
            video, pipeline_time = _generate_frames(
                model, request, image, sampling, plan, pose, embeds, seed, deadline, timeout_s, on_segment, should_stop
            )
            generation_time = time.perf_counter() - started
            model.generation_count += 1
        silent = Path(work) / "silent.mp4"
        write_silent_mp4(video, silent, FPS)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # -shortest in the mux cuts the speech to a preview's (max_segments) frames.
        mux_speech(silent, request.audio_path, out_path)
        poster = write_poster(video, out_path)

    return GenerationResult(
        video_path=out_path,
        poster_path=poster,
        generation_time=round(generation_time, 3),
        pipeline_time=round(pipeline_time, 3),
        total_time=round(time.perf_counter() - called, 3),
        video_size_mb=round(out_path.stat().st_size / 2**20, 3),
        resolution=request.resolution,
        sample_steps=sampling.steps,
        warm_model=True,  # the caller knows whether the model was loaded for this video (runtime.seen_warm)
        frames=len(video),
        fps=FPS,
        duration=round(len(video) / FPS, 4),
        seed=seed,
        segments=plan.segments,
        width=width,
        height=height,
        guidance_scale=sampling.guidance,
        load_time=round(model.loaded.load_seconds, 3),
        queue_time=round(started - called, 3),
        checkpoint=str(model.checkpoint),
        tiny_checkpoint=model.loaded.files.is_tiny,
        mode=request.mode,
        size=request.size,
        sample_shift=sampling.shift,
        lora=request.lora,
        lora_strength=request.lora_strength if request.lora else 0.0,
        lora_tensors=lora_tensors,
        lora_switch_s=round(lora_switch_s, 3),
        max_segments=request.max_segments,
        start_from_ref=request.start_from_ref,
        pose_video=request.pose_video,
    )


@dataclass(frozen=True)
class Sampling:
    """The denoising settings a request resolves to (its mode's defaults filled in)."""

    steps: int
    guidance: float  # 1.0: DiffSynth makes one DiT pass per step, no negative pass
    shift: float
    negative_prompt: str


def _preset(model: WarmModel, request: GenerationRequest) -> Preset:
    if request.size:
        official = size_preset(request.size)
        return Preset(max_area=official.max_area // model.loaded.size_area_divisor, shift=official.shift)
    override = model.loaded.presets.get(request.resolution)
    if override:
        return Preset(**override)
    return PRESETS[request.resolution]


def _generate_frames(
    model, request, image, sampling, plan, pose, embeds, seed, deadline, timeout_s, on_segment, should_stop
) -> tuple[np.ndarray, float]:
    """(frames, seconds spent inside DiffSynth's pipeline calls)."""
    pipe = model.pipe
    per_segment = model.loaded.frames_per_segment
    motion = torch.zeros(1, 3, MOTION_FRAMES, image.height, image.width, dtype=pipe.torch_dtype, device=pipe.device)
    # Empty motion context for the first segment (DiffSynth then drops it), as the official generate does;
    # start_from_ref puts the reference image in its last frames instead and keeps them.
    motion_video = None
    if request.start_from_ref:
        motion[:, :, -REFERENCE_MOTION_FRAMES:] = pipe.preprocess_image(image).unsqueeze(2)
        motion_video = motion
    parts: list[np.ndarray] = []
    pipeline_time = 0.0

    def steps(timesteps: Iterable) -> Iterator:
        # DiffSynth calls this around its denoising loop; checking the deadline here stops a run
        # between steps, which Prefect's timeout cannot do to a blocking thread.
        for t in timesteps:
            if time.perf_counter() > deadline:
                raise GenerationTimeout(f"generation passed its {timeout_s:.0f} s limit and was stopped")
            if should_stop is not None and (reason := should_stop()):
                raise GenerationCancelled(f"generation stopped: {reason}")
            yield t

    try:
        for r in range(plan.segments):
            call_started = time.perf_counter()
            segment = _call_pipeline(
                model,
                prompt=request.prompt,
                negative_prompt=sampling.negative_prompt,
                input_image=image,
                seed=(seed + r) % 2**32,  # a new noise draw per segment, as the official generate's seed + r
                num_frames=per_segment + 1,
                height=image.height,
                width=image.width,
                audio_embeds=embeds[r:r + 1].to(pipe.device, pipe.torch_dtype),
                motion_video=motion_video,
                s2v_pose_video=pose[r * per_segment:(r + 1) * per_segment] if pose else None,
                num_inference_steps=sampling.steps,
                cfg_scale=sampling.guidance,
                sigma_shift=sampling.shift,
                tiled=speed.vae_tiled_for(model.speed, image.width, image.height),
                output_type="floatpoint",
                progress_bar_cmd=steps,
            )
            pipeline_time += time.perf_counter() - call_started
            segment = segment[:, :, -per_segment:]
            if r == 0:
                segment = segment[:, :, plan.drop_first:]
            overlap = min(MOTION_FRAMES, segment.shape[2])
            # DiffSynth hands "floatpoint" frames back on the CPU; the motion context lives on the model's device.
            motion = torch.cat([motion[:, :, overlap:], segment[:, :, -overlap:].to(motion.device, motion.dtype)], dim=2)
            motion_video = motion
            parts.append(_to_uint8(segment))
            if on_segment:
                on_segment(r + 1, plan.segments)
    except torch.cuda.OutOfMemoryError as exc:
        raise GenerationError(f"GPU out of memory at {image.width}x{image.height}: {exc}") from None
    frames = np.concatenate(parts)[: plan.frames]
    if len(frames) < plan.frames:
        raise GenerationError(f"made {len(frames)} frames for {plan.frames} needed")
    return frames, pipeline_time


def _call_pipeline(model: WarmModel, **kwargs) -> torch.Tensor:
    """One DiffSynth pipeline call with the model's attention choice; eager again if compiling fails."""
    pipe = model.pipe
    try:
        with speed.attention(model.speed.attention):
            return pipe(**kwargs)
    except Exception as exc:
        if not (speed.blocks_compiled(pipe.dit) and speed.is_compile_error(exc)):
            raise
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        log.warning("torch.compile of the DiT blocks failed (%s); this process runs them eagerly from now on", reason)
        speed.uncompile_blocks(pipe.dit)
        with speed.attention(model.speed.attention):
            return pipe(**kwargs)


def _to_uint8(segment: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    video = ((segment[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(1, 2, 3, 0).cpu().numpy()

