"""LoRA sets on the warm DiT: fused into its weights, one set at a time, switched without a reload.

Fusing (W += strength * scale * up @ down) costs nothing per step, unlike DiffSynth's hot-loading, which
adds two matmuls to every linear layer and needs its VRAM-management wrappers. A fuse in bf16 rounds, so
it cannot be undone by subtracting; the tensors a set changes are kept as they were and copied back to
switch: the base weights come back bit for bit. They are kept on the model's own device while its free
memory stays above ORIGINALS_RESERVE_BYTES (device-to-device copies: ~28 GB at HBM speed, well under a
second, against 25 s + 5.5 s through the CPU on the 2026-11-27 H200); only what does not fit goes to the
CPU. Why not the alternatives: subtracting the delta again is not bit-exact in bf16, and an unfused adapter
(two extra matmuls per linear layer) costs every step of every clip instead of one switch per LoRA. Which tensor goes where is model_runtime.lora_match's answer, the same one the checks before the model give.
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

log = logging.getLogger(__name__)

# Device memory left free for generating when originals are kept on the GPU (the loaded weights are already
# out of the free figure): a 720p step's activations, 48.3 GiB peak - 30.4 GiB of weights = 17.9 GiB
# (bench/results/gpu_step_h200_2026-11-27.md), plus room for the VAE decode and fragmentation. On a 141 GB
# H200 all ~28 GB of a full rank-64 set stay on the GPU; on an 80 GB H100 about half does, the rest goes
# through the CPU as before.
ORIGINALS_RESERVE_BYTES = 22 * 2**30


@dataclass(frozen=True)
class LoraKey:
    """What identifies a fused set: the file as it is on disk, and the strength."""

    path: str
    size: int
    mtime_ns: int
    strength: float


@dataclass
class LoraSlot:
    """The one LoRA set fused into a warm DiT, and the base tensors it replaced (on its device where they fit)."""

    active: LoraKey | None = None
    tensors: int = 0
    originals: dict[str, torch.Tensor] = field(default_factory=dict)
    reserve_bytes: int = ORIGINALS_RESERVE_BYTES
    kept_on_cpu: int = 0  # originals of the current set that did not fit on the device

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
                    self.originals[name] = self.keep_original(param)
                    param.copy_(fuse_weight(param, delta()))
        except BaseException:  # e.g. out of memory halfway: never leave a half-fused model behind
            self.restore(dit)
            raise
        self.active, self.tensors = wanted, len(deltas)
        seconds = time.perf_counter() - started
        if wanted:
            log.info("LoRA %s (strength %g) fused into %d DiT tensors in %.2f s (%d originals kept on the CPU)",
                     path, strength, len(deltas), seconds, self.kept_on_cpu)
        return self.tensors, seconds

    def keep_original(self, param: torch.Tensor) -> torch.Tensor:
        """A bit-exact copy of `param`: on its own device while free memory allows, else on the CPU."""
        if param.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(param.device)
            if keeps_on_device(free, param.numel() * param.element_size(), self.reserve_bytes):
                return param.detach().clone()
        if param.device.type != "cpu":
            self.kept_on_cpu += 1
        return param.detach().to("cpu", copy=True)

    def restore(self, dit: torch.nn.Module) -> None:
        """Put the base tensors back (bit for bit) and forget the fused set."""
        if self.originals:
            params = dict(dit.named_parameters())
            with torch.no_grad():
                for name, original in self.originals.items():
                    params[name].copy_(original.to(params[name].device))
        self.originals.clear()
        self.active, self.tensors, self.kept_on_cpu = None, 0, 0


def keeps_on_device(free_bytes: int, tensor_bytes: int, reserve_bytes: int) -> bool:
    """Whether a copy of a tensor fits on the device and still leaves `reserve_bytes` free for generating."""
    return free_bytes - tensor_bytes >= reserve_bytes


def fuse_weight(param: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """param + delta, summed in float32 and rounded once to the parameter's dtype."""
    return (param.float() + delta).to(param.dtype)


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

