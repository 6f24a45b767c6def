"""Every module, every declared input type, checked as MISP would take it."""

from __future__ import annotations

import importlib
import uuid
from typing import Any

import pytest

from modules.registry import discover
from tests.conformance import check_answer
from tests.fakes.http import FakeUpstream

MODULES = sorted(discover().modules.values(), key=lambda m: m.name)
# The input attribute as the event schema knows it.
SCHEMA_KEYS = {"id", "event_id", "category", "type", "value", "uuid", "to_ids"}
CASES = [(module, kind) for module in MODULES for kind in module.input_types]


def fake_for(name: str) -> Any:
    return importlib.import_module(f"tests.fakes.modules.{name}")


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_every_module_has_samples_for_every_input_type(module: Any) -> None:
    fake = fake_for(module.name)
    assert set(fake.SAMPLES) == set(module.input_types)


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
    fake = fake_for(module.name)
    if hasattr(fake, "install"):
        fake.install(upstream)
        monkeypatch.setenv(f"{module.env_prefix()}BASE_URL", upstream.url)
    client = await make_client()
    attribute = {
        "id": "4711",
        "event_id": "42",
        "object_id": "0",
        "category": "Network activity",
        "type": kind,
        "value": fake.SAMPLES[kind],
        "uuid": str(uuid.uuid4()),
        "to_ids": False,
        "distribution": "5",
        "Tag": [],
    }
    body = {
        "module": module.name,
        "event_id": "42",
        "attribute": attribute,
        "config": dict(fake.CONFIG),
    }

    response = await client.post("/query", json=body)
    answer = await response.json()

    assert response.status == 200
    check_answer(answer, {k: v for k, v in attribute.items() if k in SCHEMA_KEYS})
    results = answer["results"]
    assert results.get("Object") or results.get("Attribute"), answer
