"""The otx module through the app, against a fake OTX on 127.0.0.1."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from expansion.otx import OTX, attack_tag
from modules.registry import discover
from tests.conftest import misp_request
from tests.fakes.http import FakeUpstream, Reply
from tests.fakes.modules.otx import (
    DOMAIN,
    HOSTNAME,
    IPV4,
    IPV6,
    MD5,
    SHA1,
    SHA256,
    URL,
    install,
    payload,
    route,
)

KEY = "OTX-SECRET-4c1b7e"
IPV4_SECTIONS = ("general", "reputation", "geo", "malware", "url_list", "passive_dns")
HOST_SECTIONS = ("general", "geo", "malware", "url_list", "passive_dns")

C2_PULSE = (
    "report",
    {
        "title": ["Example C2 infrastructure"],
        "type": ["OTX pulse"],
        "summary": [
            "Command and control servers seen in a phishing wave.",
            "author: example_user; TLP: white; created: 2024-05-01; tags: c2, "
            "phishing; adversary: Example Spider; malware families: ExampleRAT; "
            "ATT&CK: T1071, T1059.001, TA0011",
        ],
        "link": [
            "https://otx.alienvault.com/pulse/65a1b2c3d4e5f60718293a4b",
            "https://example.com/reports/c2-2024",
        ],
    },
    "mentions",
)
SCAN_PULSE = (
    "report",
    {
        "title": ["Scanning hosts, week 21"],
        "type": ["OTX pulse"],
        "summary": ["author: scan_watch; TLP: green; created: 2024-05-20"],
        "link": ["https://otx.alienvault.com/pulse/65a1b2c3d4e5f60718293a4c"],
    },
    "mentions",
)
PHISHING_PULSE = (
    "report",
    {
        "title": ["Phishing kit domains"],
        "type": ["OTX pulse"],
        "summary": [
            "Domains hosting a credential phishing kit.",
            "author: phish_hunter; TLP: white; created: 2024-04-04; tags: phishing, "
            "credential theft; ATT&CK: T1566.002",
        ],
        "link": [
            "https://otx.alienvault.com/pulse/65a1b2c3d4e5f60718293c01",
            "https://example.org/blog/phishing-kit",
        ],
    },
    "mentions",
)
IPV4_OBJECTS = [
    C2_PULSE,
    SCAN_PULSE,
    (
        "annotation",
        {
            "text": [
                "AlienVault OTX reputation of 198.51.100.7: threat score: 5; "
                "activities: Malicious Host; blocklists: Example Blocklist; first "
                "seen: 2024-04-28T00:00:00; last seen: 2024-06-01T00:00:00"
            ],
            "type": ["Other"],
        },
        "annotates",
    ),
    (
        "geolocation",
        {
            "countrycode": ["US"],
            "country": ["United States of America"],
            "city": ["Springfield"],
            "region": ["IL"],
            "latitude": ["39.8"],
            "longitude": ["-89.65"],
            "zipcode": ["62701"],
            "accuracy-radius": ["50"],
        },
        "located",
    ),
    ("asn", {"asn": ["64500"], "description": ["EXAMPLE-NET"]}, "includes"),
    (
        "file",
        {
            "sha256": [
                "3b0969bc994862e5679b80fb6a10e9870b3980a95ebe8a38ce2f25239f6780d3"
            ]
        },
        "communicates-with",
    ),
    (
        "file",
        {
            "sha256": [
                "4e7855970bc697b981494e9f7fac428af527cca14bd0d89dc4c5b726d576ba1a"
            ]
        },
        "communicates-with",
    ),
    (
        "url",
        {"url": ["http://198.51.100.7/gate.php"], "ip": ["198.51.100.7"]},
        "hosted-by",
    ),
    (
        "url",
        {
            "url": ["http://c2.example.net/panel/"],
            "domain": ["example.net"],
            "host": ["c2.example.net"],
            "ip": ["198.51.100.7"],
        },
        "hosted-by",
    ),
    (
        "passive-dns",
        {
            "rrname": ["c2.example.net"],
            "rrtype": ["A"],
            "rdata": ["198.51.100.7"],
            "time_first": ["2024-03-02T10:00:00+00:00"],
            "time_last": ["2024-06-01T09:30:00+00:00"],
        },
        "resolves-to",
    ),
    (
        "passive-dns",
        {
            "rrname": ["old.example.net"],
            "rrtype": ["A"],
            "rdata": ["198.51.100.7"],
            "time_first": ["2024-01-10T08:00:00+00:00"],
            "time_last": ["2024-03-01T09:30:00+00:00"],
        },
        "resolves-to",
    ),
]
IPV4_COMMENTS = [
    "",
    "",
    "",
    "",
    "",
    "seen 2024-05-29T16:26:40; clamav: Win.Trojan.Example-1; "
    "msdefender: Trojan:Win32/Example.A",
    "seen 2024-05-18T02:40:00",
    "seen 2024-05-30T12:00:00, HTTP 200",
    "seen 2024-05-21T09:15:00, HTTP 404",
    "",
    "",
]
IPV4_TAGS = [
    'misp-galaxy:mitre-attack-pattern="Application Layer Protocol - T1071"',
    'misp-galaxy:mitre-attack-pattern="PowerShell - T1059.001"',
]
FILE_OBJECTS = [
    (
        "report",
        {
            "title": ["ExampleRAT loader samples"],
            "type": ["OTX pulse"],
            "summary": [
                "Loader samples dropping ExampleRAT.",
                "author: malware_lab; TLP: green; created: 2024-03-03; tags: loader; "
                "malware families: ExampleRAT; ATT&CK: T1059.001, S0001",
            ],
            "link": [
                "https://otx.alienvault.com/pulse/65a1b2c3d4e5f60718293d01",
                "https://example.net/analysis/loader",
            ],
        },
        "mentions",
    ),
    (
        "file",
        {
            "md5": [MD5],
            "sha1": [SHA1],
            "sha256": [SHA256],
            "ssdeep": ["1536:Zm3XaGxQ2vFz8bQ9p7LkS1a:Zm3XaGxQ2vFz8bQ9p7LkS1a"],
            "size-in-bytes": ["73802"],
            "magic": ["PE32 executable (GUI) Intel 80386, for MS Windows"],
        },
        "describes",
    ),
]


def otx_request(name: str, **attribute: str) -> dict[str, Any]:
    """Return a MISP body from tests/payloads/requests/, aimed at otx."""
    body = misp_request(name)
    body["module"] = "otx"
    body["config"] = {"apikey": KEY}
    body["attribute"].update(attribute)
    return body


def shapes(
    body: dict[str, Any], uuid: str
) -> list[tuple[str, dict[str, list[Any]], str]]:
    """Return each object as (name, {relation: values}, relationship)."""
    found = []
    for obj in body["results"].get("Object", []):
        values: dict[str, list[Any]] = {}
        for attribute in obj["Attribute"]:
            values.setdefault(attribute["object_relation"], []).append(
                attribute["value"]
            )
        references = obj["ObjectReference"]
        assert [r["referenced_uuid"] for r in references] == [uuid], obj["name"]
        found.append((obj["name"], values, references[0]["relationship_type"]))
    return found


def tags(body: dict[str, Any]) -> list[str]:
    return [tag["name"] for tag in body["results"].get("Tag", [])]


def paths(upstream: FakeUpstream) -> list[str]:
    return sorted(request.path for request in upstream.requests)


def section_paths(kind: str, value: str, sections: tuple[str, ...]) -> list[str]:
    return sorted(f"/indicators/{kind}/{value}/{section}" for section in sections)


@pytest.fixture
async def otx(
    make_client: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Return a client whose otx module talks to the fake OTX."""
    install(upstream)
    monkeypatch.setenv("MISP_ENRICH_OTX_BASE_URL", upstream.url)
    monkeypatch.delenv("MISP_ENRICH_OTX_APIKEY", raising=False)
    return await make_client()


async def query(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/query", json=body)
    assert response.status == 200
    return await response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("ip-src", IPV4),
        ("ip-dst", IPV4),
        ("ip-src|port", f"{IPV4}|8080"),
        ("ip-dst|port", f"{IPV4}|443"),
    ],
)
async def test_ipv4_answers_every_section(
    otx: Any, upstream: FakeUpstream, kind: str, value: str
) -> None:
    body = otx_request("enrich-button-domain", type=kind, value=value)
    uuid = body["attribute"]["uuid"]

    answer = await query(otx, body)

    assert shapes(answer, uuid) == IPV4_OBJECTS
    comments = [obj.get("comment", "") for obj in answer["results"]["Object"]]
    assert comments == IPV4_COMMENTS
    assert tags(answer) == IPV4_TAGS
    assert "comment" not in answer
    assert paths(upstream) == section_paths("IPv4", IPV4, IPV4_SECTIONS)


async def test_key_goes_in_the_header_and_limits_in_the_query(
    otx: Any, upstream: FakeUpstream
) -> None:
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)

    await query(otx, body)

    assert len(upstream.requests) == len(IPV4_SECTIONS)
    for request in upstream.requests:
        assert request.headers["X-OTX-API-KEY"] == KEY
        assert KEY not in request.url
        section = request.path.rsplit("/", 1)[1]
        expected = {"limit": "10"} if section in ("malware", "url_list") else {}
        assert request.query == expected, section


async def test_ipv6_port_asks_the_ipv6_endpoints(
    otx: Any, upstream: FakeUpstream
) -> None:
    body = otx_request("composite-ipv6-port")
    uuid = body["attribute"]["uuid"]

    answer = await query(otx, body)

    assert shapes(answer, uuid) == [
        (
            "report",
            {
                "title": ["IPv6 relay nodes"],
                "type": ["OTX pulse"],
                "summary": [
                    "author: v6_watch; TLP: amber; created: 2024-02-11; tags: relay; "
                    "ATT&CK: T1090"
                ],
                "link": ["https://otx.alienvault.com/pulse/65a1b2c3d4e5f60718293b01"],
            },
            "mentions",
        ),
        (
            "geolocation",
            {
                "countrycode": ["NL"],
                "country": ["Netherlands"],
                "latitude": ["52.3824"],
                "longitude": ["4.8995"],
                "accuracy-radius": ["100"],
            },
            "located",
        ),
        ("asn", {"asn": ["64501"], "description": ["EXAMPLE-V6"]}, "includes"),
        (
            "passive-dns",
            {
                "rrname": ["relay.example.org"],
                "rrtype": ["AAAA"],
                "rdata": [IPV6],
                "time_first": ["2024-02-01T00:00:00+00:00"],
                "time_last": ["2024-02-20T00:00:00+00:00"],
            },
            "resolves-to",
        ),
    ]
    assert tags(answer) == ['misp-galaxy:mitre-attack-pattern="Proxy - T1090"']
    assert paths(upstream) == section_paths("IPv6", IPV6, IPV4_SECTIONS)


async def test_domain(otx: Any, upstream: FakeUpstream) -> None:
    body = otx_request("enrich-button-domain")
    uuid = body["attribute"]["uuid"]

    answer = await query(otx, body)

    assert shapes(answer, uuid) == [
        PHISHING_PULSE,
        (
            "geolocation",
            {
                "countrycode": ["DE"],
                "country": ["Germany"],
                "city": ["Frankfurt am Main"],
                "region": ["HE"],
                "latitude": ["50.1109"],
                "longitude": ["8.6821"],
                "zipcode": ["60311"],
                "accuracy-radius": ["20"],
            },
            "located",
        ),
        ("asn", {"asn": ["64502"], "description": ["EXAMPLE-HOSTING"]}, "hosts"),
        (
            "url",
            {
                "url": [URL],
                "domain": [DOMAIN],
                "host": ["login.example.com"],
                "ip": ["192.0.2.11"],
            },
            "hosted-by",
        ),
        (
            "passive-dns",
            {
                "rrname": ["login.example.com"],
                "rrtype": ["A"],
                "rdata": ["192.0.2.11"],
                "time_first": ["2024-01-15T00:00:00+00:00"],
                "time_last": ["2024-05-20T00:00:00+00:00"],
            },
            "sub-domain-of",
        ),
        (
            "passive-dns",
            {
                "rrname": [DOMAIN],
                "rrtype": ["A"],
                "rdata": ["192.0.2.10"],
                "time_first": ["2023-11-01T00:00:00+00:00"],
                "time_last": ["2024-05-01T00:00:00+00:00"],
            },
            "describes",
        ),
    ]
    assert tags(answer) == [
        'misp-galaxy:mitre-attack-pattern="Spearphishing Link - T1566.002"'
    ]
    assert paths(upstream) == section_paths("domain", DOMAIN, HOST_SECTIONS)


async def test_hostname_in_no_pulse_with_sections_missing(
    otx: Any, upstream: FakeUpstream
) -> None:
    body = otx_request("enrich-button-domain", type="hostname", value=HOSTNAME)
    uuid = body["attribute"]["uuid"]

    answer = await query(otx, body)

    # geo, malware and url_list answer 404 here: no data, not an error.
    assert shapes(answer, uuid) == [
        (
            "passive-dns",
            {
                "rrname": [HOSTNAME],
                "rrtype": ["A"],
                "rdata": ["192.0.2.10"],
                "time_first": ["2023-06-01T00:00:00+00:00"],
                "time_last": ["2024-06-01T00:00:00+00:00"],
            },
            "describes",
        )
    ]
    assert answer["comment"] == "otx: www.example.com is in no AlienVault OTX pulse"
    assert "Tag" not in answer["results"]
    assert paths(upstream) == section_paths("hostname", HOSTNAME, HOST_SECTIONS)


async def test_domain_ip_asks_both_and_shows_a_shared_pulse_once(
    otx: Any, upstream: FakeUpstream
) -> None:
    general = payload("ipv4-general")
    general["pulse_info"]["pulses"].append(
        payload("domain-general")["pulse_info"]["pulses"][0]
    )
    general["pulse_info"]["count"] = 3
    upstream.add(route("IPv4", IPV4, "general"), general)
    body = otx_request("composite-domain-ip", value=f"{DOMAIN}|{IPV4}")
    uuid = body["attribute"]["uuid"]

    answer = await query(otx, body)

    names = [name for name, _, _ in shapes(answer, uuid)]
    assert names == [
        "report",
        "geolocation",
        "asn",
        "url",
        "passive-dns",
        "passive-dns",
        "report",
        "report",
        "annotation",
        "geolocation",
        "asn",
        "file",
        "file",
        "url",
        "url",
        "passive-dns",
        "passive-dns",
    ]
    assert shapes(answer, uuid)[0] == PHISHING_PULSE
    assert paths(upstream) == sorted(
        section_paths("domain", DOMAIN, HOST_SECTIONS)
        + section_paths("IPv4", IPV4, IPV4_SECTIONS)
    )


async def test_url(otx: Any, upstream: FakeUpstream) -> None:
    body = otx_request("defanged-url")
    uuid = body["attribute"]["uuid"]

    answer = await query(otx, body)

    assert shapes(answer, uuid) == [
        (
            "report",
            {
                "title": ["Phishing kit domains"],
                "type": ["OTX pulse"],
                "summary": [
                    "Domains hosting a credential phishing kit.",
                    "author: phish_hunter; TLP: white; created: 2024-04-04; "
                    "tags: phishing",
                ],
                "link": ["https://otx.alienvault.com/pulse/65a1b2c3d4e5f60718293c01"],
            },
            "mentions",
        ),
        (
            "url",
            {
                "url": [URL],
                "domain": [DOMAIN],
                "host": ["login.example.com"],
                "ip": ["192.0.2.11"],
            },
            "describes",
        ),
    ]
    assert paths(upstream) == section_paths("url", URL, ("general", "url_list"))


@pytest.mark.parametrize(
    ("kind", "value"), [("md5", MD5), ("sha1", SHA1), ("sha256", SHA256)]
)
async def test_file_hash(
    otx: Any, upstream: FakeUpstream, kind: str, value: str
) -> None:
    body = otx_request("background-sha256", type=kind, value=value.upper())
    uuid = body["attribute"]["uuid"]

    answer = await query(otx, body)

    assert shapes(answer, uuid) == FILE_OBJECTS
    # "Command and Scripting Interpreter: PowerShell" is the galaxy's
    # "PowerShell"; S0001 is software, not a technique.
    assert tags(answer) == ['misp-galaxy:mitre-attack-pattern="PowerShell - T1059.001"']
    assert paths(upstream) == section_paths("file", value, ("general", "analysis"))


async def test_file_without_analysis_is_noted(otx: Any, upstream: FakeUpstream) -> None:
    upstream.add(route("file", SHA256, "analysis"), payload("file-analysis-unknown"))
    body = otx_request("background-sha256", value=SHA256)

    answer = await query(otx, body)

    assert [name for name, _, _ in shapes(answer, body["attribute"]["uuid"])] == [
        "report"
    ]
    assert answer["comment"] == f"otx: no file analysis of {SHA256}"


async def test_hover_asks_only_for_pulses(otx: Any, upstream: FakeUpstream) -> None:
    body = otx_request("hover-ip")
    uuid = body["attribute"]["uuid"]

    answer = await query(otx, body)

    summary = (
        "AlienVault OTX: in 2 pulses: Example C2 infrastructure; Scanning hosts, "
        "week 21"
    )
    assert answer["results"]["Attribute"] == [
        {"type": "text", "value": summary, "category": "Other"}
    ]
    assert shapes(answer, uuid) == [C2_PULSE, SCAN_PULSE]
    assert tags(answer) == IPV4_TAGS
    assert paths(upstream) == [f"/indicators/IPv4/{IPV4}/general"]


async def test_hover_summary_names_the_top_three_pulses(
    otx: Any, upstream: FakeUpstream
) -> None:
    general = payload("ipv4-general")
    pulse = general["pulse_info"]["pulses"][1]
    general["pulse_info"]["pulses"] = [
        {**pulse, "id": f"65a1b2c3d4e5f607182930{n:02d}", "name": f"Pulse {n}"}
        for n in range(5)
    ]
    general["pulse_info"]["count"] = 5
    upstream.add(route("IPv4", IPV4, "general"), general)

    answer = await query(otx, otx_request("hover-ip"))

    assert answer["results"]["Attribute"][0]["value"] == (
        "AlienVault OTX: in 5 pulses: Pulse 0; Pulse 1; Pulse 2"
    )


async def test_no_pulses_is_an_answer(otx: Any, upstream: FakeUpstream) -> None:
    general = payload("ipv4-general")
    general["pulse_info"].update(count=0, pulses=[], references=[])
    upstream.add(route("IPv4", IPV4, "general"), general)
    body = otx_request("hover-ip")

    answer = await query(otx, body)

    assert "error" not in answer
    assert answer["results"] == {
        "Attribute": [
            {
                "type": "text",
                "value": "AlienVault OTX: in no pulses",
                "category": "Other",
            }
        ]
    }
    assert answer["comment"] == "otx: 198.51.100.7 is in no AlienVault OTX pulse"


async def test_unknown_indicator_is_an_answer(
    make_client: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No route installed: every section answers 404.
    monkeypatch.setenv("MISP_ENRICH_OTX_BASE_URL", upstream.url)
    client = await make_client()

    answer = await query(client, otx_request("hover-ip"))

    assert answer == {
        "results": {
            "Attribute": [
                {
                    "type": "text",
                    "value": "AlienVault OTX: not known",
                    "category": "Other",
                }
            ]
        },
        "comment": "otx: 198.51.100.7 is not known to AlienVault OTX",
    }


async def test_long_sections_are_capped_with_a_note(
    otx: Any, upstream: FakeUpstream
) -> None:
    general = payload("ipv4-general")
    pulse = general["pulse_info"]["pulses"][1]
    general["pulse_info"]["pulses"] = [
        {**pulse, "id": f"65a1b2c3d4e5f607182931{n:02d}", "name": f"Pulse {n}"}
        for n in range(12)
    ]
    general["pulse_info"]["count"] = 57
    upstream.add(route("IPv4", IPV4, "general"), general)
    record = payload("ipv4-passive_dns")["passive_dns"][0]
    records = [
        {**record, "hostname": f"h{n}.example.net", "last": f"2024-02-{n + 1:02d}"}
        for n in range(25)
    ]
    upstream.add(
        route("IPv4", IPV4, "passive_dns"), {"passive_dns": records, "count": 57}
    )
    malware = payload("ipv4-malware")
    malware["count"] = 31
    upstream.add(route("IPv4", IPV4, "malware"), malware)
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)

    answer = await query(otx, body)

    objects = shapes(answer, body["attribute"]["uuid"])
    reports = [values["title"][0] for name, values, _ in objects if name == "report"]
    assert reports == [f"Pulse {n}" for n in range(10)]
    rrnames = [v["rrname"][0] for name, v, _ in objects if name == "passive-dns"]
    assert rrnames == [f"h{n}.example.net" for n in range(24, 14, -1)]
    assert answer["comment"] == (
        "otx: 57 pulses mention 198.51.100.7, 10 shown; "
        "otx: 31 malware samples of 198.51.100.7, 2 shown; "
        "otx: 57 passive DNS records of 198.51.100.7, 10 shown"
    )


async def test_bare_empty_pulse_info_is_no_pulses(
    otx: Any, upstream: FakeUpstream
) -> None:
    upstream.add(
        route("IPv4", IPV4, "general"),
        {"indicator": IPV4, "pulse_info": {"count": 0, "pulses": []}},
    )

    answer = await query(otx, otx_request("hover-ip"))

    assert answer["results"]["Attribute"][0]["value"] == (
        "AlienVault OTX: in no pulses"
    )
    assert answer["comment"] == "otx: 198.51.100.7 is in no AlienVault OTX pulse"


def with_pulse_info(**pulse_info: Any) -> dict[str, Any]:
    """Return the IPv4 general section with its pulse_info changed."""
    general = payload("ipv4-general")
    general["pulse_info"].update(pulse_info)
    return general


def without(key: str) -> dict[str, Any]:
    general = payload("ipv4-general")
    del general[key]
    return general


MALFORMED = "AlienVault OTX: sent a malformed answer: "
MALFORMED_GENERAL = [
    pytest.param(
        {**payload("ipv4-general"), "pulse_info": []},
        "the general section's pulse_info is not an object",
        id="pulse_info-a-list",
    ),
    pytest.param(
        {**payload("ipv4-general"), "pulse_info": None},
        "the general section's pulse_info is not an object",
        id="pulse_info-null",
    ),
    pytest.param(
        without("pulse_info"),
        "the general section has no pulse_info",
        id="no-pulse_info",
    ),
    pytest.param(
        with_pulse_info(count="many", pulses=None),
        "the general section's pulse_info.count is not an integer",
        id="count-text-pulses-null",
    ),
    pytest.param(
        with_pulse_info(count=True),
        "the general section's pulse_info.count is not an integer",
        id="count-boolean",
    ),
    pytest.param(
        with_pulse_info(pulses=None),
        "the general section's pulse_info.pulses is not a list of objects",
        id="pulses-null",
    ),
    pytest.param(
        with_pulse_info(pulses={"id": "65a1b2c3d4e5f60718293a4b"}),
        "the general section's pulse_info.pulses is not a list of objects",
        id="pulses-an-object",
    ),
    pytest.param(
        with_pulse_info(pulses=["Example C2 infrastructure"]),
        "the general section's pulse_info.pulses is not a list of objects",
        id="pulse-a-string",
    ),
    pytest.param(
        {"pulse_info": {"pulses": []}},
        "the general section has no pulse_info.count",
        id="no-count",
    ),
]


@pytest.mark.parametrize(("general", "problem"), MALFORMED_GENERAL)
async def test_malformed_general_section_is_an_error(
    otx: Any, upstream: FakeUpstream, general: dict[str, Any], problem: str
) -> None:
    upstream.add(route("IPv4", IPV4, "general"), general)
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)

    answer = await query(otx, body)

    assert answer == {"error": MALFORMED + problem, "results": []}
    # Each section asked once: a malformed answer is not worth a retry.
    assert paths(upstream) == section_paths("IPv4", IPV4, IPV4_SECTIONS)


async def test_malformed_general_section_on_hover_is_an_error(
    otx: Any, upstream: FakeUpstream
) -> None:
    upstream.add(
        route("IPv4", IPV4, "general"), with_pulse_info(count="many", pulses=None)
    )

    answer = await query(otx, otx_request("hover-ip"))

    assert answer == {
        "error": MALFORMED + "the general section's pulse_info.count is not an integer",
        "results": [],
    }
    assert paths(upstream) == [f"/indicators/IPv4/{IPV4}/general"]


async def test_malformed_general_section_is_not_cached(
    otx: Any, upstream: FakeUpstream
) -> None:
    upstream.sequence(
        route("IPv4", IPV4, "general"),
        [Reply(body={"pulse_info": []}), Reply(body=payload("ipv4-general"))],
    )

    body = otx_request("hover-ip")

    first = await query(otx, body)
    second = await query(otx, body)

    assert first["error"].startswith(MALFORMED)
    assert shapes(second, body["attribute"]["uuid"]) == [C2_PULSE, SCAN_PULSE]
    assert len(upstream.requests) == 2


# The objects each IPv4 section adds, by name.
SECTION_OBJECTS = {
    "reputation": {"annotation"},
    "geo": {"geolocation", "asn"},
    "malware": {"file"},
    "url_list": {"url"},
    "passive_dns": {"passive-dns"},
}
MALFORMED_SECTIONS = [
    pytest.param(
        "passive_dns",
        Reply(body={"passive_dns": None, "count": 2}),
        "the passive_dns section's passive_dns is not a list of objects",
        id="passive_dns-null",
    ),
    pytest.param(
        "passive_dns",
        Reply(body={"passive_dns": ["old.example.net"], "count": 1}),
        "the passive_dns section's passive_dns is not a list of objects",
        id="passive_dns-strings",
    ),
    pytest.param(
        "passive_dns",
        Reply(body={"passive_dns": [], "count": "many"}),
        "the passive_dns section's count is not an integer",
        id="passive_dns-count-text",
    ),
    pytest.param(
        "malware",
        Reply(body={"count": 2}),
        "the malware section has no data",
        id="malware-no-data",
    ),
    pytest.param(
        "url_list",
        Reply(body={"url_list": {"url": "http://198.51.100.7/"}, "full_size": 1}),
        "the url_list section's url_list is not a list of objects",
        id="url_list-an-object",
    ),
    pytest.param(
        "geo",
        Reply(body=["not", "an", "object"]),
        "the geo section is not an object",
        id="geo-not-an-object",
    ),
    pytest.param(
        "geo",
        Reply(body={**payload("ipv4-geo"), "latitude": "39.8N"}),
        "the geo section's latitude is not a number or null",
        id="geo-latitude-text",
    ),
    pytest.param(
        "reputation",
        Reply(body={"reputation": [5]}),
        "the reputation section's reputation is not an object or null",
        id="reputation-a-list",
    ),
    pytest.param(
        "reputation",
        Reply(body={}),
        "the reputation section has no reputation",
        id="reputation-missing",
    ),
    pytest.param(
        "malware",
        Reply(raw=b"<html>Bad Gateway</html>"),
        "the answer is not valid JSON; the source may be failing, or "
        "MISP_ENRICH_OTX_BASE_URL may point at something else",
        id="malware-not-json",
    ),
]


@pytest.mark.parametrize(("section", "reply", "problem"), MALFORMED_SECTIONS)
async def test_malformed_section_is_left_out_with_a_note(
    otx: Any, upstream: FakeUpstream, section: str, reply: Reply, problem: str
) -> None:
    upstream.add(route("IPv4", IPV4, section), reply)
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)

    answer = await query(otx, body)

    assert "error" not in answer
    assert shapes(answer, body["attribute"]["uuid"]) == [
        item for item in IPV4_OBJECTS if item[0] not in SECTION_OBJECTS[section]
    ]
    assert tags(answer) == IPV4_TAGS
    name = section.replace("_", " ")
    assert answer["comment"] == (
        f"otx: the {name} section of {IPV4} left out: {MALFORMED}{problem}"
    )
    assert paths(upstream) == section_paths("IPv4", IPV4, IPV4_SECTIONS)


async def test_a_failing_section_is_left_out_and_the_pulses_answered(
    otx: Any, upstream: FakeUpstream
) -> None:
    upstream.add(route("IPv4", IPV4, "passive_dns"), Reply(500, raw=b"oops"))
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)

    answer = await query(otx, body)

    assert shapes(answer, body["attribute"]["uuid"]) == [
        item for item in IPV4_OBJECTS if item[0] not in SECTION_OBJECTS["passive_dns"]
    ]
    assert tags(answer) == IPV4_TAGS
    assert answer["comment"] == (
        f"otx: the passive dns section of {IPV4} left out: AlienVault OTX: "
        "unavailable: HTTP 500; the source is failing, retry later"
    )


async def test_counts_are_optional_where_the_list_tells(
    otx: Any, upstream: FakeUpstream
) -> None:
    full = payload("ipv4-url_list")
    del full["full_size"]
    upstream.add(route("IPv4", IPV4, "url_list"), full)
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)

    answer = await query(otx, body)

    assert "error" not in answer
    assert shapes(answer, body["attribute"]["uuid"]) == IPV4_OBJECTS


@pytest.mark.parametrize(
    ("analysis", "problem"),
    [
        ({"malware": {}, "page_type": "PEXE"}, "has no analysis"),
        ({"analysis": "pending"}, "'s analysis is not an object or null"),
        ({"analysis": {"info": []}}, "'s analysis.info is not an object or null"),
        (
            {"analysis": {"info": {"results": "none"}}},
            "'s analysis.info.results is not an object or null",
        ),
    ],
    ids=["missing", "text", "info-a-list", "results-text"],
)
async def test_malformed_file_analysis_is_left_out_with_a_note(
    otx: Any, upstream: FakeUpstream, analysis: dict[str, Any], problem: str
) -> None:
    upstream.add(route("file", SHA256, "analysis"), analysis)
    body = otx_request("background-sha256", value=SHA256)

    answer = await query(otx, body)

    assert "error" not in answer
    assert shapes(answer, body["attribute"]["uuid"]) == FILE_OBJECTS[:1]
    separator = "" if problem.startswith("'") else " "
    assert answer["comment"] == (
        f"otx: the analysis section of {SHA256} left out: {MALFORMED}the "
        f"analysis section{separator}{problem}"
    )
    assert paths(upstream) == section_paths("file", SHA256, ("general", "analysis"))


async def test_malformed_and_late_sections_are_noted_apart(
    make_client: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(upstream)
    upstream.add(route("domain", DOMAIN, "geo"), Reply(body={}, delay=1.0))
    upstream.add(route("domain", DOMAIN, "url_list"), {"url_list": None})
    monkeypatch.setenv("MISP_ENRICH_OTX_BASE_URL", upstream.url)
    client = await make_client(upstream_timeout=0.3)
    body = otx_request("enrich-button-domain", type="domain", value=DOMAIN)

    answer = await query(client, body)

    assert [name for name, _, _ in shapes(answer, body["attribute"]["uuid"])] == [
        "report",
        "passive-dns",
        "passive-dns",
    ]
    assert answer["comment"] == (
        "otx: the url list section of example.com left out: AlienVault OTX: sent "
        "a malformed answer: the url_list section's url_list is not a list of "
        "objects; otx: AlienVault OTX did not answer the geo section of "
        "example.com in time for the query's deadline; left out"
    )
    assert paths(upstream) == section_paths("domain", DOMAIN, HOST_SECTIONS)


async def test_malformed_section_is_asked_again_next_time(
    otx: Any, upstream: FakeUpstream
) -> None:
    upstream.sequence(
        route("IPv4", IPV4, "geo"),
        [Reply(body={"latitude": "north"}), Reply(body=payload("ipv4-geo"))],
    )
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)

    first = await query(otx, body)
    second = await query(otx, body)

    uuid = body["attribute"]["uuid"]
    assert "geolocation" not in [name for name, _, _ in shapes(first, uuid)]
    assert shapes(second, uuid) == IPV4_OBJECTS
    assert "comment" not in second
    # The sound sections came from the cache; only geo was asked twice.
    assert len(upstream.requests) == len(IPV4_SECTIONS) + 1
    assert [r.path for r in upstream.requests].count(
        f"/indicators/IPv4/{IPV4}/geo"
    ) == 2


async def test_odd_entries_inside_a_sound_section_are_read_safely(
    otx: Any, upstream: FakeUpstream
) -> None:
    malware = payload("ipv4-malware")
    malware["data"][0]["detections"] = ["clamav"]
    upstream.add(route("IPv4", IPV4, "malware"), malware)
    urls = payload("ipv4-url_list")
    urls["url_list"][0]["result"] = "queued"
    upstream.add(route("IPv4", IPV4, "url_list"), urls)
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)

    answer = await query(otx, body)

    assert "error" not in answer
    comments = [obj.get("comment", "") for obj in answer["results"]["Object"]]
    expected = list(IPV4_COMMENTS)
    expected[5] = "seen 2024-05-29T16:26:40"
    assert comments == expected
    objects = shapes(answer, body["attribute"]["uuid"])
    # Without the worker's result, the URL has no IP; httpcode still counts.
    assert objects[7] == (
        "url",
        {"url": ["http://198.51.100.7/gate.php"]},
        "hosted-by",
    )
    assert objects[:7] + objects[8:] == IPV4_OBJECTS[:7] + IPV4_OBJECTS[8:]


async def test_keyless_use_sends_no_key(otx: Any, upstream: FakeUpstream) -> None:
    body = otx_request("missing-api-key")
    body["config"] = {"apikey": ""}

    answer = await query(otx, body)

    assert len(shapes(answer, body["attribute"]["uuid"])) == len(IPV4_OBJECTS)
    assert len(upstream.requests) == len(IPV4_SECTIONS)
    assert all("X-OTX-API-KEY" not in r.headers for r in upstream.requests)


async def test_server_side_key_is_used(
    otx: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISP_ENRICH_OTX_APIKEY", "SERVER-SIDE-KEY")
    body = otx_request("missing-api-key")
    body["config"] = {"apikey": ""}

    await query(otx, body)

    assert {r.headers["X-OTX-API-KEY"] for r in upstream.requests} == {
        "SERVER-SIDE-KEY"
    }


async def test_keyless_refusal_names_the_setting(
    otx: Any, upstream: FakeUpstream
) -> None:
    upstream.add(route("IPv4", IPV4, "general"), Reply(403, payload("invalid-key")))
    body = otx_request("missing-api-key")
    body["config"] = {"apikey": None}

    answer = await query(otx, body)

    assert answer == {
        "error": "otx: AlienVault OTX refused a query without an API key; set the "
        "otx apikey in MISP or MISP_ENRICH_OTX_APIKEY",
        "results": [],
    }


INVALID_KEY = payload("invalid-key")


@pytest.mark.parametrize(
    ("section", "reply", "error"),
    [
        (
            "general",
            Reply(403, INVALID_KEY),
            "AlienVault OTX: the API key was refused: HTTP 403 (Authentication "
            "credentials were not provided or are invalid.); check the module's "
            "apikey setting",
        ),
        (
            "general",
            Reply(429, {"detail": "Throttled"}, headers={"Retry-After": "30"}),
            "AlienVault OTX: rate limited: HTTP 429 (Throttled); the API quota is "
            "used up, retry in 30 s",
        ),
        (
            "general",
            Reply(503, raw=b"<html>Service Unavailable</html>"),
            "AlienVault OTX: unavailable: HTTP 503",
        ),
        (
            "general",
            Reply(raw=b"not json"),
            "AlienVault OTX: sent a malformed answer: the answer is not valid JSON; "
            "the source may be failing, or MISP_ENRICH_OTX_BASE_URL may point at "
            "something else",
        ),
        (
            "general",
            Reply(body=["not", "an", "object"]),
            "AlienVault OTX: sent a malformed answer: the general section is not an "
            "object",
        ),
    ],
    ids=[
        "invalid-key",
        "rate-limited",
        "5xx",
        "not-json",
        "not-an-object",
    ],
)
async def test_upstream_errors(
    otx: Any, upstream: FakeUpstream, section: str, reply: Reply, error: str
) -> None:
    upstream.add(route("IPv4", IPV4, section), reply)
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)

    answer = await query(otx, body)

    assert answer == {"error": error, "results": []}


async def test_timeout(
    make_client: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(upstream)
    upstream.add(
        route("IPv4", IPV4, "general"), Reply(body=payload("ipv4-general"), delay=1.0)
    )
    monkeypatch.setenv("MISP_ENRICH_OTX_BASE_URL", upstream.url)
    client = await make_client(deadline=0.5, upstream_timeout=0.3)
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)

    answer = await query(client, body)

    assert answer == {
        "error": "AlienVault OTX: timed out: no answer within 0.3 s; the source is "
        "slow or down, retry later",
        "results": [],
    }


@pytest.mark.parametrize("reply", [None, Reply(403, INVALID_KEY)], ids=["ok", "403"])
async def test_key_never_leaks(
    otx: Any,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    reply: Reply | None,
) -> None:
    if reply is not None:
        upstream.add(route("IPv4", IPV4, "general"), reply)
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)

    with caplog.at_level(logging.DEBUG):
        response = await otx.post("/query", json=body)
        text = await response.text()

    assert KEY not in text
    assert KEY not in caplog.text
    assert upstream.requests[0].headers["X-OTX-API-KEY"] == KEY


async def test_modules_lists_otx(otx: Any) -> None:
    response = await otx.get("/modules")
    entry = next(m for m in await response.json() if m["name"] == "otx")

    assert entry["meta"]["config"] == ["apikey"]
    assert entry["meta"]["module-type"] == ["expansion", "hover"]
    assert set(entry["mispattributes"]["input"]) == {
        "ip-src",
        "ip-dst",
        "ip-src|port",
        "ip-dst|port",
        "domain",
        "domain|ip",
        "hostname",
        "url",
        "md5",
        "sha1",
        "sha256",
    }


def test_declares_what_it_answers_and_the_keyless_rate_limit() -> None:
    module = discover().get("otx")

    assert module is OTX
    # OTX allows 1,000 calls an hour without a key, 10,000 with one.
    assert module.rate_limits == ("10000/hour",)
    assert module.keyless_rate_limits == ("1000/hour",)
    # Passive DNS times, coordinates and file sizes included.
    assert {"datetime", "float", "size-in-bytes"} <= set(module.output_types)


async def test_late_section_is_left_out_and_the_rest_answered(
    make_client: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(upstream)
    # The upstream timeout (10 s) outlasts the deadline: only the budget the
    # module gives sections beyond general cuts the hanging one short.
    upstream.add(
        route("IPv4", IPV4, "passive_dns"),
        Reply(body=payload("ipv4-passive_dns"), delay=3.0),
    )
    monkeypatch.setenv("MISP_ENRICH_OTX_BASE_URL", upstream.url)
    client = await make_client(deadline=1.5)
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)
    uuid = body["attribute"]["uuid"]

    answer = await query(client, body)

    assert "error" not in answer
    assert shapes(answer, uuid) == [
        item for item in IPV4_OBJECTS if item[0] != "passive-dns"
    ]
    assert tags(answer) == IPV4_TAGS
    assert answer["comment"] == (
        "otx: AlienVault OTX did not answer the passive dns section of "
        "198.51.100.7 in time for the query's deadline; left out"
    )
    assert paths(upstream) == section_paths("IPv4", IPV4, IPV4_SECTIONS)


async def test_sections_past_the_upstream_timeout_are_left_out(
    make_client: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(upstream)
    for section in ("geo", "url_list"):
        upstream.add(route("domain", DOMAIN, section), Reply(body={}, delay=1.0))
    monkeypatch.setenv("MISP_ENRICH_OTX_BASE_URL", upstream.url)
    client = await make_client(upstream_timeout=0.3)
    body = otx_request("enrich-button-domain", type="domain", value=DOMAIN)
    uuid = body["attribute"]["uuid"]

    answer = await query(client, body)

    assert [name for name, _, _ in shapes(answer, uuid)] == [
        "report",
        "passive-dns",
        "passive-dns",
    ]
    assert answer["comment"] == (
        "otx: AlienVault OTX did not answer the geo, url list sections of "
        "example.com in time for the query's deadline; left out"
    )
    assert paths(upstream) == section_paths("domain", DOMAIN, HOST_SECTIONS)


async def test_late_general_section_is_still_an_error(
    make_client: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(upstream)
    upstream.add(
        route("IPv4", IPV4, "general"), Reply(body=payload("ipv4-general"), delay=2.0)
    )
    monkeypatch.setenv("MISP_ENRICH_OTX_BASE_URL", upstream.url)
    client = await make_client(deadline=1.0)
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)

    answer = await query(client, body)

    assert answer["results"] == []
    assert answer["error"].startswith(
        "AlienVault OTX: timed out: no answer within the 1 s deadline"
    )


async def test_sections_past_the_keyless_limit_are_left_out(
    make_client: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(upstream)
    monkeypatch.setenv("MISP_ENRICH_OTX_BASE_URL", upstream.url)
    monkeypatch.delenv("MISP_ENRICH_OTX_APIKEY", raising=False)
    monkeypatch.setenv("MISP_ENRICH_OTX_KEYLESS_RATE_LIMITS", "2/minute")
    client = await make_client()
    body = otx_request("enrich-button-domain", type="ip-src", value=IPV4)
    body["config"] = {"apikey": ""}

    answer = await query(client, body)

    # The pulses are the answer; four of the other sections found no slot.
    assert "error" not in answer
    assert len(upstream.calls()) == 2
    assert answer["comment"].count("left out") == 4
    assert (
        " s (2/minute); this is the server's own limit for the key, set in "
        "MISP_ENRICH_OTX_KEYLESS_RATE_LIMITS"
    ) in answer["comment"]


@pytest.mark.parametrize(
    ("entry", "tag"),
    [
        (
            {"id": "T1071.001", "display_name": "T1071.001 - Web Protocols"},
            'misp-galaxy:mitre-attack-pattern="Web Protocols - T1071.001"',
        ),
        ({"id": "T1566", "display_name": 'T1566 - Phishing" evil="x'}, None),
        ({"id": "T1566", "display_name": "T1566 - " + "P" * 101}, None),
        ({"id": "not-a-technique", "display_name": "Phishing"}, None),
    ],
)
def test_attack_tags_only_from_plain_technique_names(
    entry: dict[str, str], tag: str | None
) -> None:
    assert attack_tag(entry) == tag
