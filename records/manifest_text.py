"""A manifest's text: from a path or URI (read like an input) or given as CSV text, decoded as
spreadsheets save it. No Prefect here: the CLI reads a manifest before any flow starts."""
from __future__ import annotations

import codecs
import logging

from s2v.errors import InputError, ManifestError
from s2v.settings import Settings

log = logging.getLogger(__name__)


def is_csv_text(source: str) -> bool:
    """A parameter holding both a line break and a comma (or tab) is the manifest itself, not its location."""
    return "\n" in source and ("," in source or "\t" in source)


def manifest_text(source: str, settings: Settings) -> str:
    """`source` itself when it is CSV text, else what its location holds (with the input guards)."""
    from s2v.storage.fetch import read_bytes
    from s2v.storage.redaction import redact

    if is_csv_text(source):
        return source.removeprefix("\ufeff")
    try:
        return decode_manifest(read_bytes(source, settings, field="manifest"), redact(source))
    except InputError as exc:
        raise ManifestError(f"cannot read the manifest {exc.value}: {exc.reason}") from None


def decode_manifest(data: bytes, shown: str) -> str:
    """Text as spreadsheets save it: UTF-8 (BOM or not); UTF-16 by its BOM (Excel's "Unicode text");
    else Windows-1252 (Excel's "CSV" on Windows), with a warning, so accented prompts survive."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"the manifest {shown} is not text (UTF-8, UTF-16 or Windows-1252; bad byte at {exc.start})") from None
    log.warning("the manifest %s is not UTF-8; it was read as Windows-1252 (Excel's CSV export): "
                "check accented characters, or save it as 'CSV UTF-8'", shown)
    return text
