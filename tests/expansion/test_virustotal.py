"""The virustotal module, driven through the app against a fake VirusTotal."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from expansion.virustotal import VirusTotal, VirusTotalConfig, url_id
from modules.registry import discover
from tests.conftest import load_payload, misp_request
from tests.fakes.http import FakeUpstream, Reply
from tests.fakes.modules import virustotal as fake
from tests.fakes.modules.virustotal import (
    DOMAIN,
    HOSTNAME,
    IP,
    MD5,
    SHA1,
    SHA256,
    URL,
    URL_ID,
    URL_SHA256,
)

KEY = "vt-test-key-7f3a9c"
INPUT_UUID = "7a3d2980-d0de-4ef4-8fbf-6e27e5e6aee4"
RELATED_SHA256 = "3df9b4128544727c646b3ea511dc212f122a87dda344daba91fd839ab050bcd2"
NO_KEY = (
    "VirusTotal: no API key: set the virustotal apikey setting in MISP or "
    "MISP_ENRICH_VIRUSTOTAL_APIKEY on the server"
)

FILE_RELATIONSHIPS = {
    f"/files/{SHA256}/{name}"
    for name in ("contacted_domains", "contacted_ips", "contacted_urls", "itw_urls")
}
DOMAIN_RELATIONSHIPS = {
    f"/domains/{DOMAIN}/{name}"
    for name in (
        "resolutions",
        "subdomains",
        "siblings",
        "communicating_files",
        "downloaded_files",
        "referrer_files",
    )
}
HOSTNAME_RELATIONSHIPS = {
    path.replace(f"/{DOMAIN}/", f"/{HOSTNAME}/") for path in DOMAIN_RELATIONSHIPS
}
IP_RELATIONSHIPS = {f"/ip_addresses/{IP}/resolutions"}
URL_RELATIONSHIPS = {
    f"/urls/{URL_SHA256}/downloaded_files",
    f"/urls/{URL_SHA256}/communicating_files",
}

FILE_VALUES = [
    ("md5", MD5),
    ("sha1", SHA1),
    ("sha256", SHA256),
    ("size-in-bytes", "18432"),
    ("filename", "invoice.pdf.exe"),
    ("filename", "payment-details.exe"),
    ("ssdeep", "3072:AbCdEfGhIjKlMnOp:QrStUvWx"),
    ("tlsh", "T1ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCD"),
    ("vhash", "015036655d1bz4nz1fz"),
    ("imphash", "fedcba9876543210fedcba9876543210"),
]
FILE_REPORT = [
    ("permalink", f"https://www.virustotal.com/gui/file/{SHA256}"),
    ("detection-ratio", "41/67"),
    ("community-score", "reputation -5; votes: 0 harmless, 3 malicious"),
    ("first-submission", "2023-11-14T22:13:20+00:00"),
    ("last-submission", "2024-06-01T00:00:00+00:00"),
    ("comment", "suggested threat label: trojan.examplebot/generic"),
]
RELATED_FILE = [
    ("md5", "99482b481f9b8b5b6cc2deb5d9bf4219"),
    ("sha1", "89f3d65aaae03c0a545cc23cc423886ef3e07b91"),
    ("sha256", RELATED_SHA256),
    ("size-in-bytes", "40960"),
    ("filename", "loader.dll"),
]
RELATED_FILE_COMMENT = (
    "VirusTotal: 30/70 engines flag it malicious; reputation -8; first seen 2024-03-09"
)
IP_REPORT = [
    ("permalink", f"https://www.virustotal.com/gui/ip-address/{IP}"),
    ("detection-ratio", "2/87"),
    ("community-score", "reputation -2; votes: 0 harmless, 1 malicious"),
    ("last-submission", "2024-06-01T00:00:00+00:00"),
]


@pytest.fixture
def vt(upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    """Point the module at the fake VirusTotal, serving every payload."""
    monkeypatch.setenv("MISP_ENRICH_VIRUSTOTAL_BASE_URL", upstream.url)
    # The declared public-key limit (4/minute) would throttle these tests.
    monkeypatch.setenv("MISP_ENRICH_VIRUSTOTAL_RATE_LIMITS", "none")
    fake.install(upstream)
    return upstream


def attribute_request(attribute_type: str, value: str, **config: str) -> Any:
    """Return an enrich-button body for one attribute, with our key."""
    body = misp_request("enrich-button-domain")
    body["attribute"]["type"] = attribute_type
    body["attribute"]["value"] = value
    body["config"] = {"apikey": KEY, "event_limit": "5", **config}
    return body


async def query(client: Any, body: Any) -> Any:
    response = await client.post("/query", json=body)
    assert response.status == 200
    return await response.json()


def shape(answer: Any, input_uuid: str = INPUT_UUID) -> list[dict[str, Any]]:
    """Return the answer's objects as names, values and labelled references."""
    objects = answer["results"].get("Object", [])
    labels = {input_uuid: "input"}
    labels.update({obj["uuid"]: f"{i}:{obj['name']}" for i, obj in enumerate(objects)})
    shaped = []
    for obj in objects:
        for reference in obj.get("ObjectReference", []):
            assert reference["object_uuid"] == obj["uuid"]
        shaped.append(
            {
                "name": obj["name"],
                "comment": obj.get("comment", ""),
                "values": [
                    (attribute["object_relation"], attribute["value"])
                    for attribute in obj["Attribute"]
                ],
                "refs": [
                    (
                        labels.get(reference["referenced_uuid"], "unknown"),
                        reference["relationship_type"],
                    )
                    for reference in obj.get("ObjectReference", [])
                ],
            }
        )
    return shaped


def obj(
    name: str,
    values: list[tuple[str, str]],
    refs: list[tuple[str, str]] | None = None,
    comment: str = "",
) -> dict[str, Any]:
    return {"name": name, "comment": comment, "values": values, "refs": refs or []}


def paths(upstream: FakeUpstream) -> list[str]:
    return [request.path for request in upstream.requests]


def assert_key_sent_in_header_only(upstream: FakeUpstream, key: str = KEY) -> None:
    assert upstream.requests
    for request in upstream.requests:
        headers = {name.lower(): value for name, value in request.headers.items()}
        assert headers["x-apikey"] == key
        assert key not in request.url
        assert request.method == "GET"


# The declaration MISP and the engine read.


async def test_modules_lists_virustotal_as_misp_modules_does(client: Any) -> None:
    response = await client.get("/modules")
    entry = next(m for m in await response.json() if m["name"] == "virustotal")

    assert entry["mispattributes"]["input"] == [
        "sha256",
        "sha1",
        "md5",
        "filename|sha256",
        "filename|sha1",
        "filename|md5",
        "domain",
        "hostname",
        "ip-src",
        "ip-dst",
        "domain|ip",
        "url",
        "file",
    ]
    assert entry["mispattributes"]["format"] == "misp_standard"
    assert entry["meta"]["config"] == ["apikey", "event_limit"]
    assert entry["meta"]["module-type"] == ["expansion", "hover"]
    assert entry["meta"]["name"] == "VirusTotal"


def test_declares_secret_key_limits_and_source() -> None:
    module = discover().get("virustotal")

    assert module is VirusTotal
    assert module.secret_keys() == ["apikey"]
    assert module.base_url == "https://www.virustotal.com/api/v3"
    assert module.rate_limits == ("4/minute", "500/day")
    assert module.cache_ttl == 86400
    assert 0 < module.not_found_ttl < module.cache_ttl
    assert module.third_party is True
    assert module.resolve_config({}) == VirusTotalConfig(apikey=None, event_limit=5)


def test_url_id_is_unpadded_base64url() -> None:
    assert url_id("https://login.example.com/verify") == (
        "aHR0cHM6Ly9sb2dpbi5leGFtcGxlLmNvbS92ZXJpZnk"
    )
    assert url_id("http://example.com/?a=1") == "aHR0cDovL2V4YW1wbGUuY29tLz9hPTE"


# One case per MISP path and per kind of VirusTotal object.


async def test_domain_enrich_button(client: Any, vt: FakeUpstream) -> None:
    body = misp_request("enrich-button-domain")
    body["config"]["apikey"] = KEY

    answer = await query(client, body)

    assert shape(answer) == DOMAIN_SHAPE
    assert answer["comment"] == (
        "VirusTotal lists 9 subdomains for example.com; 3 included (event_limit 5)"
    )
    assert "error" not in answer

    assert paths(vt)[0] == f"/domains/{DOMAIN}"
    assert set(paths(vt)[1:]) == DOMAIN_RELATIONSHIPS
    assert len(vt.requests) == 7
    assert [r.query for r in vt.requests] == [{}] + [{"limit": "5"}] * 6
    assert_key_sent_in_header_only(vt)


async def test_sha256_background_enrichment(client: Any, vt: FakeUpstream) -> None:
    body = misp_request("background-sha256")
    body["config"]["apikey"] = KEY
    input_uuid = body["attribute"]["uuid"]

    answer = await query(client, body)

    assert shape(answer, input_uuid) == FILE_SHAPE
    # event_limit "" falls back to the default, so nothing was left out.
    assert "comment" not in answer

    assert paths(vt)[0] == f"/files/{SHA256}"
    assert set(paths(vt)[1:]) == FILE_RELATIONSHIPS
    assert len(vt.requests) == 5
    assert_key_sent_in_header_only(vt)


async def test_defanged_url(client: Any, vt: FakeUpstream) -> None:
    body = misp_request("defanged-url")
    body["config"]["apikey"] = KEY
    input_uuid = body["attribute"]["uuid"]

    answer = await query(client, body)

    assert shape(answer, input_uuid) == URL_SHAPE

    # The refanged URL is looked up by its id; relationships by VT's own id.
    assert paths(vt)[0] == f"/urls/{URL_ID}"
    assert set(paths(vt)[1:]) == URL_RELATIONSHIPS
    assert len(vt.requests) == 3
    assert_key_sent_in_header_only(vt)


async def test_ip_address(client: Any, vt: FakeUpstream) -> None:
    body = misp_request("missing-api-key")
    body["config"]["apikey"] = KEY
    input_uuid = body["attribute"]["uuid"]

    answer = await query(client, body)

    assert shape(answer, input_uuid) == IP_SHAPE
    assert paths(vt) == [f"/ip_addresses/{IP}", *IP_RELATIONSHIPS]
    assert_key_sent_in_header_only(vt)


async def test_ipv6_address(client: Any, vt: FakeUpstream) -> None:
    payload = load_payload("virustotal/ip.json")
    payload["data"].update(id="2001:db8::5")
    vt.add("GET /ip_addresses/2001:db8::5", payload)
    vt.add("GET /ip_addresses/2001:db8::5/resolutions", {"data": [], "meta": {}})

    answer = await query(client, attribute_request("ip-dst", "2001:DB8:0::5"))

    assert shape(answer)[0]["values"] == [("ip", "2001:db8::5")]
    assert shape(answer)[1]["values"][0] == (
        "permalink",
        "https://www.virustotal.com/gui/ip-address/2001:db8::5",
    )
    assert paths(vt) == [
        "/ip_addresses/2001:db8::5",
        "/ip_addresses/2001:db8::5/resolutions",
    ]


async def test_file_object_enrichment_uses_its_hash(
    client: Any, vt: FakeUpstream
) -> None:
    body = misp_request("object-enrichment")
    body["config"]["apikey"] = KEY
    object_uuid = body["object"]["uuid"]

    answer = await query(client, body)

    shaped = shape(answer, object_uuid)
    assert shaped[0]["name"] == "file"
    assert shaped[0]["values"] == FILE_VALUES
    assert shaped[0]["refs"][:2] == [
        ("input", "describes"),
        ("1:virustotal-report", "analysed-with"),
    ]
    assert [item["name"] for item in shaped] == [
        "file",
        "virustotal-report",
        "domain-ip",
        "domain-ip",
        "domain-ip",
        "url",
    ]
    # The object only holds an MD5; relationships follow VirusTotal's SHA-256.
    assert paths(vt)[0] == f"/files/{MD5}"
    assert set(paths(vt)[1:]) == FILE_RELATIONSHIPS


async def test_file_object_prefers_sha256_over_md5(
    client: Any, vt: FakeUpstream
) -> None:
    body = misp_request("object-enrichment")
    body["config"]["apikey"] = KEY
    sha256 = dict(body["object"]["Attribute"][1])
    sha256.update(type="sha256", object_relation="sha256", value=SHA256.upper())
    body["object"]["Attribute"].append(sha256)

    await query(client, body)

    assert paths(vt)[0] == f"/files/{SHA256}"
    assert f"/files/{MD5}" not in paths(vt)


# What each kind of VirusTotal object answers, from the fake's payloads.

DOMAIN_SHAPE = [
    obj(
        "domain-ip",
        [
            ("domain", "example.com"),
            ("ip", "192.0.2.10"),
            ("ip", "198.51.100.7"),
        ],
        [("input", "describes"), ("1:virustotal-report", "analysed-with")],
    ),
    obj(
        "virustotal-report",
        [
            ("permalink", "https://www.virustotal.com/gui/domain/example.com"),
            ("detection-ratio", "0/88"),
            ("community-score", "reputation 0; votes: 1 harmless, 0 malicious"),
            ("last-submission", "2024-06-01T00:00:00+00:00"),
        ],
    ),
    obj(
        "dns-record",
        [
            ("queried-domain", "example.com"),
            ("a-record", "192.0.2.10"),
            ("a-record", "192.0.2.11"),
            ("aaaa-record", "2001:db8::10"),
            ("mx-record", "mail.example.com"),
            ("ns-record", "ns1.example.net"),
            ("ns-record", "ns2.example.net"),
            ("txt-record", "v=spf1 ip4:192.0.2.0/24 -all"),
            ("soa-record", "ns1.example.net"),
        ],
        [("0:domain-ip", "describes")],
    ),
    obj(
        "whois",
        [
            (
                "text",
                "Domain Name: EXAMPLE.COM\nRegistrar: Example Registrar, Inc.\n"
                "Name Server: NS1.EXAMPLE.NET",
            ),
            ("domain", "example.com"),
            ("registrar", "Example Registrar, Inc."),
            ("creation-date", "1995-08-14T04:00:00+00:00"),
            ("expiration-date", "2026-08-13T08:00:00+00:00"),
            ("modification-date", "2024-08-14T08:01:34+00:00"),
        ],
        [("0:domain-ip", "describes")],
    ),
    obj(
        "domain-ip",
        [("domain", "www.example.com")],
        [("0:domain-ip", "subdomain-of")],
        "VirusTotal: 0/88 engines flag it malicious; reputation 0",
    ),
    obj(
        "domain-ip",
        [("domain", "mail.example.com")],
        [("0:domain-ip", "subdomain-of")],
        "VirusTotal: 0/88 engines flag it malicious; reputation 0",
    ),
    obj(
        "domain-ip",
        [("domain", "login.example.com")],
        [("0:domain-ip", "subdomain-of")],
        "VirusTotal: 3/88 engines flag it malicious; reputation -2",
    ),
    obj(
        "domain-ip",
        [("domain", "example.net")],
        [("0:domain-ip", "sibling-of")],
        "VirusTotal: 0/88 engines flag it malicious; reputation 1",
    ),
    # The same file communicates with the domain and refers to it: one
    # object, two references.
    obj(
        "file",
        RELATED_FILE,
        [("0:domain-ip", "communicates-with"), ("0:domain-ip", "references")],
        RELATED_FILE_COMMENT,
    ),
]

FILE_SHAPE = [
    obj(
        "file",
        FILE_VALUES,
        [
            ("input", "describes"),
            ("1:virustotal-report", "analysed-with"),
            ("2:domain-ip", "communicates-with"),
            ("3:domain-ip", "communicates-with"),
            ("4:domain-ip", "communicates-with"),
            ("5:url", "communicates-with"),
            ("5:url", "downloaded-from"),
        ],
    ),
    obj("virustotal-report", FILE_REPORT),
    obj(
        "domain-ip",
        [("domain", "c2.example.net")],
        comment="VirusTotal: 9/88 engines flag it malicious; reputation -12",
    ),
    obj(
        "domain-ip",
        [("domain", "update.example.org")],
        comment="VirusTotal: 0/88 engines flag it malicious; reputation 0",
    ),
    # The second contacted IP came back as an error item and is left out.
    obj(
        "domain-ip",
        [("ip", "203.0.113.45")],
        comment="VirusTotal: 4/87 engines flag it malicious; reputation -3",
    ),
    obj(
        "url",
        [("url", "http://www.example.net/download/invoice.exe")],
        comment=(
            "VirusTotal: 6/89 engines flag it malicious; reputation -1; "
            "first seen 2023-11-03"
        ),
    ),
]

URL_SHAPE = [
    obj(
        "url",
        [
            ("url", "https://login.example.com/verify"),
            ("scheme", "https"),
            ("host", "login.example.com"),
            ("resource_path", "/verify"),
            ("first-seen", "2024-05-18T02:40:00+00:00"),
            ("last-seen", "2024-06-01T00:00:00+00:00"),
        ],
        [
            ("input", "describes"),
            ("1:virustotal-report", "analysed-with"),
            ("2:url", "redirects-to"),
        ],
    ),
    obj(
        "virustotal-report",
        [
            ("permalink", f"https://www.virustotal.com/gui/url/{URL_SHA256}"),
            ("detection-ratio", "3/89"),
            ("community-score", "reputation -4; votes: 0 harmless, 2 malicious"),
            ("first-submission", "2024-05-18T02:40:00+00:00"),
            ("last-submission", "2024-05-29T16:26:40+00:00"),
        ],
    ),
    obj(
        "url",
        [
            ("url", "https://login.example.com/verify/step2?session=1"),
            ("scheme", "https"),
            ("host", "login.example.com"),
            ("resource_path", "/verify/step2"),
            ("query_string", "session=1"),
        ],
    ),
    obj(
        "file",
        RELATED_FILE,
        [("0:url", "downloaded-from")],
        RELATED_FILE_COMMENT,
    ),
]

IP_SHAPE = [
    obj(
        "domain-ip",
        [
            ("ip", "198.51.100.7"),
            ("domain", "example.com"),
            ("domain", "files.example.org"),
        ],
        [("input", "describes"), ("1:virustotal-report", "analysed-with")],
    ),
    obj("virustotal-report", IP_REPORT),
    obj(
        "asn",
        [
            ("asn", "64500"),
            ("subnet-announced", "198.51.100.0/24"),
            ("country", "US"),
            ("description", "EXAMPLE-AS"),
        ],
        [("0:domain-ip", "contains")],
    ),
    obj(
        "whois",
        [
            (
                "text",
                "NetRange: 198.51.100.0 - 198.51.100.255\nOrgName: Example Org",
            ),
            ("ip-address", "198.51.100.7"),
        ],
        [("0:domain-ip", "describes")],
    ),
]

HOSTNAME_SHAPE = [
    obj(
        "domain-ip",
        [("hostname", "www.example.com"), ("ip", "192.0.2.10")],
        [("input", "describes"), ("1:virustotal-report", "analysed-with")],
    ),
    obj(
        "virustotal-report",
        [
            ("permalink", "https://www.virustotal.com/gui/domain/www.example.com"),
            ("detection-ratio", "0/88"),
            ("community-score", "reputation 0; votes: 0 harmless, 0 malicious"),
            ("last-submission", "2024-06-01T00:00:00+00:00"),
        ],
    ),
    obj(
        "dns-record",
        [
            ("queried-domain", "www.example.com"),
            ("a-record", "192.0.2.10"),
            ("cname-record", "edge.example.net"),
        ],
        [("0:domain-ip", "describes")],
    ),
]


# Every declared input type.


def shifted(expected: list[dict[str, Any]], offset: int) -> list[dict[str, Any]]:
    """Return expected objects as they read `offset` places later in an answer."""

    def moved(label: str) -> str:
        where, _, name = label.partition(":")
        return f"{int(where) + offset}:{name}" if where.isdigit() else label

    return [
        {**item, "refs": [(moved(label), kind) for label, kind in item["refs"]]}
        for item in expected
    ]


def renamed(expected: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Return the file answer with the input's own file name listed first."""
    entity, *rest = expected
    values = list(entity["values"])
    values.insert(values.index(("filename", "invoice.pdf.exe")), ("filename", name))
    return [{**entity, "values": values}, *rest]


SUBDOMAINS_NOTE = (
    "VirusTotal lists 9 subdomains for example.com; 3 included (event_limit 5)"
)
# The domain's own objects, then the IP's, then the domain's related objects.
DOMAIN_IP_SHAPE = DOMAIN_SHAPE[:4] + shifted(IP_SHAPE, 4) + DOMAIN_SHAPE[4:]
RENAMED = f"renamed.bin|{SHA256}"
TYPES = [
    ("sha256", SHA256, [f"/files/{SHA256}"], FILE_SHAPE, None),
    ("sha1", SHA1.upper(), [f"/files/{SHA1}"], FILE_SHAPE, None),
    ("md5", MD5, [f"/files/{MD5}"], FILE_SHAPE, None),
    (
        "filename|sha256",
        RENAMED,
        [f"/files/{SHA256}"],
        renamed(FILE_SHAPE, "renamed.bin"),
        None,
    ),
    (
        "filename|sha1",
        f"renamed.bin|{SHA1}",
        [f"/files/{SHA1}"],
        renamed(FILE_SHAPE, "renamed.bin"),
        None,
    ),
    # The input's name is one VirusTotal knows: it is listed once.
    ("filename|md5", f"invoice.pdf.exe|{MD5}", [f"/files/{MD5}"], FILE_SHAPE, None),
    ("domain", "Example.COM.", [f"/domains/{DOMAIN}"], DOMAIN_SHAPE, SUBDOMAINS_NOTE),
    ("hostname", HOSTNAME, [f"/domains/{HOSTNAME}"], HOSTNAME_SHAPE, None),
    ("ip-src", IP, [f"/ip_addresses/{IP}"], IP_SHAPE, None),
    ("ip-dst", "198.51.100[.]7", [f"/ip_addresses/{IP}"], IP_SHAPE, None),
    (
        "domain|ip",
        f"{DOMAIN}|{IP}",
        [f"/domains/{DOMAIN}", f"/ip_addresses/{IP}"],
        DOMAIN_IP_SHAPE,
        SUBDOMAINS_NOTE,
    ),
    ("url", URL, [f"/urls/{URL_ID}"], URL_SHAPE, None),
]
RELATIONSHIPS = {
    f"/files/{SHA256}": FILE_RELATIONSHIPS,
    f"/files/{SHA1}": FILE_RELATIONSHIPS,
    f"/files/{MD5}": FILE_RELATIONSHIPS,
    f"/domains/{DOMAIN}": DOMAIN_RELATIONSHIPS,
    f"/domains/{HOSTNAME}": HOSTNAME_RELATIONSHIPS,
    f"/ip_addresses/{IP}": IP_RELATIONSHIPS,
    f"/urls/{URL_ID}": URL_RELATIONSHIPS,
}


def test_types_table_covers_every_declared_input_type() -> None:
    assert {case[0] for case in TYPES} == set(VirusTotal.input_types)


@pytest.mark.parametrize(
    ("attribute_type", "value", "lookups", "expected", "comment"),
    TYPES,
    ids=[case[0] for case in TYPES],
)
async def test_every_input_type(
    client: Any,
    vt: FakeUpstream,
    attribute_type: str,
    value: str,
    lookups: list[str],
    expected: list[dict[str, Any]],
    comment: str | None,
) -> None:
    answer = await query(client, attribute_request(attribute_type, value))

    assert shape(answer) == expected
    assert answer.get("comment") == comment
    assert set(answer["results"]) == {"Object"}
    # The objects first, then every relationship of each, once.
    relationships = set().union(*(RELATIONSHIPS[path] for path in lookups))
    assert set(paths(vt)[: len(lookups)]) == set(lookups)
    assert set(paths(vt)[len(lookups) :]) == relationships
    assert len(vt.requests) == len(lookups) + len(relationships)
    assert_key_sent_in_header_only(vt)


@pytest.mark.parametrize(
    ("value", "names"),
    [
        (
            f"renamed.bin|{SHA256}",
            ["renamed.bin", "invoice.pdf.exe", "payment-details.exe"],
        ),
        (f"invoice.pdf.exe|{MD5}", ["invoice.pdf.exe", "payment-details.exe"]),
    ],
)
async def test_filename_of_the_input_joins_the_file_names(
    client: Any, vt: FakeUpstream, value: str, names: list[str]
) -> None:
    kind = "filename|sha256" if SHA256 in value else "filename|md5"

    answer = await query(client, attribute_request(kind, value))

    entity = shape(answer)[0]
    assert [v for relation, v in entity["values"] if relation == "filename"] == names


async def test_hostname_maps_to_hostname_relation(
    client: Any, vt: FakeUpstream
) -> None:
    answer = await query(client, attribute_request("hostname", HOSTNAME))

    assert shape(answer) == HOSTNAME_SHAPE


# Hover: one line, no relationship calls.


async def test_hover_answers_a_verdict_line_without_relationships(
    client: Any, vt: FakeUpstream
) -> None:
    body = misp_request("hover-ip")
    body["module"] = "virustotal"
    body["config"]["apikey"] = KEY

    answer = await query(client, body)

    assert answer["results"]["Attribute"][0] == {
        "type": "text",
        "value": "VirusTotal: 2/87 engines flag it malicious; reputation -2",
        "category": "Other",
    }
    assert paths(vt) == [f"/ip_addresses/{IP}"]


async def test_hover_on_a_file_says_when_it_was_first_seen(
    client: Any, vt: FakeUpstream
) -> None:
    body = misp_request("hover-ip")
    body["module"] = "virustotal"
    body["config"]["apikey"] = KEY
    body["attribute"].update(type="sha256", value=SHA256)

    answer = await query(client, body)

    assert answer["results"]["Attribute"][0]["value"] == (
        "VirusTotal: 41/67 engines flag it malicious; reputation -5; "
        "first seen 2023-11-14"
    )
    assert [item["name"] for item in shape(answer)] == ["file", "virustotal-report"]
    assert paths(vt) == [f"/files/{SHA256}"]


async def test_hover_on_domain_ip_names_each_part(
    client: Any, vt: FakeUpstream
) -> None:
    vt.add(f"GET /ip_addresses/{IP}", Reply(404, {"error": {"code": "NotFoundError"}}))
    body = misp_request("hover-ip")
    body["module"] = "virustotal"
    body["config"]["apikey"] = KEY
    body["attribute"].update(type="domain|ip", value=f"{DOMAIN}|{IP}")

    answer = await query(client, body)

    assert answer["results"]["Attribute"][0]["value"] == (
        "VirusTotal: example.com: 0/88 engines flag it malicious; reputation 0 | "
        "198.51.100.7 is not known to VirusTotal"
    )
    assert answer["comment"] == "198.51.100.7 is not known to VirusTotal"
    assert len(vt.requests) == 2


# Relationships: limits, premium-only ones, partial failures.


async def test_event_limit_caps_related_objects_and_says_so(
    client: Any, vt: FakeUpstream
) -> None:
    answer = await query(client, attribute_request("domain", DOMAIN, event_limit="2"))

    subdomains = [
        item["values"]
        for item in shape(answer)
        if ("0:domain-ip", "subdomain-of") in item["refs"]
    ]
    assert subdomains == [
        [("domain", "www.example.com")],
        [("domain", "mail.example.com")],
    ]
    assert answer["comment"] == (
        "VirusTotal lists 9 subdomains for example.com; 2 included (event_limit 2)"
    )
    assert {r.query["limit"] for r in vt.requests[1:]} == {"2"}


async def test_event_limit_above_the_page_size_is_capped_with_a_note(
    client: Any, vt: FakeUpstream
) -> None:
    # misp-modules took any number; a MISP carrying 100 over must still work.
    answer = await query(client, attribute_request("ip-src", IP, event_limit="100"))

    assert "error" not in answer
    assert shape(answer) == IP_SHAPE
    assert answer["comment"] == (
        "event_limit 100 capped at 40, the most related objects VirusTotal gives "
        "per relationship"
    )
    assert [r.query for r in vt.requests] == [{}, {"limit": "40"}]


async def test_event_limit_at_the_page_size_has_no_note(
    client: Any, vt: FakeUpstream
) -> None:
    answer = await query(client, attribute_request("ip-src", IP, event_limit="40"))

    assert "comment" not in answer
    assert [r.query for r in vt.requests] == [{}, {"limit": "40"}]


async def test_event_limit_zero_skips_relationships(
    client: Any, vt: FakeUpstream
) -> None:
    answer = await query(client, attribute_request("domain", DOMAIN, event_limit="0"))

    assert [item["name"] for item in shape(answer)] == [
        "domain-ip",
        "virustotal-report",
        "dns-record",
        "whois",
    ]
    assert paths(vt) == [f"/domains/{DOMAIN}"]


async def test_premium_only_relationship_is_skipped_with_a_note(
    client: Any, vt: FakeUpstream
) -> None:
    vt.add(
        f"GET /domains/{DOMAIN}/downloaded_files",
        Reply(
            403,
            {
                "error": {
                    "code": "ForbiddenError",
                    "message": "You are not allowed to perform the requested operation",
                }
            },
        ),
    )

    answer = await query(client, attribute_request("domain", DOMAIN))

    assert "error" not in answer
    assert answer["comment"] == (
        "downloaded files of example.com skipped: this relationship needs a "
        "premium VirusTotal key; VirusTotal lists 9 subdomains for example.com; "
        "3 included (event_limit 5)"
    )
    assert len(shape(answer)) == 9
    assert len(vt.requests) == 7


async def test_rate_limited_relationship_is_skipped_with_a_note(
    client: Any, vt: FakeUpstream
) -> None:
    vt.add(
        f"GET /files/{SHA256}/itw_urls",
        Reply(429, {"error": {"code": "QuotaExceededError", "message": "Quota"}}),
    )

    answer = await query(client, attribute_request("sha256", SHA256))

    assert answer["comment"] == (
        f"in-the-wild URLs of {SHA256} skipped: the VirusTotal quota is used up, "
        "enrich again later for them"
    )
    assert shape(answer)[0]["refs"][-1] == ("5:url", "communicates-with")


async def test_relationships_refused_by_the_local_limit_are_noted_as_ours(
    client: Any, vt: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The declared public-key limits: 4/minute lets the domain and three of
    # its six relationships through.
    monkeypatch.delenv("MISP_ENRICH_VIRUSTOTAL_RATE_LIMITS")

    answer = await query(client, attribute_request("domain", DOMAIN))

    assert "error" not in answer
    assert answer["comment"] == (
        "communicating files, downloaded files and referrer files of example.com "
        "skipped: this server's own rate limit for the VirusTotal key (4/minute, "
        "500/day) was reached; for a premium key, raise it with "
        "MISP_ENRICH_VIRUSTOTAL_RATE_LIMITS; " + SUBDOMAINS_NOTE
    )
    assert "quota is used up" not in answer["comment"]
    # The related file came from the refused relationships only.
    assert shape(answer) == DOMAIN_SHAPE[:-1]
    assert paths(vt)[0] == f"/domains/{DOMAIN}"
    assert set(paths(vt)[1:]) == {
        f"/domains/{DOMAIN}/resolutions",
        f"/domains/{DOMAIN}/subdomains",
        f"/domains/{DOMAIN}/siblings",
    }
    assert len(vt.requests) == 4


async def test_late_relationship_is_left_out_and_the_rest_answered(
    make_client: Any, vt: FakeUpstream
) -> None:
    # The upstream timeout (10 s) outlasts the deadline: only the budget the
    # module gives its relationship calls cuts the hanging one short.
    client = await make_client(deadline=1.5)
    vt.add(
        f"GET /domains/{DOMAIN}/siblings",
        Reply(body=load_payload("virustotal/domain_siblings.json"), delay=3.0),
    )

    answer = await query(client, attribute_request("domain", DOMAIN))

    assert "error" not in answer
    assert answer["comment"] == (
        "sibling domains of example.com left out: VirusTotal did not answer in "
        "time for the query's deadline; " + SUBDOMAINS_NOTE
    )
    assert shape(answer) == [
        item
        for item in DOMAIN_SHAPE
        if ("0:domain-ip", "sibling-of") not in item["refs"]
    ]
    assert len(vt.requests) == 7


async def test_relationship_past_the_upstream_timeout_is_left_out(
    make_client: Any, vt: FakeUpstream
) -> None:
    client = await make_client(upstream_timeout=0.3)
    vt.add(f"GET /ip_addresses/{IP}/resolutions", Reply(body={}, delay=1.0))

    answer = await query(client, attribute_request("ip-src", IP))

    assert answer["comment"] == (
        "resolutions of 198.51.100.7 left out: VirusTotal did not answer in time "
        "for the query's deadline"
    )
    expected = [dict(item) for item in IP_SHAPE]
    expected[0]["values"] = [("ip", IP)]
    assert shape(answer) == expected
    assert paths(vt) == [f"/ip_addresses/{IP}", f"/ip_addresses/{IP}/resolutions"]


WITHOUT_SIBLINGS = [
    item for item in DOMAIN_SHAPE if ("0:domain-ip", "sibling-of") not in item["refs"]
]
BROKEN_RELATIONSHIPS = [
    pytest.param(
        [Reply(raw=b"<html>upstream error</html>")],
        1,
        "VirusTotal: sent a malformed answer: the answer is not valid JSON; the "
        "source may be failing, or MISP_ENRICH_VIRUSTOTAL_BASE_URL may point at "
        "something else",
        id="not-json",
    ),
    pytest.param(
        [Reply(body={"meta": {"count": 2}, "links": {}})],
        1,
        "VirusTotal: sent a malformed answer: the answer has no data list of "
        "related objects",
        id="no-data-list",
    ),
    pytest.param(
        [Reply(body={"data": {"type": "domain", "id": "example.net"}})],
        1,
        "VirusTotal: sent a malformed answer: the answer has no data list of "
        "related objects",
        id="data-not-a-list",
    ),
    pytest.param(
        [Reply(500, {"error": "boom"})],
        1,
        "VirusTotal: unavailable: HTTP 500 (boom); the source is failing, retry later",
        id="500",
    ),
    # Retried twice (MISP_ENRICH_RETRIES), then given up.
    pytest.param(
        [Reply(503, {"error": {"code": "TransientError", "message": "Please retry"}})],
        3,
        "VirusTotal: unavailable: HTTP 503 (TransientError: Please retry)",
        id="503-after-retries",
    ),
    pytest.param(
        [Reply(400, {"error": {"code": "BadRequestError", "message": "Bad cursor"}})],
        1,
        "VirusTotal: refused the request: HTTP 400 (BadRequestError: Bad cursor); "
        "the value may be one the source does not accept, or the base URL points "
        "at another API",
        id="400",
    ),
]


@pytest.mark.parametrize(("replies", "calls", "reason"), BROKEN_RELATIONSHIPS)
async def test_broken_relationship_is_left_out_and_the_rest_answered(
    make_client: Any, vt: FakeUpstream, replies: list[Reply], calls: int, reason: str
) -> None:
    client = await make_client(retry_backoff=0.0)
    vt.sequence(f"GET /domains/{DOMAIN}/siblings", replies)

    answer = await query(client, attribute_request("domain", DOMAIN))

    assert "error" not in answer
    assert answer["comment"] == (
        f"sibling domains of example.com left out: {reason}; " + SUBDOMAINS_NOTE
    )
    assert shape(answer) == WITHOUT_SIBLINGS
    assert paths(vt).count(f"/domains/{DOMAIN}/siblings") == calls
    assert paths(vt)[0] == f"/domains/{DOMAIN}"
    assert set(paths(vt)[1:]) == DOMAIN_RELATIONSHIPS
    assert len(vt.requests) == 6 + calls


async def test_relationships_broken_alike_share_one_note(
    client: Any, vt: FakeUpstream
) -> None:
    for name in ("contacted_domains", "itw_urls"):
        vt.add(f"GET /files/{SHA256}/{name}", Reply(body={"data": None}))

    answer = await query(client, attribute_request("sha256", SHA256))

    assert "error" not in answer
    assert answer["comment"] == (
        f"contacted domains and in-the-wild URLs of {SHA256} left out: VirusTotal: "
        "sent a malformed answer: the answer has no data list of related objects"
    )
    # The file, its report, the contacted IPs and the contacted URL remain.
    assert shape(answer) == [
        obj(
            "file",
            FILE_VALUES,
            [
                ("input", "describes"),
                ("1:virustotal-report", "analysed-with"),
                ("2:domain-ip", "communicates-with"),
                ("3:url", "communicates-with"),
            ],
        ),
        FILE_SHAPE[1],
        *shifted(FILE_SHAPE[4:], -2),
    ]
    assert len(vt.requests) == 5


async def test_broken_relationship_of_one_half_keeps_the_other(
    client: Any, vt: FakeUpstream
) -> None:
    vt.add(f"GET /ip_addresses/{IP}/resolutions", Reply(raw=b"not json"))

    answer = await query(client, attribute_request("domain|ip", f"{DOMAIN}|{IP}"))

    assert "error" not in answer
    assert answer["comment"] == (
        "resolutions of 198.51.100.7 left out: VirusTotal: sent a malformed "
        "answer: the answer is not valid JSON; the source may be failing, or "
        "MISP_ENRICH_VIRUSTOTAL_BASE_URL may point at something else; "
        + SUBDOMAINS_NOTE
    )
    without_resolutions = [dict(item) for item in DOMAIN_IP_SHAPE]
    without_resolutions[4]["values"] = [("ip", IP)]
    assert shape(answer) == without_resolutions
    assert len(vt.requests) == 2 + len(DOMAIN_RELATIONSHIPS) + len(IP_RELATIONSHIPS)


async def test_broken_relationship_is_asked_again_next_time(
    client: Any, vt: FakeUpstream
) -> None:
    good = vt.routes[f"GET /domains/{DOMAIN}/siblings"]
    vt.sequence(f"GET /domains/{DOMAIN}/siblings", [Reply(body={"data": "oops"}), good])

    first = await query(client, attribute_request("domain", DOMAIN))
    second = await query(client, attribute_request("domain", DOMAIN))

    assert shape(first) == WITHOUT_SIBLINGS
    assert shape(second) == DOMAIN_SHAPE
    assert second["comment"] == SUBDOMAINS_NOTE
    # The report and the sound relationships came from the cache.
    assert len(vt.requests) == 8
    assert paths(vt).count(f"/domains/{DOMAIN}/siblings") == 2


async def test_refused_key_on_a_relationship_fails_the_query(
    client: Any, vt: FakeUpstream
) -> None:
    vt.add(
        f"GET /domains/{DOMAIN}/siblings",
        Reply(
            401,
            {"error": {"code": "WrongCredentialsError", "message": "Wrong API key"}},
        ),
    )

    answer = await query(client, attribute_request("domain", DOMAIN))

    assert answer == {
        "error": "VirusTotal: the API key was refused: HTTP 401 "
        "(WrongCredentialsError: Wrong API key); check the module's apikey setting",
        "results": [],
    }
    assert len(vt.requests) == 7


async def test_unknown_relationship_answer_is_empty(
    client: Any, vt: FakeUpstream
) -> None:
    vt.add(
        f"GET /ip_addresses/{IP}/resolutions",
        Reply(404, {"error": {"code": "NotFoundError", "message": "none"}}),
    )

    answer = await query(client, attribute_request("ip-dst", IP))

    assert shape(answer)[0]["values"] == [("ip", "198.51.100.7")]
    assert "comment" not in answer


# Errors: each one names VirusTotal and tells the analyst what happened.


async def test_no_key_is_a_config_error(client: Any, vt: FakeUpstream) -> None:
    answer = await query(client, misp_request("missing-api-key"))

    assert answer == {"error": NO_KEY, "results": []}
    assert vt.requests == []


async def test_server_side_key_is_used_when_misp_sends_none(
    client: Any, vt: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISP_ENRICH_VIRUSTOTAL_APIKEY", "server-side-key-42")

    answer = await query(client, misp_request("missing-api-key"))

    assert shape(answer, "4ad09d44-3554-4f0b-8eb5-90abed276637")[0]["refs"][0] == (
        "input",
        "describes",
    )
    assert_key_sent_in_header_only(vt, "server-side-key-42")


async def test_unknown_indicator_is_a_result_with_a_note(
    client: Any, vt: FakeUpstream
) -> None:
    vt.add(
        f"GET /files/{SHA256}",
        Reply(
            404,
            {
                "error": {
                    "code": "NotFoundError",
                    "message": f'File "{SHA256}" not found',
                }
            },
        ),
    )

    answer = await query(client, attribute_request("sha256", SHA256))

    assert answer == {
        "results": {},
        "comment": f"{SHA256} is not known to VirusTotal",
    }
    assert paths(vt) == [f"/files/{SHA256}"]


async def test_unknown_indicator_on_hover_says_so(
    client: Any, vt: FakeUpstream
) -> None:
    vt.add(f"GET /ip_addresses/{IP}", Reply(404, {"error": {"code": "NotFoundError"}}))
    body = misp_request("hover-ip")
    body["module"] = "virustotal"
    body["config"]["apikey"] = KEY

    answer = await query(client, body)

    assert answer["results"]["Attribute"] == [
        {
            "type": "text",
            "value": "VirusTotal: 198.51.100.7 is not known to VirusTotal",
            "category": "Other",
        }
    ]


ERRORS = [
    pytest.param(
        Reply(
            401,
            {"error": {"code": "WrongCredentialsError", "message": "Wrong API key"}},
        ),
        "VirusTotal: the API key was refused: HTTP 401 (WrongCredentialsError: Wrong "
        "API key); check the module's apikey setting",
        id="401-wrong-credentials",
    ),
    pytest.param(
        Reply(403, {"error": {"code": "ForbiddenError", "message": "Forbidden"}}),
        "VirusTotal: access denied for this API key: HTTP 403 (ForbiddenError: "
        "Forbidden)",
        id="403-forbidden",
    ),
    pytest.param(
        Reply(
            429, {"error": {"code": "QuotaExceededError", "message": "Quota exceeded"}}
        ),
        "VirusTotal: rate limited: HTTP 429 (QuotaExceededError: Quota exceeded); "
        "the API quota is used up, retry later",
        id="429-quota-exceeded",
    ),
    pytest.param(
        Reply(500, raw=b"<html>Internal Server Error</html>"),
        "VirusTotal: unavailable: HTTP 500; the source is failing, retry later",
        id="500",
    ),
    pytest.param(
        Reply(503, {"error": {"code": "TransientError", "message": "Please retry"}}),
        "VirusTotal: unavailable: HTTP 503 (TransientError: Please retry)",
        id="503-transient",
    ),
    pytest.param(
        Reply(raw=b"not json"),
        "VirusTotal: sent a malformed answer: the answer is not valid JSON; the "
        "source may be failing, or MISP_ENRICH_VIRUSTOTAL_BASE_URL may point at "
        "something else",
        id="malformed-json",
    ),
    pytest.param(
        Reply(body={"data": ["not", "an", "object"]}),
        "VirusTotal: sent a malformed answer: the answer has no data object with "
        "attributes",
        id="malformed-envelope",
    ),
]


@pytest.mark.parametrize(("reply", "message"), ERRORS)
async def test_upstream_errors(
    client: Any, vt: FakeUpstream, reply: Reply, message: str
) -> None:
    vt.add(f"GET /domains/{DOMAIN}", reply)

    answer = await query(client, attribute_request("domain", DOMAIN))

    assert answer == {"error": message, "results": []}
    # Only the object itself was asked for (the upstream client may retry
    # transient failures); no relationship call follows a failure.
    assert set(paths(vt)) == {f"/domains/{DOMAIN}"}


async def test_timeout(make_client: Any, vt: FakeUpstream) -> None:
    client = await make_client(deadline=5.0, upstream_timeout=0.3)
    vt.add(f"GET /ip_addresses/{IP}", Reply(body={}, delay=2.0))

    answer = await query(client, attribute_request("ip-src", IP))

    assert answer == {
        "error": "VirusTotal: timed out: no answer within 0.3 s; the source is slow "
        "or down, retry later",
        "results": [],
    }


async def test_invalid_event_limit_is_a_config_error(
    client: Any, vt: FakeUpstream
) -> None:
    answer = await query(
        client, attribute_request("domain", DOMAIN, event_limit="many")
    )

    assert answer["error"].startswith(
        "VirusTotal: invalid setting event_limit (Plugin.Enrichment_virustotal_"
        "event_limit or MISP_ENRICH_VIRUSTOTAL_EVENT_LIMIT): Input should be"
    )
    assert vt.requests == []


# Caching and secrets.


async def test_repeated_query_is_served_from_cache_with_fresh_uuids(
    client: Any, vt: FakeUpstream
) -> None:
    first = await query(client, attribute_request("ip-src", IP))
    second = await query(client, attribute_request("ip-src", IP))

    assert len(vt.requests) == 2
    assert shape(first) == shape(second)
    first_uuids = {o["uuid"] for o in first["results"]["Object"]}
    second_uuids = {o["uuid"] for o in second["results"]["Object"]}
    assert first_uuids.isdisjoint(second_uuids)


async def test_malformed_answer_is_not_cached(client: Any, vt: FakeUpstream) -> None:
    good = vt.routes[f"GET /ip_addresses/{IP}"]
    vt.sequence(f"GET /ip_addresses/{IP}", [Reply(body={"data": "oops"}), good])

    first = await query(client, attribute_request("ip-src", IP))
    second = await query(client, attribute_request("ip-src", IP))

    assert first["error"].startswith("VirusTotal: sent a malformed answer")
    assert second["results"]["Object"]
    assert paths(vt).count(f"/ip_addresses/{IP}") == 2


async def test_key_never_appears_in_answers_or_logs(
    client: Any, vt: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    vt.add(
        f"GET /files/{SHA256}/itw_urls",
        Reply(403, {"error": {"code": "ForbiddenError", "message": KEY}}),
    )
    vt.add(
        f"GET /ip_addresses/{IP}",
        Reply(401, {"error": {"code": "WrongCredentialsError", "message": KEY}}),
    )
    bodies = [
        attribute_request("domain", DOMAIN),
        attribute_request("sha256", SHA256),
        attribute_request("ip-src", IP),
        attribute_request("url", "https://login.example.com/verify"),
    ]

    texts = []
    for body in bodies:
        response = await client.post("/query", json=body)
        texts.append(await response.text())

    assert "the API key was refused" in texts[2]
    assert all(KEY not in text for text in texts)
    assert KEY not in caplog.text
    assert_key_sent_in_header_only(vt)


# The conformance samples cover every declared type with routes the fake has.


def test_samples_cover_every_declared_input_type() -> None:
    assert set(fake.SAMPLES) == set(VirusTotal.input_types)


@pytest.mark.parametrize("attribute_type", sorted(fake.SAMPLES))
async def test_samples_run_against_the_fake(
    client: Any, vt: FakeUpstream, attribute_type: str
) -> None:
    body = attribute_request(attribute_type, fake.SAMPLES[attribute_type])
    body["config"] = dict(fake.CONFIG)

    answer = await query(client, body)

    assert "error" not in answer
    assert shape(answer)[0]["refs"][0] == ("input", "describes")
    assert all(path in fake.ROUTES for path in paths(vt))
    assert_key_sent_in_header_only(vt, fake.CONFIG["apikey"])
