"""The upstream engine: cache, coalescing, limits and breakers, per process.

With MISP_ENRICH_REDIS_URL set, the cache (by default), the rate-limit
counters, the breakers and the in-flight locks live in Redis and every
replica shares them; without it they live in this process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from modules.breaker import Breakers
from modules.cache import (
    Cache,
    MemoryCache,
    NoCache,
    RecentFront,
    RedisCache,
    SQLiteCache,
)
from modules.errors import DeadlineExceeded
from modules.metrics import Metrics
from modules.module import ExpansionModule
from modules.ratelimit import Limit, Limiter, parse_limits
from modules.redis_state import RedisLink
from modules.settings import ServerSettings, SourcePolicy, source_policy

log = logging.getLogger(__name__)

# How many times followers take over from cancelled leaders before calling.
MAX_HANDOVERS = 4


class LeaderCancelled(Exception):
    """The call that others waited for ran out of its own query's time."""


class Coalescer:
    """Run identical calls that are in flight at once only once."""

    def __init__(self, on_join: Callable[[str], None] | None = None) -> None:
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._on_join = on_join

    async def run(self, key: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Join the identical call in flight, or make it and share the result."""
        for _ in range(MAX_HANDOVERS):
            future = self._inflight.get(key)
            if future is None:
                return await self._lead(key, call)
            if self._on_join:
                self._on_join(key)
            try:
                return await asyncio.shield(future)
            except LeaderCancelled:
                # A hover query's deadline is shorter than an enrichment's:
                # the follower, with time left, makes the call itself.
                continue
        return await call()

    async def _lead(self, key: str, call: Callable[[], Awaitable[Any]]) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await call()
        except BaseException as err:
            if not future.done():
                # Running out of our own time says nothing to a follower.
                ran_out = isinstance(err, asyncio.CancelledError | DeadlineExceeded)
                future.set_exception(LeaderCancelled() if ran_out else err)
                # Mark it retrieved so a lone caller does not log a warning.
                future.exception()
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]


class Engine:
    """Everything the upstream client shares across queries."""

    def __init__(self, settings: ServerSettings, cache: Cache | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.link = make_link(settings, self.metrics)
        self.cache: Cache = (
            cache
            if cache is not None
            else make_cache(settings, self.link, self.metrics)
        )
        # Waiting for another replica's answer only helps when the answer
        # lands in a cache both of them read.
        self.fleet = self.link if isinstance(self.cache, RedisCache) else None
        self.coalescer = Coalescer(self._joined)
        self.limiter = Limiter(
            self.link, self.metrics, settings.rate_limit_margin, settings.fleet_size
        )
        self.breakers = Breakers(
            settings.breaker_threshold,
            settings.breaker_cooldown,
            self.link,
            self.metrics,
            probe_seconds=max(settings.deadline, settings.hover_deadline) + 1,
        )
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._policies: dict[
            tuple[str, bool], tuple[SourcePolicy, tuple[Limit, ...]]
        ] = {}

    def policy(
        self, module: type[ExpansionModule], keyless: bool = False
    ) -> tuple[SourcePolicy, tuple[Limit, ...]]:
        """Return the module's cache lifetimes, limits and cap, read once."""
        found = self._policies.get((module.name, keyless))
        if found is None:
            policy = source_policy(module)
            rules = policy.rate_limits
            if keyless and policy.keyless_rate_limits is not None:
                rules = policy.keyless_rate_limits
            found = (policy, parse_limits(module.name, rules))
            self._policies[(module.name, keyless)] = found
        return found

    def semaphore(self, source: str, size: int) -> asyncio.Semaphore:
        """Return the concurrency cap of a source."""
        semaphore = self._semaphores.get(source)
        if semaphore is None:
            semaphore = self._semaphores[source] = asyncio.Semaphore(size)
        return semaphore

    def describe(self) -> str:
        """Say which backends are on, for the start-up log."""
        if self.link is None:
            return (
                f"cache: {self.cache.describe()}; rate limits, coalescing and "
                "breakers in this process"
            )
        shared = "rate limits, coalescing and breakers"
        if self.fleet is not None:
            shared = "cache, " + shared
        else:
            shared = f"cache: {self.cache.describe()}; {shared}"
        return (
            f"{shared} shared in Redis at {self.link.where} (prefix {self.link.prefix})"
        )

    async def start(self) -> None:
        """Open the backends and log which are on; a failing one is logged once."""
        log.info("upstream engine: %s", self.describe())
        await self.cache.open()
        if self.link is not None and self.fleet is None:
            await self.link.ping()

    async def close(self) -> None:
        await self.cache.close()
        if self.link is not None:
            await self.link.close()

    def _joined(self, key: str) -> None:
        self.metrics.coalesced.labels(key.split(":", 1)[0], "process").inc()


def make_link(settings: ServerSettings, metrics: Metrics) -> RedisLink | None:
    """Return the Redis link of a fleet, or None on a single machine."""
    if not settings.redis_url:
        return None
    return RedisLink(
        settings.redis_url,
        settings.redis_prefix,
        settings.redis_timeout,
        settings.backend_retry,
        metrics.backend("redis"),
    )


def make_cache(
    settings: ServerSettings, link: RedisLink | None, metrics: Metrics | None = None
) -> Cache:
    """Build the cache backend the settings ask for."""
    backend = settings.cache_backend
    if backend == "none":
        return NoCache()
    if backend == "memory":
        return MemoryCache()
    if backend == "redis":
        if link is None:
            raise ValueError("the redis cache needs MISP_ENRICH_REDIS_URL")
        return RedisCache(link)
    on_change = metrics.backend("cache") if metrics is not None else None
    sqlite = SQLiteCache(settings.cache_path, settings.backend_retry, on_change)
    if settings.cache_hold <= 0:
        return sqlite
    return RecentFront(sqlite, settings.cache_hold)
