"""How a flow parameter shows in the Prefect UI's form: a title in words, or not at all.

Prefect titles a top-level field with the parameter's name (`max_wait_hours`); a title in the field's
schema replaces it. `Internal` parameters stay accepted from scripts, parent flows and `s2v run`
(Prefect rejects unknown ones), but are left out of the form: a person sets them on the worker
(S2V_CHECKPOINT, S2V_MODEL_SERVER, ... or the work pool's job variables), not per run.
"""
from __future__ import annotations

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema as Internal

from model_runtime.request import GenerationOptions

__all__ = ["Internal", "options_field", "titled"]


def titled(title: str, **limits):
    """A Field for `Annotated[...]` that titles the form's field and keeps its limits."""
    return Field(json_schema_extra={"title": title}, **limits)


def options_field(title: str = "Generation options for rows that leave them empty"):
    """The generation options' Field: its form starts with the options that have a value, the others left
    empty (a null the form sent back would be refused as "not an integer")."""
    return Field(json_schema_extra={"title": title, "default": GenerationOptions().model_dump(mode="json", exclude_none=True)})
