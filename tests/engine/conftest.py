"""Engine fixtures: a keyed test source, apps around it, Redis servers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from modules.app import create_app
from modules.cache import Cache, MemoryCache
from modules.context import Context
from modules.engine import Engine
from modules.errors import NotFound
from modules.module import ExpansionModule, ModuleConfig, secret
from modules.observable import Observable
from modules.registry import Registry
from modules.results import Answer
from modules.runner import Enricher
from modules.settings import ServerSettings

KEY = "sk-test-5f2c9a17e3b84d06"
SHARED_REDIS = os.environ.get("MISP_ENRICH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class LookupConfig(ModuleConfig):
    apikey: SecretStr | None = secret("the API key")


class Lookup(ExpansionModule):
    """A keyed HTTP source: one GET per domain, answered as a domain-ip object."""

    name = "lookup"
    title = "Lookup"
    description = "Look a domain up in a test source."
    input_types = ("domain",)
    Config = LookupConfig
    cache_ttl = 3600
    not_found_ttl = 600

    async def enrich(self, observable: Observable, config: Any, ctx: Context) -> Answer:
        answer = ctx.answer()
        key = config.apikey.get_secret_value() if config.apikey else ""
        try:
            data = await ctx.source.get_json(
                f"/v1/domains/{observable.value}", headers={"x-apikey": key}
            )
        except NotFound:
            answer.note(f"{observable.value} is unknown to the source")
            return answer
        answer.add_object("domain-ip", {"domain": observable.value, "ip": data["ips"]})
        return answer


def lookup_module(url: str, **declared: Any) -> type[Lookup]:
    """Return the lookup module pointed at a fake upstream, with declarations."""
    return type("Lookup", (Lookup,), {"base_url": url, **declared})


def query_body(domain: str = "example.com", key: str = KEY) -> dict[str, Any]:
    """Return an enrich-button query for the lookup module."""
    return {
        "module": "lookup",
        "event_id": "42",
        "attribute": {
            "type": "domain",
            "value": domain,
            "uuid": "7a3d2980-d0de-4ef4-8fbf-6e27e5e6aee4",
            "category": "Network activity",
        },
        "config": {"apikey": key},
    }


async def ask(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/query", json=body)
    assert response.status == 200
    return await response.json()  # type: ignore[no-any-return]


@pytest.fixture
def serve(aiohttp_client: Any) -> Callable[..., Any]:
    """Return a factory: a test client of an app serving the given modules."""

    async def factory(
        *modules: type[ExpansionModule],
        store: Cache | None = None,
        **overrides: Any,
    ) -> Any:
        settings = ServerSettings(**{"cache": "memory", **overrides})
        registry = Registry()
        for module in modules:
            registry.add(module, "tests")
        if store is None and settings.cache_backend == "memory":
            store = MemoryCache()
        engine = Engine(settings, store)
        enricher = Enricher(registry, settings, engine)
        client = await aiohttp_client(create_app(registry, settings, enricher))
        client.engine = engine
        return client

    return factory


def need(reason: str) -> None:
    """Skip for a missing service, but fail on CI where it must be present."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Return the machine's Redis URL, skipping (or failing on CI) without it."""
    client = redis.Redis.from_url(SHARED_REDIS, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as err:
        need(f"no Redis at {SHARED_REDIS} ({type(err).__name__})")
    finally:
        client.close()
    yield SHARED_REDIS


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """Return a key prefix of this test's own, and remove its keys afterwards."""
    prefix = f"misp-enrich-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of our own on a loopback port, to stop and start at will."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            for _ in range(100):
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """Start a redis-server of our own; skip (or fail on CI) without the binary."""
    binary = shutil.which("redis-server")
    if binary is None:
        need("redis-server is not installed")
    server = RedisServer(str(binary), tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
async def upstream_url(upstream: Any) -> AsyncIterator[str]:
    yield upstream.url
