"""Manifests kept beside the ledger by content hash, so a retry can rerun a row from any batch ever run.

    manifests/<id>.csv    the manifest's text, as the batch read it, without credentials: URLs' userinfo
                          and signing parameters are REDACTED (the output, or its public prefix, may be read
                          by others); rerunning such a row needs its URL again (README, "The ledger")
    manifests/<id>.json   {"defaults": ..., "name": ..., "kept_at": ...}: what its empty cells meant

The id hashes the text and the defaults together: the same rows with other defaults are other clips.
Every ledger record names the id of the manifest its row came from. Writing the same id twice writes
the same bytes, so runs on several hosts may keep one manifest at once.

A fleet's row run needs one row of a kept manifest, and a night hands out thousands of rows of the
same manifest to each GPU host: `load_manifest_row` parses a manifest once per host, keeps every
row's parse in the host's cache, and a row run reads only its own row (see PARSED).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pydantic
from pydantic import BaseModel, ValidationError

import model_runtime.request
import records.manifest
import s2v.storage.locations
import s2v.storage.redaction
from records.manifest import CLIP_ID, ClipRow, InvalidRow, parse_manifest
from s2v.errors import InputError, ManifestError
from s2v.file_locks import lock_by, open_lock_file
from s2v.settings import Settings
from s2v.storage.atomic import write_atomically
from s2v.storage.locations import output_location
from s2v.storage.outputs import read_output_text, write_output_text
from s2v.storage.redaction import text_without_credentials

log = logging.getLogger(__name__)

FOLDER = "manifests"
# Where batches of older versions kept their (single, overwritten) manifest copy.
LEGACY_MANIFEST, LEGACY_PARAMETERS = "manifest.csv", "batch.json"


@dataclass(frozen=True)
class KeptManifest:
    id: str
    text: str
    defaults: dict
    name: str = ""


def manifest_id(text: str, defaults: dict) -> str:
    content = json.dumps({"text": text, "defaults": defaults}, sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def keep_manifest(text: str, defaults: dict, output: str, settings: Settings, name: str = "") -> KeptManifest:
    """Store the manifest and its defaults under `output`/manifests/ (once per content); returns it.

    The id is the given text's, which every record of its rows names; the stored text has no credentials.
    Rows keep their clip ids and options hashes: both leave userinfo and signatures out."""
    kept = KeptManifest(id=manifest_id(text, defaults), text=text, defaults=defaults, name=name)
    if read_output_text(output_location(output, f"{FOLDER}/{kept.id}.json"), settings) is None:
        write_output_text(output_location(output, f"{FOLDER}/{kept.id}.csv"), text_without_credentials(text), settings,
                          content_type="text/csv")
        about = {"defaults": defaults, "name": name, "kept_at": datetime.now(timezone.utc).isoformat()}
        # Written last: a manifest whose .json exists is complete.
        write_output_text(output_location(output, f"{FOLDER}/{kept.id}.json"), json.dumps(about, indent=2), settings,
                          content_type="application/json")
    return kept


def load_manifest(output: str, kept_id: str | None, settings: Settings) -> KeptManifest:
    """The kept manifest `kept_id` (None: the single copy an older version kept); ManifestError if gone."""
    if kept_id is None:
        text = read_output_text(output_location(output, LEGACY_MANIFEST), settings)
        about = read_output_text(output_location(output, LEGACY_PARAMETERS), settings)
        source = f"{LEGACY_MANIFEST}/{LEGACY_PARAMETERS}"
    else:
        about = read_output_text(output_location(output, f"{FOLDER}/{kept_id}.json"), settings)
        text = read_output_text(output_location(output, f"{FOLDER}/{kept_id}.csv"), settings) if about else None
        source = f"{FOLDER}/{kept_id}.csv"
    if text is None or about is None:
        raise ManifestError(f"{output} holds no {source}: the manifest of these rows is gone; run it again with `s2v run`")
    details = json.loads(about)
    return KeptManifest(id=kept_id or "legacy", text=text, defaults=details.get("defaults") or {}, name=details.get("name", ""))


# A host's parses of kept manifests, one file per row:
#
#   <cache_dir>/manifests/<id>/<parser>/rows/<clip_id>.json   one row's parse, a ParsedRow
#   <cache_dir>/manifests/<id>/<parser>/parsed.json           written last: the parse is complete
#   <cache_dir>/manifests/<id>/<parser>.lock                  held by the row run that is parsing
#
# A parse is a function of the kept text and defaults (both in the id: a parse never goes stale) and
# of the code that parses, <parser> (PARSER_MODULES): a host whose software is updated parses again,
# so a retry after a fix to a row check sees the fix. The settings do not enter: parse_manifest reads
# them only to fetch a manifest given by location, never to judge a row; what depends on the host
# (input roots, local files) is check_local_files's, which each row run applies to its own row.
PARSED = "manifests"
COMPLETE = "parsed.json"
KEPT_ID = re.compile(r"^[0-9a-f]{16}$")  # what manifest_id gives
# Whose code decides what a row parses to: parsing and clip ids, the options' rules, URI checks and the
# stable form of a URI, and the libraries that read the CSV and validate the rows.
PARSER_MODULES = (records.manifest, model_runtime.request, s2v.storage.locations, s2v.storage.redaction)
# A parse takes seconds; a holder past this is stuck, and as every write is atomic and gives the same
# bytes, parsing beside it is safe, only wasted work.
PARSE_LOCK_WAIT_S = 300.0
PARSE_LOCK_POLL_S = 0.2


class ParsedInvalidRow(BaseModel):
    """An InvalidRow as JSON: its InputError by parts, so the ledger's message is the one a full parse gives."""

    row: int
    clip_id: str
    manifest: str | None
    field: str
    value: Any
    reason: str
    error_row: int | None

    @classmethod
    def of(cls, bad: InvalidRow) -> "ParsedInvalidRow":
        return cls(row=bad.row, clip_id=bad.clip_id, manifest=bad.manifest, field=bad.error.field,
                   value=bad.error.value, reason=bad.error.reason, error_row=bad.error.row)

    def invalid_row(self) -> InvalidRow:
        return InvalidRow(row=self.row, clip_id=self.clip_id, manifest=self.manifest,
                          error=InputError(self.field, self.value, self.reason, row=self.error_row))


class ParsedRow(BaseModel):
    """One row of a kept manifest as parse_manifest gave it: valid or invalid, exactly one set."""

    valid: ClipRow | None = None
    invalid: ParsedInvalidRow | None = None

    def row(self) -> ClipRow | InvalidRow:
        return self.valid if self.valid is not None else self.invalid.invalid_row()


def load_manifest_row(output: str, kept_id: str, clip_id: str, settings: Settings,
                      warn: Callable[[str], None] = log.warning) -> ClipRow | InvalidRow:
    """Row `clip_id` of the kept manifest `kept_id` under `output`, as parse_manifest gives it, from this
    host's cache of its parse; the first row run on a host to need the manifest parses it, once.

    The row's local files are not checked here (the host's check_local_files is): the cache holds what
    the kept copy says, never a row's own URLs with their credentials. The manifest's warnings go to the
    `warn` of the run that parses it, once per host. ManifestError if the manifest is gone or has no
    such row.
    """
    # Both ids name files in the cache: a run's parameters must not reach outside it.
    if not KEPT_ID.match(kept_id):
        raise ManifestError(f"{kept_id!r} is not the id of a manifest kept under {output} (16 hex digits)")
    if not CLIP_ID.match(clip_id):  # no row has such an id
        raise _no_row(output, kept_id, clip_id)
    folder = parsed_manifest_folder(settings, kept_id)
    found = _read_row(folder, clip_id) if (folder / COMPLETE).exists() else None
    if found is None:
        # Not parsed on this host yet, or its row file is not there whole: the row files are not fsynced
        # (thousands of fsyncs cost more than a parse), so a crash of the host may empty or lose one. A row
        # is called unknown only after a parse made now.
        (folder / COMPLETE).unlink(missing_ok=True)
        _parse_once(output, kept_id, folder, settings, warn)
        found = _read_row(folder, clip_id)
    if found is None:
        raise _no_row(output, kept_id, clip_id)
    return found


def parsed_manifest_folder(settings: Settings, kept_id: str) -> Path:
    """Where this host keeps its parse of the kept manifest `kept_id` by the code it runs now."""
    return settings.cache_dir / PARSED / kept_id / parser_fingerprint()


@functools.cache
def parser_fingerprint() -> str:
    """A hash of the code whose change could change a parse (PARSER_MODULES, pandas, pydantic)."""
    digest = hashlib.sha256(f"pandas {pd.__version__}, pydantic {pydantic.VERSION}".encode())
    for module in PARSER_MODULES:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _parse_once(output: str, kept_id: str, folder: Path, settings: Settings, warn: Callable[[str], None]) -> None:
    """Parse the kept manifest into `folder` unless another row run on this host did while we waited for it."""
    lock = folder.with_name(f"{folder.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = open_lock_file(lock)
    try:
        if not lock_by(fd, time.monotonic() + PARSE_LOCK_WAIT_S, PARSE_LOCK_POLL_S):
            log.warning("%s has been held for over %g s; parsing manifest %s beside it", lock, PARSE_LOCK_WAIT_S, kept_id)
        if (folder / COMPLETE).exists():
            return
        kept = load_manifest(output, kept_id, settings)
        parsed = parse_manifest(kept.text, kept.defaults, settings, manifest_id=kept_id, warn=warn)
        # Rows are rewritten whole: what a parse cut short left behind is replaced, never read as complete.
        for valid in parsed.rows:
            write_atomically(_row_file(folder, valid.clip_id), ParsedRow(valid=valid).model_dump_json())
        for bad in parsed.invalid:
            write_atomically(_row_file(folder, bad.clip_id), ParsedRow(invalid=ParsedInvalidRow.of(bad)).model_dump_json())
        about = {"rows": len(parsed.rows), "invalid": len(parsed.invalid), "warnings": parsed.warnings,
                 "columns": parsed.columns, "parsed_at": datetime.now(timezone.utc).isoformat()}
        write_atomically(folder / COMPLETE, json.dumps(about, indent=2))
    finally:
        os.close(fd)  # also drops the lock


def _read_row(folder: Path, clip_id: str) -> ClipRow | InvalidRow | None:
    """The row's parse in `folder`; None when its file is missing or not whole."""
    try:
        return ParsedRow.model_validate_json(_row_file(folder, clip_id).read_bytes()).row()
    except (FileNotFoundError, ValidationError):
        return None


def _no_row(output: str, kept_id: str, clip_id: str) -> ManifestError:
    return ManifestError(f"manifest {kept_id} under {output} has no row with clip_id {clip_id!r}")


def _row_file(folder: Path, clip_id: str) -> Path:
    return folder / "rows" / f"{clip_id}.json"
