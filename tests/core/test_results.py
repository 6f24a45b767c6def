"""Answers: objects MISP accepts, values it would refuse left out, both formats."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pymisp import MISPObject

from modules.results import Answer, checked_value, dumps

INPUT = "7a3d2980-d0de-4ef4-8fbf-6e27e5e6aee4"


@pytest.mark.parametrize(
    ("kind", "value", "checked"),
    [
        ("md5", "44D88612FEA8A8F36DE82E1278ABB02F", "44d88612fea8a8f36de82e1278abb02f"),
        ("md5", "5", None),
        ("sha256", 5, None),
        ("ip-dst", "2001:0db8::0001", "2001:db8::1"),
        ("ip-dst", "192.0.2.0/24", "192.0.2.0/24"),
        ("ip-src", "not-an-ip", None),
        ("domain", "Example.COM.", "example.com"),
        ("hostname", "bad host", None),
        ("size-in-bytes", 18432, "18432"),
        ("size-in-bytes", "big", None),
        ("float", 37.75, "37.75"),
        ("text", {"x": 1}, None),
        ("text", ["nested"], None),
        ("text", True, None),
        ("text", "plain", "plain"),
        (
            "datetime",
            datetime(2024, 6, 1, tzinfo=UTC),
            datetime(2024, 6, 1, tzinfo=UTC),
        ),
    ],
)
def test_checked_value(kind: str, value: Any, checked: Any) -> None:
    assert checked_value(kind, value) == checked


def test_values_misp_would_refuse_are_left_out_and_noted() -> None:
    answer = Answer(INPUT)

    answer.add_object(
        "file", {"md5": "5", "sha256": "zz", "size-in-bytes": {"x": 1}, "filename": "a"}
    )
    body = answer.to_standard()

    [obj] = body["results"]["Object"]
    assert [(a["object_relation"], a["value"]) for a in obj["Attribute"]] == [
        ("filename", "a")
    ]
    assert body["comment"] == (
        "3 value(s) from the source were not valid for MISP and were left out"
    )


def test_an_object_left_empty_is_not_sent() -> None:
    answer = Answer(INPUT)

    answer.add_object("file", {"md5": "not-a-hash"})

    assert "Object" not in answer.to_standard()["results"]


def test_an_unknown_relation_is_a_clear_bug() -> None:
    with pytest.raises(ValueError, match="the asn template has no relation nope"):
        Answer(INPUT).add_object("asn", {"nope": "x"})


def test_objects_reference_the_input_and_get_fresh_uuids() -> None:
    first, second = Answer(INPUT), Answer(INPUT)
    for answer in (first, second):
        answer.add_object(
            "domain-ip", {"domain": "example.com"}, relationship="describes"
        )

    one, two = (a.to_standard()["results"]["Object"][0] for a in (first, second))

    assert one["ObjectReference"][0]["referenced_uuid"] == INPUT
    assert one["ObjectReference"][0]["relationship_type"] == "describes"
    assert one["uuid"] != two["uuid"]
    assert one["Attribute"][0]["uuid"] != two["Attribute"][0]["uuid"]
    assert one["Attribute"][0]["to_ids"] is False


def test_simplified_format() -> None:
    answer = Answer(None)
    answer.summary = "one line"
    answer.add_object("domain-ip", {"domain": "example.com", "ip": ["192.0.2.1"]})
    answer.add_attribute("text", "extra", "Other", "a note")

    assert answer.to_simplified() == {
        "results": [
            {"types": ["text"], "values": ["one line"], "comment": "summary"},
            {
                "types": ["domain"],
                "values": ["example.com"],
                "comment": "domain-ip: domain",
            },
            {"types": ["ip-dst"], "values": ["192.0.2.1"], "comment": "domain-ip: ip"},
            {"types": ["text"], "values": ["extra"], "comment": "a note"},
        ]
    }


def test_dumps_serialises_pymisp_objects() -> None:
    answer = Answer(INPUT)
    answer.add_object("domain-ip", {"domain": "example.com"})

    assert b'"name":"domain-ip"' in dumps(answer.to_standard())


OBJECTS = [
    ("domain-ip", {"domain": "example.com", "ip": ["192.0.2.1", "2001:db8::1"]}),
    ("dns-record", {"queried-domain": "example.com", "txt-record": ["v=spf1 -all"]}),
    (
        "virustotal-report",
        {
            "permalink": "https://www.virustotal.com/gui/domain/example.com",
            "first-submission": datetime(2024, 6, 1, tzinfo=UTC),
            "detection-ratio": "2/87",
        },
    ),
    ("file", {"sha256": "a" * 64, "size-in-bytes": 18432, "filename": ["a", "b"]}),
    ("asn", {"asn": "64500", "subnet-announced": "192.0.2.0/24"}),
    ("passive-dns", {"rrname": "example.com", "rrtype": "A", "rdata": "192.0.2.1"}),
    ("geolocation", {"countrycode": "US", "latitude": 37.751}),
    ("report", {"title": "pulse", "link": "https://example.com/p", "summary": "s"}),
]


def _without_uuids(plain: dict[str, Any]) -> dict[str, Any]:
    plain = {key: value for key, value in plain.items() if key != "uuid"}
    for key in ("Attribute", "ObjectReference"):
        if key in plain:
            plain[key] = [
                {k: v for k, v in item.items() if k not in ("uuid", "object_uuid")}
                for item in plain[key]
            ]
    return plain


@pytest.mark.parametrize(("template", "values"), OBJECTS, ids=[o[0] for o in OBJECTS])
def test_objects_are_what_pymisp_builds(template: str, values: dict[str, Any]) -> None:
    answer = Answer(INPUT)
    obj = answer.add_object(template, values, comment="from a test")
    other = answer.add_object("url", {"url": "https://example.com/"}, relationship=None)
    obj.add_reference(other.uuid, "related-to")
    obj.attributes[0].comment = "first"

    theirs = MISPObject(template, standalone=False, strict=True)
    theirs.comment = "from a test"
    for attribute in obj.attributes:
        theirs.add_attribute(
            attribute.object_relation, value=attribute.value, to_ids=False
        )
    theirs.attributes[0].comment = "first"
    theirs.add_reference(INPUT, "related-to")
    theirs.add_reference(other.uuid, "related-to")
    ours = orjson.loads(dumps(obj.to_dict()))
    expected = orjson.loads(dumps(theirs.to_dict()))

    assert _without_uuids(ours) == _without_uuids(expected)
    assert list(ours) == list(expected)
    assert ours["ObjectReference"][0]["object_uuid"] == ours["uuid"]
    assert len({a["uuid"] for a in ours["Attribute"]}) == len(ours["Attribute"])


def test_an_object_breaking_its_template_is_left_out() -> None:
    answer = Answer(INPUT)
    obj = answer.add_object("asn", {"asn": "64500"})
    obj.add_attribute("asn", "64501")

    assert "Object" not in answer.to_standard()["results"]
    assert "not valid for MISP" in answer.to_standard()["comment"]


def test_datetime_values_are_read_as_pymisp_reads_them() -> None:
    answer = Answer(INPUT)
    answer.add_object(
        "virustotal-report",
        {
            "permalink": "https://www.virustotal.com/gui/domain/example.com",
            "first-submission": "2024-06-01",
            "last-submission": "not a date",
        },
    )

    [obj] = answer.to_standard()["results"]["Object"]
    assert [(a["object_relation"], a["value"]) for a in obj["Attribute"]][1:] == [
        ("first-submission", datetime(2024, 6, 1))
    ]


def test_simplified_answers_leave_out_what_misp_holds() -> None:
    answer = Answer(INPUT, frozenset({"192.0.2.10"}))
    answer.add_object(
        "dns-record",
        {"queried-domain": "10.2.0.192.in-addr.arpa", "ptr-record": "a.example"},
    )
    answer.add_object("domain-ip", {"domain": "b.example", "ip": "192.0.2.10"})

    assert answer.to_simplified()["results"] == [
        {
            "types": ["domain"],
            "values": ["a.example"],
            "comment": "dns-record: ptr-record",
        },
        {"types": ["domain"], "values": ["b.example"], "comment": "domain-ip: domain"},
    ]


def test_long_values_are_cut_or_left_out_as_misp_can_store_them() -> None:
    answer = Answer(INPUT)
    answer.add_object(
        "whois",
        {
            "text": "r" * 70_000,
            "registrar": "Example Registrar " * 4000,
            "domain": "example.com",
        },
    )

    body = answer.to_standard()

    [whois] = body["results"]["Object"]
    text = next(a for a in whois["Attribute"] if a["object_relation"] == "text")
    assert len(text["value"]) == 60_000
    assert body["comment"] == (
        "1 text value(s) from the source were cut to 60000 characters; 1 value(s) "
        "from the source were not valid for MISP and were left out"
    )
