"""Shared fixtures: the app on a test server, MISP bodies, fake upstreams."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modules.app import create_app
from modules.cache import MemoryCache
from modules.engine import Engine
from modules.registry import discover
from modules.runner import Enricher
from modules.settings import ServerSettings
from tests.fakes.dns import DNSServer, Zone
from tests.fakes.http import FakeUpstream

PAYLOADS = Path(__file__).parent / "payloads"


def load_payload(relative: str) -> Any:
    """Return a copy of a JSON payload under tests/payloads/."""
    return copy.deepcopy(json.loads((PAYLOADS / relative).read_text()))


def misp_request(name: str) -> dict[str, Any]:
    """Return a request body shaped the way MISP builds it."""
    return load_payload(f"requests/{name}.json")  # type: ignore[no-any-return]


# A port where nothing listens: a test that forgets its fake upstream fails
# at once here instead of reaching a real source over the Internet.
NOWHERE = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def no_real_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every third-party source, and any proxy, at a closed loopback port."""
    for module in discover().modules.values():
        if module.base_url:
            monkeypatch.setenv(module.env_prefix() + "BASE_URL", NOWHERE)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(proxy, NOWHERE)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test, and every server it starts, off the user's own cache."""
    monkeypatch.setenv("MISP_ENRICH_CACHE", "memory")
    monkeypatch.setenv("MISP_ENRICH_CACHE_PATH", str(tmp_path / "cache.sqlite3"))


@pytest.fixture
def settings() -> ServerSettings:
    return ServerSettings(cache="memory")


@pytest.fixture
def make_client(aiohttp_client: Any, settings: ServerSettings) -> Callable[..., Any]:
    """Return a factory for a test client of the app, with its own memory cache."""

    async def factory(**overrides: Any) -> Any:
        merged = settings.model_copy(update=overrides)
        registry = discover()
        enricher = Enricher(registry, merged, Engine(merged, MemoryCache()))
        client = await aiohttp_client(create_app(registry, merged, enricher))
        client.enricher = enricher
        return client

    return factory


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> Any:
    return await make_client()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def dns_zone() -> Zone:
    return Zone(
        {
            ("www.example.com", "A"): ["192.0.2.10", "192.0.2.11"],
            ("www.example.com", "AAAA"): ["2001:db8::10"],
            ("example.com", "A"): ["192.0.2.10"],
            ("example.com", "MX"): ["10 mail.example.com."],
            ("example.com", "NS"): ["ns1.example.net.", "ns2.example.net."],
            ("example.com", "TXT"): [
                '"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"',
                '"site-verification=abc123"',
            ],
            ("example.com", "SOA"): [
                "ns1.example.net. hostmaster.example.com. 1 7200 3600 1209600 300"
            ],
            ("alias.example.com", "CNAME"): ["www.example.com."],
            ("empty.example.com", "TXT"): [],
            ("xn--bcher-kva.example", "A"): ["198.51.100.20"],
            ("10.2.0.192.in-addr.arpa", "PTR"): ["www.example.com."],
            (
                "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
                "PTR",
            ): ["v6.example.com."],
        }
    )


@pytest.fixture
def dns_server(dns_zone: Zone) -> Iterator[DNSServer]:
    server = DNSServer(dns_zone).start()
    yield server
    server.stop()


@pytest.fixture
def dns_env(dns_server: DNSServer, monkeypatch: pytest.MonkeyPatch) -> DNSServer:
    """Point the dns module at the test DNS server by server-side default."""
    monkeypatch.setenv("MISP_ENRICH_DNS_NAMESERVER", dns_server.address)
    return dns_server
