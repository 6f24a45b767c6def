"""The misp-enrich command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modules.cli import main
from tests.fakes.dns import DNSServer


def test_modules_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["modules"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "TYPES", "HOVER", "CONFIG"]
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
