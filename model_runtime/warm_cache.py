"""The process-level warm model: loaded on first use, reused by every later request."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from model_runtime import speed
from model_runtime.loader import LoadedPipeline, load_pipeline, resolve_device, resolve_dtype
from model_runtime.lora import LoraSlot
from s2v.settings import TINY, Settings, get_settings


@dataclass
class WarmModel:
    loaded: LoadedPipeline
    checkpoint: Path
    speed: speed.SpeedOptions = field(default_factory=speed.SpeedOptions)
    lora: LoraSlot = field(default_factory=LoraSlot)  # the LoRA set fused into the DiT, if any
    generation_count: int = 0
    # One generation at a time on a device: a second would only fight for the same GPU memory.
    generation_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pipe(self):
        return self.loaded.pipe


_models: dict[tuple, WarmModel] = {}
_load_lock = threading.Lock()
load_count = 0  # loads done by this process; a warm process does exactly one


def checkpoint_folder(checkpoint: Path | str | None, settings: Settings) -> Path:
    """`checkpoint`, else the configured one; unset or "tiny": the tiny one, written to the cache on first use."""
    chosen = checkpoint if checkpoint is not None else settings.checkpoint_path()
    if chosen is not None and str(chosen) != TINY:
        return Path(chosen).expanduser()
    from model_runtime.tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(settings.cache_dir / "tiny-checkpoint")


def get_model(checkpoint: Path | str | None = None, settings: Settings | None = None) -> tuple[WarmModel, bool]:
    """(model, was_warm). Concurrent first callers wait for one load instead of loading twice."""
    global load_count
    settings = settings or get_settings()
    root = checkpoint_folder(checkpoint, settings)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    options = speed.resolve(settings, device)
    key = (str(root.resolve()), device, str(dtype), options)
    with _load_lock:
        if key in _models:
            return _models[key], True
        loaded = load_pipeline(root, device, dtype, settings.vram_limit_gb)
        speed.prepare(loaded, options)
        model = _models[key] = WarmModel(loaded=loaded, checkpoint=root, speed=options)
        load_count += 1
        return model, False


def memory_in_use_gb(device: str) -> tuple[float, str]:
    """(GiB, what was measured): allocated VRAM on a GPU, the process's resident memory on CPU."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.memory_allocated() / 2**30, "vram_allocated"
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**30, "rss"
