"""bench/gpu_step.py on CPU with --tiny: the GPU harness's code path, its table and its FLOP accounting."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

CLIP_LATENT_FRAMES = 20  # 80 frames / 4, after the reference latent


def _expected_tokens(width: int, height: int) -> dict:
    """Tokens the S2V DiT should receive, from the frame layout alone (patch 1x2x2 on the VAE's /8 latents).

    Motion: FramePack packs the last 19 motion latents as 1 frame at 1x2x2, 2 frames at 2x4x4 and 16 at 4x8x8.
    """
    lat_h, lat_w = height // 8, width // 8
    per_frame = (lat_h // 2) * (lat_w // 2)
    motion = per_frame + (lat_h // 4) * (lat_w // 4) + 4 * (lat_h // 8) * (lat_w // 8)
    video = CLIP_LATENT_FRAMES * per_frame
    return {"video": video, "reference": per_frame, "motion": motion, "total": video + per_frame + motion}


def _tiny_block_params() -> tuple[int, int, int]:
    from diffsynth.core.vram.initialization import skip_model_initialization
    from diffsynth.models.wan_video_dit_s2v import WanS2VModel

    from model_runtime.tiny_checkpoint import DIT

    with skip_model_initialization():
        dit = WanS2VModel(**{**DIT, "patch_size": tuple(DIT["patch_size"])})
    return sum(p.numel() for p in dit.blocks.parameters()), DIT["num_layers"], DIT["dim"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-step")
    # compile backend 'eager': dynamo's graph capture of the blocks without inductor's C++ build (30 s here).
    proc = subprocess.run(
        [sys.executable, "bench/gpu_step.py", "--tiny", "--compile-backend", "eager", "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "gpu_step.json").read_text()), proc.stdout


def test_rows_have_positive_step_times_fastest_first(run):
    _, report, stdout = run
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    names = {(r["resolution"], r["setting"]) for r in ok}
    assert ("480p", "DiffSynth default (torch SDPA, auto: flash)") in names
    assert any(res == "720p" for res, _ in names)  # the best setting repeated at the second resolution
    assert any(setting.startswith("torch.compile") for _, setting in names)
    for row in ok:
        assert row["step_s"] and all(s > 0 for s in row["step_s"])
        assert row["median_step_s"] > 0 and row["tflop_per_s"] > 0 and row["x_floor"] > 0
    # Within a resolution, measured rows come fastest first; rows not measured come after all of them.
    statuses = [r["status"] for r in report["rows"]]
    assert statuses[: len(ok)] == ["ok"] * len(ok)
    for res in ("480p", "720p"):
        medians = [r["median_step_s"] for r in ok if r["resolution"] == res]
        assert medians == sorted(medians)
    # What CPUs lack is listed, not run: the CUDA-only SDPA kernels, uninstalled libraries, FP8.
    unavailable = {r["setting"] for r in report["rows"] if r["status"] == "unavailable"}
    assert {"torch SDPA, cuDNN forced", "flash-attn 3"} <= unavailable
    assert any(name.startswith("FP8") for name in unavailable)
    assert "| # | res | setting |" in stdout


def test_every_row_on_the_base_weights_has_its_accuracy_beside_its_speed(run):
    out, report, _ = run
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    compared = [r for r in ok if not r["setting"].startswith("fast mode")]
    assert compared and all(r["rel_l2"] is not None and r["cosine"] is not None for r in compared)
    # fp32 on CPU: every SDPA kernel and the eager-backend compile give the reference's output.
    assert all(r["rel_l2"] < 1e-4 and r["cosine"] > 0.9999 for r in compared)
    fast = next(r for r in ok if r["setting"].startswith("fast mode"))
    assert fast["rel_l2"] is None  # its LoRA changes the weights: no common reference
    assert "| rel L2 vs SDPA | cosine |" in (out / "gpu_step.md").read_text()


def test_the_peer_and_the_levers_are_listed_when_they_cannot_run(run):
    _, report, _ = run
    rows = {r["setting"]: r for r in report["rows"]}
    peer = next(r for name, r in rows.items() if name.startswith("diffusers"))
    assert peer["status"] == "unavailable" and "diffusers not importable" in peer["note"]
    assert "sageattention==1.0.6" in rows["SageAttention"]["note"]
    assert rows["torch.compile + FP8 w8a8 + SageAttention"]["status"] == "unavailable"


def test_the_standard_clip_is_measured_whole(run):
    out, report, _ = run
    clip = report["clip_480p_standard"]
    assert clip["status"] == "ok" and clip["measured_whole"], clip
    assert (clip["mode"], clip["steps"], clip["dit_passes"]) == ("standard", 20, 40)
    assert clip["clip_s"] > clip["stages_s"]["DiT passes"] > 0 and (out / clip["video"]).stat().st_size > 0
    table = (out / "gpu_step.md").read_text()
    assert "| clip_480p_standard (standard) |" in table
    assert report["clip_720p_standard"]["status"] == "skipped" and "| clip_720p_standard |" in table


def test_fast_row_makes_one_pass_per_step_with_a_fused_lora_restored_bit_for_bit(run):
    _, report, _ = run
    fast = next(r for r in report["rows"] if r["setting"].startswith("fast mode"))
    assert fast["status"] == "ok" and fast["passes"] == 1
    assert {r["passes"] for r in report["rows"] if r is not fast} == {2}
    lora = report["lora"]
    assert lora["rank"] == 8 and lora["tensors"] == 20  # q, k, v, o of both attentions + 2 FFN layers, x 2 blocks
    assert lora["fuse_s"] > 0 and lora["restored_bit_exact"] is True
    assert lora["originals_on_cpu"] == 0


def test_whole_clip_and_vae_decode_were_measured(run):
    out, report, _ = run
    clip = report["clip"]
    assert clip["status"] == "ok", clip
    assert (clip["mode"], clip["steps"], clip["dit_passes"], clip["segments"]) == ("fast", 4, 4, 1)
    assert clip["lora_tensors"] == 20 and clip["lora_switch_s"] > 0
    assert {"DiT passes", "text encoder", "audio encoder", "VAE encode", "VAE decode"} <= set(clip["stages_s"])
    assert clip["standard_clip_estimate_s"] > clip["fast_clip_s"] > 0
    assert clip["standard_clip_estimate_s"] == pytest.approx(
        clip["fast_clip_s"] - clip["stages_s"]["DiT passes"] + clip["stages_s"]["text encoder"] + 40 * clip["pass_s"],
        abs=0.01)
    assert (out / clip["video"]).stat().st_size > 0
    decode = report["vae_decode"]
    assert [row["tiled"] for row in decode] == [True, False]
    assert all(row["status"] == "ok" and row["seconds"] > 0 for row in decode)
    table = (out / "gpu_step.md").read_text()
    assert "Whole clip through generate_video" in table and "VAE decode of one continuation segment" in table


def test_flop_counts_follow_the_formula(run):
    _, report, _ = run
    block_params, layers, dim = _tiny_block_params()
    assert (report["model"]["block_params"], report["model"]["layers"], report["model"]["dim"]) == (block_params, layers, dim)
    rate = report["matmul"]["flop_per_s"]
    for name, info in report["resolutions"].items():
        tokens = _expected_tokens(info["width"], info["height"])
        assert info["tokens"] == tokens, name
        n = tokens["total"]
        linear, attention = 2 * 2 * block_params * n, 2 * 4 * layers * n**2 * dim  # x2: CFG's two passes
        assert info["flop_linear_per_step"] == linear and info["flop_attention_per_step"] == attention
        assert info["flop_per_step"] == linear + attention
        assert info["flop_counted_per_step"] > 0
        assert info["floor_s"] == pytest.approx((linear + attention) / rate)
        for row in report["rows"]:
            if row["resolution"] == name and row["status"] == "ok":
                share = row["passes"] / 2  # a fast-mode step is one of the CFG step's two passes
                assert row["tflop_per_s"] == pytest.approx(share * (linear + attention) / row["median_step_s"] / 1e12)
                assert row["x_floor"] == pytest.approx(row["median_step_s"] / (share * info["floor_s"]))


def test_product_path_made_a_muxed_clip_and_files_were_written(run):
    out, report, _ = run
    check = report["pipeline_check"]
    assert check["status"] == "ok", check
    assert (check["video_codec"], check["audio_codec"], check["dit_device"]) == ("h264", "aac", "cpu")
    assert (out / "pipeline_check.mp4").stat().st_size > 0
    assert "| # | res | setting |" in (out / "gpu_step.md").read_text()
    assert "DiT built" in (out / "gpu_step.log").read_text()
