"""Discovery: built-in and third-party modules by one path; broken ones skipped."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from modules import registry as registry_module
from modules.catalogue import render
from modules.registry import ENTRY_POINT_GROUP, Registry, describe, discover
from tests.core.plugins.third_party import Echo
from tests.core.sample_modules import Slow

DOCS = Path(__file__).parents[2] / "docs" / "modules.md"


def fake_entry_points(*points: EntryPoint) -> Any:
    def entry_points(group: str) -> list[EntryPoint]:
        return [point for point in points if point.group == group]

    return entry_points


def test_built_in_modules_are_found() -> None:
    found = discover()

    assert "dns" in found.modules
    assert found.skipped == {}


def test_third_party_module_by_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    point = EntryPoint("echo", "tests.core.plugins.third_party:Echo", ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points(point))

    found = discover()

    assert found.modules["echo"] is Echo
    assert "dns" in found.modules


def test_entry_point_to_a_whole_module(monkeypatch: pytest.MonkeyPatch) -> None:
    point = EntryPoint("plugins", "tests.core.plugins.third_party", ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points(point))

    assert discover().modules["echo"] is Echo


def test_broken_module_is_skipped_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    point = EntryPoint("broken", "tests.core.plugins.broken", ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points(point))

    found = discover()

    assert "dns" in found.modules
    [(origin, reason)] = found.skipped.items()
    assert origin == "broken (tests.core.plugins.broken)"
    assert (
        reason == "import failed: No module named 'a_dependency_that_is_not_installed'"
    )
    assert "skipped module broken" in caplog.text


def test_name_clash_and_incomplete_declaration_are_skipped() -> None:
    found = Registry()
    found.add(Slow, "first")
    found.add(Slow, "second")

    class Nameless(Slow):
        name = ""

    found.add(Nameless, "third")

    assert list(found.modules) == ["slow"]
    assert found.skipped == {
        "second": "module name 'slow' is already taken",
        "third": "declares no name",
    }


def test_disabled_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    found = discover({"dns"})

    assert "dns" not in found.modules
    assert found.disabled == {"dns"}
    assert "disabled" in found.skipped["expansion.dns"]


def test_disabling_an_unknown_module_is_reported() -> None:
    found = discover({"dsn"})

    assert "dns" in found.modules
    assert found.skipped == {"MISP_ENRICH_DISABLED_MODULES=dsn": "no such module"}


def test_describe_is_misp_modules_shape() -> None:
    entry = describe(Slow)

    assert entry == {
        "name": "slow",
        "type": "expansion",
        "mispattributes": {
            "input": ["domain", "hostname"],
            "output": [],
            "format": "misp_standard",
        },
        "meta": {
            "name": "Slow Source",
            "version": "1.0",
            "author": "misp-enrich",
            "description": "Take longer than any deadline.",
            "module-type": ["expansion", "hover"],
            "config": ["seconds"],
            "logo": "",
            "requirements": [],
            "features": "",
            "references": [],
            "input": "domain, hostname",
            "output": "",
        },
    }


def test_catalogue_is_up_to_date() -> None:
    assert DOCS.read_text(encoding="utf-8") == render(), (
        "docs/modules.md is stale: run `make docs`"
    )


def test_every_module_is_in_the_catalogue() -> None:
    text = render()

    for name, module in discover().modules.items():
        assert f"## {name}: {module.title}" in text
        for key in module.config_keys():
            assert f"`{key}`" in text
