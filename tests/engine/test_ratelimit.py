"""Rate limits: wait for a slot inside the deadline, else refuse; never over."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest

from tests.engine.conftest import ask, lookup_module, query_body
from tests.fakes.http import FakeUpstream

DOMAINS = [f"site{i}.example" for i in range(6)]
REFUSED = re.compile(
    r"^Lookup: rate limited: next slot in \d+ s \(1/minute\); this is the server's "
    r"own limit for the key, set in MISP_ENRICH_LOOKUP_RATE_LIMITS$"
)


def route_all(upstream: FakeUpstream) -> None:
    for domain in DOMAINS:
        upstream.add(f"GET /v1/domains/{domain}", {"ips": ["192.0.2.1"]})


def sample(client: Any, name: str, **labels: str) -> float:
    value = client.engine.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_a_call_over_the_limit_waits_when_the_deadline_allows(
    serve: Any, upstream: FakeUpstream
) -> None:
    route_all(upstream)
    client = await serve(lookup_module(upstream.url, rate_limits=("2/2 seconds",)))

    answers = [await ask(client, query_body(domain)) for domain in DOMAINS[:3]]

    assert all("Object" in answer["results"] for answer in answers)
    assert len(upstream.calls()) == 3
    assert sample(client, "misp_enrich_ratelimit_waits_total", source="lookup") == 1
    assert sample(client, "misp_enrich_ratelimit_refusals_total", source="lookup") == 0


async def test_a_call_over_the_limit_is_refused_when_the_wait_is_too_long(
    serve: Any, upstream: FakeUpstream
) -> None:
    route_all(upstream)
    client = await serve(lookup_module(upstream.url, rate_limits=("1/minute",)))

    first = await ask(client, query_body(DOMAINS[0]))
    second = await ask(client, query_body(DOMAINS[1]))

    assert "Object" in first["results"]
    assert second["results"] == []
    assert REFUSED.match(second["error"]), second["error"]
    assert len(upstream.calls()) == 1
    assert sample(client, "misp_enrich_ratelimit_refusals_total", source="lookup") == 1


async def test_concurrent_calls_never_exceed_the_limit(
    serve: Any, upstream: FakeUpstream
) -> None:
    route_all(upstream)
    client = await serve(lookup_module(upstream.url, rate_limits=("2/minute", "5/day")))

    answers = await asyncio.gather(
        *(ask(client, query_body(domain)) for domain in DOMAINS)
    )

    served = [a for a in answers if "error" not in a]
    refused = [a["error"] for a in answers if "error" in a]
    assert len(upstream.calls()) == 2
    assert len(served) == 2 and len(refused) == 4
    assert all("rate limited: next slot in" in e and "(2/minute)" in e for e in refused)


async def test_cached_answers_take_no_slot(serve: Any, upstream: FakeUpstream) -> None:
    route_all(upstream)
    client = await serve(lookup_module(upstream.url, rate_limits=("1/minute",)))

    answers = [await ask(client, query_body(DOMAINS[0])) for _ in range(3)]

    assert all("Object" in answer["results"] for answer in answers)
    assert len(upstream.calls()) == 1


async def test_limits_are_counted_per_api_key(
    serve: Any, upstream: FakeUpstream
) -> None:
    route_all(upstream)
    client = await serve(lookup_module(upstream.url, rate_limits=("1/minute",)))

    first = await ask(client, query_body(DOMAINS[0], key="key-of-team-a"))
    other_key = await ask(client, query_body(DOMAINS[1], key="key-of-team-b"))
    same_key = await ask(client, query_body(DOMAINS[2], key="key-of-team-a"))

    assert "error" not in first and "error" not in other_key
    assert REFUSED.match(same_key["error"])
    assert len(upstream.calls()) == 2


@pytest.mark.parametrize(
    ("keyless_env", "keyless_allowed"), [(None, 1), ("2/minute", 2)]
)
async def test_calls_without_a_key_get_the_keyless_limits(
    serve: Any,
    upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    keyless_env: str | None,
    keyless_allowed: int,
) -> None:
    route_all(upstream)
    if keyless_env:
        monkeypatch.setenv("MISP_ENRICH_LOOKUP_KEYLESS_RATE_LIMITS", keyless_env)
    module = lookup_module(
        upstream.url, rate_limits=("3/minute",), keyless_rate_limits=("1/minute",)
    )
    client = await serve(module)

    keyless = [await ask(client, query_body(d, key="")) for d in DOMAINS[:3]]
    keyed = [await ask(client, query_body(d, key="key-of-team-a")) for d in DOMAINS[:3]]

    assert ["error" in a for a in keyless] == [i >= keyless_allowed for i in range(3)]
    assert not any("error" in a for a in keyed)
    assert len(upstream.calls()) == keyless_allowed + 3


async def test_deployment_can_set_limits(
    serve: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    route_all(upstream)
    monkeypatch.setenv("MISP_ENRICH_LOOKUP_RATE_LIMITS", "1/minute;100/day")
    client = await serve(lookup_module(upstream.url))

    await ask(client, query_body(DOMAINS[0]))
    refused = await ask(client, query_body(DOMAINS[1]))

    assert REFUSED.match(refused["error"])
    assert len(upstream.calls()) == 1


@pytest.mark.parametrize("lifted", ["none", ""])
async def test_deployment_can_lift_limits(
    serve: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, lifted: str
) -> None:
    route_all(upstream)
    monkeypatch.setenv("MISP_ENRICH_LOOKUP_RATE_LIMITS", lifted)
    client = await serve(lookup_module(upstream.url, rate_limits=("1/minute",)))

    answers = [await ask(client, query_body(domain)) for domain in DOMAINS[:3]]

    assert all("error" not in answer for answer in answers)
    assert len(upstream.calls()) == 3


async def test_a_malformed_limit_is_a_clear_error(
    serve: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISP_ENRICH_LOOKUP_RATE_LIMITS", "4/fortnight")
    client = await serve(lookup_module(upstream.url))

    answer = await ask(client, query_body())

    assert answer["error"].startswith(
        "lookup: '4/fortnight' is not a rate limit such as 4/minute"
    )
    assert upstream.calls() == []


@pytest.mark.parametrize(("fleet_size", "share"), [(1, 4), (2, 2), (10, 1)])
async def test_without_redis_each_process_takes_its_share_of_the_limit(
    serve: Any,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    fleet_size: int,
    share: int,
) -> None:
    route_all(upstream)
    with caplog.at_level(logging.INFO):
        # Nothing listens on port 1: Redis is unreachable from the start.
        client = await serve(
            lookup_module(upstream.url, rate_limits=("4/minute",)),
            redis_url="redis://127.0.0.1:1/0",
            fleet_size=fleet_size,
            backend_retry=0,
        )
        answers = [await ask(client, query_body(d)) for d in DOMAINS[: share + 1]]

    assert all("Object" in answer["results"] for answer in answers[:share])
    here = f"{share} of them" if fleet_size > 1 else "counted"
    assert re.match(
        rf"^Lookup: rate limited: next slot in \d+ s \(4/minute, {here} in this "
        r"process while Redis is unreachable\); this is the server's own limit for "
        r"the key, set in MISP_ENRICH_LOOKUP_RATE_LIMITS$",
        answers[share]["error"],
    ), answers[share]["error"]
    assert len(upstream.calls()) == share
    fallbacks = [r for r in caplog.records if "rate limits: Redis is" in r.getMessage()]
    assert len(fallbacks) == 1
