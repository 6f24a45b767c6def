"""The server as MISP meets it: a real process on a loopback port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import misp_request
from tests.fakes.dns import DNSServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def server(dns_server: DNSServer, tmp_path: Any) -> Iterator[tuple[str, Any]]:
    port = free_port()
    env = {
        **os.environ,
        "MISP_ENRICH_PORT": str(port),
        "MISP_ENRICH_CACHE": "memory",
        "MISP_ENRICH_DNS_NAMESERVER": dns_server.address,
    }
    log = open(tmp_path / "server.log", "w+", encoding="utf-8")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "modules.cli", "serve", "--host", "127.0.0.1"],
        env=env,
        stderr=log,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if get(url + "/healthcheck") == {"status": True}:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("the server did not become healthy")
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_serves_misp_from_a_process(server: tuple[str, Any]) -> None:
    url, log = server

    modules = get(url + "/modules")
    answer = post(url + "/query", misp_request("composite-domain-ip"))
    hover = post(url + "/query", misp_request("hover-simplified"))
    unknown = post(url + "/query", misp_request("unknown-module"))

    assert "dns" in [m["name"] for m in modules]
    assert [o["name"] for o in answer["results"]["Object"]] == ["dns-record"] * 2
    assert hover["results"][0]["values"] == ["192.0.2.10: PTR www.example.com"]
    assert unknown["error"].startswith("unknown module 'does_not_exist'")
    log.seek(0)
    text = log.read()
    assert "listening on http://127.0.0.1:" in text
    assert "modules loaded: " in text and "dns" in text
    assert "POST /query dns 200" in text
