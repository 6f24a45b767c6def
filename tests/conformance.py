"""Check an answer the way MISP would take it: templates, types, schema."""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
from pymisp import MISPEvent

from modules.protocol import describe_types


@cache
def template(name: str) -> dict[str, Any]:
    path = resources.files("pymisp").joinpath(
        f"data/misp-objects/objects/{name}/definition.json"
    )
    return dict(json.loads(path.read_text()))


@cache
def event_schema() -> dict[str, Any]:
    text = resources.files("pymisp").joinpath("data/schema.json").read_text()
    return dict(json.loads(text))


def check_object(obj: dict[str, Any]) -> None:
    """Assert an object matches its misp-objects template."""
    definition = template(obj["name"])
    assert obj["template_uuid"] == definition["uuid"], obj["name"]
    assert str(obj["template_version"]) == str(definition["version"]), obj["name"]
    assert obj["meta-category"] == definition["meta-category"], obj["name"]
    assert obj["uuid"]
    relations: dict[str, int] = {}
    for attribute in obj["Attribute"]:
        relation = attribute["object_relation"]
        assert relation in definition["attributes"], f"{obj['name']}.{relation}"
        where = f"{obj['name']}.{relation}"
        expected = definition["attributes"][relation]
        assert attribute["type"] == expected["misp-attribute"], where
        assert attribute["value"] not in ("", None), where
        check_category(attribute)
        relations[relation] = relations.get(relation, 0) + 1
    for relation, count in relations.items():
        if count > 1:
            assert definition["attributes"][relation].get("multiple"), (
                f"{obj['name']}.{relation} appears {count} times but is not multiple"
            )
    for relation in definition.get("required", []):
        assert relation in relations, f"{obj['name']} lacks required {relation}"
    one_of = definition.get("requiredOneOf", [])
    if one_of:
        needs = f"{obj['name']} needs one of {one_of}"
        assert any(relation in relations for relation in one_of), needs


def check_category(attribute: dict[str, Any]) -> None:
    """Assert the attribute's type and category exist and go together."""
    types = describe_types()
    assert attribute["type"] in types["types"], attribute["type"]
    category = attribute.get("category")
    assert category in types["categories"], category
    assert attribute["type"] in types["category_type_mappings"][category], (
        f"type {attribute['type']} is not allowed in category {category}"
    )


def check_answer(
    body: dict[str, Any],
    input_attribute: dict[str, Any] | None = None,
    input_object: dict[str, Any] | None = None,
) -> MISPEvent:
    """Assert a misp_standard answer is one MISP accepts; return it as an event.

    The enriched attribute or object is in the event too, as in MISP.
    """
    assert "error" not in body, body.get("error")
    results = body["results"]
    assert isinstance(results, dict)
    objects = results.get("Object", [])
    attributes = results.get("Attribute", [])
    given = [item for item in (input_attribute, input_object) if item is not None]
    known_uuids = {item["uuid"] for item in given} | {obj["uuid"] for obj in objects}
    for obj in objects:
        check_object(obj)
        for reference in obj.get("ObjectReference", []):
            assert reference["referenced_uuid"] in known_uuids, reference
            assert reference["object_uuid"] == obj["uuid"]
            assert reference["relationship_type"]
    for attribute in attributes:
        check_category(attribute)
    for tag in results.get("Tag", []):
        assert tag["name"]

    event = MISPEvent()
    # PyMISP consumes the dicts it loads; keep the caller's answer whole.
    event.load(
        copy.deepcopy(
            {
                "Event": {
                    "info": "conformance",
                    "Attribute": [
                        *([input_attribute] if input_attribute else []),
                        *attributes,
                    ],
                    "Object": [*([input_object] if input_object else []), *objects],
                    "Tag": results.get("Tag", []),
                }
            }
        )
    )
    validate_event(json.loads(event.to_json()))
    return event


def check_simplified(body: dict[str, Any]) -> MISPEvent:
    """Assert a simplified answer is one MISP accepts; return it as an event.

    MISP turns each value into an attribute of the group's first type, in the
    type's default category unless the group names one.
    """
    assert "error" not in body, body.get("error")
    results = body["results"]
    assert isinstance(results, list) and results, body
    types = describe_types()
    attributes = []
    for group in results:
        assert group["types"] and all(t in types["types"] for t in group["types"])
        assert group["values"], group
        kind = group["types"][0]
        categories = group.get("categories") or [
            types["sane_defaults"][kind]["default_category"]
        ]
        for value in group["values"]:
            assert isinstance(value, str) and value, group
            attribute = {"type": kind, "value": value, "category": categories[0]}
            check_category(attribute)
            attributes.append({**attribute, "comment": group.get("comment", "")})
    event = MISPEvent()
    event.load({"Event": {"info": "conformance", "Attribute": attributes}})
    validate_event(json.loads(event.to_json()))
    return event


def validate_event(event: dict[str, Any]) -> None:
    """Validate an event against the MISP JSON schema PyMISP ships.

    That schema predates objects: the event is checked without them, and every
    object attribute against the schema's attribute definition, less the
    object_relation the schema does not know.
    """
    schema = event_schema()
    objects = event.pop("Object", [])
    jsonschema.validate({"Event": event}, schema)
    attribute_schema = {"$ref": "#/defs/attribute", "defs": schema["defs"]}
    for obj in objects:
        for attribute in obj["Attribute"]:
            plain = {k: v for k, v in attribute.items() if k != "object_relation"}
            jsonschema.validate(plain, attribute_schema)


def all_uuids(body: dict[str, Any]) -> set[str]:
    """Return every uuid an answer hands out (objects, attributes, references)."""
    found: set[str] = set()
    for obj in body["results"].get("Object", []):
        found.add(obj["uuid"])
        found.update(a["uuid"] for a in obj["Attribute"])
        found.update(r["uuid"] for r in obj.get("ObjectReference", []))
    return found
