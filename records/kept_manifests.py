"""Manifests kept beside the ledger by content hash, so a retry can rerun a row from any batch ever run.

    manifests/<id>.csv    the manifest's text, as the batch read it, without credentials: URLs' userinfo
                          and signing parameters are REDACTED (the output, or its public prefix, may be read
                          by others); rerunning such a row needs its URL again (README, "The ledger")
    manifests/<id>.json   {"defaults": ..., "name": ..., "kept_at": ...}: what its empty cells meant

The id hashes the text and the defaults together: the same rows with other defaults are other clips.
Every ledger record names the id of the manifest its row came from. Writing the same id twice writes
the same bytes, so runs on several hosts may keep one manifest at once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

from s2v.errors import ManifestError
from s2v.settings import Settings
from s2v.storage.locations import output_location
from s2v.storage.outputs import read_output_text, write_output_text
from s2v.storage.redaction import text_without_credentials

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
