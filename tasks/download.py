"""The download stage: fetch one row's image and speech into the work folder and check they decode."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel

from s2v.errors import InputError
from s2v.settings import Settings, get_settings
from tasks.io_retries import IO_TASK_OPTIONS
from s2v.storage.fetch import FetchedInput, fetch_input

MIN_AUDIO_SECONDS = 0.1


class DownloadedInputs(BaseModel):
    """What the later stages need from one row's inputs; sources are redacted, safe to record."""

    image_path: Path
    audio_path: Path
    image_sha256: str
    audio_sha256: str
    image_source: str
    audio_source: str
    image_width: int
    image_height: int
    audio_seconds: float
    audio_sample_rate: int
    download_seconds: float


@task(name="download-inputs", **IO_TASK_OPTIONS)
def download_inputs(
    image: str, audio: str, work_dir: Path | None = None, settings: Settings | None = None
) -> DownloadedInputs:
    """Fetch `image` and `audio` (path, file://, http(s)://, s3://) into `work_dir` and check both decode.

    Retried only on transient network errors; a bad input raises InputError naming the input.
    """
    settings = settings or get_settings()
    work_dir = Path(work_dir) if work_dir is not None else settings.cache_dir / "inputs"
    started = time.perf_counter()
    fetched_image = fetch_input(image, work_dir, "image", settings)
    fetched_audio = fetch_input(audio, work_dir, "audio", settings)
    width, height = check_image(fetched_image)
    seconds, sample_rate = check_audio(fetched_audio, settings.max_audio_seconds)
    result = DownloadedInputs(
        image_path=fetched_image.path,
        audio_path=fetched_audio.path,
        image_sha256=fetched_image.sha256,
        audio_sha256=fetched_audio.sha256,
        image_source=fetched_image.source,
        audio_source=fetched_audio.source,
        image_width=width,
        image_height=height,
        audio_seconds=seconds,
        audio_sample_rate=sample_rate,
        download_seconds=time.perf_counter() - started,
    )
    get_run_logger().info(
        "inputs ready: image %s (%dx%d), audio %s (%.2f s) in %.2f s",
        result.image_source, width, height, result.audio_source, seconds, result.download_seconds,
    )
    return result


def check_image(fetched: FetchedInput) -> tuple[int, int]:
    """(width, height) of the upright image, or InputError naming the source."""
    from PIL import Image

    from model_runtime.media import load_image

    try:
        image = load_image(fetched.path, fetched.field)
    except InputError as exc:
        raise InputError(fetched.field, fetched.source, exc.reason) from None
    except Image.DecompressionBombError as exc:
        raise InputError(fetched.field, fetched.source, f"too many pixels to decode safely ({exc})") from None
    return image.size


def check_audio(fetched: FetchedInput, max_seconds: float) -> tuple[float, int]:
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
    if seconds > max_seconds:
        raise InputError(fetched.field, fetched.source, f"audio is {seconds:.1f} s long; the limit is {max_seconds:g} s (S2V_MAX_AUDIO_SECONDS)")
    return seconds, sample_rate


def _decode_with_librosa(fetched: FetchedInput) -> tuple[float, int]:
    import warnings

    import librosa

    try:
        with warnings.catch_warnings():
            # librosa warns before falling back from soundfile to audioread; the outcome is what counts.
            warnings.simplefilter("ignore")
            samples, sample_rate = librosa.load(str(fetched.path), sr=None, mono=True)
    except Exception as exc:  # soundfile, audioread and numpy errors all mean "cannot decode"
        raise InputError(fetched.field, fetched.source, f"not decodable audio ({type(exc).__name__})") from None
    return len(samples) / sample_rate, int(sample_rate)
