import json

import pytest

from model_runtime import layout
from s2v.errors import CheckpointError

# The published Wan-AI/Wan2.2-S2V-14B file names (shared/notes/wan-s2v-on-cpu.md).
REAL_FILES = {
    "config.json",
    "diffusion_pytorch_model-00001-of-00004.safetensors",
    "diffusion_pytorch_model-00002-of-00004.safetensors",
    "diffusion_pytorch_model-00003-of-00004.safetensors",
    "diffusion_pytorch_model-00004-of-00004.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "models_t5_umt5-xxl-enc-bf16.pth",
    "Wan2.1_VAE.pth",
}


def test_loader_asks_for_the_real_file_names():
    top_level = {name for name in layout.REQUIRED_FILES if "/" not in name}
    assert top_level == REAL_FILES
    folders = {name.split("/")[0] for name in layout.REQUIRED_FILES if "/" in name}
    assert folders == {"google", "wav2vec2-large-xlsr-53-english"}
    assert layout.AUDIO_WEIGHTS == "wav2vec2-large-xlsr-53-english/model.safetensors"


def test_tiny_checkpoint_has_the_real_layout(tiny_checkpoint):
    files = layout.check_checkpoint(tiny_checkpoint)
    assert files.is_tiny
    index = json.loads((tiny_checkpoint / layout.DIT_INDEX).read_text())
    assert set(index["weight_map"].values()) == set(layout.DIT_SHARDS)


def test_missing_file_is_named_with_the_expected_layout(tiny_checkpoint, tmp_path):
    broken = tmp_path / "ckpt"
    broken.mkdir()
    for name in layout.REQUIRED_FILES:
        if name != layout.VAE:
            (broken / name).parent.mkdir(parents=True, exist_ok=True)
            (broken / name).write_bytes((tiny_checkpoint / name).read_bytes())
    with pytest.raises(CheckpointError) as err:
        layout.check_checkpoint(broken)
    assert "missing Wan2.1_VAE.pth" in str(err.value)
    assert "models_t5_umt5-xxl-enc-bf16.pth" in str(err.value)  # the layout is listed


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        layout.check_checkpoint(tmp_path / "nope")


def test_tiny_checkpoint_is_deterministic(tmp_path):
    from model_runtime.tiny_checkpoint import make_tiny_checkpoint

    a = make_tiny_checkpoint(tmp_path / "a", seed=7)
    b = make_tiny_checkpoint(tmp_path / "b", seed=7)
    for name in (*layout.DIT_SHARDS, layout.AUDIO_WEIGHTS):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
