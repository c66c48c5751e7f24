"""The download stage: fetch one row's inputs into its work folder and check they decode.

Time bounds: each download ends within S2V_DOWNLOAD_TIMEOUT_S (S2V_LORA_DOWNLOAD_TIMEOUT_S for a
LoRA), however slowly a server sends; the stage as a whole, Prefect's retries and their backoff
included, ends within S2V_DOWNLOAD_STAGE_TIMEOUT_S (plus S2V_LORA_DOWNLOAD_TIMEOUT_S when the row has
to fetch a LoRA that is not cached yet). A retry reuses what earlier tries of the same task run
already fetched.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel

from records.media_checks import check_audio, check_image, check_lora, check_pose_video
from s2v.errors import S2VError, TransientError
from s2v.quality.portrait import PortraitCheck, preflight_portrait
from s2v.settings import Settings, get_settings
from s2v.storage.atomic import write_atomically
from s2v.storage.fetch import FetchedInput, fetch_input, local_file
from s2v.storage.locations import uri_scheme
from s2v.storage.redaction import redact, stable_uri
from tasks.io_retries import IO_TASK_OPTIONS

LORA_CACHE = "loras"
_FORGET_AFTER_S = 3600.0  # a stage run whose task never came back (killed worker) is dropped after this


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
    audio_s: float  # the speech's length
    audio_sample_rate: int
    download_s: float
    lora_path: Path | None = None
    lora_sha256: str | None = None
    lora_source: str | None = None
    pose_video_path: Path | None = None
    pose_video_sha256: str | None = None
    pose_video_source: str | None = None
    portrait: PortraitCheck | None = None  # the face check (S2V_FACE_CHECK); None when off


@task(name="download-inputs", **IO_TASK_OPTIONS)
def download_inputs(
    image: str,
    audio: str,
    work_dir: Path | None = None,
    settings: Settings | None = None,
    lora: str = "",
    pose_video: str = "",
) -> DownloadedInputs:
    """Fetch a row's inputs (path, file://, http(s)://, s3://) into `work_dir` and check each decodes.

    `image`, `audio` and the optional `pose_video` are stored in `work_dir` under their content hash;
    the optional `lora` (safetensors) goes to the cache shared by all rows (`cache_dir/loras`), keyed by
    its URI without signature, so a batch whose rows share one LoRA downloads it once. Retried only
    on transient network errors and only while the stage's time lasts; a bad input raises InputError
    naming the input.
    """
    settings = settings or get_settings()
    work_dir = Path(work_dir) if work_dir is not None else settings.cache_dir / "inputs"
    run_id, tries, last_try = _task_run()
    stage = _stage(run_id, settings, lora)
    try:
        if time.monotonic() >= stage.deadline:  # this retry was scheduled past the stage's end
            raise _stage_over(stage, settings, tries)
        fetched_image = _fetch_once(stage, image, work_dir, "image", settings)
        width, height = check_image(fetched_image)
        portrait = preflight_portrait(fetched_image, settings)
        fetched_audio = _fetch_once(stage, audio, work_dir, "audio", settings)
        seconds, sample_rate = check_audio(fetched_audio, settings.max_audio_seconds)
        fetched_pose = _fetch_once(stage, pose_video, work_dir, "pose_video", settings) if pose_video else None
        if fetched_pose is not None:
            check_pose_video(fetched_pose)
        fetched_lora = _fetch_lora(lora, settings, stage.deadline) if lora else None
    except TransientError as exc:
        stage.last_error = str(exc)
        if time.monotonic() >= stage.deadline:
            _forget(run_id)
            raise _stage_over(stage, settings, tries) from None
        if last_try:
            _forget(run_id)
        raise
    except BaseException:
        _forget(run_id)
        raise
    _forget(run_id)
    result = DownloadedInputs(
        image_path=fetched_image.path,
        audio_path=fetched_audio.path,
        image_sha256=fetched_image.sha256,
        audio_sha256=fetched_audio.sha256,
        image_source=fetched_image.source,
        audio_source=fetched_audio.source,
        image_width=width,
        image_height=height,
        audio_s=seconds,
        audio_sample_rate=sample_rate,
        download_s=time.monotonic() - stage.started,
        lora_path=fetched_lora.path if fetched_lora else None,
        lora_sha256=fetched_lora.sha256 if fetched_lora else None,
        lora_source=fetched_lora.source if fetched_lora else None,
        pose_video_path=fetched_pose.path if fetched_pose else None,
        pose_video_sha256=fetched_pose.sha256 if fetched_pose else None,
        pose_video_source=fetched_pose.source if fetched_pose else None,
        portrait=portrait,
    )
    _logger().info(
        "inputs ready: image %s (%dx%d), audio %s (%.2f s)%s%s in %.2f s",
        result.image_source, width, height, result.audio_source, seconds,
        f", pose video {result.pose_video_source}" if pose_video else "", f", LoRA {result.lora_source}" if lora else "",
        result.download_s,
    )
    return result


def _logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect.context import TaskRunContext

    return get_run_logger() if TaskRunContext.get() is not None else logging.getLogger(__name__)


# What earlier tries of the same task run did ---------------------------------------------------


@dataclass
class _StageRun:
    started: float  # time.monotonic() of the first try
    deadline: float
    fetched: dict[str, FetchedInput] = dataclass_field(default_factory=dict)
    last_error: str = ""


_stages: dict[Any, _StageRun] = {}
_stages_lock = threading.Lock()


def _task_run() -> tuple[Any, int, bool]:
    """(task run id or None outside Prefect, this try's number, whether no retry follows it)."""
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    if context is None:
        return None, 1, True
    tries = max(1, context.task_run.run_count)
    return context.task_run.id, tries, tries > (context.task.retries or 0)


def _stage(run_id: Any, settings: Settings, lora: str) -> _StageRun:
    # Prefect runs a task's retries in the same process, so the first try's memory is still here.
    now = time.monotonic()
    with _stages_lock:
        for stale in [key for key, run in _stages.items() if run.deadline + _FORGET_AFTER_S < now]:
            del _stages[stale]
        if run_id is not None and run_id in _stages:
            return _stages[run_id]
    budget = settings.download_stage_timeout_s
    if lora and _cached_lora(lora, settings) is None:
        budget += settings.lora_download_timeout_s
    run = _StageRun(started=now, deadline=now + budget)
    if run_id is not None:
        with _stages_lock:
            _stages[run_id] = run
    return run


def _forget(run_id: Any) -> None:
    with _stages_lock:
        _stages.pop(run_id, None)


def _fetch_once(stage: _StageRun, uri: str, work_dir: Path, field: str, settings: Settings) -> FetchedInput:
    earlier = stage.fetched.get(field)
    if earlier is not None and earlier.path.is_file():
        return earlier
    fetched = fetch_input(uri, work_dir, field, settings, deadline=stage.deadline)
    stage.fetched[field] = fetched
    return fetched


def _stage_over(stage: _StageRun, settings: Settings, tries: int) -> S2VError:
    # Not a TransientError on purpose: the retry condition (transient errors only) stops here.
    last = f"; last error: {stage.last_error}" if stage.last_error else ""
    return S2VError(
        f"download stage stopped after {time.monotonic() - stage.started:.0f} s and {tries} tries: past "
        f"S2V_DOWNLOAD_STAGE_TIMEOUT_S={settings.download_stage_timeout_s:g} s (each download has "
        f"S2V_DOWNLOAD_TIMEOUT_S={settings.download_timeout_s:g} s); not retried further{last}"
    )


# LoRA cache -----------------------------------------------------------------------------------------


_lora_locks: dict[str, threading.Lock] = {}


def _fetch_lora(uri: str, settings: Settings, deadline: float) -> FetchedInput:
    """The LoRA at `uri` from the shared cache, downloaded and checked on first use.

    Rows that need the same LoRA at once wait for one download instead of each fetching 2 GB.
    """
    key = _lora_key(uri, settings)
    with _stages_lock:
        lock = _lora_locks.setdefault(key, threading.Lock())
    if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise TransientError(f"lora {redact(uri)}: another row's download of the same LoRA did not finish in time")
    try:
        cached = _cached_lora(uri, settings, key)
        if cached is not None:
            return cached
        fetched = fetch_input(uri, settings.cache_dir / LORA_CACHE, "lora", settings, deadline=deadline)
        try:
            check_lora(fetched, settings)  # the header against this model's DiT, before any model loads
        except BaseException:
            fetched.path.unlink(missing_ok=True)
            raise
        entry = {"path": str(fetched.path), "sha256": fetched.sha256, "size_bytes": fetched.size_bytes}
        write_atomically(_lora_index(settings, key), json.dumps(entry))
        return fetched
    finally:
        lock.release()


def _cached_lora(uri: str, settings: Settings, key: str | None = None) -> FetchedInput | None:
    index = _lora_index(settings, key or _lora_key(uri, settings))
    try:
        entry = json.loads(index.read_text())
        path = Path(entry["path"])
        if path.stat().st_size != entry["size_bytes"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return FetchedInput(field="lora", source=redact(uri), path=path, sha256=entry["sha256"],
                        size_bytes=entry["size_bytes"], fetch_s=0.0)


def _lora_key(uri: str, settings: Settings) -> str:
    """The cache key of a LoRA: its URI without credentials or signature; a local file's also holds
    its size and modification time, so a file rewritten in place is fetched again."""
    if uri_scheme(uri) in ("", "file"):
        path = local_file(uri, "lora", settings)
        status = path.stat()
        material = f"{path}\0{status.st_size}\0{status.st_mtime_ns}"
    else:
        material = stable_uri(uri)
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def _lora_index(settings: Settings, key: str) -> Path:
    return settings.cache_dir / LORA_CACHE / "by-uri" / f"{key}.json"
