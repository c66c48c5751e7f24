"""The typed generation request, the resolution presets and the generation modes. Light: no torch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

from s2v.errors import InputError

DEFAULT_PROMPT = "A person speaking naturally"
FPS = 16
MIN_SIDE = 64  # DiffSynth's S2V path needs both sides >= 64 and multiples of 16
SIDE_MULTIPLE = 16

Resolution = Literal["480p", "720p"]
Mode = Literal["standard", "fast"]
# The official generate.py's sizes for --task s2v-14B (width*height). Each is a maximum area; the
# output keeps the image's aspect, so "1280*720" makes a portrait video from a portrait image.
OFFICIAL_SIZES: dict[str, tuple[int, int]] = {
    "720*1280": (720, 1280), "1280*720": (1280, 720), "480*832": (480, 832), "832*480": (832, 480),
    "1024*704": (1024, 704), "704*1024": (704, 1024), "704*1280": (704, 1280), "1280*704": (1280, 704),
}
Size = Literal["", "720*1280", "1280*720", "480*832", "832*480", "1024*704", "704*1024", "704*1280", "1280*704"]
OFFICIAL_SHIFT = 3.0  # wan/configs/wan_s2v_14B.py: sample_shift for every size
# Below this many steps the base model makes mush; fewer steps need a step-distilled LoRA.
MIN_STEPS_WITHOUT_LORA = 15
# What the official generator uses when the negative prompt is empty (wan_s2v_14B.sample_neg_prompt).
OFFICIAL_NEGATIVE_PROMPT = (
    "画面模糊，最差质量，画面模糊，细节模糊不清，情绪激动剧烈，手快速抖动，字幕，丑陋的，残缺的，多余的手指，"
    "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)


@dataclass(frozen=True)
class Preset:
    max_area: int
    shift: float


# The original server's presets. A checkpoint may override them (the tiny one scales them down so CPU runs stay
# small); the names stay the same so a manifest works on both.
PRESETS: dict[str, Preset] = {
    "480p": Preset(max_area=399_360, shift=3.0),
    "720p": Preset(max_area=921_600, shift=5.0),
}


@dataclass(frozen=True)
class ModeDefaults:
    steps: int
    guidance: float
    shift: float | None  # None: the resolution preset's shift


# standard: the original server's 20 steps with classifier-free guidance 4.5 (the official default guidance).
# fast: the LightX2V Lightning recipe: 4 steps, guidance 1 (no negative pass), shift 5, with a
# step-distilled LoRA; its 4-step Wan schedule gives the timesteps 1000, 937, 833, 625.
MODES: dict[str, ModeDefaults] = {
    "standard": ModeDefaults(steps=20, guidance=4.5, shift=None),
    "fast": ModeDefaults(steps=4, guidance=1.0, shift=5.0),
}


class _EmptyIsDefault:
    """`_EmptyIsDefault[int | None, schema]`: None (the default) in Python, a plain number field in a form.

    A form generated from `int | None` shows a type switch ("Property is type None"); this schema is the
    number alone, and a field left empty is left out, so the default (None) applies.
    """

    def __class_getitem__(cls, args):
        kind, schema = args
        return Annotated[kind, WithJsonSchema(schema)]


def _no_null_defaults(schema: dict) -> None:
    """A form prefills a field's default: a null one would be sent as null and refused as "not an integer"."""
    for field in schema.get("properties", {}).values():
        if "default" in field and field["default"] is None:
            del field["default"]


class GenerationOptions(BaseModel):
    """What a person chooses about a clip besides its inputs; the Prefect UI renders it as a form."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=lambda schema: _no_null_defaults(schema))

    prompt: str = Field(DEFAULT_PROMPT, max_length=4000, description="what the video shows")
    negative_prompt: str = Field(
        "", max_length=4000, description="what to avoid; empty: the official Wan2.2-S2V negative prompt"
    )
    resolution: Resolution = Field("480p", description="480p: max 832x480 area; 720p: max 1280x720 area")
    size: Size = Field(
        "", description="an official size such as 1280*720, used as a maximum area with the image's aspect; "
        "empty: use resolution"
    )
    mode: Mode = Field(
        "standard", description="standard: 20 steps with guidance; fast: 4 steps, no guidance pass, shift 5 "
        "(needs a step-distilled LoRA such as LightX2V's; faster, less detail and motion)"
    )
    sample_steps: _EmptyIsDefault[int | None, {"type": "integer", "minimum": 2, "maximum": 50}] = Field(
        None, ge=2, le=50, description="denoising steps; empty: 20 (standard) or 4 (fast); below 15 only with a LoRA"
    )
    sample_shift: _EmptyIsDefault[float | None, {"type": "number", "minimum": 1.0, "maximum": 20.0}] = Field(
        None, ge=1.0, le=20.0, description="noise schedule shift; empty: the preset's (480p 3, 720p 5, sizes 3) "
        "or 5 in fast mode"
    )
    seed: _EmptyIsDefault[int | None, {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}] = Field(
        None, ge=0, le=2**32 - 1, description="fixed seed for a repeatable clip; empty: random (the ledger records it)"
    )
    guidance_scale: _EmptyIsDefault[float | None, {"type": "number", "minimum": 1.0, "maximum": 20.0}] = Field(
        None, ge=1.0, le=20.0, description="classifier-free guidance strength; empty: 4.5 (standard) or 1 (fast); "
        "1 skips the negative pass"
    )
    lora: str = Field("", max_length=4096, description="LoRA .safetensors file for the DiT; empty: none")
    lora_strength: float = Field(1.0, ge=0.0, le=4.0, description="how strongly the LoRA is applied")
    max_segments: _EmptyIsDefault[int | None, {"type": "integer", "minimum": 1}] = Field(
        None, ge=1, description="preview: make only the first N 80-frame segments (5 s each); empty: all"
    )
    start_from_ref: bool = Field(False, description="start the video on the reference image itself")
    pose_video: str = Field("", max_length=4096, description="pose video (e.g. DWPose) that drives the body; empty: none")

    @model_validator(mode="after")
    def _few_steps_need_a_lora(self):
        steps = self.effective_steps
        if steps < MIN_STEPS_WITHOUT_LORA and not self.lora:
            given = "" if self.sample_steps is not None else f" (mode {self.mode!r} uses {steps} by default)"
            raise InputError(
                "sample_steps", steps,
                f"fewer than {MIN_STEPS_WITHOUT_LORA} steps{given} need a step-distilled LoRA in `lora` "
                f"(e.g. LightX2V's); without one use {MIN_STEPS_WITHOUT_LORA}..50",
            )
        return self

    @property
    def effective_steps(self) -> int:
        return self.sample_steps if self.sample_steps is not None else MODES[self.mode].steps

    @property
    def effective_guidance(self) -> float:
        return self.guidance_scale if self.guidance_scale is not None else MODES[self.mode].guidance

    def effective_shift(self, preset: Preset) -> float:
        if self.sample_shift is not None:
            return self.sample_shift
        mode_shift = MODES[self.mode].shift
        return mode_shift if mode_shift is not None else preset.shift

    @property
    def effective_negative_prompt(self) -> str:
        return self.negative_prompt or OFFICIAL_NEGATIVE_PROMPT


class GenerationRequest(GenerationOptions):
    image_path: Path
    audio_path: Path

    @classmethod
    def parse(cls, data: dict) -> "GenerationRequest":
        """Validate `data`, turning pydantic's report into an InputError naming field and value.

        Checks values only; `model_runtime.option_files.check_files` checks the LoRA and pose files.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise input_error_from(exc, data) from None


def input_error_from(exc: ValidationError, data: dict) -> InputError:
    first = exc.errors()[0]
    # A rule across fields raises our own InputError, which already names its field and value.
    if isinstance(raised := first.get("ctx", {}).get("error"), InputError):
        return raised
    field = ".".join(str(p) for p in first["loc"]) or "request"
    value = first.get("input", data.get(field) if isinstance(data, dict) else data)
    return InputError(field, value, first["msg"])


def size_preset(size: str) -> Preset:
    """An official size as a preset: its area, the official shift."""
    width, height = OFFICIAL_SIZES[size]
    return Preset(max_area=width * height, shift=OFFICIAL_SHIFT)


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
    """The original server's result fields plus what a ledger needs to tell videos apart.

    Option fields hold the values the generation used (a mode's defaults filled in), not the request's.
    """

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
    mode: Mode = "standard"
    size: str = ""
    sample_shift: float | None = None
    lora: str = ""
    lora_strength: float = 0.0  # 0 without a LoRA
    lora_tensors: int = 0  # DiT tensors the LoRA changed
    lora_switch_s: float = 0.0  # seconds spent changing the warm model's LoRA for this clip; 0 when it was in place
    max_segments: int | None = None
    start_from_ref: bool = False
    pose_video: str = ""
