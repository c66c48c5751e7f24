"""What a task holds to make videos: the `Runtime` protocol, and the one rule for a result's `warm_model`.

Two runtimes implement it: InProcessRuntime (service.py, this process's model) and ServerRuntime
(client/, the model server's); `model_runtime.client.runtime_for` picks one. Light: no torch.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from model_runtime.request import AudioFeatures, GenerationRequest, GenerationResult

StopCheck = Callable[[], str | None]  # a reason to stop, or None to go on
OnSegment = Callable[[int, int], None]  # (segments done, segments in all)
Warmable = TypeVar("Warmable", bound=AudioFeatures | GenerationResult)


class Runtime(Protocol):
    """The pipeline's two calls. Both stop before their next step when `should_stop`, or the
    process-wide stop request (interrupt.py, Ctrl-C), gives a reason (GenerationCancelled)."""

    def encode_audio(self, audio_path: Path, out_path: Path, should_stop: StopCheck | None = None) -> AudioFeatures: ...

    def generate(self, request: GenerationRequest, out_path: Path, features: AudioFeatures | None = None,
                 on_segment: OnSegment | None = None, should_stop: StopCheck | None = None) -> GenerationResult: ...


def seen_warm(result: Warmable, model_was_loaded: bool) -> Warmable:
    """`result` with `warm_model` False unless the model was already loaded when this layer took the call.

    The one place `warm_model` is decided: each layer a call passes through (this process's model
    cache, the model server when the job arrived, the client that may have started that server) passes
    what it saw, so a result is warm only when no layer loaded the model for it.
    """
    return result if model_was_loaded else result.model_copy(update={"warm_model": False})
