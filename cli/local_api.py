"""One local Prefect API for every `s2v` command on this machine, started on first use and kept running.

Prefect's embedded ("ephemeral") API starts a server inside each process, on one SQLite file: two
`s2v run` at once fought over it (one died with "Timed out while attempting to connect to ephemeral
Prefect API server"), and each start cost 15-30 s before the first row. Instead the first command
starts `prefect server start` detached (like the model server), with its own home under the s2v
cache, and every later command reuses it. `s2v local-api stop` ends it. When PREFECT_API_URL is set,
that server is used and nothing is started.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from s2v.errors import S2VError
from s2v.settings import Settings

START_TIMEOUT_S = 180.0  # migrations of a new database on a busy 2-core machine take a while
POLL_S = 0.25


class LocalApiError(S2VError):
    """The local Prefect API could not be started."""


def api_home(settings: Settings) -> Path:
    return settings.local_api_dir or settings.cache_dir / "prefect-api"


def ensure_local_api(settings: Settings) -> str:
    """The URL of the running local API, starting it when none answers."""
    home = api_home(settings)
    if url := running_url(home):
        return url
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / "start.lock"):
        if url := running_url(home):  # another command started it while this one waited
            return url
        return _start(home)


def running_url(home: Path) -> str | None:
    """The local API's URL when it answers, else None."""
    try:
        info = json.loads((home / "api.json").read_text())
    except (OSError, ValueError):
        return None
    return info["url"] if _healthy(info["url"]) else None


def stop_local_api(settings: Settings, timeout_s: float = 30.0) -> bool:
    """Stop the local API if it runs; True when one was stopped."""
    home = api_home(settings)
    try:
        info = json.loads((home / "api.json").read_text())
    except (OSError, ValueError):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(info["pid"]):
            time.sleep(POLL_S)
        if _alive(info["pid"]):
            os.killpg(info["pid"], signal.SIGKILL)
    (home / "api.json").unlink(missing_ok=True)
    return True


def _start(home: Path) -> str:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # telemetry writes caused "database is locked" noise
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # The UI pages are served on this port; without these they call 127.0.0.1:4200 and show
        # "Can't connect to Server API".
        "PREFECT_UI_API_URL": url,
        "PREFECT_UI_URL": url.removesuffix("/api"),
    }
    env.pop("PREFECT_API_URL", None)
    log = os.open(home / "api.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=home,
            start_new_session=True,  # outlives this command and ignores its Ctrl-C
        )
    finally:
        os.close(log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(url):
        if process.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise LocalApiError(f"the local Prefect API did not start (see {home / 'api.log'}):\n{_tail(home / 'api.log')}")
        time.sleep(POLL_S)
    (home / "api.json").write_text(json.dumps({"url": url, "pid": process.pid}))
    return url


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _locked(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
