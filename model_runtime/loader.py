"""Build DiffSynth's WanVideoPipeline (Wan2.2-S2V) from a checkpoint folder."""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model_runtime import layout
from s2v.errors import CheckpointError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("device 'cuda' was asked for but no CUDA GPU is visible")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        # bf16 on CPU ran about 33x slower than fp32 here (shared/notes); GPUs want bf16.
        return torch.bfloat16 if device == "cuda" else torch.float32
    return _DTYPES[dtype]


@dataclass
class LoadedPipeline:
    pipe: object  # diffsynth WanVideoPipeline
    files: layout.CheckpointFiles
    device: str
    dtype: torch.dtype
    load_seconds: float

    @property
    def frames_per_segment(self) -> int:
        return self.files.tiny["frames_per_clip"] if self.files.is_tiny else 80

    @property
    def presets(self) -> dict:
        return self.files.tiny["presets"] if self.files.is_tiny else {}

    @property
    def size_area_divisor(self) -> int:
        """What an official size's area is divided by on this checkpoint (the tiny one keeps CPU runs small)."""
        if not self.files.is_tiny:
            return 1
        from model_runtime.tiny_checkpoint import SIZE_AREA_DIVISOR

        return self.files.tiny.get("size_area_divisor", SIZE_AREA_DIVISOR)


def load_pipeline(checkpoint: Path | str, device: str, dtype: torch.dtype, vram_limit_gb: float | None = None) -> LoadedPipeline:
    """Load every S2V component; fails at once, naming the file, if the folder is incomplete."""
    from diffsynth.pipelines.wan_video import ModelConfig, WanVideoPipeline

    files = layout.check_checkpoint(checkpoint)
    _quiet_vae_progress()
    started = time.perf_counter()
    if files.is_tiny:
        _register_tiny_components(files)
    offload = _offload_options(device, dtype) if vram_limit_gb else {}
    model_configs = [
        ModelConfig(path=files.dit_shards, **offload),
        ModelConfig(path=files.path(layout.TEXT_ENCODER), **offload),
        ModelConfig(path=files.path(layout.AUDIO_WEIGHTS), **offload),
        ModelConfig(path=files.path(layout.VAE), **offload),
    ]
    try:
        # DiffSynth prints its download banner and every file it loads to stdout, where the CLI writes
        # its JSON; that chatter goes to the debug log instead.
        with contextlib.redirect_stdout(io.StringIO()) as chatter:
            pipe = WanVideoPipeline.from_pretrained(
                torch_dtype=dtype,
                device=device,
                model_configs=model_configs,
                tokenizer_config=ModelConfig(path=files.path(layout.TOKENIZER_DIR)),
                audio_processor_config=ModelConfig(path=files.path(layout.AUDIO_DIR)),
                redirect_common_files=False,
                vram_limit=vram_limit_gb,
            )
        log.debug("diffsynth: %s", chatter.getvalue())
    except ValueError as exc:
        if "Cannot detect the model type" in str(exc):
            raise CheckpointError(f"checkpoint {files.root}: {exc} (not a Wan2.2-S2V-14B file?)") from None
        raise
    missing = [name for name in ("dit", "text_encoder", "vae", "audio_encoder") if getattr(pipe, name) is None]
    if missing:
        raise CheckpointError(f"checkpoint {files.root}: no {', '.join(missing)} was recognised")
    return LoadedPipeline(pipe, files, device, dtype, time.perf_counter() - started)


def _quiet_vae_progress() -> None:
    # The VAE draws a tqdm bar for every encode and decode (several per clip); in a batch log that is
    # noise. The denoising loop's progress goes through generate's own callback instead.
    import diffsynth.models.wan_video_vae as vae_module

    if not isinstance(vae_module.tqdm, functools.partial):
        vae_module.tqdm = functools.partial(vae_module.tqdm, disable=True)


def _offload_options(device: str, dtype: torch.dtype) -> dict:
    # DiffSynth's VRAM management for GPUs under 80 GB: weights rest in CPU memory and are moved to the
    # GPU layer by layer within the vram_limit budget.
    return dict(
        offload_dtype=dtype, offload_device="cpu", onload_dtype=dtype, onload_device="cpu",
        preparing_dtype=dtype, preparing_device=device, computation_dtype=dtype, computation_device=device,
    )


def _register_tiny_components(files: layout.CheckpointFiles) -> None:
    """Teach DiffSynth's file detection the tiny files, as its own table teaches it the real ones.

    DiffSynth recognises a file by a hash of its key names and shapes; tiny shapes miss its table. The
    entries added here name the same model classes (or the tiny subclasses for the VAE and wav2vec2,
    whose sizes DiffSynth hard-codes) and the real state-dict converters.
    """
    import diffsynth.models.model_loader as model_loader
    from diffsynth.core.loader import hash_model_file

    tiny = files.tiny
    dit_kwargs = {**tiny["dit"], "patch_size": tuple(tiny["dit"]["patch_size"])}
    entries = [
        (files.dit_shards, "wan_video_dit", "diffsynth.models.wan_video_dit_s2v.WanS2VModel", dit_kwargs, None),
        (files.path(layout.TEXT_ENCODER), "wan_video_text_encoder",
         "diffsynth.models.wan_video_text_encoder.WanTextEncoder", tiny["text_encoder"], None),
        (files.path(layout.VAE), "wan_video_vae", "model_runtime.tiny_models.TinyWanVideoVAE", tiny["vae"],
         "diffsynth.utils.state_dict_converters.wan_video_vae.WanVideoVAEStateDictConverter"),
        (files.path(layout.AUDIO_WEIGHTS), "wans2v_audio_encoder", "model_runtime.tiny_models.TinyWanS2VAudioEncoder",
         tiny["audio_encoder"],
         "diffsynth.utils.state_dict_converters.wans2v_audio_encoder.WanS2VAudioEncoderStateDictConverter"),
    ]
    known = {config["model_hash"] for config in model_loader.MODEL_CONFIGS}
    added = []
    for path, name, model_class, kwargs, converter in entries:
        model_hash = hash_model_file(path)
        if model_hash in known:
            continue
        entry = {"model_hash": model_hash, "model_name": name, "model_class": model_class, "extra_kwargs": kwargs}
        if converter:
            entry["state_dict_converter"] = converter
        added.append(entry)
        known.add(model_hash)
    # model_loader holds its own reference to the tuple; rebinding that name is what its lookup sees.
    model_loader.MODEL_CONFIGS = tuple(model_loader.MODEL_CONFIGS) + tuple(added)
