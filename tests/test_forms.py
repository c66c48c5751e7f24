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
    assert options["sample_steps"]["anyOf"][0]["maximum"] == 50
