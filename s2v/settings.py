"""Typed configuration, read from `S2V_*` environment variables (and a `.env` file if present).

Build settings with `get_settings()` or `load_settings(**overrides)`: a bad value becomes one
`ConfigError` line naming the variable and the expected form, never a pydantic traceback.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from s2v.errors import ConfigError

DEFAULT_SOCKET = Path("/tmp/wan2_s2v_model_server.sock")
ENV_PREFIX = "S2V_"
TINY = "tiny"


class Settings(BaseSettings):
    # An empty variable (S2V_CHECKPOINT=) means unset, not the current folder.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", env_ignore_empty=True)

    # Model
    checkpoint: Path | Literal["tiny"] | None = Field(
        None, description='Wan2.2-S2V checkpoint folder, or "tiny" for the tiny random-weight test checkpoint'
    )
    cache_dir: Path = Field(Path.home() / ".cache" / "s2v", description="where the tiny checkpoint and work files live")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    vram_limit_gb: float | None = Field(None, gt=0, description="enable DiffSynth VRAM management under this budget")
    generation_timeout_s: float = Field(1800.0, gt=0, description="per-clip generation limit")

    # Speed options (bench/gpu_step.py measures them)
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the 40 DiT blocks once per warm process (7.4 vs 8.4 s/step at 480p on an "
        "H200); auto: on for CUDA, off on CPU; falls back to eager with a warning if compiling fails",
    )
    attention: Literal[
        "auto", "sdpa", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math", "flash-attn-3", "flash-attn-2", "sage",
        "flash-attn-4",
    ] = Field("auto", description="DiT attention kernel; auto: the fastest measured within the error bound for this "
              "GPU (model_runtime.speed_auto), else DiffSynth's pick; a library that is not installed is refused")
    fp8: Literal["auto", "on", "off"] = Field(
        "auto", description="FP8 weights + activations in the DiT blocks (torchao, sm89+); auto: on only where "
        "measured faster within the error bound (model_runtime.speed_auto), else off; LoRAs cannot be fused into "
        "FP8 weights")
    vae_tiled: Literal["auto", "on", "off"] = Field(
        "auto", description="VAE in tiles (less memory, slower; DiffSynth's default); auto: untiled on CUDA up to the "
        "480p area (3.2 vs 9.0 s per segment decode, +3.2 GiB, on an H200), tiled above it (720p untiled not measured) "
        "and on CPU",
    )

    # Model server
    model_server: Path | None = Field(None, description="Unix socket of the model server; unset = in-process model")
    server_load_timeout_s: float = Field(1800.0, gt=0)
    server_connect_timeout_s: float = Field(5.0, gt=0)

    # The CLI's local Prefect API (cli/local_api.py)
    local_api_dir: Path | None = Field(None, description="its home (SQLite database, log); unset = <cache_dir>/prefect-api")

    # Inputs
    max_image_mb: float = Field(50.0, gt=0)
    max_audio_mb: float = Field(200.0, gt=0)
    max_audio_seconds: float = Field(600.0, gt=0)
    max_lora_mb: float = Field(2048.0, gt=0, description="size limit of a LoRA file (safetensors)")
    max_pose_video_mb: float = Field(200.0, gt=0, description="size limit of a pose video")
    download_timeout_s: float = Field(
        60.0, gt=0, description="wall-clock limit of one input download (connect + whole body), however slowly bytes arrive"
    )
    lora_download_timeout_s: float = Field(
        900.0, gt=0, description="wall-clock limit of one LoRA download (LoRAs are large and cached across rows)"
    )
    download_stage_timeout_s: float = Field(
        300.0, gt=0,
        description="wall-clock limit of a row's whole download stage, all retries included "
                    "(plus lora_download_timeout_s when the row has to fetch a LoRA that is not cached yet)",
    )
    local_inputs: bool = Field(
        False, description="accept local paths and file:// as inputs anywhere (the CLI on one machine sets this)"
    )
    input_roots: Annotated[list[Path] | None, NoDecode] = Field(
        None,
        description="folders whose files are accepted as local inputs (comma-separated or a JSON list); "
                    "when set, local paths elsewhere are refused even with local_inputs",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="hosts allowed even if private/loopback (comma-separated or a JSON list)"
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. Cloudflare R2")
    face_check: Literal["warn", "refuse", "off"] = Field(
        "warn", description="the portrait face check before any GPU work (s2v/quality): refuse fails a row without "
        "exactly one usable face, warn runs it with the reason in its record (qc_portrait), off does not look",
    )
    clip_check: bool = Field(True, description="check each made clip (face kept, mouth moving with the speech) on "
                             "the worker's CPU beside the next generation; the results are the records' qc_* fields")

    # Outputs
    output: str = Field("s2v-output", description="local folder or s3://bucket/prefix")
    public_base_url: str | None = Field(None, description="public URL prefix for uploaded videos")
    presign_seconds: int = Field(7 * 24 * 3600, gt=0)
    gpu_cost_per_hour: float = Field(3.99, ge=0, description="for the batch cost estimate")
    worker_name: str = Field(default_factory=socket.gethostname, description="recorded in the ledger per row")
    claim_lease_s: float = Field(
        120.0, ge=1, description="a row's claim lasts this long unless its run renews it (every third of it); "
        "a run killed mid-row leaves its row to others, and `interrupted`, this long after it died",
    )
    no_worker_timeout_s: float = Field(
        300.0, gt=0, description="a fleet's parent run (scale-out, nightly) ends Failed, naming the pool, when no "
        "worker of the GPU pool has been online this long, instead of waiting its whole max_wait_hours",
    )

    @field_validator("fp8", mode="before")
    @classmethod
    def _fp8_switch(cls, value: Any) -> Any:
        # S2V_FP8 was a boolean before auto: true/false (and 1/0) keep meaning on/off.
        words = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}
        if isinstance(value, bool):
            return "on" if value else "off"
        return words.get(str(value).strip().lower(), value)

    @field_validator("input_roots", "allowed_hosts", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # Environment values arrive as text: `a,b` or a JSON list; an empty value means "none".
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("not a valid JSON list") from None
        return [item.strip() for item in text.split(",") if item.strip()]

    def checkpoint_path(self) -> Path | Literal["tiny"] | None:
        """The checkpoint folder (user folder expanded), "tiny" for the tiny test checkpoint, or None if unset."""
        if isinstance(self.checkpoint, Path):
            return self.checkpoint.expanduser()
        return self.checkpoint


def load_settings(**overrides: Any) -> Settings:
    """Settings from S2V_* variables (and .env) with `overrides` on top; a bad value raises ConfigError.

    A bad override is named by its field (`generation_timeout_s`), a bad variable by its name
    (`S2V_GENERATION_TIMEOUT_S`), so the message points at what the person has to change.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise _config_error(exc, overrides) from None
    except SettingsError as exc:  # pydantic-settings could not parse a variable at all
        raise ConfigError("settings", "", str(exc).splitlines()[0]) from None


def get_settings() -> Settings:
    # Read anew on each call: cheap, and tests or a worker can change the environment between runs.
    return load_settings()


def _config_error(exc: ValidationError, overrides: dict[str, Any]) -> ConfigError:
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    name = field if field in overrides else ENV_PREFIX + field.upper()
    value = overrides[field] if field in overrides else first.get("input")
    if field not in overrides and len(first["loc"]) > 1:  # one item of a list: show the whole variable
        value = os.environ.get(name, value)
    info = Settings.model_fields.get(field)
    expected = _expected(field, info) if info is not None else ""
    return ConfigError(name, value, f"must be {expected}" if expected else _lower_first(first["msg"]))


def _expected(field: str, info: Any) -> str:
    """The accepted form of a field, in words: 'a number of seconds > 0', 'one of auto, cpu, cuda'."""
    annotation = info.annotation  # pydantic keeps Annotated's extras (NoDecode, gt=0) in info.metadata
    kinds = [arg for arg in get_args(annotation) if arg is not type(None)] if _is_union(annotation) else [annotation]
    literals = [str(value) for kind in kinds if get_origin(kind) is Literal for value in get_args(kind)]
    if any(get_origin(kind) is list for kind in kinds):
        return "a comma-separated list (a,b) or a JSON list ([\"a\", \"b\"])"
    if kinds == [bool]:
        return "true or false"
    if kinds and all(kind in (int, float) for kind in kinds):
        unit = {"s": " of seconds", "seconds": " of seconds", "mb": " of MB", "gb": " of GB"}.get(field.rpartition("_")[2], "")
        noun = "a whole number" if kinds == [int] else "a number"
        bounds = "".join(
            f" {symbol} {getattr(rule, attr):g}"
            for rule in info.metadata
            for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
            if getattr(rule, attr, None) is not None
        )
        return f"{noun}{unit}{bounds}"
    if literals:
        return "one of " + ", ".join(literals) + (" or a folder" if Path in kinds else "")
    if Path in kinds:
        return "a path"
    return ""


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, UnionType)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _one_line_config_errors(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """A ConfigError that nothing caught ends the program with its one line, not a traceback."""
    if isinstance(exc, ConfigError):
        print(f"error: {exc}", file=sys.stderr)
    else:
        _previous_excepthook(kind, exc, tb)


if getattr(sys.excepthook, "__name__", "") != _one_line_config_errors.__name__:
    _previous_excepthook = sys.excepthook
    sys.excepthook = _one_line_config_errors
