"""The run logs: a warning into the run's log, and no tracebacks of the user's own input problems.

Prefect logs a failed task with its traceback. For an S2V error (a bad row, a missing file, a refused
URL) the message already says what to fix, and a traceback would only bury it; other exceptions keep
theirs, since those are ours to debug.
"""
from __future__ import annotations

import logging

from s2v.errors import S2VError

_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.task_engine", "prefect.flow_engine")


class _DropS2VTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], S2VError):
            record.exc_info = None
            record.exc_text = None
        return True


_FILTER = _DropS2VTracebacks()


def hide_input_error_tracebacks() -> None:
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def run_warning(message: str) -> None:
    """A warning in the current run's log (the UI shows it); outside a run, the module's logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().warning(message)
    except MissingContextError:
        logging.getLogger(__name__).warning(message)
