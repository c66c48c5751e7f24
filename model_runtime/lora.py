"""LoRA sets on the warm DiT: fused into its weights, one set at a time, switched without a reload.

Fusing (W += strength * scale * up @ down) costs nothing per step, unlike DiffSynth's hot-loading, which
adds two matmuls to every linear layer and needs its VRAM-management wrappers. DiffSynth's own fuse
cannot be undone, so the tensors a set changes are copied to the CPU first and copied back to switch:
the base weights come back bit for bit. Key layouts are read with DiffSynth's GeneralLoRALoader naming
(`diffusion_model.<layer>.lora_up/lora_down` with `alpha`, `<layer>.lora_A/lora_B`, PEFT's `.default.`);
the full-tensor differences of LightX2V's Wan LoRAs (`.diff`, `.diff_b`, `.diff_m`) are added as they are.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from model_runtime.option_files import check_lora_file
from s2v.errors import InputError

log = logging.getLogger(__name__)

# Where a difference tensor lands: `<layer>.diff` on the weight, `.diff_b` on the bias, and
# `blocks.N.diff_m` on the block's modulation table.
_DIFF_TARGETS = {".diff": ".weight", ".diff_b": ".bias", ".diff_m": ".modulation"}


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

    Names and shapes are checked for every tensor first (InputError if the LoRA does not fit this DiT);
    the changes are made one at a time when applied: all at once they would take 55 GB for the 14B DiT.
    """
    from diffsynth.utils.lora import GeneralLoRALoader
    from safetensors.torch import load_file

    check_lora_file(path)
    state = load_file(path, device="cpu")
    params = dict(dit.named_parameters())
    device = next(iter(params.values())).device
    parts: dict[str, list[Callable[[], torch.Tensor]]] = {}
    unmatched: list[str] = []
    misfits: list[str] = []

    def add(target: str, numel: int, shape: tuple, make: Callable[[], torch.Tensor], source: str) -> None:
        param = params.get(target)
        if param is None:
            unmatched.append(source)
        elif numel != param.numel():
            misfits.append(f"{source}: LoRA {shape} vs model {tuple(param.shape)}")
        else:
            parts.setdefault(target, []).append(lambda: make().reshape(param.shape))

    for layer, (up_key, down_key, alpha_key) in GeneralLoRALoader().get_name_dict(state).items():
        if down_key not in state:
            unmatched.append(up_key)
            continue
        up, down = state[up_key].flatten(1), state[down_key].flatten(1)  # conv 1x1 kernels as matrices
        scale = strength * (float(state[alpha_key]) / down.shape[0] if alpha_key else 1.0)

        def pair(up=up, down=down, scale=scale) -> torch.Tensor:
            return scale * (up.to(device, torch.float32) @ down.to(device, torch.float32))

        shape = (up.shape[0], down.shape[1])
        add(f"{layer}.weight", shape[0] * shape[1], shape, pair, up_key)

    for key, tensor in state.items():
        for suffix, target_suffix in _DIFF_TARGETS.items():
            if key.endswith(suffix):
                target = key.removeprefix("diffusion_model.")[: -len(suffix)] + target_suffix
                add(target, tensor.numel(), tuple(tensor.shape),
                    lambda tensor=tensor: strength * tensor.to(device, torch.float32), key)
                break

    if misfits:
        raise InputError(
            "lora", path, f"{len(misfits)} of its tensors have other shapes than this Wan2.2-S2V DiT's "
            f"(a LoRA for another model size?), e.g. {misfits[0]}",
        )
    if not parts:
        raise InputError(
            "lora", path, f"none of its {len(unmatched)} LoRA tensors matches a layer of the Wan2.2-S2V DiT "
            f"(a LoRA for another model?), e.g. {unmatched[0] if unmatched else 'no lora_up/lora_A keys'}",
        )
    if unmatched:
        log.warning("LoRA %s: %d of its tensors match no DiT layer and are left out, e.g. %s",
                    path, len(unmatched), unmatched[0])
    return {target: functools.partial(_sum, makers) for target, makers in parts.items()}


def _sum(makers: list[Callable[[], torch.Tensor]]) -> torch.Tensor:
    total = makers[0]()
    for make in makers[1:]:
        total = total + make()
    return total

