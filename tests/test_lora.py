"""LoRA sets on the warm tiny DiT (CPU): the public key layouts, switching back bit for bit, refusing a LoRA
made for another model, and fast mode's one DiT pass per step."""
import shutil

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model_runtime import warm_cache
from model_runtime.request import GenerationRequest
from model_runtime.service import InProcessRuntime
from s2v.errors import InputError
from s2v.settings import Settings
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.slow


def write_lora(path, dit, layout: str, rank: int = 4, seed: int = 1, scale: float = 0.3, widen: int = 1) -> int:
    """A random LoRA over the DiT blocks' linear layers in one public key layout; returns the tensors it changes.

    kohya: `diffusion_model.<layer>.lora_up/lora_down.weight` + `alpha`, plus LightX2V's `.diff_b` bias deltas;
    peft: `<layer>.lora_A/lora_B.weight`; peft-default: `diffusion_model.<layer>.lora_A.default.weight`.
    """
    generator = torch.Generator().manual_seed(seed)
    layers = [(name, m) for name, m in dit.named_modules() if isinstance(m, torch.nn.Linear) and name.startswith("blocks.")]
    tensors = {}
    for name, module in layers:
        down = torch.randn(rank, module.in_features * widen, generator=generator) * scale
        up = torch.randn(module.out_features, rank, generator=generator) * scale
        if layout == "kohya":
            tensors[f"diffusion_model.{name}.lora_down.weight"] = down
            tensors[f"diffusion_model.{name}.lora_up.weight"] = up
            tensors[f"diffusion_model.{name}.alpha"] = torch.tensor(rank / 2)
            tensors[f"diffusion_model.{name}.diff_b"] = torch.randn(module.out_features, generator=generator) * scale
        elif layout == "peft":
            tensors[f"{name}.lora_A.weight"] = down
            tensors[f"{name}.lora_B.weight"] = up
        elif layout == "peft-default":
            tensors[f"diffusion_model.{name}.lora_A.default.weight"] = down
            tensors[f"diffusion_model.{name}.lora_B.default.weight"] = up
        else:
            raise ValueError(layout)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return len(layers) * (2 if layout == "kohya" else 1)


def frames_of(video) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(str(video))
    width, height = next(reader)["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])


def snapshot(dit) -> dict:
    return {name: p.detach().clone() for name, p in dit.named_parameters()}


@pytest.fixture(scope="module")
def runtime(tiny_checkpoint, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("own") / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    return InProcessRuntime(Settings(checkpoint=checkpoint, device="cpu", cache_dir=tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def model(runtime):
    return warm_cache.get_model(None, runtime.settings)[0]


@pytest.fixture(scope="module")
def loras(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    made = {}
    for seed, layout in enumerate(("kohya", "peft", "peft-default"), start=1):
        path = folder / f"{layout}.safetensors"
        made[layout] = (str(path), write_lora(path, model.pipe.dit, layout, seed=seed))
    return made


def _request(**overrides):
    return GenerationRequest.parse({
        "image_path": EXAMPLES / "portrait_anna.jpg", "audio_path": EXAMPLES / "speech_short.wav",
        "sample_steps": 15, "seed": 0, "max_segments": 1, **overrides,
    })


@pytest.fixture(scope="module")
def switching(runtime, model, loras, tmp_path_factory):
    """base -> kohya -> kohya again -> peft -> peft-default -> no LoRA, one clip each, same seed."""
    out = tmp_path_factory.mktemp("switching")
    base_weights = snapshot(model.pipe.dit)
    steps = [("base", ""), ("kohya", loras["kohya"][0]), ("kohya again", loras["kohya"][0]),
             ("peft", loras["peft"][0]), ("peft-default", loras["peft-default"][0]), ("back", "")]
    results = {name: runtime.generate(_request(lora=path), out / f"{name.replace(' ', '-')}.mp4") for name, path in steps}
    return results, base_weights, snapshot(model.pipe.dit)


def test_a_lora_in_each_public_layout_changes_the_video(switching, loras):
    results, _, _ = switching
    base = frames_of(results["base"].video_path)
    for layout in ("kohya", "peft", "peft-default"):
        result = results[layout]
        assert (result.lora, result.lora_tensors, result.lora_strength) == (loras[layout][0], loras[layout][1], 1.0)
        assert result.lora_switch_s > 0
        assert not np.array_equal(frames_of(result.video_path), base), layout
    assert (results["base"].lora, results["base"].lora_tensors, results["base"].lora_switch_s) == ("", 0, 0.0)


def test_the_same_lora_again_is_not_switched(switching):
    results, _, _ = switching
    again = results["kohya again"]
    assert again.lora_switch_s == 0.0 and again.lora_tensors == results["kohya"].lora_tensors
    assert np.array_equal(frames_of(again.video_path), frames_of(results["kohya"].video_path))


def test_switching_back_restores_the_base_model_bit_for_bit(switching):
    results, before, after = switching
    assert results["back"].lora_switch_s > 0 and results["back"].lora_tensors == 0
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert np.array_equal(frames_of(results["back"].video_path), frames_of(results["base"].video_path))


def test_a_lora_for_another_model_is_refused_before_any_weight_changes(runtime, model, tmp_path):
    flux = tmp_path / "flux.safetensors"
    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072),
               "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 4)}, str(flux))
    bigger = tmp_path / "wan-other-size.safetensors"
    write_lora(bigger, model.pipe.dit, "kohya", widen=2)
    before, count = snapshot(model.pipe.dit), model.generation_count
    for path, reason in ((flux, "none of its 1 LoRA tensors matches"), (bigger, "other shapes")):
        with pytest.raises(InputError) as err:
            runtime.generate(_request(lora=str(path)), tmp_path / "never.mp4")
        assert (err.value.field, err.value.value) == ("lora", str(path))
        assert reason in err.value.reason and "another model" in err.value.reason
    assert model.generation_count == count and not (tmp_path / "never.mp4").exists()
    after = snapshot(model.pipe.dit)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_fast_mode_makes_one_dit_pass_per_step(runtime, model, loras, tmp_path):
    passes = []
    hook = model.pipe.dit.head.register_forward_hook(lambda *_: passes.append(1))  # the head ends every DiT pass
    try:
        fast = runtime.generate(_request(mode="fast", sample_steps=None, lora=loras["kohya"][0]), tmp_path / "f.mp4")
        fast_passes = len(passes)
        passes.clear()
        guided = runtime.generate(_request(sample_steps=4, lora=loras["kohya"][0]), tmp_path / "g.mp4")
    finally:
        hook.remove()
    assert (fast.mode, fast.sample_steps, fast.guidance_scale, fast.sample_shift) == ("fast", 4, 1.0, 5.0)
    assert fast.segments == 1 and fast_passes == 4
    assert (guided.mode, guided.guidance_scale, len(passes)) == ("standard", 4.5, 8)  # CFG: two passes per step
