"""`s2v run` and `s2v retry`: the batch flow in this process on Prefect's embedded API.

Prefect is imported only when a batch starts, after its environment defaults are set, so `s2v --help`
and `s2v generate` stay light.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

_PREFECT_DEFAULTS = {
    # The embedded server needs more than the default 20 s to start on a 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # Telemetry writes were the source of SQLite "database is locked" tracebacks in runs that succeeded.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def prepare_prefect(verbose: bool) -> None:
    for name, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # Rows and the summary are shown by the progress bar and table; Prefect's own INFO lines would
    # interleave with them. --verbose brings them back.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")


class LedgerProgress:
    """Follows the ledger file the flow appends to and advances a progress bar, one row per line."""

    def __init__(self, ledger_file: Path, total: int, progress, task_id):
        self.ledger_file, self.total = ledger_file, total
        self.progress, self.task_id = progress, task_id
        self.start_size = ledger_file.stat().st_size if ledger_file.exists() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._update()

    def _follow(self) -> None:
        while not self._stop.wait(0.5):
            self._update()

    def _update(self) -> None:
        if not self.ledger_file.exists():
            return
        with open(self.ledger_file, "rb") as handle:
            handle.seek(self.start_size)
            ended = handle.read().count(b"\n")
        self.progress.update(self.task_id, completed=min(ended, self.total))
