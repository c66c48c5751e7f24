"""What S2V_FP8, S2V_ATTENTION and S2V_COMPILE on `auto` pick, per GPU capability, from measured figures.

The rule: among the option sets measured on GPUs of this compute capability whose DiT output stays within
the error bound of the bf16 torch-SDPA reference (bench/gpu_step.py's accuracy columns: one DiT forward
at real size, same random weights and inputs), the fastest per step. A capability with no measured set
within the bound keeps today's choice (DiffSynth's attention, bf16 weights, compiled blocks on CUDA).
No torch here: the table and the rule are plain data, read by model_runtime.speed.resolve.
"""
from __future__ import annotations

from dataclasses import dataclass

# The bound: relative L2 error of the output <= 5% and cosine similarity >= 0.998 (which 5% implies for an
# error orthogonal to the output: 1 - 0.05**2 / 2). Random weights cannot judge pictures; this keeps the
# numeric drift to a few times bf16's own rounding through 40 blocks and rejects a broken kernel outright.
REL_L2_BOUND = 0.05
COSINE_BOUND = 0.998


@dataclass(frozen=True)
class Measured:
    """One option set measured by bench/gpu_step.py (480p step with guidance) on one GPU."""

    capability: tuple[int, int]
    gpu: str
    attention: str  # model_runtime.speed.ATTENTION_CHOICES
    fp8: bool
    compile: bool
    step_s: float
    rel_l2: float | None  # None: accuracy not measured, so the set cannot be picked
    cosine: float | None
    source: str


@dataclass(frozen=True)
class Choice:
    attention: str
    fp8: bool
    compile: bool


RUN2 = "bench/results/gpu_step_h200_2026-11-27_run2.md"
# Add a row per measured set from a bench run's table (its accuracy columns included); the newest run wins
# when a set appears twice, so replace rather than add when remeasuring.
MEASURED: tuple[Measured, ...] = (
    Measured((9, 0), "H200", "auto", False, False, 8.46, None, None, RUN2),
    Measured((9, 0), "H200", "auto", False, True, 7.46, None, None, RUN2),
)


def todays_choice(cuda: bool) -> Choice:
    return Choice(attention="auto", fp8=False, compile=cuda)


def within_bound(row: Measured) -> bool:
    return (row.rel_l2 is not None and row.cosine is not None
            and row.rel_l2 <= REL_L2_BOUND and row.cosine >= COSINE_BOUND)


def pick_options(capability: tuple[int, int] | None, cuda: bool, measured: tuple[Measured, ...] = MEASURED) -> Choice:
    """The fastest measured option set within the bound for this capability, else today's choice."""
    candidates = [row for row in measured if capability is not None and tuple(row.capability) == tuple(capability)
                  and within_bound(row)]
    if not cuda or not candidates:
        return todays_choice(cuda)
    best = min(candidates, key=lambda row: row.step_s)
    return Choice(attention=best.attention, fp8=best.fp8, compile=best.compile)
