"""GPU speed options of the warm model: compiled DiT blocks, the attention kernel, FP8 weights.

One implementation for the runtime (S2V_COMPILE, S2V_ATTENTION, S2V_FP8, S2V_VAE_TILED) and for
bench/gpu_step.py, which measures each of them.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# DiffSynth's Wan DiT attention (`wan_video_dit.flash_attention`, used by the self-, cross- and audio
# attention of the S2V blocks) takes flash-attn 3, then flash-attn 2, then SageAttention, else torch
# SDPA, by these module flags. (diffsynth.core.attention is not on the S2V path.)
LIBRARY_FLAGS = {"flash-attn-3": "FLASH_ATTN_3_AVAILABLE", "flash-attn-2": "FLASH_ATTN_2_AVAILABLE",
                 "sage": "SAGE_ATTN_AVAILABLE"}
SDPA_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION",
                 "sdpa-efficient": "EFFICIENT_ATTENTION", "sdpa-math": "MATH"}
# FlashAttention-4 (CuTe DSL, sm90+) is not one of DiffSynth's branches: it replaces DiffSynth's attention
# function while chosen. It needs nvidia-cutlass-dsl, too big for the gpu extra and a device run's wheels.
FLASH_ATTN_4 = "flash-attn-4"
# What makes each library choice importable, and how to get it.
LIBRARY_INSTALL = {
    "flash-attn-3": "flash-attn 3 (flash_attn_interface), built from flash-attention's hopper/ folder",
    "flash-attn-2": "flash-attn 2: pip install flash-attn",
    "sage": "SageAttention: pip install sageattention==1.0.6 (the gpu extra: pip install '.[gpu]')",
    FLASH_ATTN_4: "FlashAttention-4 (flash_attn.cute, sm90+): pip install flash-attn-4",
}
# auto: DiffSynth's pick (an installed library, else torch SDPA choosing its own kernel);
# sdpa: torch SDPA with its own kernel choice even when a library is installed; sdpa-*: one SDPA kernel forced.
ATTENTION_CHOICES = ("auto", "sdpa", *SDPA_BACKENDS, *LIBRARY_FLAGS, FLASH_ATTN_4)
FP8_METHOD = "torchao_fp8_w8a8"  # DiffSynth's torchao backend: fp8 weights + dynamic fp8 activations
COMPILE_BACKEND = "inductor"
COMPILE_RECOMPILE_LIMIT = 64  # one graph per token count: sizes x orientations x first/continuation segment


@dataclass(frozen=True)
class SpeedOptions:
    compile: bool = False
    attention: str = "auto"
    fp8: bool = False
    vae_tiled: str = "auto"  # on / off / auto: see vae_tiled_for
    cuda: bool = False


def resolve(settings, device: str) -> SpeedOptions:
    """The options a model on `device` runs with: each `auto` from model_runtime.speed_auto's measured table for
    this GPU (today's choice where nothing was measured within the bound: compiled on CUDA, eager on CPU)."""
    from model_runtime.speed_auto import pick_options

    cuda = device.startswith("cuda")
    capability = torch.cuda.get_device_capability(device) if cuda and torch.cuda.is_available() else None
    picked = pick_options(capability, cuda)
    compile_blocks = settings.compile == "on" or (settings.compile == "auto" and picked.compile)
    fp8 = settings.fp8 in (True, "on")
    if settings.fp8 == "auto":
        fp8 = picked.fp8 and fp8_unavailable(device) is None  # a host without torchao runs bf16, not an error
    attention = settings.attention
    if attention == "auto" and attention_unavailable(picked.attention) is None:
        attention = picked.attention
    return SpeedOptions(compile=compile_blocks, attention=attention, fp8=fp8,
                        vae_tiled=settings.vae_tiled, cuda=cuda)


# Untiled VAE decode of one 480p segment: 3.2 s against 9.0 s tiled, 3.2 GiB more at peak (bench/gpu_step.py, H200,
# 2026-11-27). Above that area untiled was not measured, so auto keeps DiffSynth's tiles there.
UNTILED_MAX_AREA = 399_360


def vae_tiled_for(options: SpeedOptions, width: int, height: int) -> bool:
    """Whether the VAE works in tiles for a video of this size."""
    if options.vae_tiled != "auto":
        return options.vae_tiled == "on"
    return not (options.cuda and width * height <= UNTILED_MAX_AREA)


@contextlib.contextmanager
def attention(choice: str):
    """Run the DiT's attention with `choice` (one of ATTENTION_CHOICES); DiffSynth's flags restored after."""
    import diffsynth.models.wan_video_dit as wan_dit
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"attention {choice!r}: expected one of {', '.join(ATTENTION_CHOICES)}")
    refusal = attention_unavailable(choice)
    if refusal:
        from s2v.errors import ConfigError

        raise ConfigError("S2V_ATTENTION", choice, refusal)
    saved = {flag: getattr(wan_dit, flag) for flag in LIBRARY_FLAGS.values()}
    saved_function = wan_dit.flash_attention
    try:
        if choice != "auto":
            for flag in saved:
                setattr(wan_dit, flag, flag == LIBRARY_FLAGS.get(choice))
        if choice == FLASH_ATTN_4:
            # DiTBlock and CrossAttention look the function up in their module at every call.
            wan_dit.flash_attention = _flash_attn_4
        forced = SDPA_BACKENDS.get(choice)
        with sdpa_kernel(getattr(SDPBackend, forced)) if forced else contextlib.nullcontext():
            yield
    finally:
        wan_dit.flash_attention = saved_function
        for flag, value in saved.items():
            setattr(wan_dit, flag, value)


def attention_unavailable(choice: str) -> str | None:
    """Why the attention `choice` cannot run here (its library is not importable), or None."""
    if choice == FLASH_ATTN_4:
        installed = _importable("flash_attn.cute")
    elif choice in LIBRARY_FLAGS:
        import diffsynth.models.wan_video_dit as wan_dit

        installed = bool(getattr(wan_dit, LIBRARY_FLAGS[choice]))
    else:
        return None
    if installed:
        return None
    return f"that library is not installed (not importable here): install {LIBRARY_INSTALL[choice]}, or choose auto or sdpa"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # the parent package is missing
        return False


def _flash_attn_4(q, k, v, num_heads: int, compatibility_mode=False):
    """DiffSynth's flash_attention signature ((b, s, heads x dim) in and out) over FlashAttention-4."""
    from flash_attn.cute import flash_attn_func

    def split(x):
        return x.unflatten(-1, (num_heads, -1))

    out = flash_attn_func(split(q), split(k), split(v))
    out = out[0] if isinstance(out, tuple) else out  # (out, lse)
    return out.flatten(-2)


def installed_attention_libraries() -> list[str]:
    """The library choices importable here, DiffSynth's order first (its auto takes the first of those)."""
    return [name for name in (*LIBRARY_FLAGS, FLASH_ATTN_4) if attention_unavailable(name) is None]


def compile_blocks(dit, backend=None) -> None:
    """torch.compile each DiT block in place (regional compilation; the parameters keep their names).

    The S2V model_fn calls the blocks one by one, so compiling WanS2VModel.forward would change nothing;
    DiffSynth's compile_pipeline() skips WanS2VModel, which declares no repeated blocks. The 40 blocks
    share one graph per token count; compiling happens at the first step of each new size.
    """
    dynamo_config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), COMPILE_RECOMPILE_LIMIT))
    for block in dit.blocks:
        block.compile(dynamic=False, backend=backend or COMPILE_BACKEND)


def uncompile_blocks(dit) -> None:
    for block in dit.blocks:
        # nn.Module.compile keeps the compiled forward here; without it the block runs eagerly again.
        block._compiled_call_impl = None


def blocks_compiled(dit) -> bool:
    return any(getattr(block, "_compiled_call_impl", None) is not None for block in dit.blocks)


def is_compile_error(exc: BaseException) -> bool:
    """Whether `exc` came from torch.compile (dynamo tracing or the backend), not from the model itself."""
    from torch._dynamo.exc import TorchDynamoException

    kinds: list[type] = [TorchDynamoException]
    try:
        from torch._inductor.exc import InductorError

        kinds.append(InductorError)
    except ImportError:
        pass
    return isinstance(exc, tuple(kinds))


def fp8_unavailable(device: str) -> str | None:
    """Why FP8 weights+activations cannot run here, or None."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return "FP8 needs a CUDA GPU"
    if torch.cuda.get_device_capability() < (8, 9):
        return f"FP8 needs compute capability 8.9+ (Ada/Hopper); this GPU has {torch.cuda.get_device_capability()}"
    if importlib.util.find_spec("torchao") is None:
        return "FP8 needs torchao (pip install torchao)"
    return None


def quantize_fp8(dit) -> int:
    """FP8 weights and dynamically quantized FP8 activations for every linear layer of the DiT blocks.

    Through DiffSynth's torchao backend; the layers that are not in the 40 blocks (embeddings, head, audio
    injectors: <15% of the weights) stay bf16. Returns the number of layers quantized.
    """
    from diffsynth.core.quant.config import QuantizeConfig

    before = sum(isinstance(m, torch.nn.Linear) for m in dit.blocks.modules())
    with contextlib.redirect_stdout(io.StringIO()) as chatter:
        QuantizeConfig(method=FP8_METHOD).quantize_model(dit.blocks)
    log.debug("diffsynth: %s", chatter.getvalue())
    return before


def prepare(loaded, options: SpeedOptions) -> None:
    """Apply the load-time options to a freshly loaded pipeline (FP8, then compiling the blocks)."""
    dit = loaded.pipe.dit
    refusal = attention_unavailable(options.attention)
    if refusal:
        from s2v.errors import CheckpointError

        raise CheckpointError(f"S2V_ATTENTION={options.attention} but {refusal}")
    if options.fp8:
        reason = fp8_unavailable(loaded.device)
        if reason:
            from s2v.errors import CheckpointError

            raise CheckpointError(f"S2V_FP8 is on but {reason}")
        layers = quantize_fp8(dit)
        log.info("FP8 (%s): %d linear layers of the DiT blocks quantized", FP8_METHOD, layers)
    if options.compile:
        compile_blocks(dit)
        log.info("DiT blocks compiled (torch.compile); each new size compiles at its first step")
