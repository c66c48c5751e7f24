"""Runs manifest rows through download -> audio-encode -> generate -> upload, overlapping the stages.

While row n generates, the next rows download and encode and the previous one uploads, so the GPU
does not wait on the network. Only one generation is in flight; at most `lookahead` rows are fetched
ahead of it. Every row ends in the ledger the moment it ends, whatever happened to it.

The loop runs in the flow's thread and passes finished values (never futures) to the next task, so
no task ever waits on another one inside the thread pool.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_run_logger

from flows.ledger import LedgerRecord, LedgerWriter
from flows.manifest import ClipRow, InvalidRow
from s2v.errors import S2VError
from s2v.settings import Settings
from tasks.download import DownloadedInputs, download_inputs
from tasks.encode import encode_audio
from tasks.generate import generate_video
from s2v.storage.locations import output_location
from tasks.upload import upload_video


@dataclass
class _Row:
    row: ClipRow
    attempts: int
    started: float = field(default_factory=time.perf_counter)
    inputs: DownloadedInputs | None = None
    features: object | None = None  # AudioFeatures
    generation: object | None = None  # GenerationResult
    url: str | None = None
    upload_started: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.row.output_name or f"{self.row.clip_id}.mp4"


def record_invalid_rows(
    invalid: Iterable[InvalidRow], ledger: LedgerWriter, worker: str,
    on_row_end: Callable[[LedgerRecord], None] | None = None,
) -> None:
    for bad in invalid:
        record = LedgerRecord(
            row=bad.row, clip_id=bad.clip_id, status="failed", error=str(bad.error), worker=worker,
            attempts=_attempts(ledger, bad.clip_id),
        )
        ledger.append(record)
        if on_row_end:
            on_row_end(record)


def run_rows(
    rows: list[ClipRow],
    *,
    settings: Settings,
    output: str,
    ledger: LedgerWriter,
    work_dir: Path,
    lookahead: int = 2,
    on_row_end: Callable[[LedgerRecord], None] | None = None,
) -> None:
    logger = get_run_logger()
    waiting = deque(_Row(row, _attempts(ledger, row.clip_id)) for row in rows)
    ready_to_generate: deque[_Row] = deque()
    in_flight: dict[PrefectFuture, tuple[str, _Row]] = {}
    ahead = 0  # rows between download and generate
    generating = False

    def finish(state: _Row, status: str, error: str | None = None, done: LedgerRecord | None = None) -> None:
        record = _record(state, status, error, done, output, settings.worker_name)
        ledger.append(record)
        if status == "failed":
            logger.warning("row %s (%s) failed: %s", state.row.row, state.row.clip_id, error)
        else:
            logger.info("row %s (%s) %s: %s", state.row.row, state.row.clip_id, status, record.url)
        if on_row_end:
            on_row_end(record)

    def submit(stage: str, state: _Row, future: PrefectFuture) -> None:
        in_flight[future] = (stage, state)

    def fill() -> None:
        nonlocal ahead, generating
        while waiting and ahead < lookahead:
            state = waiting.popleft()
            ahead += 1
            submit("download", state, download_inputs.submit(
                state.row.image, state.row.audio, work_dir=work_dir / "inputs", settings=settings))
        if not generating and ready_to_generate:
            state = ready_to_generate.popleft()
            ahead -= 1
            generating = True
            submit("generate", state, generate_video.submit(
                state.row.clip_id, _request(state), state.features,
                work_dir / "videos" / f"{state.row.clip_id}-{state.row.options_hash[:12]}.mp4", settings))

    fill()
    while in_flight:
        future = next(as_completed(list(in_flight)))
        stage, state = in_flight.pop(future)
        try:
            value = future.result()
        except Exception as exc:  # the row fails; the batch goes on
            if stage == "generate":
                generating = False
            elif stage in ("download", "encode"):
                ahead -= 1
            finish(state, "failed", _describe(exc, logger))
            fill()
            continue

        if stage == "download":
            state.inputs = value
            state.seconds["download_s"] = value.download_seconds
            done = ledger.ledger.find_done(
                state.row.clip_id, value.image_sha256, value.audio_sha256, state.row.options_hash, settings)
            if done:
                ahead -= 1
                finish(state, "skipped", done=done)
            else:
                submit("encode", state, encode_audio.submit(state.row.clip_id, value.audio_path, settings))
        elif stage == "encode":
            state.features = value["features"]
            state.seconds["encode_s"] = value["seconds"]
            # Generate in manifest order whichever encoding finished first.
            ready_to_generate.append(state)
            ready_to_generate = deque(sorted(ready_to_generate, key=lambda s: s.row.row))
        elif stage == "generate":
            generating = False
            state.generation = value["result"]
            state.seconds["generate_s"] = value["seconds"]
            submit("upload", state, upload_video.submit(
                state.generation.video_path, state.key, output=output, settings=settings))
            state.upload_started = time.perf_counter()
        elif stage == "upload":
            state.seconds["upload_s"] = time.perf_counter() - state.upload_started
            state.url = value
            Path(state.generation.video_path).unlink(missing_ok=True)  # the stored copy is the one kept
            finish(state, "succeeded")
        fill()


def _request(state: _Row):
    from model_runtime.request import GenerationRequest

    return GenerationRequest(
        image_path=state.inputs.image_path, audio_path=state.inputs.audio_path,
        **state.row.options().model_dump(),
    )


def _record(
    state: _Row, status: str, error: str | None, done: LedgerRecord | None, output: str, worker: str
) -> LedgerRecord:
    row, seconds, generation = state.row, state.seconds, state.generation
    fields = dict(
        worker=worker,
        row=row.row, clip_id=row.clip_id, status=status, error=error, attempts=state.attempts,
        options_hash=row.options_hash, resolution=row.resolution, sample_steps=row.sample_steps, seed=row.seed,
        total_time=round(time.perf_counter() - state.started, 3),
        **{k: round(v, 3) for k, v in seconds.items() if k.endswith("_s")},
    )
    if state.inputs:
        fields.update(image_sha256=state.inputs.image_sha256, audio_sha256=state.inputs.audio_sha256)
    if generation is not None:
        fields.update(
            url=state.url, output_uri=output_location(output, state.key),
            generation_time=generation.generation_time, pipeline_time=generation.pipeline_time,
            video_size_mb=generation.video_size_mb,
            # The first row of a cold process loads the model in its encode stage: not warm either.
            warm_model=generation.warm_model and state.features.warm_model, seed=generation.seed,
        )
    if done is not None:
        fields.update(
            url=done.url, output_uri=done.output_uri, generation_time=done.generation_time,
            video_size_mb=done.video_size_mb, seed=done.seed,
            error=f"already made for the same inputs and options ({done.finished_at:%Y-%m-%d %H:%M} UTC)",
        )
    return LedgerRecord(**fields)


def _attempts(ledger: LedgerWriter, clip_id: str) -> int:
    return 1 + sum(1 for record in ledger.ledger.records if record.clip_id == clip_id and record.status != "skipped")


def _describe(exc: BaseException, logger: logging.Logger | logging.LoggerAdapter) -> str:
    if isinstance(exc, S2VError):
        return str(exc)
    # Not the user's input: keep the traceback for the operator's log, give the ledger one line.
    logger.error("internal error", exc_info=exc)
    return f"internal error: {type(exc).__name__}: {exc}"
