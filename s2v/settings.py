"""Typed configuration, read from `S2V_*` environment variables (and a `.env` file if present)."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SOCKET = Path("/tmp/wan2_s2v_model_server.sock")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="S2V_", env_file=".env", extra="ignore")

    # Model
    checkpoint: Path | None = Field(None, description="Wan2.2-S2V checkpoint folder; unset = the tiny one")
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
        "auto", "sdpa", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math", "flash-attn-3", "flash-attn-2", "sage"
    ] = Field("auto", description="DiT attention kernel; auto: DiffSynth's pick (torch SDPA's own choice unless a "
              "flash-attn/SageAttention library is installed)")
    fp8: bool = Field(False, description="FP8 weights + activations in the DiT blocks (torchao, sm89+); off until "
                      "measured; LoRAs cannot be fused into FP8 weights")
    vae_tiled: bool = Field(True, description="decode and encode video in VAE tiles (less memory; DiffSynth's default)")

    # Model server
    model_server: Path | None = Field(None, description="Unix socket of the model server; unset = in-process model")
    server_load_timeout_s: float = Field(1800.0, gt=0)
    server_connect_timeout_s: float = Field(5.0, gt=0)

    # Inputs
    max_image_mb: float = Field(50.0, gt=0)
    max_audio_mb: float = Field(200.0, gt=0)
    max_audio_seconds: float = Field(600.0, gt=0)
    download_timeout_s: float = Field(60.0, gt=0)
    input_roots: list[Path] | None = Field(None, description="local paths allowed as inputs; unset = any readable")
    allowed_hosts: list[str] = Field(default_factory=list, description="hosts allowed even if private/loopback")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. Cloudflare R2")

    # Outputs
    output: str = Field("s2v-output", description="local folder or s3://bucket/prefix")
    public_base_url: str | None = Field(None, description="public URL prefix for uploaded videos")
    presign_seconds: int = Field(7 * 24 * 3600, gt=0)
    gpu_cost_per_hour: float = Field(3.99, ge=0, description="for the batch cost estimate")
    worker_name: str = Field(default_factory=socket.gethostname, description="recorded in the ledger per row")


def get_settings() -> Settings:
    # Read anew on each call: cheap, and tests or a worker can change the environment between runs.
    return Settings()
