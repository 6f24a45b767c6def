"""Rate limits per source and API key identity, in process or shared in Redis."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import limits
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from modules.errors import ConfigError, RateLimited
from modules.metrics import Metrics
from modules.redis_state import RedisLink, RedisUnavailable

log = logging.getLogger(__name__)

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


def setting_for(name: str) -> str:
    """Return the environment variable that sets a module's rate limits."""
    return "MISP_ENRICH_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_RATE_LIMITS"


class Limiter:
    """Hand out call slots; wait for one if the deadline allows, else refuse.

    With a fleet's Redis, slots are counted there; while it is unreachable,
    each process counts its share of every limit (the limit divided by the
    fleet size) in memory, so serving goes on and the fleet stays within it.
    """

    def __init__(
        self,
        link: RedisLink | None,
        metrics: Metrics,
        margin: float,
        fleet_size: int = 1,
    ) -> None:
        self.link = link
        self.shared = link is not None
        self.metrics = metrics
        self.margin = margin
        self.fleet_size = fleet_size
        self._strategy = MovingWindowRateLimiter(make_storage(link))
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shares: dict[str, Limit] = {}
        self._falling_back = False

    async def acquire(
        self,
        label: str,
        name: str,
        identity: str,
        rules: tuple[Limit, ...],
        remaining: Callable[[], float],
        setting: str | None = None,
    ) -> None:
        """Take one slot of every limit, or raise RateLimited.

        `setting` names the variable that sets these limits, for the refusal.
        """
        if not rules:
            return
        for _ in range(MAX_ROUNDS):
            outcome = await self._round(name, identity, rules)
            if outcome is True:
                return
            if outcome is False:
                continue
            rule, wait = outcome
            if wait > remaining() - self.margin:
                self.metrics.ratelimit_refusals.labels(name).inc()
                raise RateLimited(
                    label,
                    f"next slot in {math.ceil(wait)} s ({rule.text}); this is the "
                    f"server's own limit for the key, set in "
                    f"{setting or setting_for(name)}",
                    wait,
                )
            self.metrics.ratelimit_waits.labels(name).inc()
            self.metrics.ratelimit_wait_seconds.labels(name).observe(wait)
            # A little jitter so waiters do not all wake on the same instant.
            await asyncio.sleep(wait + random.uniform(0, 0.05))
        self.metrics.ratelimit_refusals.labels(name).inc()
        raise RateLimited(label, "no free slot after repeated waits; retry later")

    async def _round(
        self, name: str, identity: str, rules: tuple[Limit, ...]
    ) -> bool | tuple[Limit, float]:
        """Try for a slot in Redis, or in this process while Redis is unreachable."""
        if self.link is None:
            return await self._try(self._strategy, name, identity, rules)
        try:
            outcome = await self.link.guard(
                partial(self._try, self._strategy, name, identity, rules)
            )
        except RedisUnavailable:
            self._fell_back()
            shares = tuple(self._share(rule) for rule in rules)
            return await self._try(self._local, name, identity, shares)
        self._recovered()
        return outcome

    async def _try(
        self,
        strategy: MovingWindowRateLimiter,
        name: str,
        identity: str,
        rules: tuple[Limit, ...],
    ) -> bool | tuple[Limit, float]:
        """Take a slot: True; lost it to a racing caller: False; else the block."""
        # One limit: taking a slot is itself the test. Several: test them all
        # first, so a slot is rarely taken for a call that cannot go.
        blocked = None
        if len(rules) > 1:
            blocked = await self._blocked(strategy, name, identity, rules)
        if blocked is None:
            if await self._hit(strategy, name, identity, rules):
                return True
            blocked = await self._blocked(strategy, name, identity, rules)
        return False if blocked is None else blocked

    async def _blocked(
        self,
        strategy: MovingWindowRateLimiter,
        name: str,
        identity: str,
        rules: tuple[Limit, ...],
    ) -> tuple[Limit, float] | None:
        """Return the limit that blocks a call now and the wait for its next slot."""
        worst: tuple[Limit, float] | None = None
        keys = ids(name, identity)
        for rule in rules:
            if await strategy.test(rule.item, *keys):
                continue
            stats = await strategy.get_window_stats(rule.item, *keys)
            wait = max(0.0, stats.reset_time - time.time())
            if worst is None or wait > worst[1]:
                worst = (rule, wait)
        return worst

    async def _hit(
        self,
        strategy: MovingWindowRateLimiter,
        name: str,
        identity: str,
        rules: tuple[Limit, ...],
    ) -> bool:
        """Take a slot of each limit in turn; False if a racing caller won one."""
        # A slot taken before a later limit refuses stays taken: the count
        # errs on the side of calls not sent, never of calls over the limit.
        keys = ids(name, identity)
        for rule in rules:
            if not await strategy.hit(rule.item, *keys):
                return False
        return True

    def _share(self, rule: Limit) -> Limit:
        """Return this process's part of a limit while the fleet cannot count."""
        share = self._shares.get(rule.text)
        if share is None:
            item = rule.item
            amount = max(1, item.amount // self.fleet_size)
            here = f"{amount} of them" if self.fleet_size > 1 else "counted"
            text = f"{rule.text}, {here} in this process while Redis is unreachable"
            share = Limit(text, type(item)(amount, item.multiples))
            self._shares[rule.text] = share
        return share

    def _fell_back(self) -> None:
        if self._falling_back:
            return
        self._falling_back = True
        log.warning(
            "rate limits: Redis is unreachable; counting in this process, "
            "1/%d of each limit (MISP_ENRICH_FLEET_SIZE), until it is back",
            self.fleet_size,
        )

    def _recovered(self) -> None:
        if not self._falling_back:
            return
        self._falling_back = False
        log.info("rate limits: counting in Redis again, shared by the fleet")


def ids(name: str, identity: str) -> tuple[str, str, str]:
    return (NAMESPACE, name, identity)
