"""Watches the Prefect API a batch runs on: if it goes away, the batch ends in seconds with one line.

Without it, every task of the batch failed on the lost API with a ConnectError, each with its
traceback, and the command ended minutes later. With it: the generation in progress stops at its next
step (the same request as Ctrl-C), that row is recorded `interrupted` (the ledger is written at the
output, not through the API), finished rows are already recorded, and the command exits within
`grace_s` of the stop whatever Prefect is still waiting on. A rerun of the same command resumes.
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

CHECK_S = 2.0  # how often the API is asked
MISSES = 3  # answers missed in a row before it counts as gone (a busy SQLite API can be slow once)
EXIT_API_LOST = 3


class ApiWatch:
    """A daemon thread asking `url`/health; on loss: `request_stop(reason)`, then exit after `grace_s`."""

    def __init__(self, url: str, request_stop: Callable[[str], None], grace_s: float = 12.0,
                 before_exit: Callable[[str], object] = lambda reason: None):
        self.url = url
        self.request_stop = request_stop
        self.before_exit = before_exit
        self.grace_s = grace_s
        self.lost: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="s2v-api-watch", daemon=True)

    def __enter__(self) -> "ApiWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()

    def _watch(self) -> None:
        misses = 0
        while not self._done.wait(CHECK_S):
            misses = 0 if _answers(self.url) else misses + 1
            if misses >= MISSES:
                self._give_up()
                return

    def _give_up(self) -> None:
        api = self.url.removesuffix("/api")
        self.lost = f"the Prefect API at {api} went away (stopped or crashed)"
        sys.stderr.write(f"s2v: {self.lost}; stopping: the row in progress is recorded as interrupted, "
                         "finished rows are kept; run the same command again to resume\n")
        sys.stderr.flush()
        self.request_stop(self.lost)
        if self._done.wait(self.grace_s):
            return  # the batch ended on its own within the grace time
        self.before_exit(self.lost)
        os._exit(EXIT_API_LOST)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
