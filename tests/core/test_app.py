"""The HTTP service: endpoints, error envelope, limits, deadlines, logs."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from modules.app import create_app
from modules.cache import MemoryCache
from modules.engine import Engine
from modules.registry import Registry, discover, modules_body
from modules.runner import Enricher
from modules.settings import ServerSettings
from tests.conftest import misp_request
from tests.core.sample_modules import Crash, Keyed, Slow


@pytest.fixture
async def sample_client(aiohttp_client: Any) -> Any:
    async def factory(**overrides: Any) -> Any:
        settings = ServerSettings(cache="memory", **overrides)
        registry = Registry()
        for module in (Slow, Crash, Keyed):
            registry.add(module, "tests")
        enricher = Enricher(registry, settings, Engine(settings, MemoryCache()))
        return await aiohttp_client(create_app(registry, settings, enricher))

    return factory


async def test_modules_lists_dns_in_misp_shape(client: Any) -> None:
    response = await client.get("/modules")
    modules = await response.json()

    assert response.status == 200
    dns = next(m for m in modules if m["name"] == "dns")
    assert dns["type"] == "expansion"
    assert dns["mispattributes"] == {
        "input": ["hostname", "domain", "domain|ip", "ip-src", "ip-dst"],
        "output": ["ip-dst", "domain", "hostname", "text"],
        "format": "misp_standard",
    }
    assert dns["meta"]["module-type"] == ["expansion", "hover"]
    assert dns["meta"]["config"] == ["nameserver"]
    for module in modules:
        assert all(isinstance(key, str) for key in module["meta"]["config"])
        assert not {"enabled", "restrict"} & set(module["meta"]["config"])


async def test_modules_body_is_prebuilt(client: Any) -> None:
    response = await client.get("/modules")

    assert await response.read() == modules_body(discover())


async def test_healthcheck_version_openapi(client: Any) -> None:
    assert await (await client.get("/healthcheck")).json() == {"status": True}
    assert (await (await client.get("/version")).json())["name"] == "misp-enrich"

    document = await (await client.get("/openapi.json")).json()

    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {
        "/modules",
        "/query",
        "/healthcheck",
        "/version",
        "/metrics",
    }
    routes = {r.resource.canonical for r in client.app.router.routes()}
    assert set(document["paths"]) == routes - {"/openapi.json"}
    module_enum = document["paths"]["/query"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["oneOf"][0]["properties"]["module"]["enum"]
    assert "dns" in module_enum


@pytest.mark.parametrize(
    ("name", "error"),
    [
        (
            "unknown-module",
            "unknown module 'does_not_exist'; this server has: dns",
        ),
        (
            "unsupported-type",
            "dns does not handle attribute type 'btc'; it handles: hostname, domain, "
            "domain|ip, ip-src, ip-dst",
        ),
    ],
)
async def test_request_errors_are_200_with_results(
    client: Any, name: str, error: str
) -> None:
    response = await client.post("/query", json=misp_request(name))

    assert response.status == 200
    body = await response.json()
    assert body["results"] == []
    assert body["error"].startswith(error)


async def test_invalid_value_is_a_clear_error(client: Any) -> None:
    body = misp_request("composite-domain-ip")
    body["attribute"]["value"] = "www.example.com|not-an-ip"

    answer = await (await client.post("/query", json=body)).json()

    assert answer == {"error": "'not-an-ip' is not a valid IP address", "results": []}


async def test_body_that_is_not_json_is_400_with_json_error(client: Any) -> None:
    response = await client.post("/query", data=b"{not json")

    assert response.status == 400
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"].startswith("the body is not valid JSON")
    assert body["results"] == []


async def test_body_without_module_is_200_error(client: Any) -> None:
    response = await client.post("/query", json={"hostname": "example.com"})

    assert response.status == 200
    assert (await response.json())["error"].startswith("the body has no 'module' key")


async def test_body_limit_is_a_json_error_and_server_keeps_serving(
    make_client: Any,
) -> None:
    client = await make_client(max_body=1024)
    body = misp_request("enrich-button-simplified")
    body["data"] = "A" * 4096

    response = await client.post("/query", json=body)

    assert response.status == 200
    answer = await response.json()
    assert answer["results"] == []
    assert "larger than the 1024 byte limit" in answer["error"]
    assert (await client.get("/healthcheck")).status == 200


async def test_body_limit_without_content_length(make_client: Any) -> None:
    client = await make_client(max_body=1024)

    async def chunks() -> Any:
        for _ in range(8):
            yield b"x" * 512

    response = await client.post("/query", data=chunks())

    assert response.status == 200
    assert "larger than the 1024 byte limit" in (await response.json())["error"]


async def test_unknown_path_is_json(client: Any) -> None:
    response = await client.get("/nothing-here")

    assert response.status == 404
    assert response.content_type == "application/json"
    assert "error" in await response.json()


async def test_wrong_method_is_json(client: Any) -> None:
    response = await client.get("/query")

    assert response.status == 405
    assert response.content_type == "application/json"


async def test_deadline_cancels_the_module_and_names_the_source(
    sample_client: Any,
) -> None:
    client = await sample_client(deadline=0.2)
    Slow.cancelled = 0
    body = {"module": "slow", "event_id": "1", "domain": "example.com"}

    answer = await (await client.post("/query", json=body)).json()

    assert answer["results"] == []
    assert answer["error"].startswith(
        "Slow Source: timed out: no answer within the 0.2 s"
    )
    assert Slow.cancelled == 1


async def test_hover_gets_the_shorter_deadline(sample_client: Any) -> None:
    client = await sample_client(deadline=30, hover_deadline=0.2)
    body = {"module": "slow", "domain": "example.com"}

    answer = await (await client.post("/query", json=body)).json()

    assert "within the 0.2 s deadline" in answer["error"]
    assert "raise MISP_ENRICH_HOVER_DEADLINE" in answer["error"]


async def test_workflow_gets_the_shorter_deadline(sample_client: Any) -> None:
    # attach-enrichment waits only MISP's hover timeout, event_id or not.
    client = await sample_client(deadline=30, hover_deadline=0.2)
    body = {
        "module": "slow",
        "event_id": "1",
        "user": {"id": "1", "email": "analyst@example.com"},
        "config": {"_": "_"},
        "attribute": {"type": "domain", "value": "example.com"},
    }

    answer = await (await client.post("/query", json=body)).json()

    assert "within the 0.2 s deadline" in answer["error"]
    assert "raise MISP_ENRICH_HOVER_DEADLINE" in answer["error"]


async def test_simplified_body_picks_the_type_the_module_handles(
    sample_client: Any,
) -> None:
    client = await sample_client(deadline=30)
    # "comment" is a MISP type too; the slow module handles only domains.
    body = {
        "module": "slow",
        "event_id": "1",
        "comment": "seen in a phishing mail",
        "domain": "example.com",
        "config": {"seconds": "0"},
    }

    answer = await (await client.post("/query", json=body)).json()

    assert answer == {"results": []}


async def test_module_bug_is_named_not_something_went_wrong(
    sample_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await sample_client()
    body = {"module": "crash", "event_id": "1", "domain": "example.com"}

    response = await client.post("/query", json=body)
    answer = await response.json()

    assert response.status == 200
    assert answer["results"] == []
    assert answer["error"] == (
        "Crash: internal error (KeyError) while building the answer; the server "
        "log has details"
    )
    assert "crash" in caplog.text
    assert (await client.get("/healthcheck")).status == 200


async def test_missing_key_and_bad_setting(
    sample_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await sample_client()
    body: dict[str, Any] = {"module": "keyed", "event_id": "1", "domain": "example.com"}

    body["config"] = {"apikey": "", "limit": None}
    missing = await (await client.post("/query", json=body)).json()
    body["config"] = {"apikey": "K", "limit": "many"}
    invalid = await (await client.post("/query", json=body)).json()

    assert missing == {
        "error": "Keyed: no API key: set the keyed apikey setting",
        "results": [],
    }
    assert invalid["results"] == []
    assert invalid["error"].startswith(
        "Keyed: invalid setting limit (Plugin.Enrichment_keyed_limit or "
        "MISP_ENRICH_KEYED_LIMIT): Input should be a valid integer"
    )
    assert "many" not in invalid["error"]


async def test_config_from_misp_wins_over_environment(
    sample_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISP_ENRICH_KEYED_APIKEY", "SERVER-KEY")
    monkeypatch.setenv("MISP_ENRICH_KEYED_LIMIT", "7")
    client = await sample_client()
    body: dict[str, Any] = {
        "module": "keyed",
        "event_id": "1",
        "attribute": {
            "type": "domain",
            "value": "example.com",
            "uuid": "7a3d2980-d0de-4ef4-8fbf-6e27e5e6aee4",
        },
    }

    body["config"] = {"apikey": "", "limit": ""}
    from_env = await (await client.post("/query", json=body)).json()
    body["config"] = {"apikey": "", "limit": "3"}
    from_misp = await (await client.post("/query", json=body)).json()

    assert from_env["results"]["Attribute"][0]["value"] == "limit=7"
    assert from_misp["results"]["Attribute"][0]["value"] == "limit=3"


async def test_access_log_has_no_body_config_or_user(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = misp_request("workflow-attach-enrichment")
    body["config"] = {"nameserver": "192.0.2.53", "apikey": "SECRET-CONFIG-VALUE"}

    await client.post("/query", json=body)

    access = [r for r in caplog.records if r.name == "modules.access"]
    assert len(access) == 1
    assert "POST /query dns 200" in access[0].getMessage()
    for secret in (
        "REDACTED-NEVER-LOG-ME",
        "analyst@example.org",
        "SECRET-CONFIG-VALUE",
    ):
        assert secret not in caplog.text
    assert "https://www.example.com/login" not in caplog.text


async def test_an_unknown_module_is_named_before_a_missing_attribute(
    client: Any,
) -> None:
    answer = await (await client.post("/query", json={"module": "nosuch"})).json()

    assert answer["results"] == []
    assert answer["error"].startswith("unknown module 'nosuch'; this server has: ")


async def test_wrong_method_on_query_still_carries_results(client: Any) -> None:
    response = await client.get("/query")

    assert response.status == 405
    assert await response.json() == {
        "error": "405: Method Not Allowed",
        "results": [],
    }


async def test_log_lines_cannot_be_forged_and_keep_indicators_out(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    forged = {"module": "dns\nfake 200 line", "event_id": "1", "domain": "a.example"}
    invalid = {
        "module": "dns",
        "event_id": "1",
        "attribute": {"type": "ip-src", "value": "999.1.2.3-analyst-data"},
    }

    await client.post("/query", json=forged)
    answer = await (await client.post("/query", json=invalid)).json()

    assert "999.1.2.3-analyst-data" in answer["error"]
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not any("\n" in line for line in info)
    assert any("POST /query dns\\nfake 200 line 200" in line for line in info)
    assert any(line.endswith("for dns failed: bad_request") for line in info)
    assert "999.1.2.3-analyst-data" not in "".join(info)


async def test_control_characters_in_a_setting_are_refused_unechoed(
    sample_client: Any,
) -> None:
    client = await sample_client()
    body = {
        "module": "keyed",
        "event_id": "1",
        "domain": "example.com",
        "config": {"apikey": "SECRET-PART\r\nX-Injected: 1"},
    }

    answer = await (await client.post("/query", json=body)).json()

    assert answer == {
        "error": "Keyed: invalid setting apikey (Plugin.Enrichment_keyed_apikey or "
        "MISP_ENRICH_KEYED_APIKEY): it holds control characters",
        "results": [],
    }


@pytest.mark.parametrize(
    "key", ["key with spaces 1234", "clé-ünïcode-0123456789", "k" * 257]
)
async def test_an_api_key_of_the_wrong_shape_is_refused_unechoed(
    sample_client: Any, key: str
) -> None:
    client = await sample_client()
    body = {
        "module": "keyed",
        "event_id": "1",
        "domain": "example.com",
        "config": {"apikey": key},
    }

    answer = await (await client.post("/query", json=body)).json()

    assert answer == {
        "error": "Keyed: invalid setting apikey (Plugin.Enrichment_keyed_apikey or "
        "MISP_ENRICH_KEYED_APIKEY): an API key is printable ASCII without spaces, "
        "at most 256 characters",
        "results": [],
    }


async def test_a_body_of_millions_of_objects_is_refused_undecoded(
    client: Any,
) -> None:
    body = b'{"module": "dns", "domain": "example.com", "x": [' + b"{}," * 400_000
    body += b"{}]}"

    response = await client.post(
        "/query", data=body, headers={"Content-Type": "application/json"}
    )

    assert response.status == 200
    assert await response.json() == {
        "error": "the body holds more than 100000 JSON objects and lists; a MISP "
        "query holds one attribute or object",
        "results": [],
    }


async def test_object_of_a_kind_the_module_does_not_enrich(client: Any) -> None:
    answer = await (
        await client.post(
            "/query", json=misp_request("object-enrichment") | {"module": "dns"}
        )
    ).json()

    assert answer == {
        "error": "dns does not enrich 'file' objects; objects it enriches: none",
        "results": [],
    }


async def test_long_module_names_are_cut_short(client: Any) -> None:
    body = {"module": "m" * 100_000, "domain": "example.com"}

    answer = await (await client.post("/query", json=body)).json()

    assert len(answer["error"]) < 300
    assert answer["error"].startswith("unknown module '" + "m" * 80 + "... (100000")


async def test_disabled_module_says_so(aiohttp_client: Any) -> None:
    settings = ServerSettings(cache="memory")
    registry = discover({"dns"})
    client = await aiohttp_client(create_app(registry, settings))

    answer = await (
        await client.post("/query", json=misp_request("composite-domain-ip"))
    ).json()

    assert answer == {
        "error": "module 'dns' is disabled on this server "
        "(MISP_ENRICH_DISABLED_MODULES)",
        "results": [],
    }
