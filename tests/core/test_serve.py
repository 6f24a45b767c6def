"""The server as MISP meets it: a real process on a loopback port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
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
        "MISP_ENRICH_DEADLINE": "2",
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


def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modules.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_taken_port_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_cli("serve", "--port", str(port))

    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "pick another port with --port or MISP_ENRICH_PORT" in result.stderr
    assert "listening on" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MISP_ENRICH_DNS_CACHE_TTL", "1x", "MISP_ENRICH_DNS_CACHE_TTL: '1x' is not"),
        (
            "MISP_ENRICH_VIRUSTOTAL_RATE_LIMITS",
            "foo",
            "check MISP_ENRICH_VIRUSTOTAL_RATE_LIMITS",
        ),
        ("MISP_ENRICH_OTX_CONCURRENCY", "abc", "MISP_ENRICH_OTX_CONCURRENCY: 'abc'"),
        ("MISP_ENRICH_LOG_LEVEL", "loud", "MISP_ENRICH_LOG_LEVEL: Input should be"),
        ("MISP_ENRICH_DEADLINE", "inf", "MISP_ENRICH_DEADLINE: Input should be"),
        (
            "MISP_ENRICH_DNS_NAMESERVER",
            "garbage",
            "DNS: invalid setting nameserver (Plugin.Enrichment_dns_nameserver or "
            "MISP_ENRICH_DNS_NAMESERVER): Value error, 'garbage' is not IP",
        ),
    ],
)
def test_bad_settings_stop_the_start_with_one_line(
    variable: str, value: str, message: str
) -> None:
    result = run_cli("serve", "--port", str(free_port()), env={variable: value})

    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_port_out_of_range_is_one_clear_line(port: str) -> None:
    result = run_cli("serve", "--port", port)

    assert result.returncode == 2
    assert f"argument --port: '{port}' is not a port from 1 to 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_address_not_of_this_machine_gets_host_advice() -> None:
    # A documentation address: no interface has it, and no lookup is needed.
    result = run_cli(
        "serve", "--port", str(free_port()), env={"MISP_ENRICH_HOST": "192.0.2.1"}
    )

    assert result.returncode == 2
    assert "cannot listen on 192.0.2.1" in result.stderr
    assert "give an address of this machine with --host" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_deadline_past_misps_timeout_is_warned_about() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "modules.cli", "serve", "--port", str(port)],
        env={**os.environ, "MISP_ENRICH_DEADLINE": "12"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(200):
            try:
                get(f"http://127.0.0.1:{port}/healthcheck")
                break
            except OSError:
                time.sleep(0.05)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)

    assert "MISP_ENRICH_DEADLINE is 12 s, not below MISP's default" in err
    assert "stopping" in err


def test_a_body_that_does_not_decompress_is_a_json_400(server: tuple[str, Any]) -> None:
    url, log = server
    request = urllib.request.Request(
        url + "/query",
        data=b"notgzipdata",
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)

    assert caught.value.code == 400
    body = json.loads(caught.value.read())
    assert body["error"].startswith("the body could not be read")
    assert body["results"] == []
    assert get(url + "/healthcheck") == {"status": True}
    log.seek(0)
    assert "Traceback" not in log.read()


def _start_body(url: str) -> socket.socket:
    """Open a connection and send headers that promise more body than follows."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /query HTTP/1.1\r\nHost: misp\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"module": "dns"'
    )
    return sock


def test_a_body_that_never_ends_is_answered_at_the_deadline(
    server: tuple[str, Any],
) -> None:
    url, _ = server

    with _start_body(url) as sock:
        answer = sock.recv(4096).decode()

    assert answer.startswith("HTTP/1.1 408")
    assert answer.endswith(
        '{"error":"the body did not arrive within 2 s; send it at once","results":[]}'
    )


def test_a_client_gone_mid_body_leaves_no_traceback(server: tuple[str, Any]) -> None:
    url, log = server

    for _ in range(3):
        sock = _start_body(url)
        # Close with a reset, as a crashed client does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        sock.close()
    body = {
        "module": "dns",
        "event_id": "1",
        "attribute": {"type": "domain", "value": "example.com", "uuid": None},
    }
    answer = post(url + "/query", body)

    assert answer["results"]["Object"][0]["name"] == "dns-record"
    log.seek(0)
    text = log.read()
    assert "Traceback" not in text
    assert "ERROR" not in text
