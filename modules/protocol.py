"""Read every body shape MISP sends to /query into one typed request."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from modules.errors import BadRequest

# Keys of a query body that are never a simplified "<type>": value pair.
RESERVED_KEYS = frozenset(
    {
        "module",
        "config",
        "event_id",
        "attribute_uuid",
        "attribute",
        "object",
        "data",
        "persistent",
        "user",
        "timeout",
        "event",
    }
)


@cache
def describe_types() -> dict[str, Any]:
    """Return PyMISP's describeTypes: attribute types and their categories."""
    text = resources.files("pymisp").joinpath("data/describeTypes.json").read_text()
    return dict(json.loads(text)["result"])


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


class TagIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str


class AttributeIn(BaseModel):
    """The flat attribute record MISP sends (only what we use)."""

    model_config = ConfigDict(extra="ignore")

    type: str
    value: str
    uuid: str | None = None
    Tag: list[TagIn] = []
    data: str | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value


class ObjectIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    uuid: str | None = None
    Attribute: list[AttributeIn] = []
    Tag: list[TagIn] = []


class Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    module: str
    config: dict[str, Any] | None = None
    event_id: str | int | None = None
    attribute_uuid: str | None = None
    attribute: AttributeIn | None = None
    object: ObjectIn | None = None
    data: str | None = None
    persistent: int | bool | str | None = None


@dataclass
class Query:
    """One enrichment request, whichever MISP path built it."""

    module: str
    config: dict[str, str | None]
    event_id: str | None
    standard: bool
    attribute_type: str | None = None
    value: str | None = None
    reference_uuid: str | None = None
    tags: list[str] = field(default_factory=list)
    data: str | None = None
    object_name: str | None = None
    object_attributes: list[AttributeIn] = field(default_factory=list)
    # Every "<type>": value pair of a simplified body, in the body's order.
    pairs: list[tuple[str, str]] = field(default_factory=list)
    # Workflow steps send the MISP user and wait only the hover timeout.
    workflow: bool = False

    @property
    def hover(self) -> bool:
        """Tell whether MISP asks for a hover: its hover bodies carry no event."""
        return self.event_id is None

    @property
    def short_deadline(self) -> bool:
        """Tell whether MISP waits only its hover timeout for this answer."""
        return self.hover or self.workflow


def _config(raw: dict[str, Any] | None) -> dict[str, str | None]:
    """Return config values as MISP means them: strings, or None when unset."""
    if not raw:
        return {}
    values: dict[str, str | None] = {}
    for key, value in raw.items():
        if isinstance(value, bool):
            value = "1" if value else "0"
        if isinstance(value, list | dict):
            # Never echoed: the value may be a key pasted in the wrong shape.
            kind = "list" if isinstance(value, list) else "object"
            raise BadRequest(f"the setting '{key}' must be a string, not a {kind}")
        values[str(key)] = None if value is None or value == "" else _text(value)
    return values


def _pydantic_problem(err: ValidationError) -> str:
    first = err.errors(include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def _uuid(value: str | None, where: str) -> str | None:
    """Return a uuid as MISP writes it (lower case), or None when absent."""
    if value is None or value == "":
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequest(f"{where} is not a UUID") from None


def parse_query(body: Any) -> Query:
    """Parse a decoded JSON body into a Query, or raise BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with a 'module' key")
    if "module" not in body:
        raise BadRequest("the body has no 'module' key: name the module to run")
    try:
        parsed = Body.model_validate(body)
    except ValidationError as err:
        raise BadRequest(
            f"the body is not a valid query: {_pydantic_problem(err)}"
        ) from None

    event_id = _text(parsed.event_id) if parsed.event_id not in (None, "") else None
    query = Query(
        module=parsed.module,
        config=_config(parsed.config),
        event_id=event_id,
        standard=False,
        reference_uuid=_uuid(parsed.attribute_uuid, "attribute_uuid"),
        data=parsed.data,
        workflow="user" in body,
    )
    if parsed.attribute is not None:
        attribute = parsed.attribute
        query.standard = True
        query.attribute_type = attribute.type
        query.value = attribute.value
        query.reference_uuid = (
            _uuid(attribute.uuid, "attribute.uuid") or query.reference_uuid
        )
        query.tags = [tag.name for tag in attribute.Tag]
        query.data = attribute.data or parsed.data
        return query
    if parsed.object is not None:
        query.standard = True
        query.object_name = parsed.object.name
        query.object_attributes = parsed.object.Attribute
        query.reference_uuid = _uuid(parsed.object.uuid, "object.uuid")
        query.tags = [tag.name for tag in parsed.object.Tag]
        return query

    known_types = describe_types()["types"]
    extras = parsed.model_extra or {}
    for key, value in extras.items():
        if key in RESERVED_KEYS or key not in known_types:
            continue
        if not isinstance(value, str):
            raise BadRequest(f"the value of '{key}' must be a string")
        query.pairs.append((key, value))
    if query.pairs:
        query.attribute_type, query.value = query.pairs[0]
        return query
    raise BadRequest(
        "the body carries no attribute: expected 'attribute', 'object' or a "
        "'<attribute type>': '<value>' pair"
    )
