"""The upstream client: one HTTP session, typed errors mapped in one place.

A call goes cache -> coalescing (process, then fleet) -> breaker -> rate
limit -> concurrency cap -> source, and transient failures are retried
while the query's deadline allows.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

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
    Rejected,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from modules.module import ExpansionModule, ModuleConfig, key_identity, secret_values
from modules.redis_state import RedisUnavailable

log = logging.getLogger(__name__)

USER_AGENT = f"misp-enrich/{__version__}"
MAX_DETAIL = 200
OVERLOADED_STATUSES = (502, 503, 504)
RETRY_CAP = 5.0
# Seconds kept before the deadline to build the answer from what arrived.
ANSWER_MARGIN = 0.5
READ_CHUNK = 256 * 1024
MAX_POLLS = 100
MIN_SECRET = 8
# aiohttp's connection errors, in words an administrator acts on.
CONNECT_REASONS = {
    "ClientConnectorDNSError": "the host name does not resolve",
    "ClientConnectorCertificateError": "its TLS certificate is not trusted",
    "ClientConnectorSSLError": "the TLS handshake failed",
    "ClientProxyConnectionError": "the proxy refused the connection",
    "ClientConnectorError": "the connection was refused",
}
# A timeout that fires this close to the deadline was set by the deadline.
DEADLINE_SLACK = 0.1

Call = Callable[[], Awaitable[tuple[Any, float | None]]]
# Set while a call runs inside the engine's guard, so a request made there
# is not limited twice.
_GUARDED: ContextVar[bool] = ContextVar("misp_enrich_guarded", default=False)


class Overloaded(Unavailable):
    """A 502, 503 or 504 answer, or a dropped connection: worth another try."""

    def __init__(self, source: str, detail: str = "", cause: str = "") -> None:
        self.cause = cause
        super().__init__(source, detail)

    @property
    def outcome(self) -> str:
        return "upstream_unavailable"


class Throttled(RateLimited):
    """A 429 answer from the source: worth another try after its Retry-After."""

    cause = "429"

    @property
    def outcome(self) -> str:
        return "upstream_ratelimited"


TRANSIENT = (Overloaded, Throttled)
# Connection failures after the request left: resets, cut bodies.
DROPPED = (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)


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
    """Read Retry-After as seconds, whether given as seconds or as an HTTP date."""
    value = (headers.get("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


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
        return Throttled(
            source, f"{detail}; the API quota is used up, {hint}", retry_after
        )
    if status in OVERLOADED_STATUSES:
        return Overloaded(source, detail, str(status))
    if status >= 500:
        return Unavailable(source, f"{detail}; the source is failing, retry later")
    if 300 <= status < 400:
        return BadResponse(
            source,
            f"HTTP {status}: redirected to another address, which is not followed "
            "so the API key stays with the source; check the base URL",
        )
    return Rejected(
        source,
        f"{detail}; the value may be one the source does not accept, or the "
        "base URL points at another API",
    )


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
        self.policy, self.limits = engine.policy(module, self.identity == "-")
        # Keys too short to be real would scrub ordinary words and numbers
        # ("HTTP 40***" gives a key of "1" away); they are not scrubbed.
        self._secrets = [v for v in secret_values(config) if len(v) >= MIN_SECRET]
        self.calls = 0
        # A query's parallel calls fail together: they count as one failure.
        self._breaker_failed = False

    def _limits_setting(self) -> str:
        """Name the variable that sets the limits this query counts against."""
        keyless = self.identity == "-" and self.policy.keyless_rate_limits is not None
        return self.module.env_prefix() + (
            "KEYLESS_RATE_LIMITS" if keyless else "RATE_LIMITS"
        )

    def remaining(self) -> float:
        """Return the seconds left before the query's deadline."""
        return self.deadline - asyncio.get_running_loop().time()

    async def until_answer_time(self, calls: list[Awaitable[Any]]) -> list[Any]:
        """Await optional calls together until shortly before the deadline.

        Each result is a value or the exception its call raised, in call
        order. A call still running when the time is up is cancelled and gets
        an UpstreamTimeout, so the module answers with what it has.
        """
        tasks = [asyncio.ensure_future(call) for call in calls]
        if not tasks:
            return []
        try:
            budget = self.remaining() - ANSWER_MARGIN
            await asyncio.wait(tasks, timeout=max(0.0, budget))
        finally:
            for task in tasks:
                task.cancel()
        # Let the cancelled calls unwind (release slots, counters) first.
        await asyncio.gather(*tasks, return_exceptions=True)
        late = UpstreamTimeout(self.label, "no answer before the deadline")
        return [
            late if task.cancelled() else (task.exception() or task.result())
            for task in tasks
        ]

    def answered(self, status: str) -> None:
        """Count one answer from the source: an HTTP status, a DNS rcode, "timeout"."""
        # A label: a status from a short fixed set, never an indicator or a key.
        self.engine.metrics.upstream_responses.labels(self.name, status).inc()

    def scrub(self, text: str) -> str:
        """Remove any secret value from a text before it leaves the process."""
        for value in self._secrets:
            text = text.replace(value, "***")
        return text

    def cache_key(self, endpoint: str, query: str) -> str:
        """Return the cache key: module, endpoint, key identity, query digest."""
        digest = hashlib.sha256(query.encode()).hexdigest()[:32]
        return f"{self.name}:{endpoint}:{self.identity}:{digest}"

    async def fetch(
        self,
        endpoint: str,
        query: str,
        call: Call,
        *,
        ttl: float | None = None,
    ) -> Any:
        """Return a cached answer, or make the call once and cache what it gives.

        `call` returns the value and, optionally, its own lifetime in seconds.
        """
        key = self.cache_key(endpoint, query)
        packed = await self._lookup(key)
        if packed is None:
            packed = await self.engine.coalescer.run(
                key, lambda: self._fill_unless_stored(key, call, ttl)
            )
        return self._unpack(packed)

    async def _fill_unless_stored(
        self, key: str, call: Call, ttl: float | None
    ) -> bytes:
        """Lead the call, unless the answer was stored since our cache miss.

        A call that finished between our miss and our joining has left the
        coalescer, but its answer is in the cache already.
        """
        packed = await self.engine.cache.get(key)
        if packed is not None:
            return packed
        return await self._fill(key, call, ttl)

    async def _lookup(self, key: str) -> bytes | None:
        packed = await self.engine.cache.get(key)
        metrics = self.engine.metrics
        counter = metrics.cache_misses if packed is None else metrics.cache_hits
        counter.labels(self.name).inc()
        return packed

    def _unpack(self, packed: bytes) -> Any:
        entry = orjson.loads(packed)
        if "not_found" in entry:
            raise NotFound(self.label, entry["not_found"])
        return entry["value"]

    # One call for the whole fleet.

    async def _fill(self, key: str, call: Call, ttl: float | None) -> bytes:
        """Make the call, or take the answer another replica is fetching."""
        if self.engine.fleet is None or self.policy.cache_ttl <= 0:
            return await self._call_and_store(key, call, ttl)
        token = await self._claim(key)
        if token is None:
            packed, token = await self._await_peer(key)
            if packed is not None:
                return packed
        try:
            return await self._call_and_store(key, call, ttl)
        finally:
            if token:
                await self._release(key, token)

    async def _claim(self, key: str) -> str | None:
        """Return our lock token, or None while another replica holds the call."""
        # Without Redis the call goes ahead unlocked: "" is a token to ignore.
        assert self.engine.fleet is not None
        try:
            return await self.engine.fleet.claim(key, max(0.1, self.remaining()) + 0.5)
        except RedisUnavailable:
            return ""

    async def _release(self, key: str, token: str) -> None:
        assert self.engine.fleet is not None
        try:
            await self.engine.fleet.release(key, token)
        except RedisUnavailable:
            # The lock runs out on its own shortly after our deadline.
            return

    async def _await_peer(self, key: str) -> tuple[bytes | None, str]:
        """Poll the cache while another replica calls; half the time left at most."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.remaining() / 2
        delay = 0.05
        for _ in range(MAX_POLLS):
            await asyncio.sleep(max(0.0, min(delay, until - loop.time())))
            packed = await self.engine.cache.get(key)
            if packed is not None:
                self.engine.metrics.coalesced.labels(self.name, "fleet").inc()
                return packed, ""
            # The holder finished without an answer to share, or ran out.
            token = await self._claim(key)
            if token is not None or loop.time() >= until:
                return None, token or ""
            delay = min(delay * 1.5, 0.25)
        return None, ""

    async def _call_and_store(self, key: str, call: Call, ttl: float | None) -> bytes:
        try:
            value, own_ttl = await self._guarded(call)
        except NotFound as err:
            packed = orjson.dumps({"not_found": err.detail})
            await self._store(key, packed, self.policy.not_found_ttl)
            return packed
        packed = orjson.dumps({"value": value})
        lifetimes = [
            self.policy.cache_ttl,
            *(t for t in (ttl, own_ttl) if t is not None),
        ]
        await self._store(key, packed, min(lifetimes))
        return packed

    async def _store(self, key: str, packed: bytes, lifetime: float) -> None:
        if lifetime > 0:
            await self.engine.cache.set(key, packed, lifetime)

    # The call itself: breaker, rate limit, retries, concurrency cap.

    async def _guarded(self, call: Call) -> tuple[Any, float | None]:
        """Make the call past the breaker, retrying transient failures in time."""
        if not self.module.uses_breaker:
            return await self._attempts(call)
        breakers = self.engine.breakers
        ticket = await breakers.admit(self.label, self.name, self.identity)
        try:
            result = await self._attempts(call)
        except asyncio.CancelledError:
            breakers.abandon(ticket)
            raise
        except Exception as err:
            if self._breaker_failed:
                breakers.abandon(ticket)
            else:
                self._breaker_failed = True
                await breakers.record(ticket, err)
            raise
        await breakers.record(ticket, None)
        return result

    async def _attempts(self, call: Call) -> tuple[Any, float | None]:
        attempt = 0
        while True:
            if self.remaining() <= 0:
                raise DeadlineExceeded(self.label, "no time left before the deadline")
            await self.engine.limiter.acquire(
                self.label,
                self.name,
                self.identity,
                self.limits,
                self.remaining,
                self._limits_setting(),
            )
            try:
                return await self._once(call)
            except TRANSIENT as err:
                delay = self._retry_delay(err, attempt)
                if delay is None:
                    raise
                self.engine.metrics.retries.labels(self.name, err.cause).inc()
                log.debug("%s: retrying in %.2f s after %s", self.label, delay, err)
            await asyncio.sleep(delay)
            attempt += 1

    def _retry_delay(self, err: Overloaded | Throttled, attempt: int) -> float | None:
        """Return how long to wait before another try, or None to give up."""
        settings = self.engine.settings
        if attempt >= settings.retries:
            return None
        delay = settings.retry_backoff * 2**attempt * random.uniform(0.5, 1.5)
        delay = min(delay, RETRY_CAP)
        if isinstance(err, Throttled) and err.retry_after is not None:
            delay = err.retry_after + random.uniform(0, 0.1)
        if delay > self.remaining() - settings.rate_limit_margin:
            return None
        return delay

    async def _once(self, call: Call) -> tuple[Any, float | None]:
        """Make one attempt within the source's concurrency cap, and count it."""
        metrics = self.engine.metrics
        async with self.engine.semaphore(self.name, self.policy.concurrency):
            self.calls += 1
            started = time.perf_counter()
            outcome = "cancelled"
            token = _GUARDED.set(True)
            try:
                result = await call()
                outcome = "ok"
            except UpstreamTimeout as err:
                outcome = err.outcome
                if self.remaining() > DEADLINE_SLACK:
                    raise
                # The call's timeout was the query's deadline, not the
                # source's slowness: no breaker failure, no shared error.
                raise DeadlineExceeded(self.label, err.detail) from err
            except EnrichError as err:
                outcome = err.outcome
                raise
            except Exception:
                outcome = "error"
                raise
            finally:
                _GUARDED.reset(token)
                metrics.upstream_calls.labels(self.name, outcome).inc()
                seconds = time.perf_counter() - started
                metrics.upstream_seconds.labels(self.name).observe(seconds)
        return result

    # HTTP.

    async def get_json(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        endpoint: str | None = None,
        ttl: float | None = None,
        validate: Callable[[Any], object] | None = None,
    ) -> Any:
        """GET a JSON document from the source; 404 raises NotFound.

        `validate` raises BadResponse for a document of the wrong shape, before
        it is cached: a malformed answer is an error, and errors are not kept.
        """
        query = (
            path + "?" + "&".join(f"{k}={v}" for k, v in sorted((params or {}).items()))
        )

        async def call() -> tuple[Any, float | None]:
            value = await self.request_json("GET", path, params=params, headers=headers)
            if validate is not None:
                validate(value)
            return value, None

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
        send = partial(
            self._send,
            method,
            path,
            params=params,
            headers=headers,
            json=json,
            data=data,
        )
        if _GUARDED.get():
            return await send()

        # Called by a module directly: the call still passes the breaker, the
        # rate limits, the retries and the cap.
        async def call() -> tuple[Any, float | None]:
            return await send(), None

        value, _ = await self._guarded(call)
        return value

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        json: Any,
        data: Any,
    ) -> Any:
        """Send one HTTP request and map its answer."""
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
                # A redirect could carry the key header to another host.
                allow_redirects=False,
            ) as response:
                body = await self._read(response)
                self.answered(str(response.status))
                error = map_status(
                    self.label,
                    response.status,
                    body,
                    response.headers,
                    self.module.auth_statuses,
                )
        except TimeoutError:
            self.answered("timeout")
            raise UpstreamTimeout(
                self.label,
                f"no answer within {timeout:.1f} s; the source is slow or down, "
                "retry later",
            ) from None
        except aiohttp.ClientError as err:
            self.answered("connection_error")
            raise self._connection_error(err) from None
        if error is not None:
            error.detail = self.scrub(error.detail)
            error.message = self.scrub(error.message)
            raise error
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadResponse(
                self.label,
                "the answer is not valid JSON; the source may be failing, or "
                f"{self.module.env_prefix()}BASE_URL may point at something else",
            ) from None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """Read an answer's body, refusing one larger than the configured cap."""
        cap = self.engine.settings.max_upstream_body
        if response.content_length is not None and response.content_length > cap:
            raise self._too_large(cap)
        body = bytearray()
        async for chunk in response.content.iter_chunked(READ_CHUNK):
            body += chunk
            if len(body) > cap:
                raise self._too_large(cap)
        return bytes(body)

    def _too_large(self, cap: int) -> BadResponse:
        self.answered("too_large")
        return BadResponse(
            self.label,
            f"the answer is larger than {cap} bytes; raise "
            "MISP_ENRICH_MAX_UPSTREAM_BODY if the source really sends that much",
        )

    def _connection_error(self, err: aiohttp.ClientError) -> Unavailable:
        """Name a connection failure; a dropped connection is worth a retry."""
        # Only host and port: a base URL may carry a proxy user's password.
        parts = urlsplit(self.base_url or "")
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        reason = CONNECT_REASONS.get(type(err).__name__, type(err).__name__)
        detail = self.scrub(
            f"cannot connect to {host} ({reason}); check the network, HTTPS_PROXY "
            f"or {self.module.env_prefix()}BASE_URL"
        )
        dropped = isinstance(err, DROPPED) or (
            isinstance(err, aiohttp.ClientOSError)
            and not isinstance(err, aiohttp.ClientConnectorError)
        )
        if dropped:
            return Overloaded(
                self.label,
                self.scrub(f"the connection dropped ({type(err).__name__})"),
                "connection",
            )
        return Unavailable(self.label, detail)


__all__ = ["EnrichError", "Source", "make_session", "map_status"]
