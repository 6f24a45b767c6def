"""Retries: transient failures again while the deadline allows, others never."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.engine.conftest import ask, lookup_module, query_body
from tests.fakes.http import FakeUpstream, Reply

PATH = "/v1/domains/example.com"
OK = Reply(body={"ips": ["192.0.2.1"]})


def sample(client: Any, name: str, **labels: str) -> float:
    value = client.engine.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_429_waits_for_retry_after_then_succeeds(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.sequence(
        f"GET {PATH}",
        [Reply(429, {"error": "slow down"}, headers={"Retry-After": "1"}), OK],
    )
    client = await serve(lookup_module(upstream.url))

    answer = await ask(client, query_body())

    assert "Object" in answer["results"]
    assert len(upstream.calls(PATH)) == 2
    assert (
        sample(
            client, "misp_enrich_upstream_retries_total", source="lookup", reason="429"
        )
        == 1
    )


async def test_429_with_a_retry_after_past_the_deadline_is_not_retried(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.sequence(
        f"GET {PATH}",
        [Reply(429, {"error": "quota"}, headers={"Retry-After": "3600"}), OK],
    )
    client = await serve(lookup_module(upstream.url))

    answer = await ask(client, query_body())

    assert answer == {
        "error": "Lookup: rate limited: HTTP 429 (quota); the API quota is used up, "
        "retry in 3600 s",
        "results": [],
    }
    assert len(upstream.calls(PATH)) == 1


async def test_503_then_200_is_retried(serve: Any, upstream: FakeUpstream) -> None:
    upstream.sequence(f"GET {PATH}", [Reply(503, {"error": "busy"}), OK])
    client = await serve(lookup_module(upstream.url), retry_backoff=0.01)

    answer = await ask(client, query_body())

    assert "Object" in answer["results"]
    assert len(upstream.calls(PATH)) == 2
    assert (
        sample(
            client, "misp_enrich_upstream_retries_total", source="lookup", reason="503"
        )
        == 1
    )


async def test_retries_stop_after_the_configured_count(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add(f"GET {PATH}", Reply(502, {"error": "bad gateway"}))
    client = await serve(lookup_module(upstream.url), retry_backoff=0.01, retries=2)

    answer = await ask(client, query_body())

    assert answer == {
        "error": "Lookup: unavailable: HTTP 502 (bad gateway)",
        "results": [],
    }
    assert len(upstream.calls(PATH)) == 3


@pytest.mark.parametrize("status", [401, 403, 404, 500])
async def test_no_retry_on_answers_that_will_not_change(
    serve: Any, upstream: FakeUpstream, status: int
) -> None:
    upstream.sequence(f"GET {PATH}", [Reply(status, {"error": "no"}), OK])
    client = await serve(lookup_module(upstream.url), retry_backoff=0.01)

    answer = await ask(client, query_body())

    assert len(upstream.calls(PATH)) == 1
    if status == 404:
        assert answer["comment"] == "example.com is unknown to the source"
    else:
        assert answer["results"] == [] and answer["error"].startswith("Lookup: ")


class DroppingServer:
    """An HTTP server that drops the first connections it gets, then answers."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.connections = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        if self.connections > self.drops:
            body = b'{"ips": ["192.0.2.7"]}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def dropping() -> AsyncIterator[DroppingServer]:
    # aiohttp itself resends a GET once after a drop; two drops reach us.
    server = DroppingServer(drops=2)
    await server.start()
    yield server
    await server.close()


async def test_a_dropped_connection_is_retried(
    serve: Any, dropping: DroppingServer
) -> None:
    client = await serve(lookup_module(dropping.url), retry_backoff=0.01)

    answer = await ask(client, query_body())

    assert "Object" in answer["results"], answer
    assert dropping.connections == 3
    assert (
        sample(
            client,
            "misp_enrich_upstream_retries_total",
            source="lookup",
            reason="connection",
        )
        >= 1
    )


async def test_a_refused_connection_is_not_retried(
    serve: Any, dropping: DroppingServer
) -> None:
    url = dropping.url
    await dropping.close()
    client = await serve(lookup_module(url), retry_backoff=0.01)

    answer = await ask(client, query_body())

    host = url.removeprefix("http://")
    assert answer == {
        "error": f"Lookup: unavailable: cannot connect to {host} (the connection "
        "was refused); check the network, HTTPS_PROXY or MISP_ENRICH_LOOKUP_BASE_URL",
        "results": [],
    }
    assert (
        sample(
            client,
            "misp_enrich_upstream_calls_total",
            source="lookup",
            outcome="upstream_unavailable",
        )
        == 1
    )
