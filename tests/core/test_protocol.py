"""Every body shape MISP sends, read into one typed query."""

from __future__ import annotations

from typing import Any

import pytest

from modules.errors import BadRequest
from modules.protocol import parse_query
from tests.conftest import misp_request


def test_enrich_button_standard() -> None:
    query = parse_query(misp_request("enrich-button-domain"))

    assert query.module == "virustotal"
    assert query.standard
    assert (query.attribute_type, query.value) == ("domain", "example.com")
    assert query.reference_uuid == "7a3d2980-d0de-4ef4-8fbf-6e27e5e6aee4"
    assert query.tags == ["tlp:green"]
    assert query.event_id == "42"
    assert not query.hover
    assert query.config == {"apikey": "TEST-KEY", "event_limit": "5"}


def test_enrich_button_simplified() -> None:
    query = parse_query(misp_request("enrich-button-simplified"))

    assert not query.standard
    assert (query.attribute_type, query.value) == ("hostname", "www.example.com")
    assert query.reference_uuid == "22d5d900-1243-4bb2-b18e-8561227d12e4"
    assert query.config == {"nameserver": None}


def test_hover_standard_has_no_event() -> None:
    query = parse_query(misp_request("hover-ip"))

    assert query.hover
    assert query.standard
    assert (query.attribute_type, query.value) == ("ip-dst", "198.51.100.7")


def test_hover_simplified() -> None:
    query = parse_query(misp_request("hover-simplified"))

    assert query.hover
    assert not query.standard
    assert (query.attribute_type, query.value) == ("ip-src", "192.0.2.10")
    assert query.config == {"nameserver": None}


def test_background_job() -> None:
    query = parse_query(misp_request("background-sha256"))

    assert query.reference_uuid == "5e7b3a52-2c1d-4f6e-9a8b-0c1d2e3f4a5b"
    assert query.attribute_type == "sha256"
    assert query.config == {"apikey": "TEST-KEY", "event_limit": None}


def test_workflow_attach_enrichment_ignores_user_and_placeholder_config() -> None:
    query = parse_query(misp_request("workflow-attach-enrichment"))

    assert query.module == "dns"
    assert query.config == {"_": "_"}
    assert query.attribute_type == "url"
    assert "REDACTED-NEVER-LOG-ME" not in repr(query)


def test_object_enrichment() -> None:
    query = parse_query(misp_request("object-enrichment"))

    assert query.standard
    assert query.object_name == "file"
    assert query.reference_uuid == "97c21f48-b5a9-4fd3-85c0-567bd59542e1"
    assert [a.type for a in query.object_attributes] == ["filename", "md5"]


@pytest.mark.parametrize(
    ("name", "kind", "value"),
    [
        ("composite-domain-ip", "domain|ip", "www.example.com|192.0.2.10"),
        ("composite-ipv6-port", "ip-dst|port", "2001:db8::5|443"),
        ("defanged-url", "url", "hxxps://login.example[.]com/verify"),
        ("idn-domain", "domain", "bücher.example"),
        ("missing-api-key", "ip-src", "198.51.100.7"),
        ("unknown-module", "ip-src", "198.51.100.7"),
        ("unsupported-type", "btc", "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"),
    ],
)
def test_values_arrive_as_sent(name: str, kind: str, value: str) -> None:
    query = parse_query(misp_request(name))

    assert (query.attribute_type, query.value) == (kind, value)


def test_unknown_keys_are_ignored() -> None:
    body = misp_request("enrich-button-domain")
    body["brand_new_key"] = {"nested": [1, 2]}
    body["attribute"]["another_new_key"] = "x"

    assert parse_query(body).value == "example.com"


def test_config_values_become_strings_or_none() -> None:
    body = {"module": "dns", "hostname": "example.com"}
    body["config"] = {"a": "", "b": None, "c": 5, "d": True, "e": " x "}

    assert parse_query(body).config == {
        "a": None,
        "b": None,
        "c": "5",
        "d": "1",
        "e": " x ",
    }


def test_numeric_values_and_ids() -> None:
    body = misp_request("enrich-button-domain")
    body["event_id"] = 42
    body["attribute"]["value"] = 8080
    body["attribute"]["type"] = "port"

    query = parse_query(body)

    assert query.event_id == "42"
    assert query.value == "8080"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "the body must be a JSON object with a 'module' key"),
        ({"hostname": "example.com"}, "the body has no 'module' key"),
        ({"module": "dns"}, "the body carries no attribute"),
        (
            {"module": "dns", "event_id": "1", "bogus": "x"},
            "the body carries no attribute",
        ),
        (
            {"module": "dns", "hostname": ["a"]},
            "the value of 'hostname' must be a string",
        ),
        ({"module": 5, "hostname": "a"}, "module: Input should be a valid string"),
        (
            {"module": "dns", "attribute": {"type": "domain"}},
            "attribute.value: Field required",
        ),
        (
            {"module": "dns", "config": "x", "domain": "a"},
            "config: Input should be a valid",
        ),
    ],
)
def test_bad_bodies(body: object, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_query(body)

    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "kind"), [(["K-1"], "list"), ({"k": "K-1"}, "object")]
)
def test_a_setting_of_the_wrong_shape_is_refused_unechoed(
    value: Any, kind: str
) -> None:
    body = {"module": "virustotal", "sha256": "a" * 64, "config": {"apikey": value}}

    with pytest.raises(BadRequest) as caught:
        parse_query(body)

    assert str(caught.value) == f"the setting 'apikey' must be a string, not a {kind}"


def test_uuids_are_written_as_misp_writes_them() -> None:
    body = misp_request("enrich-button-domain")
    body["attribute"]["uuid"] = body["attribute"]["uuid"].upper()

    query = parse_query(body)

    assert query.reference_uuid == body["attribute"]["uuid"].lower()


@pytest.mark.parametrize("where", ["attribute", "attribute_uuid"])
def test_a_uuid_that_is_not_one_is_refused(where: str) -> None:
    body = misp_request("enrich-button-domain")
    if where == "attribute":
        body["attribute"]["uuid"] = "not-a-uuid"
    else:
        del body["attribute"]
        body.update({"domain": "example.com", "attribute_uuid": "not-a-uuid"})

    with pytest.raises(BadRequest) as caught:
        parse_query(body)

    assert (
        str(caught.value)
        == f"{where}{'.uuid' if where == 'attribute' else ''} is not a UUID"
    )
