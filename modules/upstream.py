"""The upstream client: one HTTP session, typed errors mapped in one place."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from modules import __version__
from modules.engine import Engine
from modules.errors import (
    AuthFailed,
    BadResponse,
    DeadlineExceeded,
    EnrichError,
    Forbidden,
    NotFound,
    RateLimited,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from modules.module import ExpansionModule, ModuleConfig, key_identity, secret_values

log = logging.getLogger(__name__)

USER_AGENT = f"misp-enrich/{__version__}"
MAX_DETAIL = 200


def make_session(ca_bundle: str | None) -> aiohttp.ClientSession:
    """Return the process-wide session; honours HTTPS_PROXY and NO_PROXY."""
    ssl_context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
    connector = aiohttp.TCPConnector(limit=200, ssl=ssl_context, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=True,
        headers={"User-Agent": USER_AGENT},
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _vendor_message(body: bytes) -> str:
    """Pull a short human message out of an error body, if there is one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            parts = [str(error[k]) for k in ("code", "message", "detail") if k in error]
            return ": ".join(parts)[:MAX_DETAIL]
        if isinstance(error, str):
            return error[:MAX_DETAIL]
    return ""


def map_status(
    source: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    auth_statuses: tuple[int, ...] = (401,),
) -> UpstreamError | None:
    """Turn an HTTP status into the typed error it means, or None for success."""
    if 200 <= status < 300:
        return None
    message = _vendor_message(body)
    detail = f"HTTP {status}" + (f" ({message})" if message else "")
    if status in auth_statuses:
        return AuthFailed(source, f"{detail}; check the module's apikey setting")
    if status == 403:
        return Forbidden(source, detail)
    if status == 404:
        return NotFound(source, detail)
    if status == 429:
        retry_after = _retry_after(headers)
        hint = f"retry in {retry_after:.0f} s" if retry_after else "retry later"
        return RateLimited(
            source, f"{detail}; the API quota is used up, {hint}", retry_after
        )
    if status >= 500:
        return Unavailable(source, detail)
    return BadResponse(source, f"the request was rejected: {detail}")


class Source:
    """One module's view of its upstream for one query."""

    def __init__(
        self,
        engine: Engine,
        session: aiohttp.ClientSession,
        module: type[ExpansionModule],
        config: ModuleConfig,
        deadline: float,
    ) -> None:
        self.engine = engine
        self.session = session
        self.module = module
        self.name = module.name
        self.label = module.title
        self.base_url = module.resolved_base_url()
        self.identity = key_identity(config)
        self.deadline = deadline
        self._secrets = secret_values(config)
        self.calls = 0

    def remaining(self) -> float:
        """Return the seconds left before the query's deadline."""
        return self.deadline - asyncio.get_running_loop().time()

    def scrub(self, text: str) -> str:
        """Remove any secret value from a text before it leaves the process."""
        for value in self._secrets:
            text = text.replace(value, "***")
        return text

    def cache_key(self, endpoint: str, query: str) -> str:
        digest = hashlib.sha256(query.encode()).hexdigest()[:32]
        return f"{self.name}:{endpoint}:{self.identity}:{digest}"

    async def fetch(
        self,
        endpoint: str,
        query: str,
        call: Callable[[], Awaitable[tuple[Any, float | None]]],
        *,
        ttl: float | None = None,
    ) -> Any:
        """Return a cached answer, or make the call once and cache what it gives.

        `call` returns the value and, optionally, its own lifetime in seconds.
        """
        key = self.cache_key(endpoint, query)
        cached = await self.engine.cache.get(key)
        if cached is not None:
            return self._unpack(cached)

        async def call_and_store() -> bytes:
            try:
                value, own_ttl = await self._guarded(call)
            except NotFound as err:
                packed = orjson.dumps({"not_found": err.detail})
                await self.engine.cache.set(key, packed, self.module.not_found_ttl)
                return packed
            packed = orjson.dumps({"value": value})
            lifetime = ttl if ttl is not None else self.module.cache_ttl
            if own_ttl is not None:
                lifetime = min(lifetime, own_ttl)
            if lifetime > 0:
                await self.engine.cache.set(key, packed, lifetime)
            return packed

        return self._unpack(await self.engine.coalescer.run(key, call_and_store))

    def _unpack(self, packed: bytes) -> Any:
        entry = orjson.loads(packed)
        if "not_found" in entry:
            raise NotFound(self.label, entry["not_found"])
        return entry["value"]

    async def _guarded(
        self, call: Callable[[], Awaitable[tuple[Any, float | None]]]
    ) -> tuple[Any, float | None]:
        """Make one upstream call within the source's concurrency cap."""
        if self.remaining() <= 0:
            raise DeadlineExceeded(self.label, "no time left before the deadline")
        async with self.engine.semaphore(self.name, self.module.concurrency):
            self.calls += 1
            return await call()

    async def get_json(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        endpoint: str | None = None,
        ttl: float | None = None,
    ) -> Any:
        """GET a JSON document from the source; 404 raises NotFound."""
        query = (
            path + "?" + "&".join(f"{k}={v}" for k, v in sorted((params or {}).items()))
        )

        async def call() -> tuple[Any, float | None]:
            return await self.request_json(
                "GET", path, params=params, headers=headers
            ), None

        endpoint = endpoint or path.strip("/").split("/", 1)[0]
        return await self.fetch(endpoint, query, call, ttl=ttl)

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: Any = None,
    ) -> Any:
        """Send one request, uncached, and return the parsed JSON answer."""
        if not self.base_url:
            raise Unavailable(self.label, "no base URL is configured")
        url = self.base_url + path
        timeout = min(self.engine.settings.upstream_timeout, self.remaining())
        if timeout <= 0:
            raise DeadlineExceeded(self.label, "no time left before the deadline")
        try:
            async with self.session.request(
                method,
                url,
                params=params,
                headers=headers,
                json=json,
                data=data,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                body = await response.read()
                error = map_status(
                    self.label,
                    response.status,
                    body,
                    response.headers,
                    self.module.auth_statuses,
                )
        except TimeoutError:
            raise UpstreamTimeout(
                self.label, f"no answer within {timeout:.1f} s"
            ) from None
        except aiohttp.ClientError as err:
            raise Unavailable(
                self.label, self.scrub(f"cannot connect ({type(err).__name__})")
            ) from None
        if error is not None:
            error.message = self.scrub(error.message)
            raise error
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadResponse(self.label, "the answer is not valid JSON") from None


__all__ = ["EnrichError", "Source", "make_session", "map_status"]
