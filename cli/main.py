"""The `s2v` command. Imports no torch at start: `--help` and light commands stay fast."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from s2v.errors import ConfigError, InputError, S2VError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Talking-head videos from portraits and speech (Wan2.2-S2V).")


def _fail(exc: S2VError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2 if isinstance(exc, (InputError, ConfigError)) else 1)


def _settings(**overrides):
    """Settings from S2V_* variables with the command's options on top; a bad one raises ConfigError.

    The CLI runs on the machine whose files it names, so local paths are inputs here (remote entry
    points take URLs only); the flows it runs in this process read the same variable.
    """
    import os

    from s2v.settings import load_settings

    os.environ.setdefault("S2V_LOCAL_INPUTS", "true")
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command("make-tiny-checkpoint")
def make_tiny_checkpoint_cmd(
    directory: Path = typer.Argument(..., help="folder to write (must not exist unless --overwrite)"),
    seed: int = typer.Option(0, help="random seed of the weights"),
    overwrite: bool = typer.Option(False, help="replace an existing folder"),
) -> None:
    """Write a tiny random-weight Wan2.2-S2V checkpoint in the real file layout (for CPU tests)."""
    from model_runtime.tiny_checkpoint import make_tiny_checkpoint

    if directory.exists() and not overwrite:
        _fail(InputError("directory", str(directory), "already exists; pass --overwrite to replace it"))
    try:
        root = make_tiny_checkpoint(directory, seed=seed, overwrite=overwrite)
    except S2VError as exc:
        _fail(exc)
    typer.echo(str(root))


@app.command()
def generate(
    image: Path = typer.Option(..., help="portrait image"),
    audio: Path = typer.Option(..., help="speech audio"),
    out: Path = typer.Option(..., help="MP4 to write"),
    prompt: Optional[str] = typer.Option(None, help='default "A person speaking naturally"'),
    negative_prompt: Optional[str] = typer.Option(None),
    resolution: Optional[str] = typer.Option(None, help="480p or 720p"),
    size: Optional[str] = typer.Option(None, help="an official size W*H (e.g. 832*480) as the largest area"),
    mode: Optional[str] = typer.Option(None, help="standard (20 steps, guidance) or fast (4 steps, guidance 1, with a LoRA)"),
    sample_steps: Optional[int] = typer.Option(None, help="2..50 (below 15 only with --lora); default: the mode's"),
    sample_shift: Optional[float] = typer.Option(None, help="noise schedule shift; default: the resolution's and mode's"),
    seed: Optional[int] = typer.Option(None),
    guidance_scale: Optional[float] = typer.Option(None),
    lora: Optional[Path] = typer.Option(None, help="a LoRA .safetensors file"),
    lora_strength: Optional[float] = typer.Option(None, help="0..4, default 1"),
    pose_video: Optional[Path] = typer.Option(None, help="a pose (DWPose) video driving the body"),
    max_segments: Optional[int] = typer.Option(None, help="make only the first N 5-second segments (a preview)"),
    start_from_ref: bool = typer.Option(False, help="the portrait itself is the first frame"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint folder (default: S2V_CHECKPOINT, else the tiny one)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    timeout: Optional[float] = typer.Option(None, help="generation limit in seconds (default 1800)"),
) -> None:
    """Make one video and print its result record as JSON."""
    from model_runtime.request import GenerationRequest

    fields = dict(
        image_path=image, audio_path=audio, prompt=prompt, negative_prompt=negative_prompt,
        resolution=resolution, size=size, mode=mode, sample_steps=sample_steps, sample_shift=sample_shift, seed=seed,
        guidance_scale=guidance_scale, lora=str(lora.absolute()) if lora else None, lora_strength=lora_strength,
        pose_video=str(pose_video.absolute()) if pose_video else None, max_segments=max_segments,
        start_from_ref=start_from_ref or None,
    )
    try:
        request = GenerationRequest.parse({k: v for k, v in fields.items() if v is not None})
        settings = _settings(checkpoint=checkpoint, device=device, generation_timeout_s=timeout)
        from model_runtime.service import InProcessRuntime

        result = InProcessRuntime(settings).generate(request, out)
    except S2VError as exc:
        _fail(exc)
    typer.echo(result.model_dump_json(indent=2))


@app.command()
def server(
    socket: Optional[Path] = typer.Option(None, help="Unix socket (default: S2V_MODEL_SERVER, else /tmp/wan2_s2v_model_server.sock)"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint folder (default: S2V_CHECKPOINT, else the tiny one)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    log_file: Optional[Path] = typer.Option(None, help="also append the log to this file"),
) -> None:
    """Keep the model warm and serve generations over a Unix socket until SIGTERM or a shutdown request."""
    from model_runtime.server import run as run_server
    from s2v.settings import DEFAULT_SOCKET

    try:
        settings = _settings(checkpoint=checkpoint, device=device)
    except S2VError as exc:
        _fail(exc)
    raise typer.Exit(run_server(socket or settings.model_server or DEFAULT_SOCKET, settings, log_file))


@app.command("server-status")
def server_status(
    socket: Optional[Path] = typer.Option(None, help="Unix socket (default: S2V_MODEL_SERVER, else /tmp/wan2_s2v_model_server.sock)"),
) -> None:
    """Print the model server's status as JSON; starts no server."""
    from model_runtime.client import ModelServerClient

    try:
        reply = ModelServerClient(socket, _settings(), autostart=False).status()
    except S2VError as exc:
        _fail(exc)
    typer.echo(reply.model_dump_json(indent=2))


@app.command()
def run(
    manifest: str = typer.Argument(..., help="CSV manifest: path, file://, http(s):// or s3:// URI"),
    output: Optional[str] = typer.Option(None, help="local folder or s3://bucket/prefix (default S2V_OUTPUT)"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint folder (default S2V_CHECKPOINT, else the tiny one)"),
    server: Optional[Path] = typer.Option(None, help="model server socket (default: the model in this process)"),
    lookahead: int = typer.Option(2, min=1, max=16, help="rows fetched ahead of the generating one"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Prefect's run logs"),
) -> None:
    """Run the batch flow over a manifest; exits 1 if any row failed, 130 when interrupted."""
    _run_batch(manifest, output, checkpoint, server, lookahead, verbose)


@app.command()
def retry(
    output: str = typer.Argument(..., help="output location of earlier batches (holds their ledger and manifests)"),
    checkpoint: Optional[Path] = typer.Option(None),
    server: Optional[Path] = typer.Option(None),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    flagged: bool = typer.Option(False, "--flagged", help="remake the clips the clip check flagged, with a new seed, "
                                 "instead of the failed rows"),
) -> None:
    """Rerun every row whose latest ledger record failed or was interrupted, from whichever manifest it came."""
    _run_batch(None, output, checkpoint, server, 2, verbose, flagged)


def _run_batch(manifest, output, checkpoint, server, lookahead, verbose, flagged: bool = False) -> None:
    from rich.console import Console

    from cli.batch import run_batch

    console = Console(stderr=True)
    try:
        settings = _settings(output=output, checkpoint=checkpoint, model_server=server)
        code = run_batch(manifest, settings, lookahead, verbose, console, flagged)
    except S2VError as exc:
        _fail(exc)
    raise typer.Exit(code)


@app.command()
def check(
    manifest: str = typer.Argument(..., help="CSV manifest: path, file://, http(s):// or s3:// URI"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint whose measured speed estimates the times"),
) -> None:
    """Check every row without loading the model: values, files, downloads, decoding, durations, time needed.

    Prints one line per row and exits 1 when any row is bad.
    """
    from rich.console import Console

    from cli.check import check_manifest

    console = Console()
    try:
        bad = check_manifest(manifest, _settings(checkpoint=checkpoint), console)
    except S2VError as exc:
        _fail(exc)
    raise typer.Exit(1 if bad else 0)


@app.command()
def ui(
    open_browser: bool = typer.Option(True, "--open/--no-open", help="open it in a browser when this machine has a desktop"),
) -> None:
    """The address of the Prefect UI of this machine's local API (started if it is not running): runs, logs, cards."""
    import os
    import sys
    import webbrowser

    from cli.local_api import ensure_local_api

    try:  # the same API `s2v run` uses: PREFECT_API_URL's server when set, else the local one
        api = os.environ.get("PREFECT_API_URL") or ensure_local_api(_settings())
        url = os.environ.get("PREFECT_UI_URL") or api.rstrip("/").removesuffix("/api")
    except S2VError as exc:
        _fail(exc)
    typer.echo(url)
    # webbrowser would fall back to a text browser in a terminal without a desktop; only a desktop opens it.
    if open_browser and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin"):
        webbrowser.open(url)


@app.command("local-api")
def local_api(
    action: str = typer.Argument("status", help="status or stop"),
    force: bool = typer.Option(False, "--force", help="stop it even while a batch uses it (that batch's rows stop)"),
) -> None:
    """The local Prefect API that `s2v run` and `s2v retry` share on this machine (started on first use)."""
    from cli.local_api import api_home, running_url, stop_local_api

    settings = _settings()
    if action == "stop":
        from cli.local_api_users import local_api_in_use

        if not force and local_api_in_use(api_home(settings)):
            typer.echo("refused: a running s2v command uses the local API (its rows would fail); wait for it, "
                       "or stop with --force", err=True)
            raise typer.Exit(1)
        typer.echo("stopped" if stop_local_api(settings) else "not running")
    elif action == "status":
        url = running_url(api_home(settings))
        typer.echo(f"running at {url.removesuffix('/api')} (home {api_home(settings)})" if url else "not running")
    else:
        _fail(InputError("action", action, "expected status or stop"))
