"""The Wan2.2-S2V-14B checkpoint's file layout, shared by the loader and the tiny-checkpoint writer.

Light: no torch. The names are the ones of the published checkpoint (Wan-AI/Wan2.2-S2V-14B).
"""
from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from s2v.errors import CheckpointError

DIT_SHARD_COUNT = 4
DIT_SHARDS = tuple(
    f"diffusion_pytorch_model-{i:05d}-of-{DIT_SHARD_COUNT:05d}.safetensors" for i in range(1, DIT_SHARD_COUNT + 1)
)
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
CONFIG = "config.json"
TEXT_ENCODER = "models_t5_umt5-xxl-enc-bf16.pth"
VAE = "Wan2.1_VAE.pth"
TOKENIZER_DIR = "google/umt5-xxl"
AUDIO_DIR = "wav2vec2-large-xlsr-53-english"
AUDIO_WEIGHTS = f"{AUDIO_DIR}/model.safetensors"

# Files the loader opens; a folder missing any of them is refused before anything loads.
REQUIRED_FILES = (
    CONFIG,
    DIT_INDEX,
    *DIT_SHARDS,
    TEXT_ENCODER,
    VAE,
    f"{TOKENIZER_DIR}/tokenizer_config.json",
    f"{AUDIO_DIR}/config.json",
    f"{AUDIO_DIR}/preprocessor_config.json",
    AUDIO_WEIGHTS,
)

# Key in config.json that marks a tiny random-weight checkpoint written by this project.
TINY_KEY = "s2v_tiny"


@dataclass(frozen=True)
class CheckpointFiles:
    root: Path
    config: dict

    @property
    def dit_shards(self) -> list[str]:
        return [str(self.root / name) for name in DIT_SHARDS]

    def path(self, name: str) -> str:
        return str(self.root / name)

    @property
    def is_tiny(self) -> bool:
        return TINY_KEY in self.config

    @property
    def tiny(self) -> dict:
        return self.config[TINY_KEY]


def layout_text() -> str:
    return "\n".join(f"  {name}" for name in REQUIRED_FILES)


def check_checkpoint(root: Path | str) -> CheckpointFiles:
    """Return the checkpoint's files, or raise naming the first missing file and the expected layout."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {root} does not exist; expected a folder holding:\n{layout_text()}")
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {root} is missing {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; expected layout:\n{layout_text()}"
        )
    try:
        config = json.loads((root / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {root}: {CONFIG} is not readable JSON ({exc})") from None
    return CheckpointFiles(root=root, config=config)


def dit_parameter_shapes(settings) -> dict[str, tuple[int, ...]] | None:
    """{DiT parameter: shape} from the checkpoint's shard headers (the DiT loads without a key converter,
    so its names are the parameters'), or None when no checkpoint folder is here (a control host, a tiny
    checkpoint not written yet). Reads a few kB per shard; no weights."""
    checkpoint = settings.checkpoint_path()
    # Where model_runtime.warm_cache writes the tiny checkpoint when none is named.
    root = settings.cache_dir / "tiny-checkpoint" if checkpoint in (None, "tiny") else Path(checkpoint)
    shards = [root / name for name in DIT_SHARDS]
    if not all(shard.is_file() for shard in shards):
        return None
    return _shard_shapes(tuple(str(shard) for shard in shards), tuple(shard.stat().st_mtime_ns for shard in shards))


@functools.lru_cache(maxsize=4)
def _shard_shapes(shards: tuple[str, ...], _versions: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for shard in shards:
        with open(shard, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        shapes.update({name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"})
    return shapes
