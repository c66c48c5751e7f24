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
    from s2v.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


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

