"""Rate limits per source and API key identity, in process or shared in Redis."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import limits
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from modules.errors import ConfigError, RateLimited
from modules.metrics import Metrics
from modules.redis_state import RedisLink, RedisUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
NAMESPACE = "misp-enrich"
# Another caller can take the slot we waited for; look again a few times.
MAX_ROUNDS = 8


@dataclass(frozen=True)
class Limit:
    """One declared limit, e.g. "4/minute", as text and as a limits item."""

    text: str
    item: limits.RateLimitItem


def parse_limits(name: str, texts: Iterable[str]) -> tuple[Limit, ...]:
    """Parse declared limits such as "4/minute"; a bad one is a config error."""
    parsed = []
    for text in texts:
        try:
            parsed.append(Limit(text, limits.parse(text)))
        except ValueError as err:
            variable = f"MISP_ENRICH_{name.upper()}_RATE_LIMITS"
            raise ConfigError(
                f"{name}: '{text}' is not a rate limit such as 4/minute or "
                f"500/day ({err}); check {variable}"
            ) from None
    return tuple(parsed)


def make_storage(link: RedisLink | None) -> Storage:
    """Count in Redis when the fleet shares one, else in this process."""
    if link is None:
        return MemoryStorage()
    return RedisStorage(
        "async+" + link.url,
        wrap_exceptions=True,
        implementation="redispy",
        key_prefix=link.key("limits"),
        # limits types its pass-through options as scalars; redis takes a pool.
        connection_pool=link.client.connection_pool,  # type: ignore[arg-type]
    )


class Limiter:
    """Hand out call slots; wait for one if the deadline allows, else refuse."""

    def __init__(self, link: RedisLink | None, metrics: Metrics, margin: float) -> None:
        self.link = link
        self.shared = link is not None
        self.metrics = metrics
        self.margin = margin
        self._strategy = MovingWindowRateLimiter(make_storage(link))

    async def acquire(
        self,
        label: str,
        name: str,
        identity: str,
        rules: tuple[Limit, ...],
        remaining: Callable[[], float],
    ) -> None:
        """Take one slot of every limit, or raise RateLimited."""
        if not rules:
            return
        for _ in range(MAX_ROUNDS):
            # One limit: taking a slot is itself the test. Several: test them
            # all first, so a slot is rarely taken for a call that cannot go.
            blocked = None
            if len(rules) > 1:
                blocked = await self._blocked(label, name, identity, rules)
            if blocked is None:
                if await self._hit(label, name, identity, rules):
                    return
                blocked = await self._blocked(label, name, identity, rules)
                if blocked is None:
                    continue
            rule, wait = blocked
            if wait > remaining() - self.margin:
                self.metrics.ratelimit_refusals.labels(name).inc()
                raise RateLimited(
                    label, f"next slot in {math.ceil(wait)} s ({rule.text})", wait
                )
            self.metrics.ratelimit_waits.labels(name).inc()
            self.metrics.ratelimit_wait_seconds.labels(name).observe(wait)
            # A little jitter so waiters do not all wake on the same instant.
            await asyncio.sleep(wait + random.uniform(0, 0.05))
        self.metrics.ratelimit_refusals.labels(name).inc()
        raise RateLimited(label, "no free slot after repeated waits; retry later")

    async def _blocked(
        self, label: str, name: str, identity: str, rules: tuple[Limit, ...]
    ) -> tuple[Limit, float] | None:
        """Return the limit that blocks a call now and the wait for its next slot."""
        worst: tuple[Limit, float] | None = None
        keys = ids(name, identity)
        for rule in rules:
            test = partial(self._strategy.test, rule.item, *keys)
            if await self._guard(label, name, test):
                continue
            stats = await self._guard(
                label, name, partial(self._strategy.get_window_stats, rule.item, *keys)
            )
            wait = max(0.0, stats.reset_time - time.time())
            if worst is None or wait > worst[1]:
                worst = (rule, wait)
        return worst

    async def _hit(
        self, label: str, name: str, identity: str, rules: tuple[Limit, ...]
    ) -> bool:
        """Take a slot of each limit in turn; False if a racing caller won one."""
        # A slot taken before a later limit refuses stays taken: the count
        # errs on the side of calls not sent, never of calls over the limit.
        keys = ids(name, identity)
        for rule in rules:
            hit = partial(self._strategy.hit, rule.item, *keys)
            if not await self._guard(label, name, hit):
                return False
        return True

    async def _guard(self, label: str, name: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run a counter operation; without the shared counters, refuse."""
        if self.link is None:
            return await op()
        try:
            return await self.link.guard(op)
        except RedisUnavailable:
            self.metrics.ratelimit_refusals.labels(name).inc()
            raise RateLimited(
                label,
                "the shared rate-limit counters in Redis are unreachable, so calls "
                "are held back to protect the API quota; retry when Redis is back",
            ) from None


def ids(name: str, identity: str) -> tuple[str, str, str]:
    return (NAMESPACE, name, identity)
