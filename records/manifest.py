"""The batch manifest: a CSV of (image, audio, options) rows, parsed and checked before any work.

Row numbers follow a spreadsheet: the header is row 1, the first data row is row 2, and a record
whose quoted prompt spans several lines is still one row. Blank lines are skipped but keep their
number, as a spreadsheet shows them, so "row 7" is the row a person sees as 7.

A manifest that cannot be used as a whole (unreadable, missing columns, duplicate clip ids) raises
ManifestError. A bad value in one row does not: that row comes back in `Manifest.invalid` with an
InputError (row, field, value), so the batch records it as failed and runs the others.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, Field, ValidationError

from model_runtime.request import GenerationOptions, input_error_from
from records.manifest_text import manifest_text
from records.row_checks import check_local_option_file, check_not_redacted
from s2v.errors import InputError, ManifestError
from s2v.settings import Settings, get_settings
from s2v.storage.locations import check_key, check_scheme
from s2v.storage.redaction import stable_uri

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "audio")
# Every generation option is a column too, under the same name.
OPTION_COLUMNS = tuple(GenerationOptions.model_fields)
# The options of the first version: they always count in a row's options hash. Options added since
# count only when a row sets them, so the hash of an older row, and with it its resume, stays the same.
_FIRST_OPTIONS = ("prompt", "negative_prompt", "resolution", "sample_steps", "seed", "guidance_scale")
# Options naming files: their identity is the file, not the signature of today's link.
_URI_OPTIONS = ("lora", "pose_video")
OPTIONAL_COLUMNS = (*OPTION_COLUMNS, "clip_id", "output_name")
EXPECTED = (
    f"expected columns: {', '.join(REQUIRED_COLUMNS)} (required); {', '.join(OPTIONAL_COLUMNS)} (optional)"
)
CLIP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# A flow's defaults, overridden per row by the manifest: the very options a request takes.
ClipOptions = GenerationOptions


class ClipRow(ClipOptions):  # type: ignore[misc, valid-type]
    """One valid manifest row with its options resolved (row value, else flow default).

    `image`, `audio` (and the `lora` and `pose_video` options) are the URIs as given and may carry
    credentials: show them through `s2v.storage.redaction.redact`, never as they are.
    """

    row: int
    clip_id: str
    image: str = Field(repr=False)
    audio: str = Field(repr=False)
    output_name: str | None = None
    options_hash: str
    manifest: str | None = None  # id of the kept manifest copy this row came from (records/kept_manifests.py)

    def options(self) -> ClipOptions:  # type: ignore[valid-type]
        """The generation options alone, as a ClipOptions."""
        return ClipOptions(**self.model_dump(include=set(OPTION_COLUMNS)))


@dataclass(frozen=True)
class InvalidRow:
    """A row with a bad value: `error` names the row, the field and the (redacted) value."""

    row: int
    clip_id: str
    error: InputError
    manifest: str | None = None


@dataclass
class Manifest:
    rows: list[ClipRow]
    invalid: list[InvalidRow]
    warnings: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


def parse_manifest(
    source: str | Path,
    defaults: BaseModel | Mapping | None = None,
    settings: Settings | None = None,
    manifest_id: str | None = None,
    warn: Callable[[str], None] = log.warning,
) -> Manifest:
    """Parse a manifest given as CSV text (a str) or by its location (a Path: local, file://, http(s)://, s3://).

    A str is always the manifest's content, never read as a location: an empty file, a header without
    a final newline or a file holding one URL is read as what it is.
    `defaults` (ClipOptions or a dict of its fields) fill the option cells a row leaves empty;
    `manifest_id` is recorded in every row (the id its kept copy has under the output); `warn` takes
    what is worth a warning (a flow passes its run log).
    Raises ManifestError when the manifest cannot be used as a whole; TransientError when a remote
    manifest could not be reached for now (worth retrying).
    """
    settings = settings or get_settings()
    base = _defaults(defaults)
    frame = _read_frame(source if isinstance(source, str) else manifest_text(str(source), settings))
    columns = [str(name).strip().lower() for name in frame.columns]
    frame.columns = columns
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise ManifestError(f"manifest is missing column(s) {', '.join(missing)}; {EXPECTED}; found: {', '.join(columns)}")
    warnings = []
    unknown = [name for name in columns if name not in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)]
    if unknown:
        warnings.append(f"manifest column(s) {', '.join(unknown)} are not used and were ignored; {EXPECTED}")

    rows: list[ClipRow] = []
    invalid: list[InvalidRow] = []
    seen: dict[str, int] = {}  # clip_id -> first row
    outputs: dict[str, int] = {}  # output_name -> first row
    for index, record in enumerate(frame.to_dict(orient="records")):
        number = index + 2  # header is row 1
        cells = {name: str(record.get(name, "")).strip() for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)}
        if not any(str(value).strip() for value in record.values()):
            continue
        parsed = _parse_row(number, cells, base, manifest_id)
        _check_unique(parsed.clip_id, number, bool(cells["clip_id"]), seen)
        if cells["output_name"]:
            first = outputs.setdefault(cells["output_name"], number)
            if first != number:
                raise ManifestError(
                    f"output_name {cells['output_name']!r} appears in rows {first} and {number}; one would overwrite the other"
                )
        (rows if isinstance(parsed, ClipRow) else invalid).append(parsed)
    if not rows and not invalid:
        raise ManifestError(f"the manifest has no rows, only a header; {EXPECTED}")
    for warning in warnings:
        warn(warning)
    return Manifest(rows=rows, invalid=invalid, warnings=warnings, columns=columns)


def check_local_files(manifest: Manifest, settings: Settings) -> Manifest:
    """The manifest with every row whose local file is missing, not allowed here, or (LoRA, pose video)
    not usable by this model moved to `invalid`.

    A batch calls this right after parsing, so such a row fails in its first second instead of after
    the rows ahead of it have been generated. Remote files are checked when they are downloaded.
    """
    rows, invalid = [], list(manifest.invalid)
    for row in manifest.rows:
        try:
            for name in (*REQUIRED_COLUMNS, *_URI_OPTIONS):
                uri = getattr(row, name)
                check_not_redacted(uri, name)
                if uri and check_scheme(uri, name) in ("", "file"):
                    check_local_option_file(uri, name, settings)
            rows.append(row)
        except InputError as exc:
            invalid.append(InvalidRow(row=row.row, clip_id=row.clip_id, error=exc.at_row(row.row), manifest=row.manifest))
    return Manifest(rows=rows, invalid=sorted(invalid, key=lambda bad: bad.row), warnings=manifest.warnings,
                    columns=manifest.columns)


def _defaults(defaults: BaseModel | Mapping | None) -> dict:
    if defaults is None:
        return ClipOptions().model_dump()
    data = defaults.model_dump() if isinstance(defaults, BaseModel) else dict(defaults)
    try:
        return ClipOptions.model_validate({k: v for k, v in data.items() if k in OPTION_COLUMNS}).model_dump()
    except ValidationError as exc:
        raise ManifestError(f"the flow's default options are invalid: {input_error_from(exc, data)}") from None


def _read_frame(text: str) -> pd.DataFrame:
    header = text.lstrip("\ufeff").split("\n", 1)[0]
    # Excel's "Unicode text" export separates columns with tabs.
    separator = "\t" if "\t" in header and "," not in header else ","
    try:
        # Blank lines are kept here (and dropped by the caller) so row numbers match a spreadsheet.
        frame = pd.read_csv(io.StringIO(text.lstrip("\ufeff")), dtype=str, keep_default_na=False,
                            skip_blank_lines=False, sep=separator)
    except pd.errors.EmptyDataError:
        raise ManifestError(f"the manifest is empty; {EXPECTED}") from None
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        raise ManifestError(f"the manifest is not valid CSV ({exc}); quote values that hold commas or line breaks") from None
    return frame.fillna("")


def _parse_row(number: int, cells: dict[str, str], base: dict, manifest_id: str | None) -> ClipRow | InvalidRow:
    given_id = cells["clip_id"]
    try:
        for name in REQUIRED_COLUMNS:
            if not cells[name]:
                raise InputError(name, "", "required; give a local path, file://, http(s):// or s3:// URI")
            check_scheme(cells[name], name)
        if given_id and not CLIP_ID.match(given_id):
            raise InputError("clip_id", given_id, "use up to 128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if cells["output_name"]:
            check_key(cells["output_name"])
        options = _options(cells, base)
    except InputError as exc:
        field_name = "output_name" if exc.field == "output key" else exc.field
        error = InputError(field_name, exc.value, exc.reason, row=number)
        clip_id = given_id if given_id and CLIP_ID.match(given_id) else _derived_id(cells)
        return InvalidRow(row=number, clip_id=clip_id, error=error, manifest=manifest_id)
    options_hash = options_hash_of(options)
    clip_id = given_id or _derived_id({**cells, **{name: options[name] for name in OPTION_COLUMNS}})
    return ClipRow(
        row=number, clip_id=clip_id, image=cells["image"], audio=cells["audio"],
        output_name=cells["output_name"] or None, options_hash=options_hash, manifest=manifest_id, **options,
    )


def _options(cells: dict[str, str], base: dict) -> dict:
    data = {**base, **{name: cells[name] for name in OPTION_COLUMNS if cells[name]}}
    try:
        return ClipOptions.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        raise input_error_from(exc, data) from None


def options_hash_of(options: dict) -> str:
    """What makes two rows with the same inputs the same clip: options, with file options by identity."""
    defaults = ClipOptions().model_dump(mode="json")
    counted = {name: value for name, value in options.items() if name in _FIRST_OPTIONS or value != defaults.get(name)}
    for name in _URI_OPTIONS:
        if counted.get(name):
            counted[name] = stable_uri(counted[name])
    return _hash(counted)[:16]


def _derived_id(cells: dict) -> str:
    """A clip id from the row's content: the same row keeps its id (and its resume) across runs."""
    defaults = ClipOptions().model_dump(mode="json")
    content = {name: cells.get(name) for name in (*REQUIRED_COLUMNS, *_FIRST_OPTIONS, "output_name")}
    content.update({name: cells[name] for name in OPTION_COLUMNS
                    if name not in _FIRST_OPTIONS and cells.get(name) not in ("", None, defaults.get(name))})
    for name in (*REQUIRED_COLUMNS, *_URI_OPTIONS):
        if name in content:
            content[name] = stable_uri(str(content[name] or ""))
    return f"clip-{_hash(content)[:12]}"


def _hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _check_unique(clip_id: str, number: int, given: bool, seen: dict[str, int]) -> None:
    first = seen.setdefault(clip_id, number)
    if first == number:
        return
    if given:
        raise ManifestError(f"clip_id {clip_id!r} appears in rows {first} and {number}; clip ids must be unique")
    raise ManifestError(
        f"rows {first} and {number} have the same image, audio and options (clip id {clip_id}); "
        "remove one or give each a distinct clip_id"
    )
