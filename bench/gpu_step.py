"""Seconds per Wan2.2-S2V-14B denoising step and per clip on one GPU, through DiffSynth's and the runtime's own code.

One run (about 6 minutes on an H100/H200 at the default `--budget-s 330`, which stops adding measurements;
bench/gpu_step_README.md has the device command):
  1. builds the real-size S2V DiT (DiffSynth's `WanS2VModel` with the config DiffSynth's MODEL_CONFIGS gives the
     published checkpoint) with random bf16 weights made on the GPU: the parameters are created on the meta
     device, as DiffSynth's loader does, then allocated and filled on the GPU (nothing 14B-sized on the CPU);
  2. times denoising steps on random inputs of the real shapes (one 80-frame segment plus its reference frame at
     832x480 and the 73-frame motion context of a continuation segment): a classifier-free-guidance step is two
     `model_fn_wans2v` passes + the scheduler step, as `WanVideoPipeline.__call__` runs it; a fast-mode step is
     one pass; median of several steps after a warm-up, CUDA events; effective TFLOP/s, ratio to the floor at a
     bf16 matmul rate measured in the same run, peak VRAM. Rows, in order of value (the budget drops the last):
     DiffSynth's default attention (the baseline); fast mode (one pass per step) with a random rank-64 LoRA over
     the blocks' linear layers fused by `model_runtime.lora` (switch and bit-exact restore timed, the replaced
     tensors kept on the GPU); torch.compile of the 40 blocks (`model_runtime.speed`, the runtime's default on
     CUDA); SageAttention; FP8 (DiffSynth's torchao backend, sm89+); compile + FP8 + SageAttention; every row on
     the base weights also gets its accuracy: one DiT pass against the eager torch-SDPA pass (relative L2 error,
     cosine similarity), the figures `model_runtime.speed_auto` chooses `auto` from;
  3. the peer: diffusers' WanTransformer3DModel with the same dimensions (a proxy: diffusers 0.42 ships no S2V
     transformer), same size and GPU, its sage and cuDNN attention backends; unavailable without diffusers;
  4. whole clips measured whole through the product's `generate_video` at real size with random weights for every
     component (umt5-xxl, wav2vec2, VAE, DiT), one segment each: 480p fast (4 steps, the rank-64 LoRA), 480p
     standard (20 steps with guidance), 720p standard; seconds per stage, peak VRAM;
  5. the VAE decoding one continuation segment (39 latent frames at 832x480) tiled and untiled;
  6. the baseline at 1280x720, the other attention kernels (each SDPA backend forced, flash-attn 3/2,
     FlashAttention-4 if installed), torch.compile at 720p if it won at 480p; what the machine lacks is listed;
  7. before all that, one clip through the whole product path (tiny checkpoint, InProcessRuntime with
     S2V_DEVICE=cuda, muxed MP4);
  8. writes gpu_step.md, gpu_step.json, gpu_step.log (and the clips) to `--out`, after every measurement.

`--tiny` runs the same code on CPU (fp32, perf_counter timing) with the tiny checkpoint's configs and small frames,
so CI exercises every line but the CUDA-only ones.

    PYTHONPATH=. python bench/gpu_step.py --out bench/out/gpu
    PYTHONPATH=. .venv/bin/python bench/gpu_step.py --tiny --out /tmp/gpu-step-tiny
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STARTED = time.monotonic()  # the time budget counts the imports too
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # model_runtime.speed_auto's bound, without PYTHONPATH
from model_runtime.speed_auto import COSINE_BOUND, REL_L2_BOUND  # noqa: E402  (no torch: cheap)

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("gpu_step")

REAL_DIT_HASH = "966cffdcc52f9c46c391768b27637614"  # DiffSynth's MODEL_CONFIGS entry for Wan2.2-S2V-14B's DiT
CLIP_FRAMES = 80  # frames one clip adds (Wan2.2-S2V's infer_frames); the pipeline asks for 81 with the reference
TEXT_TOKENS = 512  # umt5 context length of Wan's prompter
AUDIO_LAYERS = 25  # wav2vec2 hidden states (24 layers + embeddings) that the DiT's causal audio encoder weights
CFG_SCALE = 4.5
SHIFT = 3.0
STANDARD_STEPS, FAST_STEPS = 20, 4  # the runtime's modes (model_runtime.request.MODES)
LORA_RANK = {"cuda": 64, "cpu": 8}  # LightX2V's Wan LoRAs are rank 64
# For the budget check of the clip: its fixed part (encoders, VAE, MP4) on top of its DiT passes.
CLIP_ALLOWANCE_S = {"cuda": 75.0, "cpu": 20.0}
# Switching a rank-64 LoRA in: reading the ~600 MB file, the deltas and the device copies of the replaced tensors
# (not timed on a GPU yet: the CPU-copy version took 25.3 s + 5.5 s restore on the 2026-11-27 H200).
LORA_ALLOWANCE_S = {"cuda": 15.0, "cpu": 1.0}
VAE_ALLOWANCE_S = {"cuda": 40.0, "cpu": 10.0}
FP8_ALLOWANCE_S = {"cuda": 30.0, "cpu": 0.0}
PEER_ALLOWANCE_S = {"cuda": 30.0, "cpu": 5.0}  # building the peer's 14B transformer with random weights
# name: (real width, height), (tiny width, height). The tiny sizes keep the real layout rules (>= 64, /16).
RESOLUTIONS = {"480p": ((832, 480), (64, 64)), "720p": ((1280, 720), (96, 64))}
# Added to a torch.compile row's estimate: inductor compiling one DiT-block graph (shared by all 40 blocks).
COMPILE_ALLOWANCE_S = {"cuda": 120.0, "cpu": 30.0}
RESERVE_S = 10.0  # left for writing the report

FLOP_FORMULA = (
    "FLOP per step = 2 (CFG: conditional + unconditional pass) x [2 x P x N + 4 x L x N^2 x D]; "
    "P = parameters of the L transformer blocks (linear layers: 2 FLOP per weight per token), "
    "N = tokens fed to the blocks (video + reference + motion), D = model dim (attention: QK^T and PV). "
    "Embeddings, head, audio injectors and text-side projections are left out; 'counted' is PyTorch's "
    "FlopCounterMode over one real forward pass, x2."
)
TARGETS = (
    "targets: floor ~3.6e15 FLOP per 480p step with CFG (14B x 32,760 tokens; 4.5 s at 800 TFLOP/s); "
    "official Wan2.2 14B on one H100 ~8.2 s/step at 480p; ours <= 5.5 s/step on an H100; "
    "model + activations within 80 GB without offload at 480p and 720p."
)


def main() -> int:
    args = _parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _setup_logging(out / "gpu_step.log")

    import torch

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        log.error("no CUDA GPU is visible; run with --tiny for the CPU version")
        return 2
    # bf16 on CPU ran about 33x slower than fp32 (shared notes); GPUs run the model in bf16.
    dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.tiny:
        # CI machines have 2 cores shared with other jobs; two OpenMP threads fighting them made tiny steps
        # 30x slower and noisy. One thread keeps the run short and its numbers stable.
        torch.set_num_threads(1)
    budget = Budget(args.budget_s)
    clock = Clock(device)
    report: dict = {"tiny": args.tiny, "device": device, "dtype": str(dtype).removeprefix("torch."),
                    "budget_s": args.budget_s, "flop_formula": FLOP_FORMULA, "targets": TARGETS}
    report["environment"] = _environment(torch, device)
    log.info("environment: %s", report["environment"])

    report["matmul"] = measure_matmul(torch, device, dtype, clock, n=1024 if args.tiny else 8192)
    log.info("matmul: %s", report["matmul"])
    rate = report["matmul"]["flop_per_s"]

    # The product path first: it is cheap, and its result must not depend on how the big model fares.
    report["pipeline_check"] = pipeline_check(out, device) if not args.skip_pipeline else {"status": "skipped"}
    log.info("pipeline check: %s", report["pipeline_check"])

    try:
        dit, dit_config = build_dit(torch, args.tiny, device, dtype)
    except Exception as exc:  # e.g. out of memory: still leave the matmul rate and the product check behind
        log.exception("building the DiT failed")
        report["error"] = f"building the DiT failed: {type(exc).__name__}: {exc}"[:400]
        save(out, report, [], {})
        return 1
    model = {
        "config": dict(dit_config),
        "params": sum(p.numel() for p in dit.parameters()),
        "block_params": sum(p.numel() for p in dit.blocks.parameters()),
        "layers": len(dit.blocks),
        "dim": dit.dim,
        "weights_gib": sum(p.numel() * p.element_size() for p in dit.parameters()) / 2**30,
    }
    report["model"] = model
    log.info("DiT built: %s", {k: v for k, v in model.items() if k != "config"})

    work = Path(tempfile.mkdtemp(prefix="gpu-step-"))  # the random LoRA and a tiny checkpoint's tokenizer files
    try:
        return measure_all(torch, args, out, report, dit, model, device, dtype, clock, budget, rate, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_all(torch, args, out: Path, report: dict, dit, model: dict, device, dtype, clock, budget, rate,
                work: Path) -> int:
    bench = Bench(torch, dit, model, device, dtype, clock, budget, rate, args, work)
    report["lora"] = bench.lora
    settings = attention_settings(torch, device, dtype, dit.dim // dit.num_heads)

    def measure(resolution: str, setting: Setting, steps: int) -> None:
        bench.run(resolution, setting, steps)
        # Written after every row: a run killed at its time limit still leaves what it measured.
        save(out, report, bench.rows, bench.resolutions)

    warm_model = None

    def section(name: str, estimate_s: float | None, measure_fn) -> None:
        nonlocal warm_model
        if estimate_s is not None and not budget.allows(estimate_s):
            report[name] = {"status": "skipped",
                            "note": f"time budget: needs ~{estimate_s:.0f} s, {max(0.0, budget.left()):.0f} s left"}
        else:
            log.info("%s", name)
            try:
                if warm_model is None:
                    warm_model = build_warm_model(torch, args.tiny, device, dtype, dit, work)
                report[name] = measure_fn(warm_model)
            except Exception as exc:  # e.g. out of memory: a result of this run, not its end
                log.exception("%s failed", name)
                report[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:400]}
            finally:
                if device == "cuda":
                    torch.cuda.empty_cache()
        save(out, report, bench.rows, bench.resolutions)

    # Order = value under the time budget, which drops the last first: the baseline; fast mode with its LoRA
    # (the GPU-side switch); torch.compile (the runtime's CUDA default); the two levers (SageAttention, FP8) and
    # both with compile; the diffusers peer; the whole clips (480p fast, 480p standard); VAE tiling; 720p;
    # the 720p standard clip; the other kernels.
    measure("480p", settings["default"], args.steps)
    measure("480p", settings["fast"], args.compare_steps)
    measure("480p", settings["compile"], args.compare_steps)
    if settings["sage"] is not None:
        measure("480p", settings["sage"], args.compare_steps)
    measure("480p", settings["fp8"], args.compare_steps)
    measure("480p", settings["combo"], args.compare_steps)
    for setting in settings["peers"]:
        measure("480p", setting, args.compare_steps)
    bench.drop_peer()
    per_pass = bench.pass_s("480p")
    section("clip", per_pass and CLIP_ALLOWANCE_S[device] + (args.warmup + FAST_STEPS) * per_pass,
            lambda warm: measure_clip(torch, bench, warm, out, work))
    section("clip_480p_standard", per_pass and CLIP_ALLOWANCE_S[device] + 2 * STANDARD_STEPS * per_pass,
            lambda warm: measure_clip(torch, bench, warm, out, work, mode="standard"))
    section("vae_decode", VAE_ALLOWANCE_S[device], lambda warm: measure_vae_decode(torch, bench, warm.pipe.vae))
    eager = [settings["default"], *settings["other"]]
    best = bench.fastest("480p", eager)
    if best is not None:
        measure("720p", best, args.compare_steps)
    per_pass_720 = bench.pass_s("720p")
    if args.tiny:  # the same code as the 480p standard clip; CI's two cores are better spent elsewhere
        report["clip_720p_standard"] = {"status": "skipped", "note": "--tiny: measured on a GPU only"}
    else:
        section("clip_720p_standard", per_pass_720 and CLIP_ALLOWANCE_S[device] * 2 + 2 * STANDARD_STEPS * per_pass_720,
                lambda warm: measure_clip(torch, bench, warm, out, work, mode="standard", resolution="720p"))
    warm_model = None  # the text encoder (11 GB), VAE and audio encoder leave the GPU before the next rows
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    for setting in settings["other"]:
        if setting != settings["sage"]:
            measure("480p", setting, args.compare_steps)
    # Only when compiling wins at 480p is it worth its recompile at 720p.
    if bench.fastest("480p", [*eager, settings["compile"]]) == settings["compile"]:
        measure("720p", settings["compile"], args.compare_steps)

    table = save(out, report, bench.rows, bench.resolutions)
    print(table)
    log.info("wrote %s (%.0f s of the %.0f s budget)", out, report["elapsed_s"], args.budget_s)
    measured = any(row["status"] == "ok" for row in report["rows"])
    return 0 if measured and report["pipeline_check"]["status"] in ("ok", "skipped") else 1


def save(out: Path, report: dict, rows: list[Row], resolutions: dict) -> str:
    """Write gpu_step.json and gpu_step.md as they stand; returns the markdown."""
    report["resolutions"] = resolutions
    report["rows"] = [asdict(row) for row in sorted_rows(rows)]
    report["elapsed_s"] = round(time.monotonic() - STARTED, 1)
    table = render(report)
    (out / "gpu_step.md").write_text(table)
    (out / "gpu_step.json").write_text(json.dumps(report, indent=2))
    return table


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_step.md/.json/.log")
    parser.add_argument("--tiny", action="store_true", help="tiny DiT config on CPU (CI)")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="stop adding measurements when this many seconds since start are near (default 5.5 min)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of the baseline row (480p, default attention)")
    parser.add_argument("--compare-steps", type=int, default=2,
                        help="timed steps of every other row (GPU step times vary little; two suffice to compare)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing each row (>= 1)")
    parser.add_argument("--skip-pipeline", action="store_true", help="leave out the tiny end-to-end product clip")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compile row; 'eager' only checks graph capture (CI)")
    args = parser.parse_args()
    if min(args.warmup, args.steps, args.compare_steps) < 1:
        parser.error("--warmup, --steps and --compare-steps must be at least 1 "
                     "(the first warm-up step also counts tokens and FLOPs)")
    return args


def _setup_logging(path: Path) -> None:
    handlers = [logging.StreamHandler(sys.stderr), logging.FileHandler(path, mode="w")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers)


class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - STARTED) - RESERVE_S

    def allows(self, estimate_s: float) -> bool:
        return self.left() >= estimate_s


class Clock:
    """Seconds taken by a call: CUDA events on a GPU (what the GPU spent, queued work included), else wall time."""

    def __init__(self, device: str):
        self.device = device

    def time(self, fn) -> float:
        import torch

        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started


def _environment(torch, device: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    env = {"python": platform.python_version(), "torch": torch.__version__, "diffsynth": pkg("diffsynth"),
           "transformers": pkg("transformers"), "triton": pkg("triton"), "cpu_threads": torch.get_num_threads()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def measure_matmul(torch, device: str, dtype, clock: Clock, n: int, reps: int = 10) -> dict:
    """The rate one big square matmul reaches here: the ceiling the floor is computed against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = clock.time(lambda: [a @ b for _ in range(reps)]) / reps
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "seconds": seconds, "flop_per_s": 2 * n**3 / seconds}


def build_dit(torch, tiny: bool, device: str, dtype):
    """DiffSynth's WanS2VModel with the real (or tiny) config and random weights made on `device`.

    DiffSynth's loader creates the model under `skip_model_initialization` (parameters on the meta device, other
    tensors such as the RoPE tables real, on the CPU) and then assigns the checkpoint. Here the parameters are
    allocated on the device instead and filled with random values there, so the model is the one the runtime
    gets, minus the trained weights.
    """
    from diffsynth.models.wan_video_dit_s2v import WanS2VModel

    if tiny:
        from model_runtime.tiny_checkpoint import DIT

        config = {**DIT, "patch_size": tuple(DIT["patch_size"])}
    else:
        from diffsynth.configs.model_configs import MODEL_CONFIGS

        config = next(c for c in MODEL_CONFIGS if c["model_hash"] == REAL_DIT_HASH)["extra_kwargs"]
    dit = random_module(torch, lambda: WanS2VModel(**config), device, dtype)
    return dit, config


def random_module(torch, build, device: str, dtype, seed: int = 0):
    """`build()` under DiffSynth's skip_model_initialization, allocated on `device` and filled with random values."""
    from diffsynth.core.vram.initialization import skip_model_initialization

    with skip_model_initialization():
        module = build()
    # dtype first, on meta (free): allocating fp32 first would need 65 GB for the 14B model.
    module = module.to(dtype=dtype).to_empty(device=device).eval().requires_grad_(False)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:  # weights: unit-variance outputs keep activations finite through 40 blocks
                p.normal_(0.0, p[0].numel() ** -0.5, generator=generator)
            elif name.endswith("weight"):  # norm scales
                p.fill_(1.0)
            else:  # biases
                p.zero_()
    return module


@dataclass
class Inputs:
    """What WanVideoPipeline hands model_fn_wans2v for one continuation clip (motion context present)."""

    latents: object  # (1, 16, 1 + 20, H/8, W/8): reference latent, then the 80-frame clip
    first_frame: object
    motion_latents: object  # (1, 16, 19, H/8, W/8): the VAE-encoded 73 motion frames
    context_posi: object  # (1, 512, text_dim)
    context_nega: object
    audio_posi: object  # (1, 25, audio_dim, 80)
    audio_nega: object  # the pipeline's unconditional audio: zeros


def make_inputs(torch, dit, width: int, height: int, device: str, dtype) -> Inputs:
    from model_runtime.generate import MOTION_FRAMES

    generator = torch.Generator(device).manual_seed(1)

    def rand(*shape):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    in_dim = dit.patch_embedding.in_channels
    latent_frames = CLIP_FRAMES // 4 + 1  # (81 - 1) / 4 + 1: the VAE packs 4 frames per latent, plus the first
    motion_frames = (MOTION_FRAMES - 1) // 4 + 1
    latents = rand(1, in_dim, latent_frames, height // 8, width // 8)
    audio = rand(1, AUDIO_LAYERS, dit.casual_audio_encoder.encoder.conv1_local.conv.in_channels, CLIP_FRAMES)
    text_dim = dit.text_embedding[0].in_features
    return Inputs(
        latents=latents, first_frame=latents[:, :, :1].clone(),
        motion_latents=rand(1, in_dim, motion_frames, height // 8, width // 8),
        context_posi=rand(1, TEXT_TOKENS, text_dim), context_nega=rand(1, TEXT_TOKENS, text_dim),
        audio_posi=audio, audio_nega=0.0 * audio,
    )


@dataclass(frozen=True)
class Setting:
    name: str
    attention: str = "auto"  # one of model_runtime.speed.ATTENTION_CHOICES
    compile: bool = False
    passes: int = 2  # DiT passes per step: 2 with classifier-free guidance, 1 in fast mode (guidance 1)
    lora_rank: int = 0  # a random LoRA of this rank fused into the blocks' linear layers while measuring
    fp8: bool = False
    unavailable: str | None = None  # why this machine cannot run it
    peer_backend: str | None = None  # a diffusers attention backend: the peer's transformer instead of ours


SDPA_LABELS = {"sdpa-flash": "flash", "sdpa-cudnn": "cuDNN", "sdpa-efficient": "efficient", "sdpa-math": "math"}
LIBRARY_LABELS = {"flash-attn-3": "flash-attn 3", "flash-attn-2": "flash-attn 2", "sage": "SageAttention",
                  "flash-attn-4": "FlashAttention-4"}
# diffusers attention backends tried for the peer, fastest expected first where installed.
PEER_BACKENDS = {"sage": "sageattention", "_native_cudnn": None}
PEER_LABEL = ("diffusers {version} WanTransformer3DModel, {backend} (proxy: Wan 14B dims, no audio/motion; "
              "0.42 ships no S2V transformer)")


def attention_settings(torch, device: str, dtype, head_dim: int) -> dict[str, Setting | list[Setting]]:
    """{"default", "fast", "compile", "fp8": Setting; "other": the other attention kernels}."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from model_runtime import speed

    libraries = speed.installed_attention_libraries()
    installed = [name for name in libraries if name in speed.LIBRARY_FLAGS]  # what DiffSynth's auto can take
    probe = [torch.randn(1, 2, 256, head_dim, device=device, dtype=dtype) for _ in range(3)]
    auto_choice = _sdpa_auto_choice(torch, probe)
    default_label = LIBRARY_LABELS[installed[0]] if installed else f"torch SDPA, auto: {auto_choice or '?'}"
    other = []
    if installed:
        other.append(Setting("torch SDPA, auto", attention="sdpa"))
    for choice, label in SDPA_LABELS.items():
        reason = None
        if not installed and label == auto_choice:
            reason = "what the default row already runs"
        else:
            try:
                with sdpa_kernel(getattr(SDPBackend, speed.SDPA_BACKENDS[choice])):
                    torch.nn.functional.scaled_dot_product_attention(*probe)
            except RuntimeError as exc:
                reason = f"not available here ({str(exc).split('. ')[0][:120]})"
        other.append(Setting(f"torch SDPA, {label} forced", attention=choice, unavailable=reason))
    for choice, label in LIBRARY_LABELS.items():
        if label != default_label:
            other.append(Setting(label, attention=choice, unavailable=speed.attention_unavailable(choice)))
    rank = LORA_RANK[device]
    fp8_reason = speed.fp8_unavailable(device)
    # The two levers together on top of compile: the candidate for the issue's <= 4.5 s/step goal.
    sage_reason = speed.attention_unavailable("sage")
    return {
        "sage": next(s for s in other if s.attention == "sage") if default_label != "SageAttention" else None,
        "combo": Setting("torch.compile + FP8 w8a8 + SageAttention", attention="sage", compile=True, fp8=True,
                         unavailable=fp8_reason or (sage_reason and f"SageAttention: {sage_reason}")),
        "peers": peer_settings(),
        "default": Setting(f"DiffSynth default ({default_label})"),
        "fast": Setting(f"fast mode: 1 pass/step, rank-{rank} LoRA fused", passes=1, lora_rank=rank),
        "compile": Setting("torch.compile blocks + DiffSynth default", compile=True),
        "fp8": Setting("FP8 w8a8 blocks (torchao) + DiffSynth default", fp8=True, unavailable=fp8_reason),
        "other": other,
    }


def peer_settings() -> list[Setting]:
    """The diffusers peer's rows: one per attention backend installed here, or one row saying why none runs."""
    import importlib.util

    try:
        from importlib.metadata import version

        import diffusers  # noqa: F401  (importable, not just present: its own imports must work)

        label = version("diffusers")
    except Exception as exc:  # not installed, or broken against this torch
        return [Setting("diffusers peer (WanTransformer3DModel)", peer_backend="native",
                        unavailable=f"diffusers not importable ({type(exc).__name__}); carry its wheel")]
    return [Setting(PEER_LABEL.format(version=label, backend=backend), peer_backend=backend,
                    unavailable=None if module is None or importlib.util.find_spec(module) else f"{module} not installed")
            for backend, module in PEER_BACKENDS.items()]


def _sdpa_auto_choice(torch, probe) -> str | None:
    # The kernel torch's dispatcher picks for these shapes (a private helper; a label only, so failing is fine).
    try:
        from torch.nn.attention import SDPBackend

        from model_runtime.speed import SDPA_BACKENDS

        labels = {backend: SDPA_LABELS[choice] for choice, backend in SDPA_BACKENDS.items()}
        return labels.get(SDPBackend(torch._fused_sdp_choice(*probe)).name)
    except Exception:
        return None


@contextlib.contextmanager
def applied(torch, setting: Setting, dit, compile_backend="inductor", lora_file: Path | None = None, lora: dict | None = None):
    """Run inside `setting` with the runtime's own code: attention choice, fused LoRA, FP8, compiled blocks; undone after.

    `lora` receives the fuse and restore seconds and whether the restore was bit-exact.
    """
    from model_runtime import speed
    from model_runtime.lora import LoraSlot

    slot = LoraSlot()
    restore_linears = None
    try:
        if setting.lora_rank:
            probe_name, probe_param = next((n, p) for n, p in dit.named_parameters() if n.endswith("ffn.0.weight"))
            before = probe_param.detach().to("cpu", copy=True)
            tensors, fuse_s = slot.use(dit, str(lora_file), 1.0)
            lora.update(rank=setting.lora_rank, tensors=tensors, fuse_s=round(fuse_s, 3),
                        file_mib=round(lora_file.stat().st_size / 2**20, 1), originals_on_cpu=slot.kept_on_cpu)
        if setting.fp8:
            restore_linears = _quantize_fp8_reversibly(torch, dit)
        if setting.compile:
            speed.compile_blocks(dit, compile_backend)
        with speed.attention(setting.attention):
            yield
    finally:
        if setting.compile:
            speed.uncompile_blocks(dit)
        if restore_linears:
            restore_linears()
        if setting.lora_rank and slot.active:
            started = time.perf_counter()
            slot.restore(dit)
            if dit.blocks[0].ffn[0].weight.is_cuda:
                torch.cuda.synchronize()
            lora.update(restore_s=round(time.perf_counter() - started, 3),
                        restored_bit_exact=bool(torch.equal(before, dict(dit.named_parameters())[probe_name].cpu())))


def _quantize_fp8_reversibly(torch, dit):
    """FP8 blocks through model_runtime.speed; returns what puts the bf16 linear layers back."""
    from model_runtime import speed

    originals = {name: m for name, m in dit.blocks.named_modules() if isinstance(m, torch.nn.Linear)}
    speed.quantize_fp8(dit)

    def restore():
        for name, module in originals.items():
            parent, _, leaf = name.rpartition(".")
            setattr(dit.blocks.get_submodule(parent) if parent else dit.blocks, leaf, module)

    return restore


def write_random_lora(torch, dit, rank: int, path: Path, device: str, dtype) -> Path:
    """A random LoRA in the kohya/LightX2V layout over every linear layer of the DiT blocks (q, k, v, o of both
    attentions and the two FFN layers: 400 layers on the 14B DiT), scaled so its fused change is ~1% of a weight."""
    from safetensors.torch import save_file

    generator = torch.Generator(device).manual_seed(2)
    tensors = {}
    for name, module in dit.blocks.named_modules():
        if isinstance(module, torch.nn.Linear):
            key = f"diffusion_model.blocks.{name}"
            down = torch.randn(rank, module.in_features, generator=generator, device=device, dtype=dtype)
            up = torch.randn(module.out_features, rank, generator=generator, device=device, dtype=dtype)
            tensors[f"{key}.lora_down.weight"] = (down * module.in_features ** -0.5).cpu()
            tensors[f"{key}.lora_up.weight"] = (up * 0.01 * rank ** -0.5).cpu()
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return path


@dataclass
class Row:
    resolution: str
    width: int
    height: int
    setting: str
    status: str  # ok | unavailable | skipped | failed
    passes: int = 2  # DiT passes per step
    note: str = ""
    step_s: list[float] = field(default_factory=list)
    warmup_s: float | None = None
    median_step_s: float | None = None
    tflop_per_s: float | None = None
    x_floor: float | None = None
    peak_vram_gib: float | None = None
    # One DiT pass at the first timestep against the SDPA reference (same weights, inputs, dtype): the output's
    # relative L2 error and cosine similarity. None where the weights differ (a LoRA) or another model runs.
    rel_l2: float | None = None
    cosine: float | None = None


class Bench:
    def __init__(self, torch, dit, model: dict, device, dtype, clock: Clock, budget: Budget, rate: float, args,
                 work: Path):
        from diffsynth.diffusion.flow_match import FlowMatchScheduler

        self.torch, self.dit, self.model, self.device, self.dtype = torch, dit, model, device, dtype
        self.clock, self.budget, self.rate, self.args, self.work = clock, budget, rate, args, work
        self.scheduler = FlowMatchScheduler("Wan")
        self.scheduler.set_timesteps(STANDARD_STEPS, shift=SHIFT)
        self.rows: list[Row] = []
        self.resolutions: dict[str, dict] = {}
        self.lora: dict = {}  # the fast row's LoRA: rank, tensors, file size, fuse and restore seconds
        self._lora_file: Path | None = None
        self._inputs: dict[str, Inputs] = {}
        self._by_setting: dict[tuple[str, Setting], Row] = {}
        self._reference: dict[str, object] = {}  # resolution: the SDPA reference pass's output
        self._peer = None

    def lora_file(self, rank: int) -> Path:
        """The random LoRA the fast row and the clip use, written once (~600 MB at rank 64: not under --out)."""
        if self._lora_file is None:
            self._lora_file = write_random_lora(
                self.torch, self.dit, rank, self.work / f"random-rank{rank}-lora.safetensors", self.device, self.dtype
            )
        return self._lora_file

    def run(self, resolution: str, setting: Setting, steps: int) -> Row:
        width, height = RESOLUTIONS[resolution][1 if self.args.tiny else 0]
        row = Row(resolution, width, height, setting.name, "running", passes=setting.passes)
        self.rows.append(row)
        self._by_setting[(resolution, setting)] = row
        if setting.unavailable:
            row.status, row.note = "unavailable", setting.unavailable
            return row
        info = self.resolutions.get(resolution)
        if info and setting.attention == "sdpa-math" and self.device == "cuda":
            # The math kernel materialises every head's N x N scores (and their softmax): skip what cannot fit.
            need = 2 * self.dit.num_heads * info["tokens"]["total"] ** 2 * self.dtype.itemsize
            free = self.torch.cuda.mem_get_info()[0]
            if need > free:
                row.status, row.note = "skipped", f"its N x N scores need {need / 2**30:.0f} GiB, {free / 2**30:.0f} free"
                return row
        estimate = self._estimate(resolution, setting, steps)
        if estimate is not None and not self.budget.allows(estimate):
            row.status = "skipped"
            row.note = f"time budget: needs ~{estimate:.0f} s, {max(0.0, self.budget.left()):.0f} s left"
            return row
        log.info("%s %dx%d: %s", resolution, width, height, setting.name)
        try:
            if setting.peer_backend:
                self._measure_peer(row, resolution, setting, width, height, steps)
            else:
                self._measure(row, resolution, setting, width, height, steps)
            row.status = "ok"
        except self.torch.cuda.OutOfMemoryError:
            row.status, row.note = "failed", "CUDA out of memory"
        except Exception as exc:  # a backend or compile failure is a result of this run, not its end
            row.status, row.note = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            log.exception("%s %s failed", resolution, setting.name)
        finally:
            if self.device == "cuda":
                self.torch.cuda.empty_cache()
        if row.status != "ok":
            row.step_s, row.median_step_s = [], None
        log.info("-> %s", {k: v for k, v in asdict(row).items() if v not in (None, "", [])})
        return row

    def fastest(self, resolution: str, candidates: list[Setting]) -> Setting | None:
        done = [(row.median_step_s, s) for (res, s), row in self._by_setting.items()
                if res == resolution and row.status == "ok" and s in candidates]
        return min(done, key=lambda d: d[0])[1] if done else None

    def pass_s(self, resolution: str) -> float | None:
        """The fastest measured seconds per DiT pass at `resolution`, else scaled by FLOPs from another one."""
        measured = [r.median_step_s / r.passes for r in self.rows if r.resolution == resolution and r.status == "ok"]
        if measured:
            return min(measured)
        known = [(r.median_step_s / r.passes, self.resolutions[r.resolution]) for r in self.rows if r.status == "ok"]
        if not known:
            return None
        per_pass, info = min(known, key=lambda k: k[0])
        return per_pass * self._flops(resolution) / info["flop_per_step"]

    def _estimate(self, resolution: str, setting: Setting, timed_steps: int) -> float | None:
        per_pass = self.pass_s(resolution)
        if per_pass is None:
            return None  # the first row is the baseline: it runs whatever the budget says
        # + the accuracy pass (and the reference pass, once per resolution).
        extra = 2 * per_pass + (PEER_ALLOWANCE_S[self.device] if setting.peer_backend and self._peer is None else 0.0)
        extra += (COMPILE_ALLOWANCE_S[self.device] if setting.compile else 0.0) + (
            FP8_ALLOWANCE_S[self.device] if setting.fp8 else 0.0) + (LORA_ALLOWANCE_S[self.device] if setting.lora_rank else 0.0)
        return (self.args.warmup + timed_steps) * per_pass * setting.passes + extra

    def _flops(self, resolution: str) -> float:
        # Before a resolution's tokens are counted: the token count from the frame layout, for estimates only.
        if resolution in self.resolutions:
            return self.resolutions[resolution]["flop_per_step"]
        width, height = RESOLUTIONS[resolution][1 if self.args.tiny else 0]
        tokens = (CLIP_FRAMES // 4 + 1) * (height // 16) * (width // 16)
        return flop_per_step(self.model["block_params"], self.model["layers"], self.model["dim"], tokens)

    def _inputs_for(self, resolution: str, width: int, height: int) -> Inputs:
        if resolution not in self._inputs:
            self._inputs = {}  # one resolution's inputs at a time on the GPU
            self._inputs[resolution] = make_inputs(self.torch, self.dit, width, height, self.device, self.dtype)
        return self._inputs[resolution]

    def _measure(self, row: Row, resolution: str, setting: Setting, width: int, height: int, steps: int) -> None:
        torch = self.torch
        inputs = self._inputs_for(resolution, width, height)
        latents = inputs.latents.clone()  # every row starts from the same latents
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        timesteps = self.scheduler.timesteps
        index = 0

        def step(count_for: str | None = None):
            nonlocal latents, index
            latents = self._step(inputs, latents, timesteps[index % len(timesteps)], count_for, setting.passes)
            index += 1

        lora_file = self.lora_file(setting.lora_rank) if setting.lora_rank else None
        # A LoRA changes the weights: its output is not comparable with the base model's reference.
        reference = None if setting.lora_rank else self._reference_for(resolution, inputs)
        with torch.no_grad(), applied(torch, setting, self.dit, self.args.compile_backend, lora_file, self.lora):
            started = time.monotonic()
            for i in range(self.args.warmup):
                # The first warm-up at a new resolution also counts tokens and FLOPs: untimed, so free.
                step(resolution if i == 0 and resolution not in self.resolutions else None)
            row.warmup_s = round(time.monotonic() - started, 3)
            for _ in range(steps):
                if row.step_s and not self.budget.allows(statistics.median(row.step_s)):
                    row.note = f"time budget: {len(row.step_s)} of {steps} steps timed"
                    break
                row.step_s.append(self.clock.time(step))
            if reference is not None:
                row.rel_l2, row.cosine = compare_outputs(torch, self._one_pass(inputs), reference)
        info = self.resolutions[resolution]
        share = setting.passes / 2  # the FLOP count and the floor are per CFG step (two passes)
        row.median_step_s = statistics.median(row.step_s)
        row.tflop_per_s = share * info["flop_per_step"] / row.median_step_s / 1e12
        row.x_floor = row.median_step_s / (share * info["floor_s"])
        if self.device == "cuda":
            row.peak_vram_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    def _one_pass(self, inputs: Inputs):
        """The conditional DiT pass at the first timestep on the resolution's own inputs (the accuracy probe)."""
        from diffsynth.pipelines.wan_video import model_fn_wans2v

        timestep = self.scheduler.timesteps[0].unsqueeze(0).to(dtype=self.dtype, device=self.device)
        with self.torch.no_grad():
            return model_fn_wans2v(self.dit, latents=inputs.latents, timestep=timestep, context=inputs.context_posi,
                                   audio_embeds=inputs.audio_posi, motion_latents=inputs.motion_latents,
                                   s2v_pose_latents=None, drop_motion_frames=False)

    def _reference_for(self, resolution: str, inputs: Inputs):
        """The reference every accuracy figure is against: eager, base weights, torch SDPA in the run's dtype."""
        from model_runtime import speed

        if resolution not in self._reference:
            with speed.attention("sdpa"):
                self._reference = {resolution: self._one_pass(inputs).float()}  # one resolution's at a time
        return self._reference[resolution]

    def _measure_peer(self, row: Row, resolution: str, setting: Setting, width: int, height: int, steps: int) -> None:
        """The diffusers transformer of the same dimensions, two passes per step (CFG), on its own random inputs."""
        torch = self.torch
        peer = self.peer_model()
        generator = torch.Generator(self.device).manual_seed(5)
        hidden = torch.randn(1, peer.config.in_channels, CLIP_FRAMES // 4 + 1, height // 8, width // 8,
                             generator=generator, device=self.device, dtype=self.dtype)
        text = torch.randn(1, TEXT_TOKENS, peer.config.text_dim, generator=generator, device=self.device, dtype=self.dtype)
        timestep = torch.tensor([999.0], device=self.device)
        peer.set_attention_backend(setting.peer_backend)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def step():
            for _ in range(2):
                peer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=text, return_dict=False)

        with torch.no_grad():
            started = time.monotonic()
            for _ in range(self.args.warmup):
                step()
            row.warmup_s = round(time.monotonic() - started, 3)
            row.step_s = [self.clock.time(step) for _ in range(steps)]
        row.median_step_s = statistics.median(row.step_s)
        tokens = (CLIP_FRAMES // 4 + 1) * (height // 16) * (width // 16)
        row.note = f"{tokens:,} tokens (video + reference latent; ours adds the motion tokens)"
        if self.device == "cuda":
            row.peak_vram_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    def peer_model(self):
        """diffusers' WanTransformer3DModel with our DiT's dimensions and random weights, built once."""
        if self._peer is None:
            from diffusers import WanTransformer3DModel

            config = self.model["config"]
            heads = config["num_heads"]
            self._peer = random_module(self.torch, lambda: WanTransformer3DModel(
                patch_size=tuple(config["patch_size"]), num_attention_heads=heads,
                attention_head_dim=config["dim"] // heads, in_channels=config["in_dim"], out_channels=config["out_dim"],
                text_dim=config["text_dim"], freq_dim=config["freq_dim"], ffn_dim=config["ffn_dim"],
                num_layers=config["num_layers"], cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                eps=config.get("eps", 1e-6)), self.device, self.dtype, seed=6)
        return self._peer

    def drop_peer(self) -> None:
        self._peer = None
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    def _step(self, inputs: Inputs, latents, t, count_for: str | None, passes: int):
        """One denoising step as WanVideoPipeline.__call__ runs it: with CFG (cfg_scale != 1, cfg_merge off) two
        passes, else (fast mode, cfg_scale 1) the conditional pass alone."""
        from diffsynth.pipelines.wan_video import model_fn_wans2v

        timestep = t.unsqueeze(0).to(dtype=self.dtype, device=self.device)
        # drop_motion_frames=False: a continuation clip, whose 73 motion frames are fed as tokens (every clip but
        # the first of a long speech; the first drops them and is that much cheaper).
        shared = dict(latents=latents, timestep=timestep, motion_latents=inputs.motion_latents,
                      s2v_pose_latents=None, drop_motion_frames=False)
        with self._counting(count_for, latents) if count_for else contextlib.nullcontext():
            posi = model_fn_wans2v(self.dit, context=inputs.context_posi, audio_embeds=inputs.audio_posi, **shared)
        if passes == 1:
            noise_pred = posi
        else:
            nega = model_fn_wans2v(self.dit, context=inputs.context_nega, audio_embeds=inputs.audio_nega, **shared)
            noise_pred = nega + CFG_SCALE * (posi - nega)
        latents = self.scheduler.step(noise_pred, t, latents)
        latents[:, :, 0:1] = inputs.first_frame
        return latents

    @contextlib.contextmanager
    def _counting(self, resolution: str, latents):
        """Tokens the blocks actually receive (hook on the first block) and the FLOPs PyTorch counts."""
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        seen = {}

        def hook(module, args):
            seen.setdefault("total", args[0].shape[1])
            seen.setdefault("video", int(args[3]))  # seq_len_x

        handle = self.dit.blocks[0].register_forward_pre_hook(hook)
        # PyTorch's FLOP counter knows the CUDA SDPA kernels but not the CPU flash kernel; the math kernel is
        # counted as the matmuls it runs. (Attention outside torch SDPA, e.g. flash-attn, is not counted.)
        math = sdpa_kernel(SDPBackend.MATH) if self.device == "cpu" else contextlib.nullcontext()
        try:
            with FlopCounterMode(display=False) as counter, math:
                yield
        finally:
            handle.remove()
        _, _, frames, lat_h, lat_w = latents.shape
        patch = self.dit.patch_size
        reference = (lat_h // patch[1]) * (lat_w // patch[2])  # the reference latent: one frame's patches
        tokens = {"video": seen["video"], "reference": reference,
                  "motion": seen["total"] - seen["video"] - reference, "total": seen["total"]}
        per_step = flop_per_step(self.model["block_params"], self.model["layers"], self.model["dim"], tokens["total"])
        self.resolutions[resolution] = {
            "width": lat_w * 8, "height": lat_h * 8, "frames": CLIP_FRAMES + 1, "latent_frames": frames,
            "tokens": tokens,
            "flop_per_step": per_step,
            "flop_linear_per_step": 2 * 2 * self.model["block_params"] * tokens["total"],
            "flop_attention_per_step": 2 * 4 * self.model["layers"] * tokens["total"] ** 2 * self.model["dim"],
            "flop_counted_per_step": 2 * counter.get_total_flops(),
            "floor_s": per_step / self.rate,
        }


def build_warm_model(torch, tiny: bool, device: str, dtype, dit, work: Path):
    """The runtime's WarmModel around a WanVideoPipeline of random-weight components of the real (or tiny) sizes.

    The DiT is the bench's own; the text encoder (umt5-xxl), VAE and wav2vec2 audio encoder are built as DiffSynth
    builds them and filled with random values on `device`. The tokenizer and audio processor come from a tiny
    checkpoint written for this: the token ids they give are valid for the real embedding table, and the audio
    processor only normalises samples.
    """
    from diffsynth.models.wan_video_text_encoder import HuggingfaceTokenizer, WanTextEncoder
    from diffsynth.models.wan_video_vae import WanVideoVAE
    from diffsynth.models.wav2vec import WanS2VAudioEncoder
    from diffsynth.pipelines.wan_video import WanVideoPipeline
    from transformers import Wav2Vec2Processor

    from model_runtime import layout, tiny_checkpoint
    from model_runtime.loader import LoadedPipeline, _quiet_vae_progress
    from model_runtime.tiny_models import TinyWanS2VAudioEncoder, TinyWanVideoVAE
    from model_runtime.warm_cache import WarmModel

    files = layout.check_checkpoint(tiny_checkpoint.make_tiny_checkpoint(work / "tiny-checkpoint"))
    _quiet_vae_progress()
    pipe = WanVideoPipeline(device=device, torch_dtype=dtype)
    if tiny:
        parts = (lambda: WanTextEncoder(**tiny_checkpoint.TEXT_ENCODER), lambda: TinyWanVideoVAE(**tiny_checkpoint.VAE),
                 lambda: TinyWanS2VAudioEncoder(**tiny_checkpoint.AUDIO_ENCODER))
    else:
        parts = (WanTextEncoder, WanVideoVAE, WanS2VAudioEncoder)
    pipe.text_encoder, pipe.vae, pipe.audio_encoder = (
        random_module(torch, build, device, dtype, seed=3 + i) for i, build in enumerate(parts)
    )
    pipe.dit = dit
    pipe.height_division_factor = pipe.width_division_factor = pipe.vae.upsampling_factor * 2
    pipe.tokenizer = HuggingfaceTokenizer(name=files.path(layout.TOKENIZER_DIR), seq_len=TEXT_TOKENS, clean="whitespace")
    pipe.audio_processor = Wav2Vec2Processor.from_pretrained(files.path(layout.AUDIO_DIR))
    pipe.vram_management_enabled = False
    # Not tiny: the real checkpoint's 80-frame segments and presets.
    loaded = LoadedPipeline(pipe, layout.CheckpointFiles(files.root, files.config if tiny else {}), device, dtype, 0.0)
    return WarmModel(loaded=loaded, checkpoint=work / ("tiny" if tiny else "random-real-size"))


class StageTimer:
    """Seconds spent in each stage of a generation, by wrapping what DiffSynth calls (CUDA-synchronised)."""

    def __init__(self, torch, device: str):
        self.torch, self.device = torch, device
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._undo: list = []

    def wrap(self, owner, attribute: str, stage: str) -> None:
        original = getattr(owner, attribute)
        had_own = attribute in vars(owner)

        def timed(*args, **kwargs):
            self._sync()
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._sync()
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started
                self.calls[stage] = self.calls.get(stage, 0) + 1

        setattr(owner, attribute, timed)
        self._undo.append((owner, attribute, original if had_own else None))

    def undo(self) -> None:
        for owner, attribute, original in reversed(self._undo):
            if original is None:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, original)
        self._undo.clear()

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()


def measure_clip(torch, bench: Bench, model, out: Path, work: Path, mode: str = "fast", resolution: str = "480p") -> dict:
    """One clip (one segment) measured whole through the product's generate_video at real size: stage times, peak
    VRAM. Fast mode switches the rank-64 LoRA in (as its runs do) and also composes the standard clip from its
    fixed part + 40 passes + the negative prompt's encoding, to compare with the standard clip measured whole."""
    from PIL import Image

    from model_runtime.generate import generate_video
    from model_runtime.media import fit_image
    from model_runtime.request import GenerationRequest

    width, height = RESOLUTIONS[resolution][1 if bench.args.tiny else 0]
    image_path = work / f"portrait_landscape_{resolution}.png"
    # The example portrait cropped to the landscape shape: at real size the clip is the step rows' 832x480 / 1280x720.
    fit_image(Image.open(ROOT / "examples/portrait_anna.jpg").convert("RGB"), width, height).save(image_path)
    fast = mode == "fast"
    lora = {"lora": str(bench.lora_file(LORA_RANK[bench.device]))} if fast else {}
    request = GenerationRequest.parse({
        "image_path": image_path, "audio_path": ROOT / "examples/speech_hello.wav", "mode": mode, **lora,
        "max_segments": 1, "seed": 0, "resolution": resolution,
    })
    video = "clip_fast.mp4" if fast and resolution == "480p" else f"clip_{resolution}_{mode}.mp4"
    pipe = model.pipe
    timer = StageTimer(torch, bench.device)
    for owner, attribute, stage in ((pipe, "model_fn", "DiT passes"), (pipe.text_encoder, "forward", "text encoder"),
                                    (pipe.audio_encoder, "get_audio_feats_per_inference", "audio encoder"),
                                    (pipe.vae, "encode", "VAE encode"), (pipe.vae, "decode", "VAE decode")):
        timer.wrap(owner, attribute, stage)
    if bench.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        result = generate_video(model, request, out / video)
    finally:
        timer.undo()
        model.lora.restore(pipe.dit)  # later rows measure the base weights
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if bench.device == "cuda" else None
    dit_s, passes = timer.seconds.get("DiT passes", 0.0), timer.calls.get("DiT passes", 0)
    pass_s = dit_s / passes
    text_s = timer.seconds.get("text encoder", 0.0) / max(1, timer.calls.get("text encoder", 0))
    clip_s = result.generation_time - result.lora_switch_s  # the switch happens once per LoRA, not per clip
    stages = {name: round(seconds, 3) for name, seconds in timer.seconds.items()}
    stages["rest (scheduler, frames to CPU, glue)"] = round(clip_s - sum(timer.seconds.values()), 3)
    measured = {
        "status": "ok", "size": f"{result.width}x{result.height}", "frames": result.frames, "segments": result.segments,
        "first_segment": True, "mode": result.mode, "steps": result.sample_steps, "dit_passes": passes,
        "stages_s": stages, "pass_s": round(pass_s, 5), "clip_s": round(clip_s, 3), "measured_whole": True,
        "mp4_and_mux_s": round(result.total_time - result.generation_time - result.queue_time, 3),
        "peak_vram_gib": peak, "video": result.video_path.name,
    }
    if not fast:
        return measured
    standard_s = clip_s - dit_s + text_s + STANDARD_STEPS * 2 * pass_s
    return {**measured, "lora_rank": LORA_RANK[bench.device], "lora_tensors": result.lora_tensors,
            "lora_switch_s": result.lora_switch_s, "fast_clip_s": round(clip_s, 3),
            "standard_clip_estimate_s": round(standard_s, 3), "fast_speedup": round(standard_s / clip_s, 2)}


def measure_vae_decode(torch, bench: Bench, vae) -> list[dict]:
    """Decoding one continuation segment (19 motion + 20 new latent frames, as DiffSynth's S2V post unit hands the
    VAE) at the 480p size, tiled as DiffSynth does by default (30x52 latent tiles, stride 15x26) and untiled."""
    width, height = RESOLUTIONS["480p"][1 if bench.args.tiny else 0]
    generator = torch.Generator(bench.device).manual_seed(4)
    latents = torch.randn(1, 16, 39, height // 8, width // 8, generator=generator, device=bench.device, dtype=bench.dtype)
    rows = []
    for tiled in (True, False):
        row = {"tiled": tiled, "size": f"{width}x{height}", "latent_frames": 39, "frames": 153, "status": "ok"}
        if bench.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            with torch.no_grad():
                row["seconds"] = round(bench.clock.time(lambda: vae.decode(
                    latents, device=bench.device, tiled=tiled, tile_size=(30, 52), tile_stride=(15, 26))), 3)
            if bench.device == "cuda":
                row["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        except torch.cuda.OutOfMemoryError:
            row.update(status="failed", note="CUDA out of memory")
        log.info("VAE decode: %s", row)
        rows.append(row)
    return rows


def compare_outputs(torch, output, reference) -> tuple[float, float]:
    """(relative L2 error, cosine similarity) of `output` against `reference`, in float32."""
    out, ref = output.float().flatten(), reference.float().flatten()
    rel_l2 = float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref))
    cosine = min(1.0, float(torch.nn.functional.cosine_similarity(out, ref, dim=0)))  # float rounding can pass 1
    return round(rel_l2, 6), round(cosine, 6)


def flop_per_step(block_params: int, layers: int, dim: int, tokens: int) -> float:
    """FLOP_FORMULA: one CFG step, i.e. two forward passes."""
    return 2 * (2 * block_params * tokens + 4 * layers * tokens**2 * dim)


def sorted_rows(rows: list[Row]) -> list[Row]:
    order = list(RESOLUTIONS)
    return sorted(rows, key=lambda r: (r.status != "ok", order.index(r.resolution), r.median_step_s or 0.0))


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pipeline_check(out: Path, device: str) -> dict:
    """One clip through the product's own path: tiny checkpoint, warm cache, InProcessRuntime, muxed MP4.

    S2V_DEVICE selects the device exactly as a deployment would; the clip is noise (random tiny weights).
    """
    started = time.monotonic()
    try:
        from model_runtime import warm_cache
        from model_runtime.request import GenerationRequest
        from model_runtime.service import InProcessRuntime
        from model_runtime.tiny_checkpoint import make_tiny_checkpoint
        from model_runtime.video import probe

        video = out / "pipeline_check.mp4"
        with tempfile.TemporaryDirectory(prefix="s2v-gpu-step-") as work:
            checkpoint = make_tiny_checkpoint(Path(work) / "tiny-checkpoint")
            # Eager: compiling the tiny blocks would cost this cheap check a minute; the compile row covers compiling.
            env = {"S2V_DEVICE": device, "S2V_CHECKPOINT": str(checkpoint), "S2V_CACHE_DIR": str(Path(work) / "cache"),
                   "S2V_COMPILE": "off"}
            with _environ(env):
                request = GenerationRequest.parse({
                    "image_path": ROOT / "examples/portrait_anna.jpg", "audio_path": ROOT / "examples/speech_short.wav",
                    "sample_steps": 15, "seed": 0,
                })
                result = InProcessRuntime().generate(request, video)
                model, _ = warm_cache.get_model()
        info = probe(result.video_path)
        dit_device = str(next(model.pipe.dit.parameters()).device)
        ok = (info.video_codec, info.audio_codec) == ("h264", "aac") and dit_device.startswith(device)
        return {
            "status": "ok" if ok else "failed", "video": video.name, "video_codec": info.video_codec,
            "audio_codec": info.audio_codec, "frames": result.frames, "size": f"{result.width}x{result.height}",
            "dit_device": dit_device, "dtype": str(model.loaded.dtype).removeprefix("torch."),
            "load_s": result.load_time, "generation_s": result.generation_time,
            "total_s": round(time.monotonic() - started, 2),
        }
    except Exception as exc:  # reported, not raised: the DiT measurements still run
        log.exception("pipeline check failed")
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:400]}


def _num(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def render_sections(report: dict) -> list[str]:
    """The fast row's LoRA, the whole clip and the VAE decode, as markdown lines."""
    lines = []
    lora = report.get("lora") or {}
    if lora:
        lines += ["", f"LoRA of the fast row (random, rank {lora.get('rank')}, {lora.get('file_mib')} MiB file, "
                      f"{lora.get('tensors')} DiT tensors): fused in {lora.get('fuse_s')} s by model_runtime.lora "
                      f"(read + deltas + copies of the originals on the device; {lora.get('originals_on_cpu')} "
                      f"went to the CPU), restored in {lora.get('restore_s')} s, "
                      f"bit-exact: {lora.get('restored_bit_exact')}"]
    clip = report.get("clip")
    if clip and clip.get("status") == "ok":
        stages = ", ".join(f"{name} {seconds:.3g} s" for name, seconds in clip["stages_s"].items())
        lines += [
            "",
            f"Whole clip through generate_video, random weights{' (tiny sizes)' if report['tiny'] else ' at real size'} "
            f"({clip['size']}, {clip['frames']} frames, "
            f"first segment, mode {clip['mode']}, {clip['steps']} steps = {clip['dit_passes']} DiT passes, "
            f"rank-{clip['lora_rank']} LoRA fused into {clip['lora_tensors']} tensors in {clip['lora_switch_s']} s):",
            "",
            "| clip | seconds | how |",
            "|---|---|---|",
            f"| fast (4 steps, 1 pass each) | {clip['fast_clip_s']:.4g} | measured: generation without the one-time "
            f"LoRA switch |",
            f"| standard (20 steps with CFG) | {clip['standard_clip_estimate_s']:.4g} | the same run's fixed part + "
            f"40 passes of {clip['pass_s']:.3g} s + the negative prompt's encoding |",
            f"| fast speed-up | x{clip['fast_speedup']} | |",
            "",
            f"Stages of the fast clip: {stages}; MP4 + mux after the model: {clip['mp4_and_mux_s']} s; "
            f"peak VRAM {_num(clip['peak_vram_gib'])} GiB.",
        ]
    elif clip:
        lines += ["", f"Whole clip: {json.dumps(clip)}"]
    lines += render_whole_clips(report)
    decode = report.get("vae_decode")
    if isinstance(decode, list):
        lines += ["", "| VAE decode of one continuation segment | size | frames | seconds | peak VRAM GiB | status |",
                  "|---|---|---|---|---|---|"]
        for row in decode:
            lines.append(f"| {'tiled (DiffSynth default)' if row['tiled'] else 'untiled'} | {row['size']} | "
                         f"{row['frames']} | {_num(row.get('seconds'))} | {_num(row.get('peak_vram_gib'))} | "
                         f"{row['status']}{': ' + row['note'] if row.get('note') else ''} |")
    elif decode:
        lines += ["", f"VAE decode: {json.dumps(decode)}"]
    return lines


def render_whole_clips(report: dict) -> list[str]:
    """Every clip measured whole (one segment each): seconds, stages, peak VRAM."""
    clips = [(name, report.get(name)) for name in ("clip", "clip_480p_standard", "clip_720p_standard")]
    lines = ["", "| whole clip, measured whole (one segment) | size | steps x passes | seconds | stages (s) | "
                 "peak VRAM GiB | status |", "|---|---|---|---|---|---|---|"]
    for name, clip in clips:
        if not clip:
            continue
        if clip.get("status") != "ok":
            lines.append(f"| {name} | | | | | | {clip.get('status')}: {clip.get('note') or clip.get('error', '')} |")
            continue
        stages = ", ".join(f"{stage} {seconds:.3g}" for stage, seconds in clip["stages_s"].items())
        lines.append(f"| {name} ({clip['mode']}) | {clip['size']} | {clip['steps']} x {clip['dit_passes'] // clip['steps']} | "
                     f"{clip['clip_s']:.4g} | {stages} | {_num(clip['peak_vram_gib'])} | ok |")
    return lines if len(lines) > 3 else []


def render_peer(report: dict) -> list[str]:
    """Our step time over the diffusers peer's, same size, same GPU, same run."""
    rows = [r for r in report["rows"] if r["status"] == "ok" and r["resolution"] == "480p"]
    peers = [r for r in rows if r["setting"].startswith("diffusers")]
    ours = [r for r in rows if not r["setting"].startswith("diffusers") and r["passes"] == 2]
    if not peers or not ours:
        return []
    best_peer, best_ours = min(peers, key=lambda r: r["median_step_s"]), min(ours, key=lambda r: r["median_step_s"])
    return ["", f"Ours / diffusers (480p CFG step, fastest of each): {best_ours['median_step_s']:.4g} s "
                f"({best_ours['setting']}) / {best_peer['median_step_s']:.4g} s ({best_peer['setting']}) = "
                f"{best_ours['median_step_s'] / best_peer['median_step_s']:.3g}"]


def render(report: dict) -> str:
    env, mm, model = report["environment"], report["matmul"], report.get("model")
    where = env.get("gpu") or f"CPU ({env['cpu_threads']} threads)"
    dit = (f"DiT {model['params'] / 1e9:.4g}B params ({model['block_params'] / 1e9:.4g}B in {model['layers']} "
           f"blocks), weights {model['weights_gib']:.3g} GiB" if model else report.get("error", "no DiT"))
    lines = [
        f"# Wan2.2-S2V DiT step{' (TINY config, CPU: tests the harness, not the model)' if report['tiny'] else ''}",
        "",
        f"{where}, torch {env['torch']}, diffsynth {env['diffsynth']}, {report['dtype']}; "
        f"matmul {mm['n']}^3 {mm['dtype']}: {mm['flop_per_s'] / 1e12:.4g} TFLOP/s; {dit}",
        "",
    ]
    for name, info in report.get("resolutions", {}).items():
        t = info["tokens"]
        lines.append(
            f"- {name} {info['width']}x{info['height']}, {info['frames']} frames + 73 motion frames: "
            f"{t['total']:,} tokens ({t['video']:,} video + {t['reference']:,} reference + {t['motion']:,} motion); "
            f"{info['flop_per_step']:.3g} FLOP/step by the formula (linear {info['flop_linear_per_step']:.3g}, "
            f"attention {info['flop_attention_per_step']:.3g}), {info['flop_counted_per_step']:.3g} counted; "
            f"floor {info['floor_s']:.3g} s/step at the matmul rate"
        )
    lines += [
        "",
        "| # | res | setting | passes/step | s/step (median) | steps timed | TFLOP/s | x floor | peak VRAM GiB | "
        "warm-up s | rel L2 vs SDPA | cosine | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(report["rows"], 1):
        status = row["status"] + (f": {row['note']}" if row["note"] else "")
        lines.append(
            f"| {i} | {row['resolution']} {row['width']}x{row['height']} | {row['setting']} | {row['passes']} | "
            f"{_num(row['median_step_s'], 4)} | {len(row['step_s']) or '-'} | {_num(row['tflop_per_s'])} | "
            f"{_num(row['x_floor'])} | {_num(row['peak_vram_gib'])} | {_num(row['warmup_s'])} | "
            f"{_num(row['rel_l2'])} | {_num(row['cosine'], 6)} | {status} |"
        )
    lines += [
        "",
        "Accuracy: one DiT pass (first timestep, conditional) against the eager torch-SDPA pass on the same random "
        "weights and inputs, in the run's dtype; '-' where the weights differ (a LoRA) or the model is the peer. "
        f"Bound for S2V_* auto: rel L2 <= {REL_L2_BOUND}, cosine >= {COSINE_BOUND} (model_runtime.speed_auto).",
    ]
    lines += render_peer(report)
    lines += render_sections(report)
    check = report["pipeline_check"]
    lines += [
        "",
        f"Product path (tiny checkpoint through InProcessRuntime, S2V_DEVICE={report['device']}): "
        + json.dumps(check),
        "",
        f"FLOP formula: {report['flop_formula']}",
        "",
        report["targets"],
        "",
        f"Run took {report['elapsed_s']} s of a {report['budget_s']:.0f} s budget.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
