"""Starting a model server from a client: the detached process, and the start lock that lets only one client start it."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from model_runtime.protocol import ServerFiles
from s2v.errors import ModelServerError
from s2v.file_locks import is_held, lock_by, open_lock_file
from s2v.settings import Settings

POLL_S = 0.1
MAX_SPAWNS = 3  # per ensure_running: a start lost to a racing server is retried, a crash loop is not
# Settings the server must share with the client that starts it, passed as S2V_* variables.
SERVER_SETTINGS = ("checkpoint", "cache_dir", "device", "dtype", "vram_limit_gb", "generation_timeout_s", "max_audio_seconds")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def server_running(files: ServerFiles) -> bool:
    """True while a server process holds the socket's lock: it is starting, serving or stopping."""
    return is_held(files.lock, shared=True)


@contextlib.contextmanager
def start_lock(socket_path: Path, files: ServerFiles, deadline: float) -> Iterator[None]:
    """Held by the one client starting a server; the others wait here, then find it running."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_lock_file(files.start_lock)
    try:
        if not lock_by(fd, deadline, POLL_S):
            raise ModelServerError(f"another client kept starting the model server on {socket_path} past the load timeout")
        yield
    finally:
        os.close(fd)


def spawn(socket_path: Path, files: ServerFiles, settings: Settings) -> subprocess.Popen:
    """A detached `python -m model_runtime.server` on `socket_path` with the client's settings, logging to files.log."""
    command = [sys.executable, "-m", "model_runtime.server", "--socket", str(socket_path)]
    env = os.environ.copy()
    for name in SERVER_SETTINGS:
        value = getattr(settings, name)
        if value is None:
            env.pop(f"S2V_{name.upper()}", None)
        else:
            env[f"S2V_{name.upper()}"] = str(value)
    # The server must run the same code as this client, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
    log_fd = os.open(files.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        banner = f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} starts the model server: {' '.join(command)}\n"
        os.write(log_fd, banner.encode())
        # A new session: the server outlives the flow run that started it and ignores its Ctrl-C.
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, env=env, start_new_session=True)
    finally:
        os.close(log_fd)
