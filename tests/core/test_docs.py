"""Docs that must not fall behind the code."""

from __future__ import annotations

from pathlib import Path

from modules.settings import ServerSettings

DOCS = Path(__file__).parents[2] / "docs"


def test_every_server_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")

    for name in ServerSettings.model_fields:
        assert f"`MISP_ENRICH_{name.upper()}`" in text, name


def test_readme_shows_the_two_commands() -> None:
    text = (DOCS.parent / "README.md").read_text(encoding="utf-8")

    assert "make run" in text
    assert "make test" in text


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (DOCS.parent / ".ci" / "run").read_text(encoding="utf-8")
