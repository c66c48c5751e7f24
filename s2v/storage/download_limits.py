"""Caps on one download: its size limit and its deadline, checked as the bytes stream in.

Sizes are in MiB (1 MB here = 1,048,576 bytes), like `video_size_mb` in the results. Every download
has a wall-clock deadline (connect + whole body) that holds however slowly a server sends its bytes.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import closing
from typing import NamedTuple

from s2v.errors import InputError, TransientError
from s2v.settings import Settings

MiB = 1024 * 1024
CHUNK_BYTES = MiB


class Deadline(NamedTuple):
    """When one download must end."""

    at: float  # time.monotonic() by which the download must end
    window_s: float  # the time it was given, for the message


class Limits(NamedTuple):
    """One download's size cap and time allowance, with the settings that set them (for the messages)."""

    max_bytes: int
    size_setting: str
    timeout_s: float
    timeout_setting: str


def limits_for(field: str, settings: Settings) -> Limits:
    """The caps for an input of kind `field` (lora, pose video, image, audio)."""
    def size(megabytes: float) -> int:
        return math.ceil(megabytes * MiB)

    if field == "lora":
        return Limits(size(settings.max_lora_mb), "S2V_MAX_LORA_MB", settings.lora_download_timeout_s, "S2V_LORA_DOWNLOAD_TIMEOUT_S")
    timeout = (settings.download_timeout_s, "S2V_DOWNLOAD_TIMEOUT_S")
    if "pose" in field:
        return Limits(size(settings.max_pose_video_mb), "S2V_MAX_POSE_VIDEO_MB", *timeout)
    if "image" in field:
        return Limits(size(settings.max_image_mb), "S2V_MAX_IMAGE_MB", *timeout)
    return Limits(size(settings.max_audio_mb), "S2V_MAX_AUDIO_MB" if "audio" in field else "", *timeout)


def deadline_in(timeout_s: float, outer: float | None) -> Deadline:
    """The deadline `timeout_s` from now, or `outer` (a time.monotonic() value) if that comes first."""
    now = time.monotonic()
    at = now + timeout_s if outer is None else min(now + timeout_s, outer)
    return Deadline(at, max(0.0, at - now))


def late(field: str, shown: str, limits: Limits, deadline: Deadline) -> TransientError:
    """The error for a download that missed its deadline."""
    return TransientError(
        f"{field} {shown}: download not finished within {deadline.window_s:.3g} s ({limits.timeout_setting}="
        f"{limits.timeout_s:g} s per download; S2V_DOWNLOAD_STAGE_TIMEOUT_S bounds a row's whole download stage)"
    )


def limited(chunks: Iterator[bytes], limits: Limits, deadline: Deadline, field: str, shown: str) -> Iterator[bytes]:
    """`chunks`, stopped with an error as soon as they pass the size cap or the deadline."""
    # Sizes announced up front are checked by each reader; this catches servers that lie or omit them.
    # The deadline is checked between chunks here; an HTTP read is also cut mid-chunk (fetch_http's watchdog).
    total = 0
    with closing(chunks):
        for chunk in chunks:
            total += len(chunk)
            if total > limits.max_bytes:
                raise InputError(field, shown, f"larger than the {limits.max_bytes / MiB:.3g} MB limit{_hint(limits)}")
            if time.monotonic() > deadline.at:
                raise late(field, shown, limits, deadline)
            yield chunk


def check_size(size: int | None, limits: Limits, field: str, shown: str) -> None:
    """Refuse a size announced up front (Content-Length, a file's or object's size) that is over the cap."""
    if size is not None and size > limits.max_bytes:
        raise InputError(field, shown, f"{size / MiB:.3g} MB is over the {limits.max_bytes / MiB:.3g} MB limit{_hint(limits)}")


def _hint(limits: Limits) -> str:
    return f" ({limits.size_setting})" if limits.size_setting else ""
