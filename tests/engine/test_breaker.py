"""Circuit breakers: open after failures in a row, answer at once, probe, close."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest

from tests.engine.conftest import ask, lookup_module, query_body
from tests.fakes.dns import DNSServer
from tests.fakes.http import FakeUpstream, Reply

DOMAINS = [f"site{i}.example" for i in range(8)]
OPEN = re.compile(
    r"^Lookup: temporarily disabled after repeated failures: last failure: "
    r"unavailable: HTTP 503 \(down\); next probe in \d+ s$"
)


def fail_all(upstream: FakeUpstream, reply: Reply) -> None:
    for domain in DOMAINS:
        upstream.add(f"GET /v1/domains/{domain}", reply)


def answer_all(upstream: FakeUpstream) -> None:
    for domain in DOMAINS:
        upstream.add(f"GET /v1/domains/{domain}", {"ips": ["192.0.2.1"]})


async def broken_client(serve: Any, upstream: FakeUpstream, **overrides: Any) -> Any:
    settings = {"retries": 0, "breaker_threshold": 3, "breaker_cooldown": 60.0}
    return await serve(lookup_module(upstream.url), **{**settings, **overrides})


def sample(client: Any, name: str, **labels: str) -> float:
    value = client.engine.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_opens_after_failures_in_a_row_and_answers_at_once(
    serve: Any, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    fail_all(upstream, Reply(503, {"error": "down"}))
    client = await broken_client(serve, upstream)

    with caplog.at_level(logging.INFO):
        failures = [await ask(client, query_body(d)) for d in DOMAINS[:3]]
        refused = [await ask(client, query_body(d)) for d in DOMAINS[3:6]]

    assert all(f["error"] == "Lookup: unavailable: HTTP 503 (down)" for f in failures)
    assert all(OPEN.match(r["error"]) for r in refused), refused
    assert len(upstream.calls()) == 3
    opened = [r for r in caplog.records if "circuit opened" in r.getMessage()]
    assert len(opened) == 1
    assert sample(client, "misp_enrich_breakers_open", source="lookup") == 1
    assert sample(client, "misp_enrich_breaker_rejections_total", source="lookup") == 3


async def test_a_successful_probe_closes_it(
    serve: Any, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    fail_all(upstream, Reply(503, {"error": "down"}))
    client = await broken_client(serve, upstream)
    for domain in DOMAINS[:3]:
        await ask(client, query_body(domain))
    answer_all(upstream)

    # The cool-down runs out: the next call goes through as a probe.
    client.engine.breakers.cooldown = 0
    with caplog.at_level(logging.INFO):
        probe = await ask(client, query_body(DOMAINS[3]))
    client.engine.breakers.cooldown = 60.0
    after = [await ask(client, query_body(d)) for d in DOMAINS[4:6]]

    assert "Object" in probe["results"]
    assert all("Object" in a["results"] for a in after)
    assert len(upstream.calls()) == 6
    closed = [r for r in caplog.records if "circuit closed" in r.getMessage()]
    assert len(closed) == 1
    assert sample(client, "misp_enrich_breakers_open", source="lookup") == 0


async def test_a_failed_probe_keeps_it_open(serve: Any, upstream: FakeUpstream) -> None:
    fail_all(upstream, Reply(503, {"error": "down"}))
    client = await broken_client(serve, upstream)
    for domain in DOMAINS[:3]:
        await ask(client, query_body(domain))

    client.engine.breakers.cooldown = 0
    probe = await ask(client, query_body(DOMAINS[3]))
    client.engine.breakers.cooldown = 60.0
    refused = await ask(client, query_body(DOMAINS[4]))

    assert probe["error"] == "Lookup: unavailable: HTTP 503 (down)"
    assert OPEN.match(refused["error"])
    assert len(upstream.calls()) == 4


async def test_refused_keys_open_it_too(serve: Any, upstream: FakeUpstream) -> None:
    fail_all(upstream, Reply(401, {"error": "bad key"}))
    client = await broken_client(serve, upstream)

    answers = [await ask(client, query_body(d)) for d in DOMAINS[:4]]

    assert answers[3]["error"].startswith(
        "Lookup: temporarily disabled after repeated failures: last failure: "
        "the API key was refused: HTTP 401 (bad key); check the module's apikey"
    )
    assert len(upstream.calls()) == 3


async def test_not_found_and_forbidden_do_not_count(
    serve: Any, upstream: FakeUpstream
) -> None:
    for i, domain in enumerate(DOMAINS):
        status = 404 if i % 2 else 403
        upstream.add(f"GET /v1/domains/{domain}", Reply(status, {"error": "no"}))
    client = await broken_client(serve, upstream)

    answers = [await ask(client, query_body(d)) for d in DOMAINS]

    assert len(upstream.calls()) == len(DOMAINS)
    assert not any("temporarily disabled" in a.get("error", "") for a in answers)


async def test_each_api_key_has_its_own_breaker(
    serve: Any, upstream: FakeUpstream
) -> None:
    fail_all(upstream, Reply(503, {"error": "down"}))
    client = await broken_client(serve, upstream)
    for domain in DOMAINS[:3]:
        await ask(client, query_body(domain, key="failing-key"))

    other = await ask(client, query_body(DOMAINS[3], key="another-key"))

    assert other["error"] == "Lookup: unavailable: HTTP 503 (down)"
    assert len(upstream.calls()) == 4


async def test_a_success_resets_the_count(serve: Any, upstream: FakeUpstream) -> None:
    fail_all(upstream, Reply(503, {"error": "down"}))
    upstream.add(f"GET /v1/domains/{DOMAINS[2]}", {"ips": ["192.0.2.1"]})
    client = await broken_client(serve, upstream)

    answers = [await ask(client, query_body(d)) for d in DOMAINS[:6]]

    # fail, fail, success, fail, fail, fail: the third failure in a row opens.
    assert len(upstream.calls()) == 6
    assert not any("temporarily disabled" in a.get("error", "") for a in answers)
    refused = await ask(client, query_body(DOMAINS[6]))
    assert OPEN.match(refused["error"])


async def test_running_out_of_deadline_does_not_count(
    serve: Any, upstream: FakeUpstream
) -> None:
    for domain in DOMAINS:
        upstream.add(f"GET /v1/domains/{domain}", Reply(body={"ips": []}, delay=0.5))
    client = await broken_client(serve, upstream, hover_deadline=0.2)

    answers = []
    for domain in DOMAINS[:4]:
        hover = {k: v for k, v in query_body(domain).items() if k != "event_id"}
        answers.append(await ask(client, hover))

    assert all(a["error"].startswith("Lookup: timed out: ") for a in answers), answers
    assert len(upstream.calls()) == 4


async def test_a_source_slower_than_its_timeout_counts(
    serve: Any, upstream: FakeUpstream
) -> None:
    for domain in DOMAINS:
        upstream.add(f"GET /v1/domains/{domain}", Reply(body={"ips": []}, delay=0.5))
    client = await broken_client(serve, upstream, upstream_timeout=0.1)

    answers = [await ask(client, query_body(d)) for d in DOMAINS[:4]]

    assert [a["error"] for a in answers[:3]] == [
        "Lookup: timed out: no answer within 0.1 s; the source is slow or down, "
        "retry later"
    ] * 3
    assert answers[3]["error"].startswith(
        "Lookup: temporarily disabled after repeated failures: last failure: "
        "timed out: no answer within 0.1 s; the source is slow or down, retry "
        "later; next probe in"
    )
    assert len(upstream.calls()) == 3


class Parallel(lookup_module("")):  # type: ignore[misc]
    """Ask for several paths of one domain at once, as OTX asks for sections."""

    async def enrich(self, observable: Any, config: Any, ctx: Any) -> Any:
        results = await asyncio.gather(
            *(ctx.source.get_json(f"/v1/{part}/{observable.value}") for part in PARTS),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return ctx.answer()


PARTS = ("general", "geo", "malware", "passive_dns", "url_list")


async def test_parallel_calls_of_one_query_count_as_one_failure(
    serve: Any, upstream: FakeUpstream
) -> None:
    for part in PARTS:
        upstream.add(f"GET /v1/{part}/example.com", Reply(503, {"error": "down"}))
    module = type("Parallel", (Parallel,), {"base_url": upstream.url})
    client = await serve(module, retries=0, breaker_threshold=3, breaker_cooldown=60.0)

    answers = [await ask(client, query_body()) for _ in range(3)]

    assert [a["error"] for a in answers[:2]] == [
        "Lookup: unavailable: HTTP 503 (down)"
    ] * 2
    assert OPEN.match(answers[2]["error"]) is None
    assert len(upstream.calls()) == 3 * len(PARTS)


async def test_dns_failures_never_open_a_breaker(
    make_client: Any, dns_env: DNSServer
) -> None:
    client = await make_client(breaker_threshold=1)
    dns_env.zone.mode = "servfail"
    broken = {"module": "dns", "event_id": "1", "domain": "broken.example.net"}

    failed = await ask(client, broken)
    dns_env.zone.mode = "answer"
    later = await ask(
        client, {"module": "dns", "event_id": "1", "ip-src": "192.0.2.10"}
    )

    assert failed["error"].startswith(
        "DNS: unavailable: the nameserver refused or failed"
    )
    assert later["results"][1] == {
        "types": ["domain"],
        "values": ["www.example.com"],
        "comment": "dns-record: ptr-record",
    }
