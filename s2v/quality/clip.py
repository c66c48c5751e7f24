"""The check of a made clip, on its MP4 alone: is the portrait's face still there, where and as large as
in the portrait, and does the mouth move with the speech?

The mouth score is a proxy, not a trained lip-sync model (none can be loaded here): the correlation
between motion in the mouth region (the lower third of the face box) and the loudness envelope of the
clip's own audio track, best over a lag of up to MAX_LAG_S. It catches a frozen mouth, a mouth moving
while the speech pauses, and motion that runs ahead of or behind the speech by more than the lag; it
cannot tell a wrong mouth shape from a right one. Thresholds and what they were chosen on: README.
"""
from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from s2v.quality.faces import Face, find_faces
from s2v.quality.portrait import load_upright

SAMPLE_EVERY_S = 0.5  # one frame per half second goes through the face detector
MAX_SAMPLES = 40  # a long clip is sampled more sparsely, so its check costs about as much as a 20 s one
MAX_LAG_S = 0.25
# Below this mean change (grey levels per frame) the mouth is still: what is left is the codec's noise,
# which correlates with anything by chance (0.18 for a still portrait over a 5 s speech).
MIN_MOUTH_MOTION = 0.5
SMOOTH_S = 0.2  # both signals are averaged over this window: syllables, not single frames
AUDIO_RATE = 16000
# Thresholds (README: "Quality checks" says what they were chosen on).
MIN_FACE_FRAMES = 0.8
MAX_FACE_DRIFT = 0.5  # of the portrait's face width
MAX_FACE_SIZE_CHANGE = 0.35
MIN_MOUTH_SYNC = 0.3


class ClipCheck(BaseModel):
    """What the clip check measured; `flags` is empty when nothing needs a person's eye."""

    face_frames: float  # share of sampled frames with a face
    face_drift: float | None = None  # largest move of the face's centre, in face widths of the portrait's face
    face_size_change: float | None = None  # largest change of the face's width against the portrait's, as a share
    mouth_sync: float | None = None  # -1..1, best over the lags
    mouth_lag_s: float | None = None  # > 0: the mouth moves after the speech
    flags: list[str] = []

    def problem(self) -> str | None:
        return "; ".join(self.flags) or None


def check_clip(video: Path, portrait: Path | None = None) -> ClipCheck:
    """The clip at `video` against the portrait it was made from (fitted to the clip's size as the model
    fits it); without a portrait, against the first face found in the clip."""
    import imageio_ffmpeg

    # One decoding thread: the check shares the worker's CPU with the generation beside it.
    frames = imageio_ffmpeg.read_frames(str(video), pix_fmt="gray", bits_per_pixel=8, input_params=["-threads", "1"])
    try:
        meta = next(frames)
        width, height = meta["size"]
        fps = float(meta.get("fps") or 16.0)
        expected = max(1, int(round((meta.get("duration") or 0.0) * fps)))
        stride = max(round(fps * SAMPLE_EVERY_S), math.ceil(expected / MAX_SAMPLES), 1)
        reference = _portrait_face(portrait, (width, height))
        found, sampled, motion = _scan_frames(frames, width, height, stride, reference)
    finally:
        frames.close()
    reference = reference or (found[0] if found else None)
    result = ClipCheck(face_frames=round(len(found) / sampled, 3) if sampled else 0.0)
    if reference is not None and found:
        result.face_drift = round(max(_distance(face, reference) for face in found) / reference.width, 3)
        result.face_size_change = round(max(abs(face.width / reference.width - 1) for face in found), 3)
    if found and len(motion) > 2:
        envelope = loudness_envelope(speech_of(video), fps, len(motion) + 1)[1:]
        result.mouth_sync, result.mouth_lag_s = best_correlation(np.asarray(motion), envelope, fps)
    result.flags = flags_of(result)
    return result


def flags_of(result: ClipCheck) -> list[str]:
    flags = []
    if result.face_frames < MIN_FACE_FRAMES:
        flags.append(f"a face in {result.face_frames:.0%} of sampled frames (< {MIN_FACE_FRAMES:.0%})")
    if result.face_drift is not None and result.face_drift > MAX_FACE_DRIFT:
        flags.append(f"the face moved {result.face_drift:.2f} face widths from the portrait's (> {MAX_FACE_DRIFT})")
    if result.face_size_change is not None and result.face_size_change > MAX_FACE_SIZE_CHANGE:
        flags.append(f"the face's size changed by {result.face_size_change:.0%} (> {MAX_FACE_SIZE_CHANGE:.0%})")
    if result.mouth_sync is not None and result.mouth_sync < MIN_MOUTH_SYNC:
        flags.append(f"the mouth does not move with the speech (score {result.mouth_sync:.2f} < {MIN_MOUTH_SYNC})")
    return flags


def _scan_frames(frames, width: int, height: int, stride: int, reference: Face | None):
    """(faces found in sampled frames, frames sampled, mouth motion of every frame after the first)."""
    found: list[Face] = []
    motion: list[float] = []
    box, previous, sampled = reference, None, 0
    for index, raw in enumerate(frames):
        grey = np.frombuffer(raw, dtype=np.uint8).reshape(height, width)
        if index % stride == 0:
            sampled += 1
            faces = find_faces(grey)
            if faces:
                found.append(faces[0])
                box = faces[0]  # the mouth region follows the face from one sample to the next
        if previous is not None:
            motion.append(mouth_motion(previous, grey, box) if box is not None else 0.0)
        previous = grey
    return found, sampled, motion


def mouth_motion(previous: np.ndarray, current: np.ndarray, face: Face) -> float:
    """Mean absolute change between two grey frames in the lower third of the face box (its middle 60%,
    leaving out cheeks and background)."""
    top, bottom = int(face.y + face.height * 2 / 3), int(face.y + face.height)
    left, right = int(face.x + face.width * 0.2), int(face.x + face.width * 0.8)
    before = previous[max(top, 0):bottom, max(left, 0):right].astype(np.int16)
    after = current[max(top, 0):bottom, max(left, 0):right].astype(np.int16)
    return float(np.abs(after - before).mean()) if before.size else 0.0


def speech_of(video: Path) -> np.ndarray:
    """The clip's audio track as mono float32 samples at AUDIO_RATE (empty when it has none)."""
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-threads", "1", "-i", str(video), "-vn", "-ac", "1",
               "-ar", str(AUDIO_RATE), "-f", "f32le", "pipe:1"]
    proc = subprocess.run(command, capture_output=True, timeout=300)
    return np.frombuffer(proc.stdout, dtype=np.float32) if proc.returncode == 0 else np.zeros(0, np.float32)


def loudness_envelope(samples: np.ndarray, fps: float, frames: int) -> np.ndarray:
    """RMS loudness of the speech during each video frame."""
    per_frame = AUDIO_RATE / fps
    envelope = np.zeros(frames)
    for index in range(frames):
        window = samples[int(index * per_frame):int((index + 1) * per_frame)]
        envelope[index] = math.sqrt(float(np.mean(window.astype(np.float64) ** 2))) if window.size else 0.0
    return envelope


def best_correlation(motion: np.ndarray, envelope: np.ndarray, fps: float) -> tuple[float | None, float | None]:
    """(the highest correlation of mouth motion with loudness over lags of up to MAX_LAG_S, its lag in
    seconds); (None, None) when the speech is silent, as there is nothing to follow; (0.0, None) when the
    mouth is still."""
    window = max(1, round(SMOOTH_S * fps))
    if envelope.std() < 1e-6:
        return None, None
    if motion.mean() < MIN_MOUTH_MOTION:
        return 0.0, None
    motion, envelope = _smooth(motion, window), _smooth(envelope, window)
    best, best_lag = -1.0, 0
    for lag in range(-round(MAX_LAG_S * fps), round(MAX_LAG_S * fps) + 1):
        # lag > 0 pairs the mouth at frame t + lag with the speech at frame t.
        moved = motion[lag:] if lag >= 0 else motion[:lag]
        heard = envelope[:len(envelope) - lag] if lag >= 0 else envelope[-lag:]
        if len(moved) > 2 and moved.std() > 1e-9:
            score = float(np.corrcoef(moved, heard)[0, 1])
            if score > best:
                best, best_lag = score, lag
    return round(best if best > -1.0 else 0.0, 3), round(best_lag / fps, 3)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    return np.convolve(values, np.ones(window) / window, mode="same")


def _portrait_face(portrait: Path | None, size: tuple[int, int]) -> Face | None:
    if portrait is None:
        return None
    faces = find_faces(load_upright(portrait, size))
    return faces[0] if faces else None


def _distance(face: Face, reference: Face) -> float:
    (x, y), (rx, ry) = face.centre, reference.centre
    return math.hypot(x - rx, y - ry)
