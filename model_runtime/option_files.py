"""Checks of the files a request names besides its image and speech (LoRA, pose video). Light: no torch.

They run before the request queues for the model, so a wrong file fails in milliseconds with the field
and the path named; whether a LoRA fits the model is known only once the DiT is there (model_runtime.lora).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from s2v.errors import InputError

LORA_SUFFIX = ".safetensors"
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")
# Key endings of the LoRA layouts model_runtime.lora applies (kohya/ComfyUI, PEFT/diffusers, and the
# full-tensor differences that LightX2V's Wan LoRAs carry for biases, norms and modulation).
LORA_KEY_MARKS = (".lora_up.", ".lora_down.", ".lora_A.", ".lora_B.")
LORA_DIFF_SUFFIXES = (".diff", ".diff_b", ".diff_m")
_MAX_HEADER_BYTES = 100 * 2**20


def check_files(request) -> None:
    """Raise InputError (field `lora` or `pose_video`) for a file the request cannot use."""
    if request.lora:
        check_lora_file(request.lora)
    if request.pose_video:
        check_pose_video_file(request.pose_video)


def check_lora_file(path: str, field: str = "lora") -> list[str]:
    """The tensor names of a readable LoRA file (from the safetensors header, without loading it)."""
    file = _local_file(path, field)
    if file.suffix != LORA_SUFFIX:
        raise InputError(field, path, f"must be a {LORA_SUFFIX} file")
    names = safetensors_keys(file, field)
    if not any(mark in name for name in names for mark in LORA_KEY_MARKS) and not any(
        name.endswith(LORA_DIFF_SUFFIXES) for name in names
    ):
        # Counts only: a reply never quotes a file's content.
        raise InputError(field, path, f"holds no LoRA tensors (lora_up/lora_down or lora_A/lora_B keys) among its {len(names)}")
    return names


def safetensors_keys(file: Path, field: str) -> list[str]:
    """Tensor names from the header: 8 bytes little-endian header length, then that much JSON."""
    try:
        with open(file, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER_BYTES or length > file.stat().st_size - 8:
                raise ValueError(f"header length {length} does not fit the file")
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(field, str(file), f"not a readable safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise InputError(field, str(file), "not a readable safetensors file (its header is not a JSON object)")
    return [name for name in header if name != "__metadata__"]


def check_pose_video_file(path: str, field: str = "pose_video") -> None:
    """A local pose video the model server can read: a video suffix and a video stream ffmpeg finds.

    The server's own check of a path it is handed; records.media_checks.check_pose_video checks a
    fetched input more deeply (its first frames decode) before a row ever reaches the server.
    """
    from model_runtime.video import probe

    file = _local_file(path, field)
    if file.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(field, path, f"must be a video file ({', '.join(VIDEO_SUFFIXES)})")
    info = probe(file)
    if info.video_streams < 1 or not info.width:
        raise InputError(field, path, "ffmpeg finds no video stream in it")


def _local_file(path: str, field: str) -> Path:
    file = Path(path)
    # The model server's working directory is not the client's: a relative path would name another file.
    if not file.is_absolute():
        raise InputError(field, path, "must be an absolute local path (download URIs first)")
    if not file.is_file():
        raise InputError(field, path, "file not found")
    return file
