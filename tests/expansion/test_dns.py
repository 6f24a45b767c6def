"""The dns module against a real DNS server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from expansion.dns import parse_nameserver, spf_addresses
from tests.conformance import check_answer
from tests.conftest import misp_request
from tests.fakes.dns import DNSServer, Zone


def relations(obj: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for attribute in obj["Attribute"]:
        found.setdefault(attribute["object_relation"], []).append(attribute["value"])
    return found


def standard(
    kind: str, value: str, uuid: str = "6d3ba970-f2a4-46e1-8f9a-c60f93a878e0"
) -> Any:
    body = misp_request("composite-domain-ip")
    body["attribute"].update(type=kind, value=value, uuid=uuid)
    return body


async def query(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/query", json=body)
    assert response.status == 200
    return await response.json()  # type: ignore[no-any-return]


async def test_domain_answers_a_full_dns_record(
    client: Any, dns_env: DNSServer
) -> None:
    body = standard("domain", "example.com")

    answer = await query(client, body)

    check_answer(
        answer, {k: body["attribute"][k] for k in ("type", "value", "uuid", "category")}
    )
    [obj] = answer["results"]["Object"]
    assert obj["name"] == "dns-record"
    assert relations(obj) == {
        "queried-domain": ["example.com"],
        "a-record": ["192.0.2.10"],
        "mx-record": ["mail.example.com"],
        "ns-record": ["ns1.example.net", "ns2.example.net"],
        "txt-record": [
            "site-verification=abc123",
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all",
        ],
        "soa-record": ["ns1.example.net"],
        "spf-record": ["192.0.2.0/24", "2001:db8::/32"],
    }
    [reference] = obj["ObjectReference"]
    assert reference["referenced_uuid"] == "6d3ba970-f2a4-46e1-8f9a-c60f93a878e0"
    assert reference["relationship_type"] == "describes"
    assert "Attribute" not in answer["results"]
    asked = {rdtype for name, rdtype in dns_env.queries if name == "example.com"}
    assert asked == {"A", "AAAA", "CNAME", "MX", "NS", "TXT", "SOA"}


async def test_cname(client: Any, dns_env: DNSServer) -> None:
    answer = await query(client, standard("hostname", "alias.example.com"))

    [obj] = answer["results"]["Object"]
    assert relations(obj)["cname-record"] == ["www.example.com"]


async def test_simplified_request_gets_simplified_answer(
    client: Any, dns_env: DNSServer
) -> None:
    answer = await query(client, misp_request("enrich-button-simplified"))

    assert answer["results"] == [
        {
            "types": ["text"],
            "values": ["www.example.com: A 192.0.2.10, 192.0.2.11 | AAAA 2001:db8::10"],
            "comment": "summary",
        },
        # The enriched name itself is not proposed again.
        {
            "types": ["ip-dst"],
            "values": ["192.0.2.10", "192.0.2.11"],
            "comment": "dns-record: a-record",
        },
        {
            "types": ["ip-dst"],
            "values": ["2001:db8::10"],
            "comment": "dns-record: aaaa-record",
        },
    ]


async def test_composite_domain_ip_resolves_both(
    client: Any, dns_env: DNSServer
) -> None:
    answer = await query(client, misp_request("composite-domain-ip"))

    names = [relations(obj) for obj in answer["results"]["Object"]]
    assert names == [
        {
            "queried-domain": ["www.example.com"],
            "a-record": ["192.0.2.10", "192.0.2.11"],
            "aaaa-record": ["2001:db8::10"],
        },
        {
            "queried-domain": ["10.2.0.192.in-addr.arpa"],
            "ptr-record": ["www.example.com"],
        },
    ]


async def test_idn_domain_is_asked_as_a_labels(client: Any, dns_env: DNSServer) -> None:
    answer = await query(client, misp_request("idn-domain"))

    [obj] = answer["results"]["Object"]
    assert relations(obj) == {
        "queried-domain": ["xn--bcher-kva.example"],
        "a-record": ["198.51.100.20"],
    }
    assert ("xn--bcher-kva.example", "A") in dns_env.queries


async def test_ipv6_ptr(client: Any, dns_env: DNSServer) -> None:
    answer = await query(client, standard("ip-dst", "2001:db8::5"))

    [obj] = answer["results"]["Object"]
    assert relations(obj)["ptr-record"] == ["v6.example.com"]


async def test_hover_has_compact_text(client: Any, dns_env: DNSServer) -> None:
    body = misp_request("hover-simplified")

    answer = await query(client, body)

    assert answer["results"][0] == {
        "types": ["text"],
        "values": ["192.0.2.10: PTR www.example.com"],
        "comment": "summary",
    }


async def test_hover_standard_puts_text_first(client: Any, dns_env: DNSServer) -> None:
    body = standard("hostname", "www.example.com")
    del body["event_id"]

    answer = await query(client, body)

    assert answer["results"]["Attribute"] == [
        {
            "type": "text",
            "value": "www.example.com: A 192.0.2.10, 192.0.2.11 | AAAA 2001:db8::10",
            "category": "Other",
        }
    ]
    assert answer["results"]["Object"][0]["name"] == "dns-record"


async def test_nxdomain_is_a_result(client: Any, dns_env: DNSServer) -> None:
    answer = await query(client, standard("domain", "missing.example.org"))

    assert answer == {
        "results": {},
        "comment": "missing.example.org does not exist (NXDOMAIN)",
    }


async def test_no_answer_is_a_result(client: Any, dns_env: DNSServer) -> None:
    answer = await query(client, standard("hostname", "empty.example.com"))

    assert answer["results"] == {}
    assert answer["comment"] == (
        "empty.example.com exists but has none of A, AAAA, CNAME, MX, NS, TXT, SOA"
    )


async def test_missing_ptr_is_a_result(client: Any, dns_env: DNSServer) -> None:
    answer = await query(client, standard("ip-src", "203.0.113.9"))

    assert answer == {"results": {}, "comment": "203.0.113.9 has no PTR record"}


async def test_refused_is_an_error(client: Any, dns_env: DNSServer) -> None:
    dns_env.zone.mode = "refuse"

    answer = await query(client, standard("ip-src", "192.0.2.10"))

    assert answer["results"] == []
    assert answer["error"] == (
        "DNS: unavailable: the nameserver refused or failed "
        "10.2.0.192.in-addr.arpa PTR (REFUSED)"
    )


async def test_a_nameserver_nobody_runs_is_an_error_at_once(client: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    body = standard("ip-src", "192.0.2.10")
    body["config"] = {"nameserver": f"127.0.0.1:{port}"}

    answer = await query(client, body)

    assert answer == {
        "error": f"DNS: unavailable: nothing answers DNS at 127.0.0.1:{port} "
        "(connection refused)",
        "results": [],
    }


async def test_a_lost_datagram_is_sent_again(client: Any, dns_env: DNSServer) -> None:
    dns_env.zone.lose_first = 1

    answer = await query(client, standard("ip-src", "192.0.2.10"))

    [obj] = answer["results"]["Object"]
    assert relations(obj)["ptr-record"] == ["www.example.com"]
    assert dns_env.queries == [("10.2.0.192.in-addr.arpa", "PTR")] * 2


async def test_a_truncated_answer_is_asked_again_over_tcp(
    client: Any, dns_env: DNSServer
) -> None:
    dns_env.zone.mode = "truncate"

    answer = await query(client, standard("domain", "example.com"))

    [obj] = answer["results"]["Object"]
    assert relations(obj)["ns-record"] == ["ns1.example.net", "ns2.example.net"]
    # Each of the seven questions: once over UDP, once over TCP.
    assert len(dns_env.queries) == 14


async def test_timeout_is_an_error(make_client: Any, dns_env: DNSServer) -> None:
    dns_env.zone.mode = "drop"
    client = await make_client(deadline=0.8)

    answer = await query(client, standard("ip-src", "192.0.2.10"))

    assert answer["results"] == []
    assert answer["error"].startswith("DNS: timed out: no answer")


async def test_workflow_body_with_a_hostname(client: Any, dns_env: DNSServer) -> None:
    body = misp_request("workflow-attach-enrichment")
    body["attribute"].update(type="hostname", value="www.example.com")

    answer = await query(client, body)

    assert answer["results"]["Object"][0]["name"] == "dns-record"


async def test_nameserver_from_misp_wins(
    client: Any, dns_server: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISP_ENRICH_DNS_NAMESERVER", "127.0.0.1:1")
    body = standard("hostname", "www.example.com")
    body["config"] = {"nameserver": dns_server.address}

    answer = await query(client, body)

    assert answer["results"]["Object"][0]["name"] == "dns-record"


async def test_bad_nameserver_setting(client: Any) -> None:
    body = standard("hostname", "www.example.com")
    body["config"] = {"nameserver": "dns.example.com"}

    answer = await query(client, body)

    assert answer["results"] == []
    assert answer["error"] == (
        "DNS: invalid setting nameserver (Plugin.Enrichment_dns_nameserver or "
        "MISP_ENRICH_DNS_NAMESERVER): Value error, 'dns.example.com' is not "
        "IP, IP:port or [IPv6]:port"
    )


async def test_repeated_query_is_answered_from_cache_with_fresh_uuids(
    client: Any, dns_env: DNSServer
) -> None:
    first = await query(client, standard("hostname", "www.example.com"))
    asked = len(dns_env.queries)
    second = await query(client, standard("hostname", "www.example.com"))

    assert len(dns_env.queries) == asked
    first_obj, second_obj = (
        first["results"]["Object"][0],
        second["results"]["Object"][0],
    )
    assert relations(first_obj) == relations(second_obj)
    assert first_obj["uuid"] != second_obj["uuid"]


@pytest.mark.parametrize(
    ("kind", "value"),
    [("domain", "missing.example.org"), ("ip-src", "203.0.113.9")],
)
async def test_not_found_lifetime_is_overridable(
    client: Any,
    dns_env: DNSServer,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    value: str,
) -> None:
    monkeypatch.setenv("MISP_ENRICH_DNS_NOT_FOUND_TTL", "0")

    await query(client, standard(kind, value))
    asked = len(dns_env.queries)
    await query(client, standard(kind, value))

    assert asked > 0
    assert len(dns_env.queries) == 2 * asked, "no answer is kept for 0 s"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("192.0.2.53", ("192.0.2.53", 53)),
        ("192.0.2.53:5353", ("192.0.2.53", 5353)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("[2001:db8::53]:5353", ("2001:db8::53", 5353)),
        ("[2001:db8::53]", ("2001:db8::53", 53)),
    ],
)
def test_parse_nameserver(text: str, parsed: tuple[str, int]) -> None:
    assert parse_nameserver(text) == parsed


@pytest.mark.parametrize(
    "text", ["dns.example.com", "192.0.2.53:0", "[2001:db8::1]x", "1.2.3.4:x"]
)
def test_parse_nameserver_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(text)


def test_spf_addresses() -> None:
    assert spf_addresses(
        "v=spf1 ip4:192.0.2.1 +ip6:2001:db8::/48 include:_spf.example.com ~all"
    ) == [
        "192.0.2.1/32",
        "2001:db8::/48",
    ]
    assert spf_addresses("google-site-verification=x") == []


async def dns_statuses(client: Any) -> dict[str, float]:
    """Return the DNS answers counted in /metrics, by status."""
    response = await client.get("/metrics")
    text = await response.text()
    counted = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "misp_enrich_upstream_responses_total":
                continue
            assert not any(
                "192.0.2" in v or "arpa" in v for v in sample.labels.values()
            )
            if sample.labels["source"] == "dns":
                counted[sample.labels["status"]] = sample.value
    return counted


@pytest.mark.parametrize(
    ("mode", "address", "status"),
    [
        ("answer", "192.0.2.10", "NOERROR"),
        ("answer", "203.0.113.9", "NXDOMAIN"),
        ("servfail", "192.0.2.10", "SERVFAIL"),
        ("refuse", "192.0.2.10", "REFUSED"),
    ],
)
async def test_answers_are_counted_by_rcode(
    client: Any, dns_env: DNSServer, mode: str, address: str, status: str
) -> None:
    dns_env.zone.mode = mode

    await query(client, standard("ip-src", address))

    assert await dns_statuses(client) == {status: 1.0}


async def test_timeouts_are_counted(
    make_client: Any, dns_env: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dns_env.zone.mode = "drop"
    # The question times out well before the query's deadline cuts it short.
    monkeypatch.setattr("expansion.dns.QUERY_TIMEOUT", 0.3)
    client = await make_client(deadline=3)

    await query(client, standard("ip-src", "192.0.2.10"))

    assert await dns_statuses(client) == {"timeout": 1.0}


async def test_a_refused_connection_is_counted(client: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    body = standard("ip-src", "192.0.2.10")
    body["config"] = {"nameserver": f"127.0.0.1:{port}"}

    await query(client, body)

    assert await dns_statuses(client) == {"connection_error": 1.0}


async def test_a_dead_nameserver_holds_up_no_other(
    make_client: Any, dns_env: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One lookup fills the dead nameserver's queue; it would wait past the
    # deadline, so a shared queue would fail the second query.
    monkeypatch.setattr("expansion.dns.NAMESERVER_LOOKUPS", 1)
    client = await make_client(deadline=2)
    dead = DNSServer(Zone(mode="drop")).start()
    try:
        stuck = standard("domain", "www.example.com")
        stuck["config"] = {"nameserver": dead.address}
        answers = await asyncio.gather(
            query(client, stuck),
            query(client, standard("domain", "www.example.com")),
        )
    finally:
        dead.stop()

    assert answers[0]["error"].startswith("DNS: timed out")
    assert answers[1]["results"]["Object"][0]["name"] == "dns-record"
