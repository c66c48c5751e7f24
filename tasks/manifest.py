"""Fetching a manifest as a task, so a storage hiccup is retried by the one I/O retry policy."""
from __future__ import annotations

from prefect import task

from records.manifest_text import decode_manifest, manifest_text
from s2v.errors import ManifestError
from s2v.settings import Settings
from tasks.io_retries import IO_TASK_OPTIONS


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
