"""Which DiT parameter each tensor of a LoRA changes, from tensor names and shapes alone. Light: no torch.

The one matcher for LoRA files: the runtime uses it on the loaded tensors before fusing
(model_runtime.lora), and `s2v check`, the parse and download stages and the RunPod handler use it on
the safetensors header, with the DiT's names and shapes read from the checkpoint's shard headers, so
a LoRA that cannot fit is refused before any model loads. Key layouts are DiffSynth's
GeneralLoRALoader naming (`diffusion_model.<layer>.lora_up/lora_down` with `alpha`, `<layer>.lora_A/
lora_B`, PEFT's `.default.`), plus LightX2V's full-tensor differences (`.diff`, `.diff_b`, `.diff_m`).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from s2v.errors import InputError

Shape = tuple[int, ...]
# Where a difference tensor lands: `<layer>.diff` on the weight, `.diff_b` on the bias, and
# `blocks.N.diff_m` on the block's modulation table.
DIFF_TARGETS = {".diff": ".weight", ".diff_b": ".bias", ".diff_m": ".modulation"}
# Safetensors dtypes a LoRA's weights can have; integer or boolean tensors are not weights.
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
# Layers of a Wan DiT, for when no checkpoint is at hand to compare shapes with (a control host).
WAN_DIT_LAYER = re.compile(
    r"^(blocks\.\d+\.(self_attn|cross_attn|ffn|norm\d*|modulation|audio\w*)|text_embedding|time_embedding|"
    r"time_projection|head|patch_embedding|casual_audio_encoder|audio_injector|cond_encoder|frame_packer)\b"
)


@dataclass(frozen=True)
class LoraPair:
    target: str  # the DiT parameter, e.g. blocks.0.self_attn.q.weight
    up: str
    down: str
    alpha: str | None


@dataclass
class LoraMatch:
    """What a LoRA changes in a DiT: pairs and differences that fit, and the tensors that do not."""

    pairs: list[LoraPair] = field(default_factory=list)
    diffs: list[tuple[str, str]] = field(default_factory=list)  # (DiT parameter, LoRA key)
    unmatched: list[str] = field(default_factory=list)
    misfits: list[str] = field(default_factory=list)
    tensors: int = 0  # LoRA tensors (pairs count their up tensor)

    @property
    def targets(self) -> set[str]:
        return {pair.target for pair in self.pairs} | {target for target, _ in self.diffs}


def lora_layers(keys: Mapping[str, object]) -> dict[str, tuple[str, str, str | None]]:
    """{layer: (up key, down key, alpha key or None)}, named as DiffSynth's GeneralLoRALoader names them."""
    layers = {}
    for key in keys:
        up_name, down_name = ("lora_up", "lora_down") if ".lora_up." in key else ("lora_B", "lora_A")
        if up_name not in key:
            continue
        parts = key.split(".")
        if len(parts) > parts.index(up_name) + 2:  # PEFT's `.default.`
            parts.pop(parts.index(up_name) + 1)
        parts.pop(parts.index(up_name))
        if parts[0] == "diffusion_model":
            parts.pop(0)
        parts.pop(-1)
        alpha = key.replace(f"{up_name}.weight", "alpha").replace(f"{up_name}.default.weight", "alpha")
        layers[".".join(parts)] = (key, key.replace(up_name, down_name), alpha if alpha != key and alpha in keys else None)
    return layers


def match_lora(shapes: Mapping[str, Shape], dit: Mapping[str, Shape] | None) -> LoraMatch:
    """Match LoRA tensors (`shapes`: key -> shape) to the DiT's parameters (`dit`: name -> shape).

    With `dit` None (no checkpoint here), a target fits when it names a Wan DiT layer; shapes are
    then checked only against each other (the up and down tensors' rank).
    """
    match = LoraMatch()

    def fits(target: str, numel: int, shape: Shape, source: str) -> bool:
        known = dit.get(target) if dit is not None else None
        if (dit is not None and known is None) or (dit is None and not WAN_DIT_LAYER.match(target)):
            match.unmatched.append(source)
        elif known is not None and numel != math.prod(known):
            match.misfits.append(f"LoRA {shape} vs model {known}")
        else:
            return True
        return False

    for layer, (up, down, alpha) in lora_layers(shapes).items():
        match.tensors += 1
        if down not in shapes or len(shapes[up]) < 2 or len(shapes[down]) < 2:
            match.unmatched.append(up)
            continue
        rows, rank_up = shapes[up][0], math.prod(shapes[up][1:])
        rank, columns = shapes[down][0], math.prod(shapes[down][1:])
        if rank_up != rank:
            match.misfits.append(f"up {shapes[up]} and down {shapes[down]} have different ranks")
        elif fits(f"{layer}.weight", rows * columns, (rows, columns), up):
            match.pairs.append(LoraPair(f"{layer}.weight", up, down, alpha))
    for key, shape in shapes.items():
        suffix = next((s for s in DIFF_TARGETS if key.endswith(s)), None)
        if suffix is None:
            continue
        match.tensors += 1
        target = key.removeprefix("diffusion_model.")[: -len(suffix)] + DIFF_TARGETS[suffix]
        if fits(target, math.prod(shape), shape, key):
            match.diffs.append((target, key))
    return match


def check_lora_match(match: LoraMatch, field: str, shown: str) -> None:
    """InputError when the LoRA does not fit the DiT. Counts and shapes only: a reply never quotes
    the file's tensor names."""
    if match.misfits:
        raise InputError(field, shown, f"{len(match.misfits)} of its tensors have other shapes than this Wan2.2-S2V "
                                       f"DiT's (a LoRA for another model size?), e.g. {match.misfits[0]}")
    if not match.tensors:
        raise InputError(field, shown, "holds no LoRA tensors (lora_up/lora_down, lora_A/lora_B or .diff keys)")
    if not match.targets:
        raise InputError(field, shown, f"none of its {match.tensors} LoRA tensors matches a layer of the "
                                       "Wan2.2-S2V DiT (a LoRA for another model?)")


def check_lora_header(header: Mapping[str, Mapping], dit: Mapping[str, Shape] | None, field: str, shown: str) -> LoraMatch:
    """Check a safetensors header ({name: {"dtype", "shape", ...}}) as a LoRA for this DiT; the match."""
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    odd = sorted({str(entry.get("dtype")) for entry in tensors.values()} - FLOAT_DTYPES)
    if odd:
        raise InputError(field, shown, f"holds {', '.join(odd)} tensors; LoRA weights are floating point")
    match = match_lora({name: tuple(entry["shape"]) for name, entry in tensors.items()}, dit)
    check_lora_match(match, field, shown)
    return match
