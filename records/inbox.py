"""The nightly inbox: manifests waiting in a folder or an s3:// prefix, moved as they are handled.

`<inbox>/*.csv` are waiting; a claimed one moves to `processing/`, then to `done/` or `failed/` with
a timestamp, so a manifest is never run twice. One left in `processing/` by a crash is picked up
again the next night, and the ledger's resume makes that rerun skip what was already made.
"""
from __future__ import annotations

import posixpath
from datetime import datetime, timezone

from s2v.settings import Settings
from s2v.storage.locations import is_s3
from s2v.storage.outputs import filesystem
from s2v.storage.transient import transient_as

PROCESSING, DONE, FAILED = "processing", "done", "failed"


class Inbox:
    def __init__(self, location: str, settings: Settings):
        self.s3, self.location = is_s3(location), location
        self.fs, root = filesystem(location, settings)
        self.root = root.rstrip("/")

    def uri(self, path: str) -> str:
        return f"s3://{path}" if self.s3 else path

    def waiting(self) -> list[str]:
        """Claimed-but-unfinished manifests first (an interrupted night), then new ones, by name.

        TransientError when the inbox cannot be listed now: s3fs's isdir() says "no" when the endpoint
        is down, which would read as an empty inbox."""
        found = []
        with transient_as(f"listing {self.location}"):
            for folder in (posixpath.join(self.root, PROCESSING), self.root):
                try:
                    found += sorted(p for p in self.fs.ls(folder, detail=False) if p.lower().endswith(".csv"))
                except FileNotFoundError:
                    continue
        return found

    def claim(self, path: str) -> str:
        if posixpath.dirname(path) == posixpath.join(self.root, PROCESSING):
            return path
        return self._move(path, PROCESSING, stamp=False)

    def finish(self, path: str, ok: bool) -> str:
        return self._move(path, DONE if ok else FAILED, stamp=True)

    def _move(self, path: str, folder: str, stamp: bool) -> str:
        name = posixpath.basename(path)
        if stamp:  # the same file name may arrive again next week
            stem, ext = posixpath.splitext(name)
            name = f"{stem}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}{ext}"
        target = posixpath.join(self.root, folder, name)
        self.fs.makedirs(posixpath.join(self.root, folder), exist_ok=True)
        self.fs.mv(path, target)
        return target
