"""The project's exceptions. Messages are written for the person who has to act on them."""
from __future__ import annotations

from typing import Any


class S2VError(Exception):
    """Base of every error this project raises on purpose."""


class InputError(S2VError, ValueError):
    """A value the user supplied is wrong; names the field, the value and, in a batch, the row."""

    def __init__(self, field: str, value: Any, reason: str, row: int | None = None):
        self.field, self.value, self.reason, self.row = field, value, reason, row
        where = f"row {row}: " if row is not None else ""
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        super().__init__(f"{where}{field}={shown}: {reason}")

    def at_row(self, row: int) -> "InputError":
        return InputError(self.field, self.value, self.reason, row=row)


class ConfigError(S2VError):
    """A setting (an S2V_* variable, .env or a command option) has a value that cannot be used."""

    def __init__(self, name: str, value: Any, expected: str):
        self.name, self.value, self.expected = name, value, expected
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        super().__init__(f"{name}={shown}: {expected}")


class ManifestError(S2VError):
    """The manifest as a whole cannot be used (unreadable, missing columns, duplicate ids)."""


class CheckpointError(S2VError):
    """The model checkpoint folder is missing files or cannot be loaded."""


class GenerationError(S2VError):
    """The model failed while making a video."""


class GenerationTimeout(GenerationError):
    """A generation ran past its time limit and was stopped."""


class GenerationCancelled(GenerationError):
    """A generation was stopped on request (cancel, Ctrl-C, its client gone) before it finished."""


class MuxError(GenerationError):
    """The speech could not be muxed into the video; a silent video is never returned."""


class TransientError(S2VError):
    """A network or service failure worth retrying (connection, timeout, 5xx, throttling)."""


class StorageUnreachable(S2VError):
    """The output, inbox or a kept manifest could not be reached at a batch's start, after retries."""


class ModelServerError(S2VError):
    """The model server could not be reached, started, or answered with an error."""


class NoGpuWorker(S2VError):
    """No worker of the GPU work pool has been online for S2V_NO_WORKER_TIMEOUT_S: nobody would make the rows."""


class BatchFailed(S2VError):
    """Every row of a batch failed; `summary` says how each ended (the ledger has the details)."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary
