"""A fleet on one Redis: shared cache, limits, coalescing and breakers; outages."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.engine.conftest import (
    KEY,
    RedisServer,
    ask,
    free_port,
    lookup_module,
    query_body,
)
from tests.fakes.dns import DNSServer
from tests.fakes.http import FakeUpstream, Reply

DOMAINS = [f"site{i}.example" for i in range(6)]
ADDRESSES = [f"192.0.2.{i}" for i in range(10, 15)]


def answer_all(upstream: FakeUpstream) -> None:
    for domain in DOMAINS:
        upstream.add(f"GET /v1/domains/{domain}", {"ips": ["192.0.2.1"]})


def limited_body(domain: str) -> dict[str, Any]:
    return {**query_body(domain), "module": "limited"}


def fleet(redis_url: str, prefix: str, **overrides: Any) -> dict[str, Any]:
    return {
        "cache": "redis",
        "redis_url": redis_url,
        "redis_prefix": prefix,
        **overrides,
    }


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# Replicas in one process, sharing Redis.


async def test_replicas_share_the_cache_without_keys_in_clear(
    serve: Any, upstream: FakeUpstream, redis_url: str, redis_prefix: str
) -> None:
    answer_all(upstream)
    module = lookup_module(upstream.url)
    first = await serve(module, **fleet(redis_url, redis_prefix))
    second = await serve(module, **fleet(redis_url, redis_prefix))

    one = await ask(first, query_body(DOMAINS[0]))
    two = await ask(second, query_body(DOMAINS[0]))

    assert "Object" in one["results"] and "Object" in two["results"]
    assert len(upstream.calls()) == 1
    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.scan_iter(match=f"{redis_prefix}:*")]
    client.close()
    assert any(k.startswith(f"{redis_prefix}:cache:lookup:v1:") for k in keys), keys
    assert not any(KEY in k or "site0" in k for k in keys)


async def test_replicas_share_breakers(
    serve: Any, upstream: FakeUpstream, redis_url: str, redis_prefix: str
) -> None:
    for domain in DOMAINS:
        upstream.add(f"GET /v1/domains/{domain}", Reply(503, {"error": "down"}))
    module = lookup_module(upstream.url)
    settings = fleet(redis_url, redis_prefix, retries=0, breaker_threshold=3)
    first = await serve(module, **settings)
    second = await serve(module, **settings)

    for domain in DOMAINS[:3]:
        await ask(first, query_body(domain))
    refused = await ask(second, query_body(DOMAINS[3]))
    second.engine.breakers.cooldown = 0
    answer_all(upstream)
    probe = await ask(second, query_body(DOMAINS[4]))
    after = await ask(first, query_body(DOMAINS[5]))

    assert refused["error"].startswith(
        "Lookup: temporarily disabled after repeated failures: last failure: "
        "unavailable: HTTP 503 (down); next probe in"
    )
    assert "Object" in probe["results"] and "Object" in after["results"]
    assert len(upstream.calls()) == 5


async def test_replicas_share_rate_limits(
    serve: Any, upstream: FakeUpstream, redis_url: str, redis_prefix: str
) -> None:
    answer_all(upstream)
    module = lookup_module(upstream.url, rate_limits=("2/minute",))
    first = await serve(module, **fleet(redis_url, redis_prefix))
    second = await serve(module, **fleet(redis_url, redis_prefix))

    answers = [
        await ask(client, query_body(domain))
        for client, domain in zip([first, second] * 2, DOMAINS, strict=False)
    ]

    assert [("error" in a) for a in answers] == [False, False, True, True]
    assert len(upstream.calls()) == 2


# Replicas as real processes.


class Replica:
    """A `misp-enrich serve` process on a loopback port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "w", encoding="utf-8")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modules.cli", "serve", "--port", str(self.port)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    async def ready(self, session: aiohttp.ClientSession) -> None:
        for _ in range(300):
            try:
                async with session.get(self.url + "/healthcheck") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        pytest.fail(f"replica on port {self.port} did not become healthy")

    async def query(
        self, session: aiohttp.ClientSession, body: dict[str, Any]
    ) -> dict[str, Any]:
        async with session.post(self.url + "/query", json=body) as response:
            assert response.status == 200
            return await response.json()  # type: ignore[no-any-return]

    async def metric(self, session: aiohttp.ClientSession, name: str) -> float:
        async with session.get(self.url + "/metrics") as response:
            text = await response.text()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self._log.close()


@pytest.fixture
async def replicas(
    dns_server: DNSServer, redis_url: str, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Return a factory of two started replicas on the shared Redis."""
    started: list[Replica] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))

    async def start(**env: str) -> tuple[aiohttp.ClientSession, list[Replica]]:
        base = {
            "MISP_ENRICH_CACHE": "redis",
            "MISP_ENRICH_REDIS_URL": redis_url,
            "MISP_ENRICH_REDIS_PREFIX": redis_prefix,
            "MISP_ENRICH_DNS_NAMESERVER": dns_server.address,
            "MISP_ENRICH_LOG_LEVEL": "INFO",
        }
        for index in range(2):
            started.append(Replica({**base, **env}, tmp_path / f"replica{index}.log"))
        await asyncio.gather(*(replica.ready(session) for replica in started))
        return session, started

    yield start
    for replica in started:
        replica.stop()
    await session.close()


def ptr_body(address: str) -> dict[str, Any]:
    return {"module": "dns", "event_id": "1", "ip-src": address}


async def test_two_processes_share_rate_limits(
    replicas: Callable[..., Any], dns_server: DNSServer
) -> None:
    session, (first, second) = await replicas(MISP_ENRICH_DNS_RATE_LIMITS="3/minute")

    answers = [
        await replica.query(session, ptr_body(address))
        for replica, address in zip([first, second] * 3, ADDRESSES, strict=False)
    ]

    errors = [a.get("error") for a in answers]
    assert errors[:3] == [None, None, None], answers
    refused = re.compile(
        r"^DNS: rate limited: next slot in \d+ s \(3/minute\); this is the "
        r"server's own limit for the key, set in MISP_ENRICH_DNS_RATE_LIMITS$"
    )
    assert all(e is not None and refused.match(e) for e in errors[3:]), errors
    assert len(dns_server.queries) == 3


async def test_two_processes_make_one_call_for_identical_queries(
    replicas: Callable[..., Any], dns_server: DNSServer
) -> None:
    dns_server.zone.delay = 0.5
    session, (first, second) = await replicas()

    answers = await asyncio.gather(
        first.query(session, ptr_body(ADDRESSES[0])),
        second.query(session, ptr_body(ADDRESSES[0])),
    )

    assert [a["results"][0]["values"] for a in answers] == [
        ["192.0.2.10: PTR www.example.com"]
    ] * 2, answers
    assert dns_server.queries == [("10.2.0.192.in-addr.arpa", "PTR")]
    shared = 0.0
    for replica in (first, second):
        shared += await replica.metric(session, "misp_enrich_coalesced_total")
        shared += await replica.metric(session, "misp_enrich_cache_hits_total")
    assert shared == 1


# Redis going away and coming back.


@pytest.fixture
def own_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    yield redis_server


async def test_serves_through_a_redis_outage_and_recovers(
    serve: Any,
    upstream: FakeUpstream,
    own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer_all(upstream)
    settings = fleet(own_redis.url, "outage", backend_retry=0)
    limited = lookup_module(
        upstream.url, name="limited", title="Limited", rate_limits=("100/minute",)
    )
    client = await serve(lookup_module(upstream.url), limited, **settings)
    path = f"/v1/domains/{DOMAINS[0]}"

    with caplog.at_level(logging.INFO):
        before = [await ask(client, query_body(DOMAINS[0])) for _ in range(2)]
        calls_before = len(upstream.calls(path))
        own_redis.stop()
        during = [await ask(client, query_body(DOMAINS[0])) for _ in range(2)]
        limited_during = await ask(client, limited_body(DOMAINS[1]))
        calls_during = len(upstream.calls(path))
        own_redis.start()
        after = [await ask(client, query_body(DOMAINS[0])) for _ in range(2)]
        allowed = await ask(client, limited_body(DOMAINS[1]))

    assert all("Object" in a["results"] for a in before + during + after)
    assert calls_before == 1, "cached while Redis is up"
    assert calls_during == 3, "no cache while Redis is away"
    assert len(upstream.calls(path)) == 4, "cached again once Redis is back"
    assert "Object" in limited_during["results"], "limits count in this process"
    assert "Object" in allowed["results"]
    where = own_redis.url.removeprefix("redis://")
    assert len(messages(caplog, f"Redis at {where} is unavailable")) == 1
    assert len(messages(caplog, f"Redis at {where} is back")) == 1


async def test_rate_limits_count_in_process_while_redis_is_away(
    serve: Any,
    upstream: FakeUpstream,
    own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer_all(upstream)
    limited = lookup_module(
        upstream.url, name="limited", title="Limited", rate_limits=("1/minute",)
    )
    client = await serve(
        limited,
        **fleet(own_redis.url, "limits-outage", cache="memory", backend_retry=0),
    )

    with caplog.at_level(logging.INFO):
        before = await ask(client, limited_body(DOMAINS[0]))
        own_redis.stop()
        during = [await ask(client, limited_body(d)) for d in DOMAINS[1:3]]
        # The restarted Redis starts with empty counters: a call there goes.
        own_redis.start()
        after = [await ask(client, limited_body(d)) for d in DOMAINS[3:5]]

    assert "Object" in before["results"]
    assert "Object" in during[0]["results"]
    assert during[1]["error"].endswith(
        "(1/minute, counted in this process while Redis is unreachable); this is "
        "the server's own limit for the key, set in MISP_ENRICH_LIMITED_RATE_LIMITS"
    )
    assert "Object" in after[0]["results"]
    assert re.match(
        r"^Limited: rate limited: next slot in \d+ s \(1/minute\); this is the "
        r"server's own limit for the key, set in MISP_ENRICH_LIMITED_RATE_LIMITS$",
        after[1]["error"],
    )
    assert len(upstream.calls()) == 3
    assert len(messages(caplog, "rate limits: Redis is unreachable")) == 1
    assert len(messages(caplog, "rate limits: counting in Redis again")) == 1


async def test_serves_when_redis_is_not_there(
    serve: Any, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    answer_all(upstream)
    url = f"redis://127.0.0.1:{free_port()}/0"

    with caplog.at_level(logging.INFO):
        client = await serve(
            lookup_module(upstream.url), **fleet(url, "absent", backend_retry=0)
        )
        answers = [await ask(client, query_body(DOMAINS[0])) for _ in range(3)]

    assert all("Object" in a["results"] for a in answers)
    assert len(upstream.calls()) == 3
    assert len(messages(caplog, "is unavailable")) == 1
    assert (
        client.engine.metrics.registry.get_sample_value(
            "misp_enrich_backend_up", {"backend": "redis"}
        )
        == 0
    )
