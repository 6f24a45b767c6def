"""The benchmark's pure helpers and its DNS server, so the bench cannot rot."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import orjson
import pytest

from bench.dns_server import DNSProcess, Tally, build_response, parse_question
from bench.load import bench_name, classify, dns_query, percentile
from bench.report import Row, markdown_table, number
from bench.run import enrich_server, extra_env, parse_args, repeated_bodies


def ask(name: str, rdtype: str) -> dns.message.Message:
    wire = build_response(dns.message.make_query(name, rdtype).to_wire())
    assert wire is not None
    return dns.message.from_wire(wire)


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(100, 0, -1)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_wildcard_answers_a_and_aaaa_for_any_name_in_the_zone() -> None:
    name = bench_name("u10", 12345)
    a = ask(name, "A")
    aaaa = ask(name, "AAAA")
    assert a.rcode() == dns.rcode.NOERROR
    assert ipaddress.ip_address(a.answer[0][0].address) in ipaddress.ip_network(
        "198.51.100.0/24"
    )
    assert ipaddress.ip_address(aaaa.answer[0][0].address) in ipaddress.ip_network(
        "2001:db8::/32"
    )
    # The same name always gets the same address.
    assert ask(name, "A").answer[0][0].address == a.answer[0][0].address


def test_other_types_are_empty_and_other_zones_do_not_exist() -> None:
    assert ask("x.bench.example", "MX").answer == []
    assert ask("x.bench.example", "MX").rcode() == dns.rcode.NOERROR
    assert ask("x.example.org", "A").rcode() == dns.rcode.NXDOMAIN


def test_parse_question_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_question(b"\x00\x01")
    question = parse_question(dns.message.make_query("A.Bench.Example", "A").to_wire())
    assert question.name == "a.bench.example"
    assert question.qtype == dns.rdatatype.A


def test_tally_counts_repeated_questions() -> None:
    tally = Tally()
    for name in ["a.bench.example", "a.bench.example", "b.bench.example"]:
        tally.add(dns.message.make_query(name, "A").to_wire())
    assert tally.snapshot() == {"queries": 3, "names": 2, "questions": 2, "repeats": 1}
    tally.reset()
    assert tally.snapshot()["queries"] == 0


def test_dns_server_process_answers_over_udp_and_counts() -> None:
    with DNSProcess(port=0, delay=0.0) as server:
        query = dns.message.make_query(bench_name("t", 1), "A")
        answer = dns.query.udp(query, "127.0.0.1", port=server.port, timeout=5)
        assert answer.rcode() == dns.rcode.NOERROR
        assert len(answer.answer) == 1
        assert server.stats()["queries"] == 1
        server.reset()
        assert server.stats()["queries"] == 0


def test_classify_tells_answers_from_errors() -> None:
    ok = orjson.dumps({"results": {"Object": [{"name": "dns-record"}]}})
    assert classify(200, ok) == "ok"
    assert classify(200, b'{"error": "DNS: timeout", "results": []}').startswith(
        "error: DNS"
    )
    assert classify(500, ok) == "HTTP 500"
    assert classify(200, b"<html>") == "not JSON"


def test_query_body_is_misp_standard() -> None:
    body = dns_query("a.bench.example", "127.0.0.1")
    assert body["attribute"]["type"] == "domain"
    assert body["attribute"]["uuid"]
    assert body["config"] == {"nameserver": "127.0.0.1"}


def test_repeated_bodies_cover_each_indicator_equally() -> None:
    bodies = [orjson.loads(b) for b in repeated_bodies("r", 50, 5, "127.0.0.1")]
    names = [body["attribute"]["value"] for body in bodies]
    assert len(set(names)) == 5
    assert all(names.count(name) == 10 for name in set(names))


def test_rows_render_ratios_as_advantage() -> None:
    faster = Row("rate", 200.0, 50.0, "/s", "higher")
    quicker = Row("p50", 10.0, 40.0, "ms", "lower")
    assert faster.ratio == 4.0
    assert quicker.ratio == 4.0
    assert Row("rate", 1.0, None).ratio is None
    table = markdown_table([faster, quicker])
    assert "| rate | 200 /s | 50.0 /s | 4.0x |" in table
    assert number(3.0) == "3"


def test_enrich_env_reaches_the_misp_enrich_process() -> None:
    args = parse_args(["--enrich-env", "MISP_ENRICH_DNS_CONCURRENCY=64"])
    server = enrich_server(args, "127.0.0.1", Path("/tmp"), cache_dir=Path("/x"))
    assert server.env["MISP_ENRICH_DNS_CONCURRENCY"] == "64"
    assert server.env["MISP_ENRICH_CACHE"] == "memory"
    assert server.env["MISP_ENRICH_DNS_NAMESERVER"] == "127.0.0.1"
    assert server.env["MISP_ENRICH_CACHE_PATH"] == "/x/cache.sqlite3"
    with pytest.raises(SystemExit):
        extra_env(["no-equals-sign"])


async def test_closed_loop_counts_requests_cut_by_the_time_limit() -> None:
    from aiohttp import web

    from bench.load import closed_loop

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response()

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        result = await closed_loop(
            f"http://127.0.0.1:{port}/slow", [None] * 4, 2, 0.3, method="GET"
        )
    finally:
        await runner.cleanup()
    assert result.requests == 2
    assert result.ok == 0
    assert result.cut == 2
