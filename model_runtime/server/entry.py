"""The model server's entry points: `run` (what `s2v server` calls) and `main` (`python -m model_runtime.server`)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from model_runtime import protocol
from model_runtime.server.model_server import ModelServer
from model_runtime.server.transport import AlreadyRunning
from s2v.errors import ConfigError, S2VError
from s2v.settings import DEFAULT_SOCKET, Settings, load_settings

log = logging.getLogger("model_runtime.server")


def run(socket_path: Path | str, settings: Settings, log_file: Path | None = None) -> int:
    """Serve until SIGTERM or a `shutdown` request; the exit status (0 after a clean stop)."""
    _setup_logging(log_file)
    server = ModelServer(Path(socket_path).expanduser().absolute(), settings)
    try:
        # Library chatter printed to stdout would interleave with whatever started us; logs go to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            code = server.serve()
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return protocol.EXIT_ALREADY_RUNNING
    except (S2VError, OSError) as exc:  # e.g. a socket folder this user cannot write
        log.error("cannot start the model server on %s: %s", socket_path, exc)
        return 1
    if server.loader_running:
        # A load cut short leaves torch mid-import; interpreter teardown under it can crash.
        logging.shutdown()
        os._exit(code)
    return code


def _setup_logging(log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s2v server", description="Keep the Wan2.2-S2V model warm and serve it over a Unix socket.")
    parser.add_argument("--socket", type=Path, help=f"Unix socket to listen on (default: S2V_MODEL_SERVER, else {DEFAULT_SOCKET})")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: S2V_CHECKPOINT, else the tiny one)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: S2V_DEVICE, else auto")
    parser.add_argument("--log-file", type=Path, help="also append the log to this file")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"checkpoint": args.checkpoint, "device": args.device}.items() if v is not None}
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(args.socket or settings.model_server or DEFAULT_SOCKET, settings, args.log_file)
