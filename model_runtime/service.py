"""The in-process runtime: the warm model of this process behind the two calls the pipeline makes.

The model server's client offers the same two calls over the Unix socket, so a task does not care
which one it holds (see `runtime_for`).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from model_runtime.request import AudioFeatures, GenerationRequest, GenerationResult
from s2v.settings import Settings, get_settings


class InProcessRuntime:
    def __init__(self, settings: Settings | None = None, checkpoint: Path | None = None):
        self.settings = settings or get_settings()
        self.checkpoint = checkpoint

    def encode_audio(self, audio_path: Path, out_path: Path) -> AudioFeatures:
        from model_runtime.generate import encode_audio
        from model_runtime.warm_cache import get_model

        model, warm = get_model(self.checkpoint, self.settings)
        features = encode_audio(model, Path(audio_path), Path(out_path), max_seconds=self.settings.max_audio_seconds)
        return features.model_copy(update={"warm_model": warm})

    def generate(
        self,
        request: GenerationRequest,
        out_path: Path,
        features: AudioFeatures | None = None,
        on_segment: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], str | None] | None = None,
    ) -> GenerationResult:
        from model_runtime.generate import generate_video
        from model_runtime.warm_cache import get_model

        model, warm = get_model(self.checkpoint, self.settings)
        return generate_video(
            model, request, Path(out_path), warm=warm, features=features,
            timeout_s=self.settings.generation_timeout_s, max_audio_seconds=self.settings.max_audio_seconds,
            on_segment=on_segment, should_stop=should_stop,
        )
