"""The served process, as MISP meets it, with every source on a fake upstream."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from modules.registry import discover
from tests.conformance import check_answer
from tests.conftest import load_payload, misp_request
from tests.core.test_serve import free_port
from tests.fakes.dns import DNSServer
from tests.fakes.http import FakeUpstream
from tests.fakes.modules import dns as dns_fake
from tests.fakes.modules import otx, virustotal

SCHEMA_KEYS = {"id", "event_id", "category", "type", "value", "uuid", "to_ids"}


@pytest.fixture
async def served(
    upstream: FakeUpstream, dns_server: DNSServer, tmp_path: Any
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    virustotal.install(upstream)
    otx.install(upstream)
    port = free_port()
    env = {
        **os.environ,
        "MISP_ENRICH_PORT": str(port),
        "MISP_ENRICH_CACHE": "memory",
        "MISP_ENRICH_DNS_NAMESERVER": dns_server.address,
        "MISP_ENRICH_VIRUSTOTAL_BASE_URL": upstream.url,
        "MISP_ENRICH_OTX_BASE_URL": upstream.url,
        # A public key's 4/minute would spread this test over minutes.
        "MISP_ENRICH_VIRUSTOTAL_RATE_LIMITS": "none",
    }
    log = open(tmp_path / "server.log", "w", encoding="utf-8")  # noqa: SIM115
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modules.cli", "serve", env=env, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    try:
        for _ in range(200):
            try:
                async with session.get(url + "/healthcheck") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the server did not become healthy")
        yield session, url
    finally:
        await session.close()
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        log.close()


async def query(served: tuple[aiohttp.ClientSession, str], body: Any) -> Any:
    session, url = served
    async with session.post(url + "/query", json=body) as response:
        assert response.status == 200
        return await response.json()


@pytest.mark.parametrize(
    "name",
    [
        "enrich-button-domain",
        "background-sha256",
        "defanged-url",
        "hover-ip",
        "composite-ipv6-port",
        "composite-domain-ip",
        "idn-domain",
    ],
)
async def test_misp_bodies_get_valid_answers(served: Any, name: str) -> None:
    body = misp_request(name)

    answer = await query(served, body)

    attribute = {k: v for k, v in body["attribute"].items() if k in SCHEMA_KEYS}
    check_answer(answer, attribute)
    assert answer["results"].get("Object"), answer


async def test_object_enrichment(served: Any) -> None:
    answer = await query(served, misp_request("object-enrichment"))

    file_objects = [o for o in answer["results"]["Object"] if o["name"] == "file"]
    assert file_objects
    referenced = {
        r["referenced_uuid"] for o in file_objects for r in o.get("ObjectReference", [])
    }
    assert "97c21f48-b5a9-4fd3-85c0-567bd59542e1" in referenced


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("missing-api-key", "VirusTotal: no API key"),
        ("unknown-module", "unknown module 'does_not_exist'"),
        ("unsupported-type", "dns does not handle attribute type 'btc'"),
        ("workflow-attach-enrichment", "dns does not handle attribute type 'url'"),
    ],
)
async def test_misp_bodies_get_clear_errors(served: Any, name: str, error: str) -> None:
    answer = await query(served, misp_request(name))

    assert answer["results"] == []
    assert answer["error"].startswith(error)


async def test_enrich_a_whole_event_as_misp_does(served: Any) -> None:
    """Send one query per attribute and module, as MISP's "Enrich event" does."""
    event = load_payload("events/circl-osint-xorist.json")["Event"]
    modules = discover().modules
    config = {"virustotal": virustotal.CONFIG, "otx": otx.CONFIG, "dns": {}}
    sent = 0

    for attribute in event["Attribute"]:
        for name, module in modules.items():
            if attribute["type"] not in module.input_types:
                continue
            body = {
                "module": name,
                "event_id": "1",
                "attribute_uuid": attribute["uuid"],
                "attribute": attribute,
                "config": config[name],
            }
            answer = await query(served, body)
            sent += 1
            # The fakes do not know this event's hashes: "not known" is an
            # answer with a note, never an error.
            assert "error" not in answer, (name, attribute["type"], answer)
            check_answer(
                answer, {k: v for k, v in attribute.items() if k in SCHEMA_KEYS}
            )
            assert "not known to" in answer.get("comment", ""), answer

    # md5, sha1 and sha256 each go to virustotal and otx.
    assert sent == 6


async def test_every_input_type_of_every_module(served: Any) -> None:
    """Send each module a MISP body for each type it declares, as MISP would."""
    fakes = {"dns": dns_fake, "otx": otx, "virustotal": virustotal}
    modules = discover().modules
    assert set(modules) == set(fakes)

    for name, module in modules.items():
        for kind in module.input_types:
            body = misp_request("enrich-button-domain")
            body["module"] = name
            body["attribute"].update(type=kind, value=fakes[name].SAMPLES[kind])
            body["config"] = dict(fakes[name].CONFIG)

            answer = await query(served, body)

            attribute = {k: v for k, v in body["attribute"].items() if k in SCHEMA_KEYS}
            check_answer(answer, attribute)
            assert answer["results"].get("Object"), (name, kind, answer)
