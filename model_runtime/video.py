"""MP4 writing and muxing with imageio-ffmpeg's bundled ffmpeg (no system ffmpeg needed)."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2v.errors import MuxError
from s2v.storage.atomic import atomic_path


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_silent_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """frames: uint8 array (T, H, W, 3). h264, yuv420p so every player opens it."""
    import imageio_ffmpeg

    count, height, width, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
        quality=8, macro_block_size=16, ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def write_poster(frames: np.ndarray, video: Path) -> Path:
    """A JPEG of the clip's middle frame beside `video` (`<name>.poster.jpg`): its picture for people."""
    from PIL import Image

    poster = video.with_name(f"{video.stem}.poster.jpg")
    Image.fromarray(frames[len(frames) // 2]).save(poster, quality=88)
    return poster


def poster_from_video(video: Path) -> Path:
    """The poster (see write_poster) of a finished MP4, from its middle frame: for a video made by an
    earlier run, whose frames are gone. Raises MuxError when ffmpeg cannot read it."""
    poster = video.with_name(f"{video.stem}.poster.jpg")
    middle = (probe(video).duration or 0.0) / 2
    proc = subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-ss", f"{middle:.3f}", "-i", str(video),
                           "-frames:v", "1", "-q:v", "3", str(poster)], capture_output=True, text=True)
    if proc.returncode != 0 or not poster.is_file():
        raise MuxError(f"no poster from {video.name}: {proc.stderr.strip()[-400:]}")
    return poster


def mux_speech(silent_video: Path, speech: Path, out: Path) -> None:
    """Put the original speech in as AAC. Any failure raises: a silent video is never the result."""
    with atomic_path(out, suffix=".partial.mp4") as tmp:
        cmd = [
            ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(silent_video), "-i", str(speech),
            "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "128k",
            "-shortest", "-movflags", "+faststart", str(tmp),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise MuxError(f"could not mux {speech} into the video: {proc.stderr.strip()[-800:]}")
        info = probe(tmp)
        if info.audio_codec != "aac" or info.video_codec != "h264":
            raise MuxError(f"muxed file has video={info.video_codec} audio={info.audio_codec}; expected h264 + aac")


@dataclass(frozen=True)
class MediaInfo:
    video_codec: str | None
    audio_codec: str | None
    video_streams: int
    audio_streams: int
    duration: float | None
    width: int | None
    height: int | None


_STREAM = re.compile(r"Stream #\d+:\d+.*?: (Video|Audio): (\w+)")
_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_SIZE = re.compile(r"Video: .*?, (\d{2,5})x(\d{2,5})")


def probe(path: Path) -> MediaInfo:
    """Streams and duration, read from `ffmpeg -i` (imageio-ffmpeg ships no ffprobe)."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    text = proc.stderr
    streams = _STREAM.findall(text)
    videos = [codec for kind, codec in streams if kind == "Video"]
    audios = [codec for kind, codec in streams if kind == "Audio"]
    duration = None
    if match := _DURATION.search(text):
        h, m, s = match.groups()
        duration = int(h) * 3600 + int(m) * 60 + float(s)
    size = _SIZE.search(text)
    return MediaInfo(
        video_codec=videos[0] if videos else None,
        audio_codec=audios[0] if audios else None,
        video_streams=len(videos),
        audio_streams=len(audios),
        duration=duration,
        width=int(size.group(1)) if size else None,
        height=int(size.group(2)) if size else None,
    )
