"""GET /metrics: Prometheus text, per app, with no indicator or key in a label."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.engine.conftest import KEY, ask, lookup_module, query_body
from tests.fakes.http import FakeUpstream, Reply


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: Any) -> tuple[str, dict[Any, float]]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    return text, parse(text)


async def test_metrics_count_queries_calls_cache_and_limits(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add("GET /v1/domains/example.com", {"ips": ["192.0.2.1"]})
    upstream.add("GET /v1/domains/unknown.example", Reply(404, {"error": "no"}))
    client = await serve(lookup_module(upstream.url, rate_limits=("2/minute",)))

    await ask(client, query_body("example.com"))
    await ask(client, query_body("example.com"))
    await ask(client, query_body("unknown.example"))
    await ask(client, query_body("refused.example"))
    await ask(client, {"module": "no-such-module-example.com", "domain": "x.example"})
    text, samples = await scrape(client)

    queries = "misp_enrich_queries_total"
    assert value(samples, queries, module="lookup", outcome="ok") == 3
    assert value(samples, queries, module="lookup", outcome="upstream_ratelimited") == 1
    assert value(samples, queries, module="-", outcome="bad_request") == 1
    assert value(samples, "misp_enrich_query_seconds_count", module="lookup") == 4
    assert value(samples, "misp_enrich_cache_hits_total", source="lookup") == 1
    assert value(samples, "misp_enrich_cache_misses_total", source="lookup") == 3
    responses = "misp_enrich_upstream_responses_total"
    assert value(samples, responses, source="lookup", status="200") == 1
    assert value(samples, responses, source="lookup", status="404") == 1
    calls = "misp_enrich_upstream_calls_total"
    assert value(samples, calls, source="lookup", outcome="ok") == 1
    assert value(samples, calls, source="lookup", outcome="upstream_notfound") == 1
    assert value(samples, "misp_enrich_upstream_seconds_count", source="lookup") == 2
    assert value(samples, "misp_enrich_ratelimit_refusals_total", source="lookup") == 1
    assert value(samples, "misp_enrich_breakers_open", source="lookup") == 0
    for secret in (KEY, "example", "192.0.2.1", "no-such-module"):
        assert secret not in text


async def test_each_app_has_its_own_registry(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add("GET /v1/domains/example.com", {"ips": ["192.0.2.1"]})
    module = lookup_module(upstream.url)
    busy = await serve(module)
    idle = await serve(module)

    await ask(busy, query_body())
    _, busy_samples = await scrape(busy)
    _, idle_samples = await scrape(idle)

    queries = "misp_enrich_queries_total"
    assert value(busy_samples, queries, module="lookup", outcome="ok") == 1
    assert value(idle_samples, queries, module="lookup", outcome="ok") == 0


async def test_metrics_show_coalesced_calls_and_backends(
    serve: Any, upstream: FakeUpstream, tmp_path: Any
) -> None:
    upstream.add(
        "GET /v1/domains/example.com", Reply(body={"ips": ["192.0.2.1"]}, delay=0.3)
    )
    client = await serve(
        lookup_module(upstream.url), cache="sqlite", cache_path=tmp_path / "c.sqlite3"
    )

    await asyncio.gather(*(ask(client, query_body()) for _ in range(3)))
    _, samples = await scrape(client)

    coalesced = value(
        samples, "misp_enrich_coalesced_total", source="lookup", scope="process"
    )
    assert coalesced == 2
    assert value(samples, "misp_enrich_backend_up", backend="cache") == 1
