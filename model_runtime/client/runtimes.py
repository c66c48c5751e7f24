"""`ServerRuntime`, the pipeline's two calls served by the model server, and `runtime_for`, which picks a runtime."""
from __future__ import annotations

from pathlib import Path

from model_runtime import interrupt
from model_runtime.client.model_server_client import ModelServerClient
from model_runtime.protocol import GenerateCall
from model_runtime.request import AudioFeatures, GenerationRequest, GenerationResult
from model_runtime.runtime import OnSegment, Runtime, StopCheck
from model_runtime.service import InProcessRuntime
from s2v.settings import Settings, get_settings


class ServerRuntime:
    """InProcessRuntime's two calls, served by the model server; errors raise the same exceptions."""

    def __init__(self, settings: Settings | None = None, socket_path: Path | str | None = None):
        self.settings = settings or get_settings()
        self.client = ModelServerClient(socket_path, self.settings)

    def encode_audio(self, audio_path: Path, out_path: Path, should_stop: StopCheck | None = None) -> AudioFeatures:
        reply = self.client.encode_audio(Path(audio_path), Path(out_path), should_stop=interrupt.combined(should_stop))
        return AudioFeatures.model_validate(reply.model_dump(include=set(AudioFeatures.model_fields)))

    def generate(self, request: GenerationRequest, out_path: Path, features: AudioFeatures | None = None,
                 on_segment: OnSegment | None = None, should_stop: StopCheck | None = None) -> GenerationResult:
        """As InProcessRuntime.generate; `should_stop` (and Ctrl-C, interrupt.py) is asked every
        STOP_POLL_S while the server works, and a reason cancels the job there (GenerationCancelled)."""
        call = GenerateCall(request=request, output_path=Path(out_path), features=features, timeout_s=self.settings.generation_timeout_s)
        reply = self.client.generate(call, on_segment=on_segment, should_stop=interrupt.combined(should_stop))
        return GenerationResult.model_validate(reply.model_dump(include=set(GenerationResult.model_fields)))


def runtime_for(settings: Settings | None = None) -> Runtime:
    """The model server when one is configured (settings.model_server), else this process's model."""
    settings = settings or get_settings()
    return ServerRuntime(settings) if settings.model_server else InProcessRuntime(settings)
