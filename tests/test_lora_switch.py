"""The LoRA switch on the tiny DiT's config (CPU, no pipeline): the fused weight's value, switching between
sets and off bit for bit, and where the base tensors are kept (never a second copy of the whole model
through the CPU when the device has room)."""
import pytest
import torch
from safetensors.torch import load_file

from model_runtime import lora as lora_module
from model_runtime.lora import LoraSlot, fuse_weight, keeps_on_device
from tests.test_lora import snapshot, write_lora

LAYER = "blocks.0.self_attn.q"


@pytest.fixture(scope="module")
def dit():
    from diffsynth.models.wan_video_dit_s2v import WanS2VModel

    from model_runtime.tiny_checkpoint import DIT

    torch.manual_seed(0)
    return WanS2VModel(**{**DIT, "patch_size": tuple(DIT["patch_size"])}).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def two_loras(dit, tmp_path_factory):
    folder = tmp_path_factory.mktemp("switch-loras")
    paths = []
    for seed, layout in ((1, "kohya"), (2, "peft")):
        path = folder / f"{layout}.safetensors"
        write_lora(path, dit, layout, seed=seed)
        paths.append(str(path))
    return paths


def test_the_fused_weight_is_the_base_plus_strength_alpha_over_rank_up_down(dit, two_loras):
    kohya = two_loras[0]
    state = load_file(kohya)
    up, down = state[f"diffusion_model.{LAYER}.lora_up.weight"], state[f"diffusion_model.{LAYER}.lora_down.weight"]
    alpha, rank, strength = float(state[f"diffusion_model.{LAYER}.alpha"]), down.shape[0], 0.7
    param = dict(dit.named_parameters())[f"{LAYER}.weight"]
    base = param.detach().clone()
    slot = LoraSlot()
    try:
        slot.use(dit, kohya, strength)
        expected = base + strength * alpha / rank * (up @ down)
        torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-6)
        assert not torch.equal(param.detach(), base)
    finally:
        slot.restore(dit)
    assert torch.equal(param.detach(), base)


def test_switching_from_one_set_to_another_and_off_restores_bit_for_bit(dit, two_loras):
    base = snapshot(dit)
    slot = LoraSlot()
    first, _ = slot.use(dit, two_loras[0], 1.0)
    fused_first = snapshot(dit)
    second, _ = slot.use(dit, two_loras[1], 0.5)
    assert first > second > 0  # kohya also changes the biases
    # The first set's bias deltas are gone: only the second set's weights are held, fused into the base.
    assert len(slot.originals) == second and all(name.endswith(".weight") for name in slot.originals)
    slot.use(dit, "", 1.0)
    after = snapshot(dit)
    assert slot.active is None and not slot.originals
    assert all(torch.equal(base[name], after[name]) for name in base)
    assert any(not torch.equal(base[name], fused_first[name]) for name in base)


def test_the_originals_stay_on_the_models_device(dit, two_loras):
    slot = LoraSlot()
    try:
        slot.use(dit, two_loras[0], 1.0)
        params = dict(dit.named_parameters())
        assert slot.originals and all(kept.device == params[name].device for name, kept in slot.originals.items())
        assert slot.kept_on_cpu == 0
        # A copy, not a view of the fused parameter: the restore needs the values from before the fuse.
        name = next(iter(slot.originals))
        assert slot.originals[name].data_ptr() != params[name].data_ptr()
    finally:
        slot.restore(dit)


def test_an_original_goes_to_the_cpu_only_when_it_would_eat_into_the_reserve():
    gib = 2**30
    assert keeps_on_device(free_bytes=60 * gib, tensor_bytes=gib, reserve_bytes=36 * gib)
    assert not keeps_on_device(free_bytes=36 * gib, tensor_bytes=gib, reserve_bytes=36 * gib)
    # An H200 (141 GB) with the warm pipeline loaded (~43 GiB) keeps a full rank-64 set's 28 GB of originals on
    # the GPU and still leaves the reserve for a 720p clip.
    assert keeps_on_device(free_bytes=(141 - 43) * gib, tensor_bytes=28 * gib,
                           reserve_bytes=lora_module.ORIGINALS_RESERVE_BYTES)


def test_a_bf16_fuse_rounds_once_from_a_float32_sum():
    param = torch.tensor([1.0, -2.0, 3.0], dtype=torch.bfloat16)
    delta = torch.tensor([1e-3, 1e-3, 0.25])
    fused = fuse_weight(param, delta)
    assert fused.dtype == torch.bfloat16
    assert torch.equal(fused, (param.float() + delta).to(torch.bfloat16))
    assert fused[2].item() == 3.25 and fused[0].item() == 1.0  # 1e-3 is below half a bf16 ulp of 1.0
