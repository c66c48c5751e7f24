"""The forms the Prefect UI renders from the deployments' flow parameters (no server needed: the schema is
built from the flows' signatures and docstrings exactly as `prefect deploy` builds it)."""
import pytest
from prefect.utilities.callables import parameter_schema

from flows.batch import batch, retry_failed
from flows.clip import clip
from flows.nightly import nightly
from flows.retry_flagged import retry_flagged
from flows.row import row
from flows.scale_out import scale_out


def _schema(flow) -> dict:
    return parameter_schema(flow).model_dump()


@pytest.mark.parametrize("flow", [clip, batch, retry_failed, retry_flagged, scale_out, nightly, row], ids=lambda f: f.name)
def test_plain_text_fields_have_no_none_switch_and_every_field_is_explained(flow):
    for name, field in _schema(flow)["properties"].items():
        assert "anyOf" not in field or all(kind.get("type") != "null" for kind in field["anyOf"]), name
        assert field.get("description"), f"{flow.name}.{name} has no description in the form"


def test_the_clip_form_shows_limits_and_keeps_the_test_model_out():
    properties = _schema(clip)["properties"]
    assert properties["resolution"]["enum"] == ["480p", "720p"]
    assert (properties["sample_steps"]["minimum"], properties["sample_steps"]["maximum"]) == (0, 50)
    assert (properties["seed"]["minimum"], properties["seed"]["maximum"]) == (-1, 2**32 - 1)
    assert properties["size"]["enum"][0] == "" and "832*480" in properties["size"]["enum"]
    assert properties["mode"]["enum"] == ["standard", "fast"]
    assert "portrait" in properties["image"]["description"] and "-1: random" in properties["seed"]["description"]


def test_the_batch_form_explains_the_manifest_with_an_example():
    schema = _schema(batch)
    assert schema["required"] == ["manifest"]
    assert "image,audio,prompt" in schema["properties"]["manifest"]["description"]
    options = schema["definitions"]["GenerationOptions"]["properties"]
    assert options["resolution"]["enum"] == ["480p", "720p"]
    assert (options["sample_steps"]["minimum"], options["sample_steps"]["maximum"]) == (2, 50)


NUMERIC_OPTIONS = ("sample_steps", "sample_shift", "seed", "guidance_scale", "max_segments")


@pytest.mark.parametrize("flow", [batch, scale_out, nightly], ids=lambda f: f.name)
def test_numeric_options_are_plain_numbers_left_empty_for_the_default(flow):
    """No "int | None" switch ("Property is type None"): one number field, and empty (left out) is the default."""
    schema = _schema(flow)
    options = schema["definitions"]["GenerationOptions"]["properties"]
    for name in NUMERIC_OPTIONS:
        assert "anyOf" not in options[name] and options[name]["type"] in ("integer", "number"), options[name]
        assert "default" not in options[name], name  # a prefilled null would be sent back and refused
    assert not set(NUMERIC_OPTIONS) & set(schema["properties"]["defaults"]["default"])
    chosen = flow.validate_parameters({**_required(flow), "defaults": {"sample_steps": 15}})["defaults"]
    assert chosen.sample_steps == 15 and chosen.seed is None and chosen.max_segments is None


def _required(flow) -> dict:
    return {"batch": {"manifest": "m.csv"}, "scale_out": {"manifest": "m.csv"}, "nightly": {"inbox": "inbox"}}[flow.fn.__name__]


@pytest.mark.parametrize("flow, internal", [
    (batch, {"lookahead": 3, "checkpoint": "/ckpt", "model_server": "/run/s2v.sock"}),
    (retry_failed, {"lookahead": 3, "checkpoint": "/ckpt", "model_server": "/run/s2v.sock"}),
    (retry_flagged, {"lookahead": 3, "checkpoint": "/ckpt", "model_server": "/run/s2v.sock"}),
    (clip, {"checkpoint": "/ckpt", "model_server": "/run/s2v.sock"}),
    (scale_out, {"checkpoint": "/ckpt", "model_server": "/run/s2v.sock", "row_deployment": "s2v-row/row", "shards": 4}),
    (nightly, {"checkpoint": "/ckpt", "model_server": "/run/s2v.sock", "row_deployment": "s2v-row/row", "shards": 4}),
], ids=lambda value: getattr(value, "name", ""))
def test_internal_parameters_are_out_of_the_form_but_scripts_that_pass_them_still_run(flow, internal):
    assert not set(internal) & set(_schema(flow)["properties"])
    required = {"s2v-clip": {"image": "a.jpg", "audio": "a.wav"}, "s2v-retry-failed": {"output": "out"},
                "s2v-retry-flagged": {"output": "out"}, "s2v-batch": {"manifest": "m.csv"},
                "s2v-scale-out": {"manifest": "m.csv"}, "s2v-nightly": {"inbox": "inbox"}}[flow.name]
    accepted = flow.validate_parameters({**required, **internal})
    assert {name: accepted[name] for name in internal} == internal
    if "lookahead" in internal:  # still checked: a script's typo is refused, not run
        with pytest.raises(Exception, match="lookahead"):
            flow.validate_parameters({**required, "lookahead": 99})


def test_one_range_per_option_and_titles_in_words():
    clip_form = _schema(clip)["properties"]
    for flow in (batch, scale_out, nightly):
        options = _schema(flow)["definitions"]["GenerationOptions"]["properties"]
        assert (options["lora_strength"]["minimum"], options["lora_strength"]["maximum"]) == (0, 4)
    assert (clip_form["lora_strength"]["minimum"], clip_form["lora_strength"]["maximum"]) == (0, 4)
    for flow in (clip, batch, retry_failed, retry_flagged, scale_out, nightly):
        for name, field in _schema(flow)["properties"].items():
            assert "_" not in field["title"] and field["title"][0].isupper(), (flow.name, name, field["title"])
