"""A process-wide request to stop the generation in progress (Ctrl-C in `s2v run`). Light: no torch.

A SIGINT handler calls `request_stop(reason)`; both runtimes ask `stop_requested()` before every
denoising step (in-process) or every half second while waiting for the model server (which they then
tell to cancel the job), so the generation ends at the next step instead of running to its end.
No lock: a signal handler runs on the main thread between bytecodes, and a lock that thread already
held would deadlock it; rebinding one module global is atomic.
"""
from __future__ import annotations

from collections.abc import Callable

_reason: str | None = None


def request_stop(reason: str) -> None:
    """Ask every generation of this process to stop at its next step, giving `reason` as the cause."""
    global _reason
    _reason = reason or "stop requested"


def stop_requested() -> str | None:
    """The reason given to `request_stop`, or None while no stop was asked for."""
    return _reason


def clear() -> None:
    """Forget the request, e.g. once the interrupted run has been cleaned up."""
    global _reason
    _reason = None


def combined(should_stop: Callable[[], str | None] | None) -> Callable[[], str | None]:
    """A should_stop that also answers the process-wide request; the caller's own reason comes first."""
    if should_stop is None:
        return stop_requested

    def check() -> str | None:
        return should_stop() or _reason

    return check
