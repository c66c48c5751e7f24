"""A pose video fitted to the clip, as the official Wan2.2 S2V generate prepares it for the pose branch.

The official code samples the pose video from its start at 16 fps by time (frame index = round(t x source
fps), no timestamp past the source's end), takes as many frames as the segments to make hold, and pads
what is missing with -1, i.e. black. Frames are scaled and centre-cropped to the clip's size, like the
portrait (the official resize-then-crop pads instead when the aspect differs; cropping keeps the pose
frames filled).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from model_runtime.media import fit_image
from s2v.errors import InputError


def load_pose_frames(path: Path | str, width: int, height: int, count: int, fps: int) -> list[Image.Image]:
    """`count` RGB frames of `width` x `height` sampled at `fps` from the start of the video at `path`."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as exc:
        raise InputError("pose_video", str(path), f"not a readable video ({exc})") from None
    source_fps = float(meta.get("fps") or 0)
    source_width, source_height = meta["size"]
    if not source_fps > 0:
        reader.close()
        raise InputError("pose_video", str(path), "its frame rate is unknown")
    wanted = np.rint(np.arange(count) / fps * source_fps).astype(np.int64)  # non-decreasing
    frames: list[Image.Image] = []
    seen = 0
    raw = None
    fitted: dict[int, Image.Image] = {}

    def fit(index: int, data: bytes) -> Image.Image:
        if index not in fitted:
            fitted.clear()  # the sampled indices only grow: one fitted frame is kept
            picture = np.frombuffer(data, np.uint8).reshape(source_height, source_width, 3)
            fitted[index] = fit_image(Image.fromarray(picture), width, height)
        return fitted[index]

    try:
        for index, raw in enumerate(reader):
            seen = index + 1
            while len(frames) < count and wanted[len(frames)] == index:
                frames.append(fit(index, raw))
            if len(frames) == count:
                break
    finally:
        reader.close()
    if seen == 0:
        raise InputError("pose_video", str(path), "holds no frames")
    duration = seen / source_fps
    black = Image.new("RGB", (width, height))
    while len(frames) < count:
        # A timestamp inside the source whose rounded index fell past its last frame takes the last frame,
        # as the official sampler clips it; timestamps after the source's end are padding.
        frames.append(fit(seen - 1, raw) if len(frames) / fps < duration else black)
    return frames
