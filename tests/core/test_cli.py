"""The misp-enrich command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modules.cli import main
from tests.fakes.dns import DNSServer


def test_modules_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["modules"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "TYPES", "HOVER", "SETTINGS"]
    dns = next(line for line in lines if line.startswith("dns "))
    assert "hostname, domain, domain|ip, ip-src, ip-dst" in dns
    assert dns.split()[-2:] == ["yes", "nameserver"]


def test_query_prints_misp_json(
    capsys: pytest.CaptureFixture[str], dns_server: DNSServer
) -> None:
    code = main(
        [
            "query",
            "dns",
            "hostname",
            "WWW.Example.com.",
            "--config",
            f"nameserver={dns_server.address}",
            "--uuid",
            "11111111-2222-4333-8444-555555555555",
        ]
    )

    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    [obj] = answer["results"]["Object"]
    assert obj["name"] == "dns-record"
    assert obj["ObjectReference"][0]["referenced_uuid"] == (
        "11111111-2222-4333-8444-555555555555"
    )


def test_query_summary(
    capsys: pytest.CaptureFixture[str], dns_server: DNSServer
) -> None:
    code = main(
        [
            "query",
            "dns",
            "domain",
            "example.com",
            "--config",
            f"nameserver={dns_server.address}",
            "--summary",
        ]
    )

    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("object dns-record\n  queried-domain: example.com\n")
    assert "  mx-record: mail.example.com\n" in out


def test_query_error_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["query", "dns", "btc", "1BoatSLRHtKNngkdXEeobR76b53LETtpyT", "--summary"]
    )

    assert code == 1
    assert capsys.readouterr().out.startswith(
        "error: dns does not handle attribute type"
    )


def test_bad_config_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "dns", "domain", "example.com", "--config", "oops"]) == 2
    assert "--config takes key=value" in capsys.readouterr().err


@pytest.mark.parametrize("args", [[], ["serve"], ["modules"], ["query"]])
def test_help_everywhere(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modules.cli", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0
    assert result.stdout.startswith("usage: misp-enrich")


def test_bad_server_setting_is_a_clear_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISP_ENRICH_PORT", "seventy")

    assert main(["modules"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "misp-enrich: MISP_ENRICH_PORT: Input should be a valid integer"
    )
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("backend", "says"),
    [
        ("memory", "cannot be inspected or cleared from the command line"),
        ("none", "the server keeps no cache to show or clear"),
    ],
)
@pytest.mark.parametrize("command", [["stats"], ["clear"], ["clear", "dns"]])
def test_cache_command_refuses_backends_it_cannot_reach(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    says: str,
    command: list[str],
) -> None:
    monkeypatch.setenv("MISP_ENRICH_CACHE", backend)

    code = main(["cache", *command])

    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert says in err


def test_cache_clear_names_the_known_modules(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MISP_ENRICH_CACHE", "sqlite")
    monkeypatch.setenv("MISP_ENRICH_CACHE_PATH", str(tmp_path / "cache.sqlite3"))

    unknown = main(["cache", "clear", "nosuchmodule"])
    err = capsys.readouterr().err
    known = main(["cache", "clear", "dns"])
    out = capsys.readouterr().out

    assert unknown == 2
    assert re.match(r"^no module named 'nosuchmodule'; known modules: .*\bdns\b", err)
    assert "virustotal" in err
    assert known == 0
    assert out.startswith("removed 0 entries for dns from sqlite at ")
