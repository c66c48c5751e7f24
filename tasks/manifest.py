"""Fetching a manifest: its text from a path or URI, with the I/O retry policy (or CSV text given as is)."""
from __future__ import annotations

import codecs
import logging

from prefect import task

from s2v.errors import InputError, ManifestError
from s2v.settings import Settings
from tasks.io_retries import IO_TASK_OPTIONS

log = logging.getLogger(__name__)


def is_csv_text(source: str) -> bool:
    """A parameter holding both a line break and a comma (or tab) is the manifest itself, not its location."""
    return "\n" in source and ("," in source or "\t" in source)


@task(name="fetch-manifest", **IO_TASK_OPTIONS)
def fetch_manifest(source: str, settings: Settings) -> str:
    """The manifest's text: `source` itself when it is CSV text, else what its location holds."""
    return manifest_text(source, settings)


@task(name="read-inbox-manifest", **IO_TASK_OPTIONS)
def read_inbox_manifest(location: str, settings: Settings) -> str:
    """A manifest waiting in the operator's inbox: configuration, read without the input guards."""
    from s2v.storage.outputs import read_output_bytes

    data = read_output_bytes(location, settings)
    if data is None:
        raise ManifestError(f"the manifest {location} left the inbox while it was being claimed")
    return decode_manifest(data, location)


def manifest_text(source: str, settings: Settings) -> str:
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
