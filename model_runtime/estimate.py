"""How long a row's generation will take, from the time generations took on this checkpoint and device.

The figure kept is generation seconds per DiT pass: a generation makes `segments` segments, each of
`sample_steps` denoising steps, each step one DiT pass (two with classifier-free guidance, i.e.
guidance_scale != 1). The rest of a segment's work (VAE, audio and text encoders) is folded into that
figure, which is close on a GPU, where the 40-layer DiT dominates.

One figure per resolution name (480p, 720p), not per pixel: within a preset the output area stays
within a few percent of the preset's maximum (output_size keeps the image's aspect at that area), while
across presets the DiT's cost is not linear in the area (attention grows with its square), so a 480p
figure would misjudge a 720p row. A resolution not measured yet has no estimate: the row runs.

The figures live in `<cache_dir>/timings.json`, beside the warm model's files, one record per
(checkpoint, device), updated after every successful generation as an exponential moving average.
Light: no torch, so a flow or the CLI can estimate a manifest's rows without loading the model.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from model_runtime.request import FPS, GenerationOptions
from s2v.errors import InputError
from s2v.settings import TINY, Settings
from s2v.storage.atomic import write_atomically

log = logging.getLogger(__name__)

TIMINGS_FILE = "timings.json"
SMOOTHING = 0.3  # weight of the newest generation in the running figure
REAL_FRAMES_PER_SEGMENT = 80
DROP_FIRST_FRAMES = 3  # as in generate.py: the first segment's first frames are dropped, so it makes 3 more
_VERSION = 1


class Figure(BaseModel):
    seconds_per_dit_pass: float = Field(gt=0)
    warm: bool  # False while only cold generations (the model loaded for them) were measured
    generations: int
    updated_at: float  # epoch seconds


class DeviceFigures(BaseModel):
    checkpoint: str  # resolved path
    device: str  # "cpu", or "cuda:<GPU model>"
    frames_per_segment: int = Field(gt=0)
    resolutions: dict[str, Figure] = {}

    @property
    def last_update(self) -> float:
        return max((figure.updated_at for figure in self.resolutions.values()), default=0.0)


class TimingsFile(BaseModel):
    version: int = _VERSION
    figures: list[DeviceFigures] = []


@dataclass(frozen=True)
class Estimate:
    seconds: float
    segments: int
    speech_seconds: float
    device: str
    seconds_per_dit_pass: float


def timings_path(settings: Settings) -> Path:
    return settings.cache_dir / TIMINGS_FILE


def segments_for(speech_seconds: float, frames_per_segment: int = REAL_FRAMES_PER_SEGMENT, max_segments: int | None = None) -> int:
    """Segments the model makes for speech of this length (the same count the audio encoder decides)."""
    frames = max(1, round(speech_seconds * FPS))
    segments = math.ceil((frames + DROP_FIRST_FRAMES) / frames_per_segment)
    return min(segments, max_segments) if max_segments else segments


def preset_name(options: GenerationOptions) -> str:
    """The name a figure is kept under: the official size when the row asks for one, else its resolution."""
    return getattr(options, "size", "") or options.resolution


def dit_passes(guidance_scale: float) -> int:
    """DiT passes per denoising step: guidance runs the model with and without the prompt."""
    return 1 if guidance_scale == 1 else 2


def checkpoint_key(settings: Settings, checkpoint: Path | str | None = None) -> str:
    # Unset or "tiny" is the tiny one in the cache (warm_cache.checkpoint_folder), named here without torch.
    chosen = checkpoint or settings.checkpoint_path()
    path = Path(chosen if chosen and str(chosen) != TINY else settings.cache_dir / "tiny-checkpoint").expanduser()
    return str(path.resolve())


# ---- reading -----------------------------------------------------------------------------------

def figures(settings: Settings, checkpoint: Path | str | None = None, device: str | None = None) -> dict[str, float]:
    """{resolution: seconds per DiT pass} measured for this checkpoint and device; empty when none."""
    found = _find(_read(timings_path(settings)), checkpoint_key(settings, checkpoint), device or settings.device)
    if found is None:
        return {}
    return {name: figure.seconds_per_dit_pass for name, figure in found.resolutions.items()}


def estimate(
    settings: Settings,
    speech_seconds: float,
    options: GenerationOptions,
    *,
    checkpoint: Path | str | None = None,
    device: str | None = None,
    segments: int | None = None,
) -> Estimate | None:
    """The expected generation time, None while nothing was measured for this checkpoint, device and
    resolution. `device` may be a measured device's full name ("cuda:NVIDIA H100 80GB HBM3") or a
    kind ("cuda", "cpu", "auto"): a kind takes the most recently measured device of that kind, which in
    a host's own cache folder is that host's. `segments` replaces the count worked out from the speech
    (audio features made earlier know it exactly)."""
    found = _find(_read(timings_path(settings)), checkpoint_key(settings, checkpoint), device or settings.device)
    if found is None or preset_name(options) not in found.resolutions:
        return None
    per_pass = found.resolutions[preset_name(options)].seconds_per_dit_pass
    max_segments = getattr(options, "max_segments", None)
    if segments is None:
        segments = segments_for(speech_seconds, found.frames_per_segment, max_segments)
    elif max_segments:
        segments = min(segments, max_segments)
    seconds = segments * options.effective_steps * dit_passes(options.effective_guidance) * per_pass
    return Estimate(seconds=seconds, segments=segments, speech_seconds=speech_seconds, device=found.device, seconds_per_dit_pass=per_pass)


def estimate_seconds(settings: Settings, speech_seconds: float, options: GenerationOptions, **where: Any) -> float | None:
    """`estimate(...).seconds`, None when nothing is measured yet for that checkpoint and device."""
    found = estimate(settings, speech_seconds, options, **where)
    return None if found is None else found.seconds


def check_within_limit(
    settings: Settings,
    audio: Path | str,
    speech_seconds: float,
    options: GenerationOptions,
    *,
    limit_s: float,
    limit_name: str,
    **where: Any,
) -> Estimate | None:
    """Raise InputError on field `audio` when the estimate exceeds `limit_s`; the estimate, if any."""
    found = estimate(settings, speech_seconds, options, **where)
    if found is not None and found.seconds > limit_s:
        raise InputError("audio", str(audio), (
            f"speech of {speech_seconds:.1f} s needs {found.segments} segment(s), estimated {_seconds(found.seconds)} s "
            f"on {found.device} at {preset_name(options)}, {options.effective_steps} steps; the limit is {_seconds(limit_s)} s "
            f"({limit_name}). Shorten the speech, lower sample_steps or resolution, or raise the limit"
        ))
    return found


def _seconds(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


# ---- recording ---------------------------------------------------------------------------------

def record(
    settings: Settings,
    *,
    checkpoint: Path | str,
    device: str,
    frames_per_segment: int,
    resolution: str,
    generation_seconds: float,
    segments: int,
    sample_steps: int,
    guidance_scale: float,
    warm: bool,
) -> float | None:
    """Fold one successful generation into the running figure; the new figure (None if not saved).

    A cold generation (the model was loaded for it) pays one-time warm-up costs, so it only seeds a
    figure nothing else has measured, and the first warm one replaces that seed instead of averaging.
    Never raises for the file: a cache that cannot be written must not fail the video it measured.
    """
    per_pass = generation_seconds / (segments * sample_steps * dit_passes(guidance_scale))
    path = timings_path(settings)
    key = checkpoint_key(settings, checkpoint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            timings = _read(path)
            entry = next((f for f in timings.figures if f.checkpoint == key and f.device == device), None)
            if entry is None:
                entry = DeviceFigures(checkpoint=key, device=device, frames_per_segment=frames_per_segment)
                timings.figures.append(entry)
            entry.frames_per_segment = frames_per_segment
            old = entry.resolutions.get(resolution)
            if old is None or (warm and not old.warm):
                figure = per_pass
            elif not warm:
                return old.seconds_per_dit_pass
            else:
                figure = old.seconds_per_dit_pass + SMOOTHING * (per_pass - old.seconds_per_dit_pass)
            entry.resolutions[resolution] = Figure(
                seconds_per_dit_pass=figure, warm=warm, generations=(old.generations if old else 0) + 1, updated_at=time.time(),
            )
            _write(path, timings)
            return figure
    except (OSError, ValueError) as exc:  # ValueError: pydantic's, e.g. a generation timed at 0 s
        log.warning("could not record the generation time in %s: %s", path, exc)
        return None


def _find(timings: TimingsFile, checkpoint: str, device: str) -> DeviceFigures | None:
    measured = [f for f in timings.figures if f.checkpoint == checkpoint]
    exact = next((f for f in measured if f.device == device), None)
    if exact is not None:
        return exact
    of_kind = [f for f in measured if device == "auto" or f.device.split(":", 1)[0] == device]
    return max(of_kind, key=lambda f: f.last_update, default=None)


def _read(path: Path) -> TimingsFile:
    # A figure is a cache: a file that is missing, torn or from another version starts afresh.
    try:
        timings = TimingsFile.model_validate_json(path.read_bytes())
        if timings.version == _VERSION:
            return timings
        log.warning("ignoring %s: a timings file of version %d, not %d", path, timings.version, _VERSION)
    except FileNotFoundError:
        pass
    except (OSError, ValidationError) as exc:
        log.warning("ignoring the unreadable timings file %s: %s", path, exc)
    return TimingsFile()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two processes (a model server and an in-process run) may share a cache folder: read-modify-write
    # under an exclusive lock, so neither loses the other's update.
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, timings: TimingsFile) -> None:
    # Readers take no lock: they see the old file or the new one, never half of one.
    write_atomically(path, timings.model_dump_json(indent=1))
