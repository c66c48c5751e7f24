import pytest

from model_runtime.request import PRESETS, GenerationRequest, output_size
from s2v.errors import InputError


def _request(**overrides):
    return GenerationRequest.parse({"image_path": "a.jpg", "audio_path": "a.wav", **overrides})


def test_defaults_are_the_seeds():
    request = _request()
    assert (request.prompt, request.resolution, request.sample_steps) == ("A person speaking naturally", "480p", 20)


@pytest.mark.parametrize(
    "field, value",
    [("sample_steps", 14), ("sample_steps", 51), ("resolution", "1080p"), ("seed", -1), ("guidance_scale", 0.5)],
)
def test_bad_values_name_field_and_value(field, value):
    with pytest.raises(InputError) as err:
        _request(**{field: value})
    assert err.value.field == field
    assert err.value.value == value
    assert field in str(err.value) and repr(value) in str(err.value)


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
