"""The in-process runtime: the warm model of this process behind the two calls the pipeline makes.

The model server's client offers the same two calls over the Unix socket (both are a runtime.Runtime),
so a task does not care which one it holds (see `model_runtime.client.runtime_for`). Both stop at the
next denoising step when their `should_stop` or the process-wide stop request (interrupt.py, Ctrl-C)
gives a reason.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

from model_runtime import estimate, interrupt
from model_runtime.request import AudioFeatures, GenerationRequest, GenerationResult
from model_runtime.runtime import OnSegment, StopCheck, seen_warm
from s2v.errors import GenerationCancelled
from s2v.settings import Settings, get_settings

log = logging.getLogger(__name__)

GENERATION_LIMIT_NAME = "S2V_GENERATION_TIMEOUT_S"
_models_run: set[int] = set()  # id() of the warm models that have made a video in this process


class InProcessRuntime:
    def __init__(self, settings: Settings | None = None, checkpoint: Path | None = None, *, limit_name: str = GENERATION_LIMIT_NAME):
        self.settings = settings or get_settings()
        self.checkpoint = checkpoint
        self.limit_name = limit_name  # where settings.generation_timeout_s came from, for the estimate's message

    def encode_audio(self, audio_path: Path, out_path: Path, should_stop: StopCheck | None = None) -> AudioFeatures:
        from model_runtime.generate import encode_audio
        from model_runtime.media import load_speech
        from model_runtime.warm_cache import get_model

        # Encoding takes seconds and has no steps to stop between: it is only kept from starting.
        if reason := interrupt.combined(should_stop)():
            raise GenerationCancelled(f"audio encoding not started: {reason}")
        model, warm = get_model(self.checkpoint, self.settings)
        samples = load_speech(Path(audio_path), max_seconds=self.settings.max_audio_seconds)
        # Takes its turn on the model like a generation: running beside one would only slow both down.
        with model.generation_lock:
            features = encode_audio(model, Path(audio_path), Path(out_path), samples)
        return seen_warm(features, warm)

    def generate(self, request: GenerationRequest, out_path: Path, features: AudioFeatures | None = None,
                 on_segment: OnSegment | None = None, should_stop: StopCheck | None = None) -> GenerationResult:
        """Raises InputError on `audio`, before waiting for the model, when the measured time per step
        says this speech cannot be made within settings.generation_timeout_s (see estimate.py)."""
        from model_runtime.generate import generate_video
        from model_runtime.warm_cache import get_model

        model, warm = get_model(self.checkpoint, self.settings)
        device = device_name(model.loaded.device)
        self._check_estimate(request, features, model.checkpoint, device)
        first_run = id(model) not in _models_run  # pays the device's warm-up: not a fair timing sample
        result = generate_video(
            model, request, Path(out_path), features=features,
            timeout_s=self.settings.generation_timeout_s, max_audio_seconds=self.settings.max_audio_seconds,
            on_segment=on_segment, should_stop=interrupt.combined(should_stop),
        )
        result = seen_warm(result, warm)
        _models_run.add(id(model))
        max_segments = getattr(request, "max_segments", None)
        estimate.record(
            self.settings, checkpoint=model.checkpoint, device=device, frames_per_segment=model.loaded.frames_per_segment,
            resolution=estimate.preset_name(request), generation_seconds=result.generation_time,
            segments=min(result.segments, max_segments) if max_segments else result.segments,
            sample_steps=result.sample_steps, guidance_scale=result.guidance_scale, warm=not first_run,
        )
        return result

    def _check_estimate(self, request: GenerationRequest, features: AudioFeatures | None, checkpoint: Path, device: str) -> None:
        if estimate.preset_name(request) not in estimate.figures(self.settings, checkpoint, device):
            return  # nothing measured: no need to read the speech's length
        if features is not None:
            seconds, segments = features.duration, features.segments
        else:
            seconds, segments = _speech_seconds(request.audio_path), None
            if seconds is None:
                return  # generate_video reports what is wrong with the file
        estimate.check_within_limit(
            self.settings, request.audio_path, seconds, request, limit_s=self.settings.generation_timeout_s,
            limit_name=self.limit_name, checkpoint=checkpoint, device=device, segments=segments,
        )


@functools.cache
def device_name(device: str) -> str:
    """The device a timing was measured on: "cpu", or "cuda:<GPU model>", since an H100 and an H200
    sharing a cache folder (a network volume) must not share a figure."""
    if not device.startswith("cuda"):
        return device
    import torch

    return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"


def _speech_seconds(path: Path) -> float | None:
    import librosa

    try:
        return float(librosa.get_duration(path=str(path)))
    except Exception:  # undecodable or missing: not this check's error to report
        return None
