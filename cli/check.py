"""`s2v check MANIFEST`: every row checked as the batch would, without the model or Prefect.

Per row: its values, its files (local ones must exist; remote ones are downloaded), that the portrait
and the speech decode, the portrait's faces (S2V_FACE_CHECK), that a LoRA fits this model's DiT (its
header) and a pose video decodes, the speech's length, the segments it needs, and the generation time
estimated from the speed measured on this machine's checkpoint and device (when one was measured),
refused past S2V_GENERATION_TIMEOUT_S.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from s2v.errors import S2VError
from s2v.settings import Settings


def check_manifest(manifest: str, settings: Settings, console) -> int:
    """Prints a table of the rows; returns how many are bad."""
    from rich.markup import escape

    from cli.tables import print_table
    from records.manifest import parse_manifest
    from records.manifest_text import manifest_text
    from records.row_checks import row_error

    parsed = parse_manifest(manifest_text(manifest, settings), None, settings)
    results = [(bad.row, bad.clip_id, None, str(bad.error)) for bad in parsed.invalid]
    with tempfile.TemporaryDirectory(prefix="s2v-check-") as work:
        for row in parsed.rows:
            try:
                results.append((row.row, row.clip_id, _check_row(row, Path(work) / row.clip_id, settings), None))
            except S2VError as exc:
                results.append((row.row, row.clip_id, None, row_error(exc, row, {str(work): "<check folder>"})))
    lines = []
    for number, clip_id, facts, problem in sorted(results, key=lambda result: result[0]):
        if problem:
            lines.append((str(number), clip_id, "[red]bad[/red]", "", "", "", "", escape(problem)))
        else:
            lines.append((str(number), clip_id, "[green]ok[/green]", facts["face"], f"{facts['seconds']:.1f} s",
                          str(facts["segments"]), facts["estimate"], ""))
    print_table(console, f"{manifest}: {len(results)} row(s)",
                ("row", "clip", "check", "face", "speech", "segments", "estimated", "problem"), lines)
    bad = sum(1 for result in results if result[3])
    console.print(f"{len(results) - bad} ok, {bad} bad" + ("" if not bad else "; fix these rows before the batch"))
    return bad


def _check_row(row, work: Path, settings: Settings) -> dict:
    from rich.markup import escape

    from records.row_checks import FILE_FIELDS, check_fetched, check_file, check_speech_time
    from s2v.quality.portrait import preflight_portrait
    from s2v.storage.fetch import fetch_input

    image = fetch_input(row.image, work, "image", settings)
    facts = check_fetched(image, settings)
    portrait = preflight_portrait(image, settings)  # S2V_FACE_CHECK=refuse makes a bad face a bad row
    for field in FILE_FIELDS[1:]:  # the LoRA by its header and the pose video by its frames, as the batch will
        if getattr(row, field):
            facts.update(check_file(getattr(row, field), field, work, settings))
    seconds = facts["seconds"]
    segments = math.ceil((round(seconds * 16) + 3) / 80)
    if row.max_segments:
        segments = min(segments, row.max_segments)
    estimate = check_speech_time(row, seconds, settings)
    shown = "not measured yet" if estimate is None else f"{estimate / 60:.1f} min"
    face = "not checked" if portrait is None else portrait.summary()
    if portrait is not None and portrait.problem:
        face = f"[yellow]{escape(face)}[/yellow]"  # S2V_FACE_CHECK=warn: made anyway, with the reason in its record
    return {"seconds": seconds, "segments": segments, "estimate": shown, "face": face}
