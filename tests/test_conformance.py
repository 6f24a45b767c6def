"""Every module, every declared input type, checked as MISP would take it."""

from __future__ import annotations

import importlib
import uuid
from typing import Any

import pytest

from modules.protocol import describe_types
from modules.registry import discover
from tests.conformance import check_answer, check_simplified, template
from tests.fakes.http import FakeUpstream

MODULES = sorted(discover().modules.values(), key=lambda m: m.name)
# The input attribute as the event schema knows it.
SCHEMA_KEYS = {"id", "event_id", "category", "type", "value", "uuid", "to_ids"}
CASES = [(module, kind) for module in MODULES for kind in module.input_types]
HOVER_CASES = [
    (module, kind)
    for module in MODULES
    if "hover" in module.module_types
    for kind in module.input_types
]
OBJECT_CASES = [(module, name) for module in MODULES for name in module.input_objects]


def fake_for(name: str) -> Any:
    return importlib.import_module(f"tests.fakes.modules.{name}")


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_every_module_has_samples_for_every_input_type(module: Any) -> None:
    fake = fake_for(module.name)
    assert set(fake.SAMPLES) == set(module.input_types)
    assert set(getattr(fake, "OBJECT_SAMPLES", {})) == set(module.input_objects)


def input_attribute(kind: str, value: str) -> dict[str, Any]:
    """Return an attribute as MISP sends it, uuid and tags included."""
    return {
        "id": "4711",
        "event_id": "42",
        "object_id": "0",
        "category": "Network activity",
        "type": kind,
        "value": value,
        "uuid": str(uuid.uuid4()),
        "to_ids": False,
        "distribution": "5",
        "Tag": [],
    }


async def client_for(
    module: Any, make_client: Any, upstream: FakeUpstream, monkeypatch: Any
) -> Any:
    """Return a client whose module talks to its fake upstream, if it has one."""
    fake = fake_for(module.name)
    if hasattr(fake, "install"):
        fake.install(upstream)
        monkeypatch.setenv(f"{module.env_prefix()}BASE_URL", upstream.url)
    return await make_client()


async def post(client: Any, body: dict[str, Any]) -> Any:
    response = await client.post("/query", json=body)
    assert response.status == 200
    return await response.json()


def declared(module: Any, event: Any) -> None:
    """Assert the answer holds no attribute type the module does not declare."""
    answered = {a.type for a in event.attributes} | {
        a.type for obj in event.objects for a in obj.attributes
    }
    assert answered <= set(module.output_types) | {"text"}, answered - set(
        module.output_types
    )


async def ask_about(
    module: Any,
    kind: str,
    make_client: Any,
    upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    *,
    hover: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send a sample of the kind as the enrich button (or the popup) does.

    Return the answer and the input attribute as the event schema knows it.
    """
    fake = fake_for(module.name)
    client = await client_for(module, make_client, upstream, monkeypatch)
    attribute = input_attribute(kind, fake.SAMPLES[kind])
    body = {"module": module.name, "attribute": attribute, "config": dict(fake.CONFIG)}
    if hover:
        # The popup's body: no event, no data, persistent set.
        del attribute["event_id"]
        body["persistent"] = 1
    else:
        body["event_id"] = "42"

    answer = await post(client, body)
    return answer, {k: v for k, v in attribute.items() if k in SCHEMA_KEYS}


@pytest.mark.parametrize(
    ("module", "kind"), CASES, ids=[f"{m.name}-{k}" for m, k in CASES]
)
async def test_answer_is_valid_misp(
    module: Any,
    kind: str,
    make_client: Any,
    upstream: FakeUpstream,
    dns_env: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer, plain = await ask_about(module, kind, make_client, upstream, monkeypatch)

    results = answer["results"]
    assert results.get("Object") or results.get("Attribute"), answer
    event = check_answer(answer, plain)
    # The event holds the input attribute too; the module made the rest.
    event.attributes.pop(0)
    declared(module, event)


@pytest.mark.parametrize(
    ("module", "kind"), HOVER_CASES, ids=[f"{m.name}-{k}" for m, k in HOVER_CASES]
)
async def test_hover_answer_is_valid_misp(
    module: Any,
    kind: str,
    make_client: Any,
    upstream: FakeUpstream,
    dns_env: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer, plain = await ask_about(
        module, kind, make_client, upstream, monkeypatch, hover=True
    )

    check_answer(answer, plain)
    summary = answer["results"]["Attribute"][0]
    assert summary["type"] == "text"
    assert summary["value"].strip(), summary


@pytest.mark.parametrize(
    ("module", "name"), OBJECT_CASES, ids=[f"{m.name}-{n}" for m, n in OBJECT_CASES]
)
async def test_object_enrichment_answer_is_valid_misp(
    module: Any,
    name: str,
    make_client: Any,
    upstream: FakeUpstream,
    dns_env: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_for(module.name)
    client = await client_for(module, make_client, upstream, monkeypatch)
    definition = template(name)
    defaults = describe_types()["sane_defaults"]
    attributes = []
    for relation, value in fake.OBJECT_SAMPLES[name]:
        kind = definition["attributes"][relation]["misp-attribute"]
        attribute = input_attribute(kind, value)
        attribute.update(
            object_relation=relation, category=defaults[kind]["default_category"]
        )
        attributes.append(attribute)
    obj = {
        "id": "77",
        "event_id": "42",
        "name": name,
        "meta-category": definition["meta-category"],
        "uuid": str(uuid.uuid4()),
        "template_uuid": definition["uuid"],
        "template_version": str(definition["version"]),
        "distribution": "5",
        "Attribute": attributes,
    }
    body = {
        "module": module.name,
        "event_id": "42",
        "object": obj,
        "config": dict(fake.CONFIG),
    }

    answer = await post(client, body)

    plain = {
        **{k: v for k, v in obj.items() if k != "Attribute"},
        "Attribute": [
            {k: v for k, v in a.items() if k in SCHEMA_KEYS | {"object_relation"}}
            for a in attributes
        ],
    }
    check_answer(answer, input_object=plain)
    references = [
        reference["referenced_uuid"]
        for item in answer["results"]["Object"]
        for reference in item.get("ObjectReference", [])
    ]
    assert obj["uuid"] in references


@pytest.mark.parametrize(
    ("module", "kind"), CASES, ids=[f"{m.name}-{k}" for m, k in CASES]
)
async def test_simplified_answer_is_valid_misp(
    module: Any,
    kind: str,
    make_client: Any,
    upstream: FakeUpstream,
    dns_env: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_for(module.name)
    client = await client_for(module, make_client, upstream, monkeypatch)
    body = {
        "module": module.name,
        "event_id": "42",
        "attribute_uuid": str(uuid.uuid4()),
        kind: fake.SAMPLES[kind],
        "config": dict(fake.CONFIG),
    }

    answer = await post(client, body)

    check_simplified(answer)
