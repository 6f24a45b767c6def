"""The upstream client's edges: direct requests, the concurrency cap, settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from modules.cache import MemoryCache
from modules.context import Context
from modules.errors import ConfigError, RateLimited
from modules.observable import Observable
from modules.results import Answer
from modules.settings import (
    ServerSettings,
    parse_duration,
    source_policy,
    split_limits,
)
from modules.upstream import map_status
from tests.engine.conftest import Lookup, ask, lookup_module, query_body
from tests.fakes.http import FakeUpstream, Reply


class Search(Lookup):
    """A source asked by POST, straight through request_json."""

    name = "search"
    title = "Search"

    async def enrich(self, observable: Observable, config: Any, ctx: Context) -> Answer:
        data = await ctx.source.request_json(
            "POST", "/v1/search", json={"query": observable.value}
        )
        answer = ctx.answer()
        answer.add_object("domain-ip", {"domain": observable.value, "ip": data["ips"]})
        return answer


def search_body(domain: str) -> dict[str, Any]:
    return {**query_body(domain), "module": "search"}


async def test_direct_requests_are_rate_limited(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add("POST /v1/search", {"ips": ["192.0.2.1"]})
    module = type(
        "Search", (Search,), {"base_url": upstream.url, "rate_limits": ("1/minute",)}
    )
    client = await serve(module)

    first = await ask(client, search_body("a.example"))
    second = await ask(client, search_body("b.example"))

    assert "Object" in first["results"]
    assert second["error"].startswith("Search: rate limited: next slot in ")
    assert len(upstream.calls("/v1/search")) == 1


async def test_direct_requests_are_retried(serve: Any, upstream: FakeUpstream) -> None:
    upstream.sequence(
        "POST /v1/search", [Reply(503, {"error": "busy"}), Reply(body={"ips": []})]
    )
    module = type("Search", (Search,), {"base_url": upstream.url})
    client = await serve(module, retry_backoff=0.01)

    answer = await ask(client, search_body("a.example"))

    assert answer.get("error") is None
    assert len(upstream.calls("/v1/search")) == 2


class Gauge:
    """A slow upstream that remembers how many requests it held at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.2)
        finally:
            self.now -= 1
        return web.json_response({"ips": ["192.0.2.1"]})


@pytest.fixture
async def gauge(aiohttp_server: Any) -> AsyncIterator[Gauge]:
    fake = Gauge()
    app = web.Application()
    app.router.add_get("/v1/domains/{domain}", fake.handle)
    server = await aiohttp_server(app)
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake


@pytest.mark.parametrize(("cap", "most"), [("1", 1), (None, 4)])
async def test_concurrency_cap_is_overridable(
    serve: Any,
    gauge: Gauge,
    monkeypatch: pytest.MonkeyPatch,
    cap: str | None,
    most: int,
) -> None:
    if cap is not None:
        monkeypatch.setenv("MISP_ENRICH_LOOKUP_CONCURRENCY", cap)
    client = await serve(lookup_module(gauge.url))

    domains = [f"site{i}.example" for i in range(4)]
    answers = await asyncio.gather(*(ask(client, query_body(d)) for d in domains))

    assert all("Object" in a["results"] for a in answers)
    assert gauge.most == most


def test_retry_after_as_an_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)

    error = map_status("Lookup", 429, b"{}", {"Retry-After": when})

    assert isinstance(error, RateLimited)
    assert error.retry_after is not None and 100 < error.retry_after <= 120


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("24h", 86400), ("1d", 86400), ("0", 0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "limits"),
    [
        ("4/minute;500/day", ("4/minute", "500/day")),
        ("4/minute, 500/day", ("4/minute", "500/day")),
        ("none", ()),
        ("", ()),
    ],
)
def test_limit_lists(text: str, limits: tuple[str, ...]) -> None:
    assert split_limits(text) == limits


def test_policy_overrides_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISP_ENRICH_LOOKUP_CACHE_TTL", "10m")
    monkeypatch.setenv("MISP_ENRICH_LOOKUP_NOT_FOUND_TTL", "1h")
    monkeypatch.setenv("MISP_ENRICH_LOOKUP_CONCURRENCY", "3")

    policy = source_policy(Lookup)

    assert policy.cache_ttl == 600
    assert policy.not_found_ttl == 600, "not found never outlives an answer"
    assert policy.concurrency == 3
    assert policy.rate_limits == ()


def test_a_bad_concurrency_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISP_ENRICH_LOOKUP_CONCURRENCY", "0")

    with pytest.raises(ConfigError, match="MISP_ENRICH_LOOKUP_CONCURRENCY: '0'"):
        source_policy(Lookup)


def test_a_bad_redis_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as caught:
        ServerSettings(redis_url="cache.internal://:hunter2@cache.internal:6379")

    assert "MISP_ENRICH_REDIS_URL must start with redis://" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_the_redis_cache_needs_a_url() -> None:
    with pytest.raises(ValidationError, match="needs MISP_ENRICH_REDIS_URL"):
        ServerSettings(cache="redis", redis_url=None)


async def test_redirects_are_not_followed_so_the_key_stays(
    serve: Any, upstream: FakeUpstream
) -> None:
    elsewhere = FakeUpstream()
    await elsewhere.start()
    target = elsewhere.url.replace("127.0.0.1", "localhost") + "/stolen"
    upstream.add(
        "GET /v1/domains/example.com", Reply(302, {}, headers={"Location": target})
    )
    client = await serve(lookup_module(upstream.url))

    try:
        answer = await ask(client, query_body())
    finally:
        await elsewhere.close()

    assert elsewhere.requests == []
    assert answer["results"] == []
    assert answer["error"].startswith(
        "Lookup: sent a malformed answer: HTTP 302: redirected to another address"
    )


async def test_keys_too_short_to_be_real_are_not_scrubbed(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add("GET /v1/domains/example.com", Reply(401, {"error": "no"}))
    client = await serve(lookup_module(upstream.url))

    answer = await ask(client, query_body(key="1"))

    assert answer["error"].startswith("Lookup: the API key was refused: HTTP 401")


class StaleOnce(MemoryCache):
    """A cache whose next read misses once, as a slow read that began too early."""

    stale = False

    async def get(self, key: str) -> bytes | None:
        if self.stale:
            self.stale = False
            return None
        return await super().get(key)


async def test_a_miss_that_raced_a_finished_call_does_not_call_again(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add("GET /v1/domains/example.com", {"ips": ["192.0.2.1"]})
    store = StaleOnce()
    client = await serve(lookup_module(upstream.url), store=store)

    first = await ask(client, query_body())
    store.stale = True
    second = await ask(client, query_body())

    values = [a["value"] for a in first["results"]["Object"][0]["Attribute"]]
    assert [a["value"] for a in second["results"]["Object"][0]["Attribute"]] == values
    assert len(upstream.calls("/v1/domains/example.com")) == 1


async def test_an_answer_over_the_size_cap_is_refused(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add("GET /v1/domains/big.example", Reply(raw=b"[" + b"1," * 600 + b"1]"))
    client = await serve(lookup_module(upstream.url), max_upstream_body=1000)

    answer = await ask(client, query_body("big.example"))

    assert answer == {
        "error": "Lookup: sent a malformed answer: the answer is larger than 1000 "
        "bytes; raise MISP_ENRICH_MAX_UPSTREAM_BODY if the source really sends "
        "that much",
        "results": [],
    }


async def test_a_refused_request_is_not_called_malformed(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add(
        "GET /v1/domains/odd.example",
        Reply(status=400, body={"error": {"message": "invalid domain"}}),
    )
    client = await serve(lookup_module(upstream.url))

    answer = await ask(client, query_body("odd.example"))

    assert answer["error"] == (
        "Lookup: refused the request: HTTP 400 (invalid domain); the value may be "
        "one the source does not accept, or the base URL points at another API"
    )


async def test_a_password_in_the_base_url_stays_out_of_errors(serve: Any) -> None:
    # Port 9 on loopback: nothing listens, so the connection is refused.
    module = lookup_module("http://proxyuser:proxypass@127.0.0.1:9")
    client = await serve(module)

    answer = await ask(client, query_body("a.example"))

    assert "proxypass" not in answer["error"]
    assert "proxyuser" not in answer["error"]
    assert "cannot connect to 127.0.0.1:9 " in answer["error"]
