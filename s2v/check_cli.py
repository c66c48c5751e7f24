"""`s2v check MANIFEST`: every row checked as the batch would, without the model or Prefect.

Per row: its values, its files (local ones must exist; remote ones are downloaded), that the portrait
and the speech decode, the portrait's faces (S2V_FACE_CHECK), the speech's length, the segments it
needs, and the generation time estimated from the speed measured on this machine's checkpoint and
device (when one was measured).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from s2v.errors import S2VError
from s2v.settings import Settings


def check_manifest(manifest: str, settings: Settings, console) -> int:
    """Prints a table of the rows; returns how many are bad."""
    from rich.table import Table

    from flows.manifest import parse_manifest
    from s2v.storage.manifests import manifest_text

    parsed = parse_manifest(manifest_text(manifest, settings), None, settings)
    table = Table(title=f"{manifest}: {len(parsed.rows) + len(parsed.invalid)} row(s)")
    for column in ("row", "clip", "check", "face", "speech", "segments", "estimated", "problem"):
        table.add_column(column)
    results = [(bad.row, bad.clip_id, None, str(bad.error)) for bad in parsed.invalid]
    with tempfile.TemporaryDirectory(prefix="s2v-check-") as work:
        for row in parsed.rows:
            try:
                results.append((row.row, row.clip_id, _check_row(row, Path(work) / row.clip_id, settings), None))
            except S2VError as exc:
                results.append((row.row, row.clip_id, None, str(exc)))
    for number, clip_id, facts, problem in sorted(results, key=lambda result: result[0]):
        if problem:
            table.add_row(str(number), clip_id, "[red]bad[/red]", "", "", "", "", problem)
        else:
            table.add_row(str(number), clip_id, "[green]ok[/green]", facts["face"], f"{facts['seconds']:.1f} s",
                          str(facts["segments"]), facts["estimate"], "")
    console.print(table)
    bad = sum(1 for result in results if result[3])
    console.print(f"{len(results) - bad} ok, {bad} bad" + ("" if not bad else "; fix these rows before the batch"))
    return bad


def _check_row(row, work: Path, settings: Settings) -> dict:
    from model_runtime.estimate import estimate_seconds
    from s2v.media_checks import check_audio, check_image
    from s2v.quality.portrait import preflight_portrait
    from s2v.storage.fetch import fetch_input

    image = fetch_input(row.image, work, "image", settings)
    audio = fetch_input(row.audio, work, "audio", settings)
    check_image(image)
    portrait = preflight_portrait(image, settings)  # S2V_FACE_CHECK=refuse makes a bad face a bad row
    seconds, _ = check_audio(audio, settings.max_audio_seconds)
    segments = math.ceil((round(seconds * 16) + 3) / 80)
    if row.max_segments:
        segments = min(segments, row.max_segments)
    estimate = estimate_seconds(settings, seconds, row.options())
    shown = "not measured yet" if estimate is None else f"{estimate / 60:.1f} min"
    if estimate is not None and estimate > settings.generation_timeout_s:
        raise S2VError(f"audio: {seconds:.1f} s of speech needs about {estimate:,.0f} s; the limit is "
                       f"{settings.generation_timeout_s:,.0f} s (S2V_GENERATION_TIMEOUT_S)")
    face = "not checked" if portrait is None else portrait.summary()
    if portrait is not None and portrait.problem:
        face = f"[yellow]{face}[/yellow]"  # S2V_FACE_CHECK=warn: made anyway, with the reason in its record
    return {"seconds": seconds, "segments": segments, "estimate": shown, "face": face}
