"""LoRA sets on the warm DiT: fused into its weights, one set at a time, switched without a reload.

Fusing (W += strength * scale * up @ down) costs nothing per step, unlike DiffSynth's hot-loading, which
adds two matmuls to every linear layer and needs its VRAM-management wrappers. DiffSynth's own fuse
cannot be undone, so the tensors a set changes are copied to the CPU first and copied back to switch:
the base weights come back bit for bit. Which tensor goes where is model_runtime.lora_match's answer,
the same one the checks before the model give.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from model_runtime.lora_match import check_lora_match, match_lora
from model_runtime.option_files import check_lora_file
from s2v.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraKey:
    """What identifies a fused set: the file as it is on disk, and the strength."""

    path: str
    size: int
    mtime_ns: int
    strength: float


@dataclass
class LoraSlot:
    """The one LoRA set fused into a warm DiT, and the base tensors it replaced (on the CPU)."""

    active: LoraKey | None = None
    tensors: int = 0
    originals: dict[str, torch.Tensor] = field(default_factory=dict)

    def use(self, dit: torch.nn.Module, path: str, strength: float) -> tuple[int, float]:
        """Make `path` at `strength` (or no LoRA, for "") the fused set.

        Returns (DiT tensors the set changes, seconds the switch took; 0.0 when it was already in place).
        A LoRA that fits no layer of this DiT raises InputError before any weight is touched.
        """
        wanted = _key(path, strength) if path else None
        if wanted == self.active:
            return self.tensors, 0.0
        started = time.perf_counter()
        deltas = lora_deltas(dit, path, strength) if wanted else {}
        self.restore(dit)
        params = dict(dit.named_parameters())
        try:
            with torch.no_grad():
                for name, delta in deltas.items():
                    param = params[name]
                    self.originals[name] = param.detach().to("cpu", copy=True)
                    param.copy_((param.float() + delta()).to(param.dtype))
        except BaseException:  # e.g. out of memory halfway: never leave a half-fused model behind
            self.restore(dit)
            raise
        self.active, self.tensors = wanted, len(deltas)
        seconds = time.perf_counter() - started
        if wanted:
            log.info("LoRA %s (strength %g) fused into %d DiT tensors in %.2f s", path, strength, len(deltas), seconds)
        return self.tensors, seconds

    def restore(self, dit: torch.nn.Module) -> None:
        """Put the base tensors back (bit for bit) and forget the fused set."""
        if self.originals:
            params = dict(dit.named_parameters())
            with torch.no_grad():
                for name, original in self.originals.items():
                    params[name].copy_(original.to(params[name].device))
        self.originals.clear()
        self.active, self.tensors = None, 0


def _key(path: str, strength: float) -> LoraKey:
    stat = os.stat(path)
    return LoraKey(path=os.path.abspath(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns, strength=float(strength))


def lora_deltas(dit: torch.nn.Module, path: str, strength: float) -> dict[str, Callable[[], torch.Tensor]]:
    """{DiT parameter name: a function making its float32 change} for the LoRA at `path`.

    Names and shapes are checked for every tensor first (model_runtime.lora_match: InputError if the
    LoRA does not fit this DiT); the changes are made one at a time when applied: all at once they
    would take 55 GB for the 14B DiT.
    """
    from safetensors.torch import load_file

    check_lora_file(path)
    state = load_file(path, device="cpu")
    params = dict(dit.named_parameters())
    device = next(iter(params.values())).device
    match = match_lora({key: tuple(tensor.shape) for key, tensor in state.items()},
                       {name: tuple(param.shape) for name, param in params.items()})
    check_lora_match(match, "lora", path)
    parts: dict[str, list[Callable[[], torch.Tensor]]] = {}

    def add(target: str, make: Callable[[], torch.Tensor]) -> None:
        shape = params[target].shape
        parts.setdefault(target, []).append(lambda: make().reshape(shape))

    for pair in match.pairs:
        up, down = state[pair.up].flatten(1), state[pair.down].flatten(1)  # conv 1x1 kernels as matrices
        scale = strength * (float(state[pair.alpha]) / down.shape[0] if pair.alpha else 1.0)
        add(pair.target, lambda up=up, down=down, scale=scale: scale * (up.to(device, torch.float32) @ down.to(device, torch.float32)))
    for target, key in match.diffs:
        add(target, lambda tensor=state[key]: strength * tensor.to(device, torch.float32))
    if match.unmatched:
        log.warning("LoRA %s: %d of its tensors match no DiT layer and are left out, e.g. %s",
                    path, len(match.unmatched), match.unmatched[0])
    return {target: functools.partial(_sum, makers) for target, makers in parts.items()}


def _sum(makers: list[Callable[[], torch.Tensor]]) -> torch.Tensor:
    total = makers[0]()
    for make in makers[1:]:
        total = total + make()
    return total

