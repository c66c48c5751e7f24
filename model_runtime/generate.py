"""One talking-head video from a portrait and a speech file, on the warm pipeline.

Speech longer than one segment (80 frames on the real model) is made as several segments; the last 73 frames of what was generated so far
carry over as the next segment's motion context, as in the official Wan2.2 S2V generate.
"""
from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model_runtime.media import AUDIO_SAMPLE_RATE, fit_image, load_image, load_speech
from model_runtime.request import FPS, PRESETS, AudioFeatures, GenerationRequest, GenerationResult, Preset, output_size
from model_runtime.video import mux_speech, write_poster, write_silent_mp4
from model_runtime.warm_cache import WarmModel
from s2v.errors import GenerationCancelled, GenerationError, GenerationTimeout, InputError

MOTION_FRAMES = 73  # fixed by Wan2.2-S2V (DiffSynth asserts it)
DROP_FIRST_FRAMES = 3  # the first segment starts from empty motion context; its first frames are dropped
_FEATURES_KEY = "audio_embeds"


def encode_audio(model: WarmModel, audio_path: Path, out_path: Path, max_seconds: float | None = None) -> AudioFeatures:
    """wav2vec2 features for every segment the speech needs, saved to `out_path` (safetensors).

    Takes its turn on the model like a generation: running beside one would only slow both down.
    """
    samples = load_speech(audio_path, max_seconds=max_seconds)
    with model.generation_lock:
        return _encode_audio_locked(model, audio_path, out_path, samples)


def _encode_audio_locked(model: WarmModel, audio_path: Path, out_path: Path, samples: np.ndarray) -> AudioFeatures:
    started = time.perf_counter()
    duration = len(samples) / AUDIO_SAMPLE_RATE
    per_segment = model.loaded.frames_per_segment
    frames = max(1, round(duration * FPS))
    segments = math.ceil((frames + DROP_FIRST_FRAMES) / per_segment)
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
    warm: bool,
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
    image = load_image(request.image_path)
    preset = _preset(model, request.resolution)
    width, height = output_size(*image.size, preset)
    image = fit_image(image, width, height)
    samples = load_speech(request.audio_path, max_seconds=max_audio_seconds) if features is None else None
    if features is not None and (
        features.checkpoint != str(model.checkpoint) or features.frames_per_segment != model.loaded.frames_per_segment
    ):
        raise GenerationError(f"audio features {features.path} were made for another checkpoint ({features.checkpoint})")
    seed = request.seed if request.seed is not None else random.randrange(2**32)

    with tempfile.TemporaryDirectory(prefix="s2v-gen-") as work:
        # The model is held for the model work only: writing and muxing the MP4 happen after it is
        # released, so the next video's generation does not wait on ffmpeg.
        with model.generation_lock:
            started = time.perf_counter()
            deadline = started + timeout_s
            if features is None:
                features = _encode_audio_locked(model, request.audio_path, Path(work) / "features.safetensors", samples)
            embeds = load_file(str(features.path))[_FEATURES_KEY]
            frames, pipeline_time = _generate_frames(
                model, request, image, preset, embeds, features, seed, deadline, timeout_s, on_segment, should_stop
            )
            generation_time = time.perf_counter() - started
            model.generation_count += 1
        silent = Path(work) / "silent.mp4"
        write_silent_mp4(frames, silent, FPS)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        mux_speech(silent, request.audio_path, out_path)
        poster = write_poster(frames, out_path)

    return GenerationResult(
        video_path=out_path,
        poster_path=poster,
        generation_time=round(generation_time, 3),
        pipeline_time=round(pipeline_time, 3),
        total_time=round(time.perf_counter() - called, 3),
        video_size_mb=round(out_path.stat().st_size / 2**20, 3),
        resolution=request.resolution,
        sample_steps=request.sample_steps,
        warm_model=warm,
        frames=len(frames),
        fps=FPS,
        duration=round(len(frames) / FPS, 4),
        seed=seed,
        segments=features.segments,
        width=width,
        height=height,
        guidance_scale=request.guidance_scale,
        load_time=round(model.loaded.load_seconds, 3),
        queue_time=round(started - called, 3),
        checkpoint=str(model.checkpoint),
        tiny_checkpoint=model.loaded.files.is_tiny,
    )


def _preset(model: WarmModel, resolution: str) -> Preset:
    override = model.loaded.presets.get(resolution)
    if override:
        return Preset(**override)
    if resolution == "tiny" and not model.loaded.files.is_tiny:
        raise InputError("resolution", resolution, "the 'tiny' preset is only for the tiny test checkpoint")
    return PRESETS[resolution]


def _generate_frames(
    model, request, image, preset, embeds, features, seed, deadline, timeout_s, on_segment, should_stop
) -> tuple[np.ndarray, float]:
    """(frames, seconds spent inside DiffSynth's pipeline calls)."""
    pipe = model.pipe
    per_segment = features.frames_per_segment
    motion_video = None  # the pipeline starts from empty motion context, as the official generate does
    motion = torch.zeros(1, 3, MOTION_FRAMES, image.height, image.width, dtype=pipe.torch_dtype, device=pipe.device)
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
        for r in range(features.segments):
            call_started = time.perf_counter()
            segment = pipe(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                input_image=image,
                seed=seed,
                num_frames=per_segment + 1,
                height=image.height,
                width=image.width,
                audio_embeds=embeds[r:r + 1].to(pipe.device, pipe.torch_dtype),
                motion_video=motion_video,
                num_inference_steps=request.sample_steps,
                cfg_scale=request.guidance_scale,
                sigma_shift=preset.shift,
                output_type="floatpoint",
                progress_bar_cmd=steps,
            )
            pipeline_time += time.perf_counter() - call_started
            segment = segment[:, :, -per_segment:]
            if r == 0:
                segment = segment[:, :, DROP_FIRST_FRAMES:]
            overlap = min(MOTION_FRAMES, segment.shape[2])
            # DiffSynth hands "floatpoint" frames back on the CPU; the motion context lives on the model's device.
            motion = torch.cat([motion[:, :, overlap:], segment[:, :, -overlap:].to(motion.device, motion.dtype)], dim=2)
            motion_video = motion
            parts.append(_to_uint8(segment))
            if on_segment:
                on_segment(r + 1, features.segments)
    except torch.cuda.OutOfMemoryError as exc:
        raise GenerationError(f"GPU out of memory at {image.width}x{image.height}: {exc}") from None
    frames = np.concatenate(parts)[: features.frames]
    if len(frames) < features.frames:
        raise GenerationError(f"made {len(frames)} frames for {features.frames} needed")
    return frames, pipeline_time


def _to_uint8(segment: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    video = ((segment[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(1, 2, 3, 0).cpu().numpy()

