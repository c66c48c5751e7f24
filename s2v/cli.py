"""The `s2v` command. Imports no torch at start: `--help` and light commands stay fast."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from s2v.errors import InputError, S2VError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Talking-head videos from portraits and speech (Wan2.2-S2V).")


def _fail(exc: S2VError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2 if isinstance(exc, InputError) else 1)


def _settings(**overrides):
    """Settings from S2V_* variables with the command's options on top; a bad option is an InputError."""
    from pydantic import ValidationError

    from model_runtime.request import input_error_from
    from s2v.settings import Settings

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise input_error_from(exc, given) from None


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
    resolution: Optional[str] = typer.Option(None, help="480p, 720p (or tiny on the tiny checkpoint)"),
    sample_steps: Optional[int] = typer.Option(None, help="15..50, default 20"),
    seed: Optional[int] = typer.Option(None),
    guidance_scale: Optional[float] = typer.Option(None),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint folder (default: S2V_CHECKPOINT, else the tiny one)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda"),
    timeout: Optional[float] = typer.Option(None, help="generation limit in seconds (default 1800)"),
) -> None:
    """Make one video and print its result record as JSON."""
    from model_runtime.request import GenerationRequest

    fields = dict(
        image_path=image, audio_path=audio, prompt=prompt, negative_prompt=negative_prompt,
        resolution=resolution, sample_steps=sample_steps, seed=seed, guidance_scale=guidance_scale,
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
    """Run the batch flow over a manifest; exits 1 if any row failed."""
    _run_batch(manifest, output, checkpoint, server, lookahead, verbose, retry=False)


@app.command()
def retry(
    output: str = typer.Argument(..., help="output location of an earlier batch (holds results.jsonl)"),
    checkpoint: Optional[Path] = typer.Option(None),
    server: Optional[Path] = typer.Option(None),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Rerun the rows of an earlier batch whose latest ledger record failed."""
    _run_batch(None, output, checkpoint, server, 2, verbose, retry=True)


def _run_batch(manifest, output, checkpoint, server, lookahead, verbose, retry) -> None:
    from s2v.batch_cli import prepare_prefect

    prepare_prefect(verbose)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.batch import batch, retry_failed
    from flows.ledger import load_ledger, local_ledger_file
    from flows.manifest import parse_manifest
    from s2v.batch_cli import LedgerProgress

    console = Console(stderr=True)
    try:
        settings = _settings(output=output, checkpoint=checkpoint, model_server=server)
        if retry:
            total = len(load_ledger(settings.output, settings).failed_rows())
        else:
            # Parsed here first so a broken manifest fails in a second, before Prefect starts.
            parsed = parse_manifest(manifest, None, settings)
            total = len(parsed.rows) + len(parsed.invalid)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            task_id = progress.add_task("rows", total=total)
            with LedgerProgress(local_ledger_file(settings.output, settings), total, progress, task_id):
                common = dict(checkpoint=str(checkpoint) if checkpoint else None,
                              model_server=str(server) if server else None, lookahead=lookahead)
                if retry:
                    summary = retry_failed(output=settings.output, **common)
                else:
                    summary = batch(manifest=manifest, output=settings.output, **common)
    except S2VError as exc:
        _fail(exc)
    _print_summary(console, summary)
    if summary["failed"]:
        raise typer.Exit(1)


def _print_summary(console, summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['succeeded']} succeeded, {summary['failed']} failed, {summary['skipped']} skipped")
    for column in ("row", "clip", "status", "seconds", "url or error"):
        table.add_column(column)
    for record in summary["records"]:
        detail = record["url"] if record["status"] != "failed" else record["error"]
        table.add_row(str(record["row"]), record["clip_id"], record["status"],
                      f"{record['total_time']:.1f}" if record.get("total_time") else "", detail or "")
    console.print(table)
    console.print(f"ledger: {summary['ledger']}  (estimated GPU cost ${summary['estimated_cost_usd']:.4f})")

