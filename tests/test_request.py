import pytest

from model_runtime.option_files import check_files
from model_runtime.request import (
    MODES,
    OFFICIAL_SIZES,
    PRESETS,
    GenerationRequest,
    output_size,
    size_preset,
)
from s2v.errors import InputError
from tests.conftest import heavy_imports_after


def _request(**overrides):
    return GenerationRequest.parse({"image_path": "a.jpg", "audio_path": "a.wav", **overrides})


def test_defaults_are_the_seeds():
    request = _request()
    assert (request.prompt, request.resolution, request.mode) == ("A person speaking naturally", "480p", "standard")
    assert (request.effective_steps, request.effective_guidance) == (20, 4.5)
    assert request.effective_shift(PRESETS["480p"]) == 3.0 and request.effective_shift(PRESETS["720p"]) == 5.0


def test_fast_mode_defaults_to_the_lightning_schedule_and_explicit_values_win():
    fast = _request(mode="fast", lora="/loras/lightx2v.safetensors")
    assert (fast.effective_steps, fast.effective_guidance, fast.effective_shift(PRESETS["720p"])) == (4, 1.0, 5.0)
    assert MODES["fast"].steps == 4
    tuned = _request(mode="fast", lora="/l.safetensors", sample_steps=6, guidance_scale=2.0, sample_shift=8.0)
    assert (tuned.effective_steps, tuned.effective_guidance, tuned.effective_shift(PRESETS["480p"])) == (6, 2.0, 8.0)
    # The official generate.py's s2v-14B defaults: guidance 4.5, shift 3 for every size.
    assert _request(size="1280*720").effective_shift(size_preset("1280*720")) == 3.0


@pytest.mark.parametrize(
    "field, value",
    [("sample_steps", 1), ("sample_steps", 51), ("resolution", "1080p"), ("seed", -1), ("guidance_scale", 0.5),
     ("size", "1920*1080"), ("size", "1280x720"), ("mode", "turbo"), ("sample_shift", 0.5), ("sample_shift", 25.0),
     ("lora_strength", -0.5), ("lora_strength", 5.0), ("max_segments", 0), ("start_from_ref", "maybe")],
)
def test_bad_values_name_field_and_value(field, value):
    with pytest.raises(InputError) as err:
        _request(**{field: value})
    assert err.value.field == field
    assert err.value.value == value
    assert field in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize("overrides, steps", [({"sample_steps": 4}, 4), ({"sample_steps": 14}, 14), ({"mode": "fast"}, 4)])
def test_fewer_than_15_steps_need_a_lora(overrides, steps):
    with pytest.raises(InputError) as err:
        _request(**overrides)
    assert (err.value.field, err.value.value) == ("sample_steps", steps)
    assert "LoRA" in err.value.reason
    assert _request(**overrides, lora="/l.safetensors").effective_steps == steps
    assert _request(sample_steps=15, mode="fast").effective_guidance == 1.0  # no LoRA needed from 15 steps


def test_unknown_field_is_refused():
    with pytest.raises(InputError) as err:
        _request(sample_stepz=20)
    assert err.value.field == "sample_stepz"


@pytest.mark.parametrize(
    "size, resolution, expected",
    [((832, 480), "480p", (832, 480)), ((1280, 720), "720p", (1280, 720)), ((480, 832), "480p", (480, 832))],
)
def test_output_size_keeps_aspect_under_max_area(size, resolution, expected):
    assert output_size(*size, PRESETS[resolution]) == expected


@pytest.mark.parametrize("size", [(3000, 4000), (4000, 3000), (1000, 1000), (641, 479)])
def test_output_size_is_multiple_of_16_within_area(size):
    width, height = output_size(*size, PRESETS["480p"])
    assert width % 16 == 0 and height % 16 == 0
    assert width * height <= PRESETS["480p"].max_area
    assert abs(width / height - size[0] / size[1]) < 0.1


@pytest.mark.parametrize("size", sorted(OFFICIAL_SIZES))
def test_each_official_size_is_a_max_area_with_the_images_aspect(size):
    width, height = OFFICIAL_SIZES[size]
    preset = size_preset(size)
    assert preset.max_area == width * height
    # An image of the size's own shape, either way round, gives exactly that size turned to match the image.
    assert output_size(width // 2, height // 2, preset) == (width, height)
    assert output_size(height * 2, width * 2, preset) == (height, width)
    for image in ((768, 1024), (1080, 1920), (1024, 768), (1920, 1080)):  # portrait 3:4, 9:16; landscape 4:3, 16:9
        out_width, out_height = output_size(*image, preset)
        assert (out_width > out_height) == (image[0] > image[1]), (image, out_width, out_height)
        assert out_width % 16 == 0 and out_height % 16 == 0
        assert out_width * out_height <= preset.max_area
        assert out_width * out_height > 0.9 * preset.max_area  # rounding to 16 loses a little, never much
        assert abs(out_width / out_height - image[0] / image[1]) < 0.05


def _lora_file(path, keys=("diffusion_model.blocks.0.self_attn.q.lora_up.weight",)):
    import numpy as np
    from safetensors.numpy import save_file

    save_file({key: np.zeros((2, 2), np.float32) for key in keys}, str(path))
    return str(path)


def test_file_options_are_checked_before_the_model(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    no_lora = _lora_file(tmp_path / "plain.safetensors", keys=("blocks.0.self_attn.q.weight",))
    fake_video = tmp_path / "pose.mp4"
    fake_video.write_text("not a video")
    cases = [
        ("lora", "relative/lora.safetensors", "absolute"),
        ("lora", str(tmp_path / "missing.safetensors"), "not found"),
        ("lora", str(text), ".safetensors"),
        ("lora", str(garbage), "not a readable safetensors"),
        ("lora", no_lora, "no LoRA tensors"),
        ("pose_video", str(tmp_path / "missing.mp4"), "not found"),
        ("pose_video", str(text), "must be a video"),
        ("pose_video", str(fake_video), "no video stream"),
    ]
    for field, value, reason in cases:
        extra = {"lora": "/l.safetensors"} if field == "lora" else {}
        request = _request(**{**extra, field: value})
        with pytest.raises(InputError) as err:
            check_files(request)
        assert (err.value.field, err.value.value) == (field, value)
        assert reason in err.value.reason, err.value.reason
    check_files(_request(lora=_lora_file(tmp_path / "ok.safetensors")))


def test_file_checks_need_no_torch(tmp_path):
    lora = _lora_file(tmp_path / "ok.safetensors")
    code = (
        "from model_runtime.option_files import check_files\nfrom model_runtime.request import GenerationRequest\n"
        f"check_files(GenerationRequest.parse({{'image_path': 'a', 'audio_path': 'b', 'lora': {lora!r}}}))"
    )
    assert "torch" not in heavy_imports_after(code, timeout=120)


def test_results_of_older_servers_still_parse():
    from model_runtime.request import GenerationResult

    fields = {name: info for name, info in GenerationResult.model_fields.items() if info.is_required()}
    new = {"mode", "size", "sample_shift", "lora", "lora_strength", "lora_tensors", "lora_switch_s", "max_segments",
           "start_from_ref", "pose_video"}
    assert not new & set(fields)
