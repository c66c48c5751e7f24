"""Decoding the user's image and speech, with errors that say which input is wrong and why."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from s2v.errors import InputError

AUDIO_SAMPLE_RATE = 16000  # what wav2vec2 was trained on


def load_image(path: Path | str, field: str = "image") -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            # Phone portraits carry their rotation in EXIF; the model must see them upright.
            return ImageOps.exif_transpose(image).convert("RGB")
    except FileNotFoundError:
        raise InputError(field, str(path), "file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(field, str(path), f"not a decodable image ({type(exc).__name__}: {exc})") from None


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale and centre-crop to exactly width x height, so the face is not stretched."""
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)


def load_speech(path: Path | str, field: str = "audio", max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 samples at 16 kHz (librosa resamples with soxr)."""
    import librosa

    if not Path(path).is_file():
        raise InputError(field, str(path), "file not found")
    try:
        with warnings.catch_warnings():
            # librosa warns before falling back from soundfile to audioread; the outcome is what counts.
            warnings.simplefilter("ignore")
            samples, _ = librosa.load(str(path), sr=AUDIO_SAMPLE_RATE, mono=True)
    except Exception as exc:  # librosa raises soundfile/audioread/numpy errors for undecodable files
        raise InputError(field, str(path), f"not decodable audio ({type(exc).__name__}: {exc})") from None
    seconds = len(samples) / AUDIO_SAMPLE_RATE
    if seconds < 0.1:
        raise InputError(field, str(path), f"audio is {seconds:.2f} s long; at least 0.1 s of speech is needed")
    if not np.isfinite(samples).all():
        raise InputError(field, str(path), "audio holds NaN or infinite samples")
    if max_seconds is not None and seconds > max_seconds:
        raise InputError(field, str(path), f"audio is {seconds:.1f} s long; the limit is {max_seconds:.0f} s")
    return samples.astype(np.float32)
