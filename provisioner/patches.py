"""PATCH fields that may be left out but not cleared."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, Field


def _refuse_null(value: Any) -> Any:
    if value is None:
        raise ValueError("may not be null: leave the field out to keep its current value")
    return value


def _not_nullable(schema: dict[str, Any]) -> None:
    # Document the field as its type alone: null is refused, and leaving it out is the
    # only way to keep it.
    schema.pop("default", None)
    choices = [choice for choice in schema.pop("anyOf", ()) if choice != {"type": "null"}]
    if len(choices) == 1:
        schema.update(choices[0])
    elif choices:
        schema["anyOf"] = choices


T = TypeVar("T")
# A PATCH field whose column always holds a value: left out it is unchanged, and a null is
# refused here (stored, it would break every read of the record, or the database would
# refuse it). Fields that a null clears are plain ``X | None``.
Keep = Annotated[T | None, BeforeValidator(_refuse_null), Field(json_schema_extra=_not_nullable)]
