"""Test clips of a real face whose mouth region opens and closes with a speech's loudness, for the clip
check's tests and bench: the astronaut of scikit-image, her jaw dropped by the envelope."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from model_runtime.video import mux_speech, write_silent_mp4
from s2v.quality.clip import loudness_envelope, speech_of
from s2v.quality.faces import find_faces

FPS = 16
JAW_DROP = 0.12  # of the face's height, at the speech's loudest


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def make_talking_clip(out: Path, speech: Path, driver: Path | None = None, shift_s: float = 0.0,
                      picture: np.ndarray | None = None) -> Path:
    """An MP4 of `picture` (default: the astronaut) with the speech at `speech` as its audio track and its
    mouth moved by the loudness of `driver` (default: the same speech), `shift_s` seconds later."""
    picture = astronaut() if picture is None else picture
    face = find_faces(picture)[0]
    samples = speech_of(speech)
    frames = int(len(samples) / 16000 * FPS)
    envelope = loudness_envelope(speech_of(driver or speech), FPS, frames)
    envelope = np.roll(envelope / max(envelope.max(), 1e-9), round(shift_s * FPS))
    top, bottom = int(face.y + face.height * 0.6), int(face.y + face.height)
    left, right = int(face.x + face.width * 0.2), int(face.x + face.width * 0.8)
    video = np.repeat(picture[None], frames, axis=0)
    for index, loudness in enumerate(envelope):
        drop = int(round(loudness * JAW_DROP * face.height))
        if drop:
            video[index, top + drop:bottom + drop, left:right] = picture[top:bottom, left:right]
    silent = out.with_name(f"{out.stem}.silent.mp4")
    write_silent_mp4(video, silent, FPS)
    mux_speech(silent, speech, out)
    silent.unlink()
    return out
