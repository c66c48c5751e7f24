"""Checks that fetched inputs are what they claim to be, before any model work: images, speech, pose
videos and LoRA files.

Light on purpose: no Prefect, no torch (the RunPod handler and the download task both use it).
Every error is an InputError on the input's source URI, never on the work-folder copy, whose path
is internal to the worker.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from s2v.errors import InputError
from s2v.settings import Settings
from s2v.storage.fetch import FetchedInput

MIN_AUDIO_SECONDS = 0.1
MIN_POSE_FRAMES = 2
MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit on the JSON header


def check_image(fetched: FetchedInput) -> tuple[int, int]:
    """(width, height) of the upright image, or InputError naming the source."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(fetched.path) as image:
            image.load()
            # Phone portraits carry their rotation in EXIF; the size that counts is the upright one.
            return ImageOps.exif_transpose(image).size
    except Image.DecompressionBombError as exc:
        raise InputError(fetched.field, fetched.source, f"too many pixels to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise InputError(fetched.field, fetched.source, "not a decodable image (not a format Pillow reads)") from None
    except (OSError, ValueError) as exc:
        detail = _without_path(str(exc), fetched.path) or "the file is cut short or damaged"
        raise InputError(fetched.field, fetched.source, f"not a decodable image ({detail})") from None


def check_audio(fetched: FetchedInput, limit_s: float) -> tuple[float, int]:
    """(duration in seconds, sample rate), or InputError naming the source and why.

    soundfile reads the header and the first second (WAV, FLAC, OGG, MP3); formats it cannot read
    (AAC/M4A, ...) fall back to librosa's audioread/ffmpeg path, which decodes the whole file.
    """
    import numpy as np
    import soundfile

    try:
        info = soundfile.info(str(fetched.path))
        seconds, sample_rate = info.frames / info.samplerate, info.samplerate
        head, _ = soundfile.read(str(fetched.path), frames=min(info.frames, info.samplerate), dtype="float32")
        decodes = bool(np.isfinite(head).all())
    except RuntimeError:  # soundfile's LibsndfileError: a format libsndfile cannot read
        seconds, sample_rate = _decode_with_librosa(fetched)
        decodes = True
    if not decodes:
        raise InputError(fetched.field, fetched.source, "audio holds NaN or infinite samples")
    if seconds <= MIN_AUDIO_SECONDS:
        raise InputError(fetched.field, fetched.source, f"audio is {seconds:.2f} s long; more than {MIN_AUDIO_SECONDS} s of speech is needed")
    if seconds > limit_s:
        raise InputError(fetched.field, fetched.source, f"audio is {seconds:.1f} s long; the limit is {limit_s:g} s (S2V_MAX_AUDIO_SECONDS)")
    return seconds, sample_rate


def _decode_with_librosa(fetched: FetchedInput) -> tuple[float, int]:
    import warnings

    import librosa

    try:
        with warnings.catch_warnings():
            # librosa warns before falling back from soundfile to audioread; the outcome is what counts.
            warnings.simplefilter("ignore")
            samples, sample_rate = librosa.load(str(fetched.path), sr=None, mono=True)
    except Exception:  # soundfile, audioread and numpy errors all mean "cannot decode"
        # Their class names (EOFError, NoBackendError) tell a user nothing; what the file is does.
        reason = "the file is empty" if fetched.path.stat().st_size == 0 else "not a speech format ffmpeg or libsndfile reads"
        raise InputError(fetched.field, fetched.source, f"not decodable audio ({reason})") from None
    return len(samples) / sample_rate, int(sample_rate)


def check_pose_video(fetched: FetchedInput) -> tuple[int, int, float]:
    """(width, height, fps) of a pose video whose first frames decode, or InputError naming the source.

    imageio-ffmpeg's bundled ffmpeg reads it; a file without a video stream (audio, text) or with a
    single frame (a still image) is refused.
    """
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(str(fetched.path), output_params=["-frames:v", str(MIN_POSE_FRAMES)])
    try:
        meta = next(frames)
        decoded = sum(1 for _ in frames)
    except (OSError, RuntimeError, StopIteration):
        # ffmpeg's log names the work-folder copy; the reason alone is what the caller can act on.
        raise InputError(fetched.field, fetched.source, "not a decodable video (ffmpeg finds no video stream)") from None
    finally:
        frames.close()
    if decoded < MIN_POSE_FRAMES:
        raise InputError(
            fetched.field, fetched.source, f"has {decoded} frame(s); a pose video needs at least {MIN_POSE_FRAMES}"
        )
    width, height = meta["size"]
    return int(width), int(height), float(meta.get("fps") or 0.0)


def check_safetensors(fetched: FetchedInput) -> int:
    """The number of tensors in a safetensors file, or InputError naming the source."""
    return len(safetensors_header(fetched))


def check_lora(fetched: FetchedInput, settings: Settings) -> int:
    """The number of DiT parameters a LoRA file changes, from its header alone (no model, no torch),
    or InputError: not safetensors, no LoRA keys, not for this model's DiT (names and shapes, rank),
    not floating point. The DiT's shapes come from the checkpoint's shard headers when it is here."""
    from model_runtime.layout import dit_parameter_shapes
    from model_runtime.lora_match import check_lora_header

    header = safetensors_header(fetched)
    return len(check_lora_header(header, dit_parameter_shapes(settings), fetched.field, fetched.source).targets)


def safetensors_header(fetched: FetchedInput) -> dict[str, dict]:
    """The tensor entries of a safetensors file's header (8-byte little-endian header length, then a
    JSON header of tensor entries whose data lies inside the file), or InputError naming the source."""

    def refuse(why: str) -> InputError:
        return InputError(fetched.field, fetched.source, f"not a safetensors file ({why})")

    size = fetched.path.stat().st_size
    with open(fetched.path, "rb") as source:
        head = source.read(8)
        if len(head) < 8:
            raise refuse(f"{size} bytes, shorter than the 8-byte header length")
        (header_bytes,) = struct.unpack("<Q", head)
        if not 2 <= header_bytes <= min(size - 8, MAX_SAFETENSORS_HEADER_BYTES):
            raise refuse(f"header length {header_bytes} does not fit a {size}-byte file")
        try:
            header = json.loads(source.read(header_bytes))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise refuse("the header is not JSON") from None
    if not isinstance(header, dict):
        raise refuse("the header is not a JSON object")
    data_bytes = size - 8 - header_bytes
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    for name, entry in tensors.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(entry, dict) and "dtype" in entry and "shape" in entry and isinstance(offsets, list)
                and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise refuse(f"tensor entry {name[:80]!r} is malformed or points outside the file")
    if not tensors:
        raise refuse("it holds no tensors")
    return tensors


def _without_path(text: str, path: Path) -> str:
    return text.replace(f"'{path}'", "").replace(str(path), "").strip(" :")
