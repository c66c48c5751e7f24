"""Runs manifest rows through download -> audio-encode -> generate -> upload, in manifest order.

The loop keeps `lookahead` downloads running ahead of the row it works on, calls encode and generate
for one row at a time (the model does one thing at a time anyway), and leaves each upload running
while the next row generates. So the GPU does not wait on the network, at most `lookahead` inputs are
fetched ahead, and exactly one generation is ever in flight. Every row ends in the ledger the moment
it ends, whatever happened to it; what it downloaded is deleted then.

The loop runs in the flow's thread and only waits on futures there, so no task ever waits on another
task inside the thread pool.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from model_runtime.runtime import seen_warm
from records.claims import RowClaims
from records.ledger import LedgerRecord, LedgerStore
from records.manifest import ClipRow, InvalidRow
from records.row_checks import check_speech_time, row_error
from s2v.errors import GenerationCancelled, S2VError
from s2v.settings import Settings
from s2v.storage.locations import output_location
from s2v.storage.redaction import redact
from tasks.download import DownloadedInputs, download_inputs
from tasks.encode import encode_audio
from tasks.generate import generate_video
from tasks.history import RowHistory, read_row_history
from tasks.quality import clip_check_fields, submit_clip_check
from tasks.upload import upload_video

RowEnded = Callable[[LedgerRecord], None]
UPLOAD_POLL_S = 0.5  # how often a wait in the loop looks for finished uploads
# What a record says about a video made by an earlier run (a skip, or a kept video uploaded now).
_MADE_FIELDS = (
    "url", "poster_url", "output_uri", "generation_time", "pipeline_time", "video_size_mb", "seed", "tiny_checkpoint",
    "checkpoint", "width", "height", "duration", "frames", "segments", "warm_model", "sample_shift", "guidance_scale",
    "qc_face_frames", "qc_face_drift", "qc_face_size_change", "qc_mouth_sync", "qc_mouth_lag_s", "qc_flags", "qc_error",
)


@dataclass
class RowRun:
    """One row on its way through the stages: what the ledger record is made of."""

    row: ClipRow
    work: Path
    started: float = field(default_factory=time.perf_counter)
    attempts: int | None = None
    inputs: DownloadedInputs | None = None
    generation: object | None = None  # model_runtime.request.GenerationResult
    made_earlier: LedgerRecord | None = None  # the record of a kept video this run uploads instead
    video: Path | None = None
    poster: Path | None = None
    warm_features: bool = True
    urls: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    kept_video: Path | None = None
    quality: PrefectFuture | None = None  # the clip check, running beside the upload
    qc: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.row.output_name or f"{self.row.clip_id}.mp4"

    @property
    def poster_key(self) -> str:
        return f"{self.key.rsplit('.', 1)[0]}.poster.jpg"


def record_invalid_rows(invalid: Sequence[InvalidRow], store: LedgerStore, settings: Settings,
                        on_row_end: RowEnded | None = None) -> None:
    for bad in invalid:
        record = store.append(LedgerRecord(
            row=bad.row, clip_id=bad.clip_id, status="failed", error=str(bad.error), worker=settings.worker_name,
            manifest=bad.manifest, flow_run_id=flow_run.id, attempts=_attempts_or_first(store, bad.clip_id),
        ))
        if on_row_end:
            on_row_end(record)


def run_rows(
    rows: Sequence[ClipRow],
    *,
    settings: Settings,
    store: LedgerStore,
    lookahead: int = 2,
    on_row_end: RowEnded | None = None,
    should_stop: Callable[[], str | None] = lambda: None,
    claims: RowClaims | None = None,
    on_row_lost: Callable[[str], None] | None = None,
) -> None:
    """Every row ends with one ledger record, except rows never started because `should_stop` said so and
    rows another run took over (`on_row_lost(why)`: that run's record is the row's). With `claims`, a
    row is claimed before its expensive work, and left to the run that holds it."""
    logger = get_run_logger()
    work_dir = settings.cache_dir / "work"
    downloads: deque[tuple[RowRun, PrefectFuture]] = deque()
    uploads: list[tuple[RowRun, PrefectFuture]] = []
    waiting = deque(rows)

    def finish(run: RowRun, status: str, error: str | None = None, done: LedgerRecord | None = None) -> None:
        run.attempts = run.attempts or _attempts_or_first(store, run.row.clip_id)
        record = store.append(_record(run, status, error, done, settings))
        if status in ("failed", "interrupted"):
            logger.warning("row %s (%s) %s: %s", run.row.row, run.row.clip_id, status, error)
        else:
            logger.info("row %s (%s) %s: %s", run.row.row, run.row.clip_id, status, record.url)
        shutil.rmtree(run.work, ignore_errors=True)  # the row's input copies: gone with the row
        if claims is not None:  # after the record: a claim released early would let another run make it again
            claims.release(run.row.clip_id)
        if on_row_end:
            on_row_end(record)

    def lost_to_another_run(run: RowRun) -> bool:
        """Whether another run took this row over (this run was given up for dead, or its parent gave the
        row up): then this run drops the row, with no record, for that run's record is the row's."""
        newer = claims.taken_over(run.row.clip_id) if claims is not None else None
        if newer is None:
            return False
        why = (f"row {run.row.row} ({run.row.clip_id}): run {newer.run_id} on {newer.worker} holds the row now "
               f"({newer.reason or 'this run was given up for dead'}); this run stops it without a video")
        logger.warning(why)
        shutil.rmtree(run.work, ignore_errors=True)
        if run.video is not None:
            run.video.unlink(missing_ok=True)
        if on_row_lost:
            on_row_lost(why)
        return True

    def top_up() -> None:
        while waiting and len(downloads) < lookahead:
            row = waiting.popleft()
            logger.info("row %s (%s) started: fetching its inputs", row.row, row.clip_id)
            run = RowRun(row, work_dir / "rows" / f"{row.clip_id}-{uuid.uuid4().hex[:8]}")
            downloads.append((run, download_inputs.submit(
                row.image, row.audio, work_dir=run.work, settings=settings, lora=row.lora, pose_video=row.pose_video)))

    def collect_uploads(block: bool) -> None:
        for pair in list(uploads):
            run, future = pair
            if future.state.is_final() and "upload_started" in run.seconds:  # its own time, not the clip check's
                run.seconds["upload_s"] = time.perf_counter() - run.seconds.pop("upload_started")
            if block or (future.state.is_final() and (run.quality is None or run.quality.state.is_final())):
                uploads.remove(pair)
                _end_upload(run, future, finish, settings)

    def result(future: PrefectFuture):
        """The future's result; meanwhile, uploads that finish end their rows at once, not after it."""
        while not future.state.is_final():
            collect_uploads(block=False)
            future.wait(timeout=UPLOAD_POLL_S)
        return future.result()

    top_up()
    while downloads:
        if reason := should_stop():
            logger.warning("stopping: %s; %d row(s) not started stay for a rerun", reason, len(downloads) + len(waiting))
            break
        run, future = downloads.popleft()
        top_up()
        collect_uploads(block=False)
        try:
            run.inputs = result(future)
            run.seconds["download_s"] = run.inputs.download_s
            # Claimed before the history is read: a run that finishes the row meanwhile is seen in it.
            holder = claims.claim(run.row.clip_id, run.row.row, run.row.manifest) if claims is not None else None
            history: RowHistory = result(read_row_history.submit(store, run.row.clip_id, run.inputs, run.row.options_hash))
            run.attempts = history.attempts + 1
            if history.done is not None:
                finish(run, "skipped", done=history.done)
                continue
            if holder is not None:
                finish(run, "skipped", f"made by another run ({holder.run_id} on {holder.worker})")
                continue
            if history.kept is not None:
                # A video made earlier whose upload failed: upload that one, never generate it again.
                run.made_earlier, run.video = history.kept, Path(history.kept.kept_video)
                run.poster = _poster_of(run.video)
                uploads.append((run, _submit_upload(run, settings)))
                continue
            check_speech_time(run.row, run.inputs.audio_s, settings)  # before the encoder's time is spent
            encoded = result(encode_audio.submit(run.row.clip_id, run.inputs.audio_path, settings))
            run.seconds["encode_s"] = encoded["seconds"]
            run.warm_features = encoded["features"].warm_model
            if lost_to_another_run(run):  # the encode may have queued behind a long generation
                continue
            generated = result(generate_video.submit(
                run.row.clip_id, _request(run), encoded["features"],
                work_dir / "videos" / f"{run.row.clip_id}-{run.row.options_hash[:12]}.mp4", settings,
            ))
            run.generation, run.seconds["generate_s"] = generated["result"], generated["seconds"]
            run.video, run.poster = Path(run.generation.video_path), run.generation.poster_path
        except GenerationCancelled as exc:
            finish(run, "interrupted", f"{row_error(exc, run.row, _written(run, settings))}; a rerun of the manifest resumes this row")
            continue
        except Exception as exc:  # the row fails; the batch goes on
            finish(run, "failed", _describe(exc, run, settings, logger))
            continue
        try:
            if lost_to_another_run(run):
                continue
        except Exception as exc:  # whose row it is cannot be read: keep the video for `s2v retry`, upload nothing
            run.kept_video = _keep(run.video, settings)
            finish(run, "failed", f"row {run.row.row}: could not check that the row is still this run's before "
                                  f"uploading ({type(exc).__name__}); the video is kept on {settings.worker_name} and "
                                  "`s2v retry` uploads it")
            continue
        uploads.append((run, _submit_upload(run, settings)))
    collect_uploads(block=True)
    for run, future in downloads:  # only after a stop: rows fetched but never generated
        future.wait()
        shutil.rmtree(run.work, ignore_errors=True)


def _submit_upload(run: RowRun, settings: Settings) -> PrefectFuture:
    run.seconds["upload_started"] = time.perf_counter()
    files = {run.key: (run.video, "video/mp4")}
    if run.poster is not None:
        files[run.poster_key] = (run.poster, "image/jpeg")
    upload = upload_video.submit(files, output=settings.output, settings=settings)
    run.quality = submit_clip_check(run.row.clip_id, run.video, run.inputs.image_path, settings)
    return upload


def _end_upload(run: RowRun, future: PrefectFuture, finish, settings: Settings) -> None:
    if "upload_started" in run.seconds:
        run.seconds["upload_s"] = time.perf_counter() - run.seconds.pop("upload_started")
    run.qc = clip_check_fields(run.quality, run.inputs.portrait)
    try:
        run.urls = future.result()
    except Exception as exc:
        # The video is made: keep it, and name it in the record, so a retry uploads it instead of
        # spending GPU minutes on it again.
        run.kept_video = _keep(run.video, settings)
        # Where it is kept is the record's kept_video; the error stays in the manifest's words.
        finish(run, "failed", f"row {run.row.row}: upload failed; the video is kept on {settings.worker_name} and "
                              f"`s2v retry` uploads it: {_describe(exc, run, settings, logging.getLogger(__name__))}")
        return
    finish(run, "succeeded")
    # The stored copies are the ones kept.
    run.video.unlink(missing_ok=True)
    if run.poster is not None:
        run.poster.unlink(missing_ok=True)


def _poster_of(video: Path) -> Path | None:
    """A poster for a kept video (its frames are gone); a video without one still goes up."""
    from model_runtime.video import poster_from_video

    try:
        return poster_from_video(video)
    except Exception as exc:
        logging.getLogger(__name__).warning("no poster for %s (%s)", video.name, exc)
        return None


def _keep(video: Path, settings: Settings) -> Path:
    kept = settings.cache_dir / "kept-videos" / video.name
    kept.parent.mkdir(parents=True, exist_ok=True)
    if video.resolve() != kept.resolve():
        shutil.move(video, kept)
    return kept


def _request(run: RowRun):
    from model_runtime.request import GenerationRequest

    options = run.row.options().model_dump()
    # The runtime reads local files: the downloaded copies stand in for the URIs the row gave.
    options.update(lora=str(run.inputs.lora_path or ""), pose_video=str(run.inputs.pose_video_path or ""))
    return GenerationRequest(image_path=run.inputs.image_path, audio_path=run.inputs.audio_path, **options)


def _record(run: RowRun, status: str, error: str | None, done: LedgerRecord | None, settings: Settings) -> LedgerRecord:
    row = run.row
    fields: dict = {
        **{name: value for name, value in row.options().model_dump().items() if name in LedgerRecord.model_fields},
        "lora": redact(row.lora) or None, "pose_video": redact(row.pose_video) or None,
        "worker": settings.worker_name, "manifest": row.manifest, "row": row.row, "clip_id": row.clip_id,
        "flow_run_id": flow_run.id,
        "status": status, "error": error, "attempts": run.attempts or _attempts_or_first(None, row.clip_id),
        "options_hash": row.options_hash, "total_time": round(time.perf_counter() - run.started, 3),
        **{name: round(seconds, 3) for name, seconds in run.seconds.items() if name.endswith("_s")},
    }
    if run.inputs:
        fields.update(image_sha256=run.inputs.image_sha256, audio_sha256=run.inputs.audio_sha256)
    if run.generation is not None:
        # The row's own total_time (download to upload) stays; the generation's is only its part.
        # The first row of a cold process loads the model in its encode stage: not warm either.
        generation = seen_warm(run.generation, model_was_loaded=run.warm_features)
        made = generation.model_dump(mode="json", exclude={"lora", "pose_video", "video_path", "poster_path", "total_time"})
        fields.update({name: value for name, value in made.items() if name in LedgerRecord.model_fields})
    for earlier in (run.made_earlier, done):
        if earlier is not None:
            fields.update({name: getattr(earlier, name) for name in _MADE_FIELDS})
    if run.inputs:  # after the earlier record's: a kept video uploaded now has just been checked again
        fields.update(run.qc or clip_check_fields(None, run.inputs.portrait))
    if run.video is not None:
        fields.update(url=run.urls.get(run.key), poster_url=run.urls.get(run.poster_key),
                      output_uri=output_location(settings.output, run.key))
        if status == "failed" and run.kept_video is not None:
            fields.update(kept_video=str(run.kept_video), video_sha256=_sha256(run.kept_video), url=None)
    if done is not None:
        fields["error"] = f"already made for the same inputs and options ({done.finished_at:%Y-%m-%d %H:%M} UTC)"
    return LedgerRecord(**fields)


def _attempts_or_first(store: LedgerStore | None, clip_id: str) -> int:
    """1 + earlier attempts when the history can be read now; 1 when storage will not say."""
    if store is None:
        return 1
    try:
        return 1 + sum(1 for r in store.clip_records(clip_id) if r.status != "skipped")
    except Exception:
        return 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe(exc: BaseException, run: RowRun, settings: Settings, logger: logging.Logger | logging.LoggerAdapter) -> str:
    if not isinstance(exc, S2VError):
        # Not the user's input: keep the traceback for the operator's log, give the ledger one line.
        logger.error("internal error", exc_info=exc)
    return row_error(exc, run.row, _written(run, settings))


def _written(run: RowRun, settings: Settings) -> dict[str, str]:
    """{worker path: what the manifest wrote} for the row's input copies; the work and cache folders
    themselves, named in other errors, become placeholders."""
    paths = {}
    if run.inputs is not None:
        for field in ("image", "audio", "lora", "pose_video"):
            copy = getattr(run.inputs, f"{field}_path")
            if copy is not None:
                paths[str(copy)] = redact(getattr(run.row, field))
    paths.update({str(run.work): "<row work folder>", str(settings.cache_dir): "<cache folder>"})
    return paths
