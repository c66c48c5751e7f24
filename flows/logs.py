"""Keep tracebacks of the user's own input problems out of the run logs.

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
