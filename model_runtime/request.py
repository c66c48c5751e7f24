"""The typed generation request and the resolution presets. Light: no torch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from s2v.errors import InputError

DEFAULT_PROMPT = "A person speaking naturally"
FPS = 16
MIN_SIDE = 64  # DiffSynth's S2V path needs both sides >= 64 and multiples of 16
SIDE_MULTIPLE = 16

Resolution = Literal["480p", "720p", "tiny"]


@dataclass(frozen=True)
class Preset:
    max_area: int
    shift: float


# The seed's presets. A checkpoint may override them (the tiny one scales them down so CPU runs stay
# small); the names stay the same so a manifest works on both.
PRESETS: dict[str, Preset] = {
    "480p": Preset(max_area=399_360, shift=3.0),
    "720p": Preset(max_area=921_600, shift=5.0),
    "tiny": Preset(max_area=80 * 80, shift=3.0),
}


class GenerationOptions(BaseModel):
    """What a person chooses about a clip besides its inputs; the Prefect UI renders it as a form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(DEFAULT_PROMPT, max_length=4000, description="what the video shows")
    negative_prompt: str = Field("", max_length=4000, description="what to avoid")
    resolution: Resolution = Field("480p", description="480p: max 832x480 area; 720p: max 1280x720 area")
    sample_steps: int = Field(20, ge=15, le=50, description="denoising steps: more is slower and finer")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="fixed seed for a repeatable clip")
    guidance_scale: float = Field(4.5, ge=1.0, le=20.0, description="classifier-free guidance strength")


class GenerationRequest(GenerationOptions):
    image_path: Path
    audio_path: Path

    @classmethod
    def parse(cls, data: dict) -> "GenerationRequest":
        """Validate `data`, turning pydantic's report into an InputError naming field and value."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise input_error_from(exc, data) from None


def input_error_from(exc: ValidationError, data: dict) -> InputError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "request"
    value = first.get("input", data.get(field) if isinstance(data, dict) else data)
    return InputError(field, value, first["msg"])


def output_size(image_width: int, image_height: int, preset: Preset) -> tuple[int, int]:
    """(width, height) with the image's aspect, area at most the preset's, sides multiples of 16."""
    scale = math.sqrt(preset.max_area / (image_width * image_height))
    width = max(MIN_SIDE, int(image_width * scale) // SIDE_MULTIPLE * SIDE_MULTIPLE)
    height = max(MIN_SIDE, int(image_height * scale) // SIDE_MULTIPLE * SIDE_MULTIPLE)
    return width, height


class AudioFeatures(BaseModel):
    """wav2vec2 features of one speech file, saved as safetensors, split into the segments to generate."""

    path: Path
    audio_path: Path
    duration: float
    frames: int  # video frames that cover the speech
    segments: int  # 80-frame pieces the model makes one after another
    frames_per_segment: int
    checkpoint: str
    encode_seconds: float
    warm_model: bool = True  # False when the model was loaded for this encoding


class GenerationResult(BaseModel):
    """The original server's result fields plus what a ledger needs to tell videos apart."""

    video_path: Path
    poster_path: Path | None = None  # a JPEG of the middle frame beside the video
    generation_time: float  # audio encoding (unless features came with the request) + all segments, from the model's turn to the last frame
    pipeline_time: float  # inside DiffSynth's pipeline calls only
    total_time: float
    video_size_mb: float
    resolution: str
    sample_steps: int
    warm_model: bool
    frames: int
    fps: int
    duration: float
    seed: int
    segments: int
    width: int
    height: int
    guidance_scale: float
    load_time: float
    queue_time: float
    checkpoint: str
    tiny_checkpoint: bool
