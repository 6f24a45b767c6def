"""State shared by a fleet of replicas in Redis: one link, and in-flight locks."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio
from limits.errors import StorageError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from modules.health import Health

log = logging.getLogger(__name__)

T = TypeVar("T")
# What a Redis outage looks like from the client libraries.
REDIS_FAILURES = (RedisError, StorageError, OSError, TimeoutError)

# Delete the lock only if it still holds our token: a lock that expired and
# was taken by another replica is theirs.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisUnavailable(Exception):
    """Redis cannot be used right now; the caller falls back."""


def redacted(url: str) -> str:
    """Return where a Redis URL points, without user or password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    database = parts.path.strip("/") or "0"
    return f"{host}:{port}/{database}"


class RedisLink:
    """The process's client of the fleet's Redis, with its health."""

    def __init__(
        self,
        url: str,
        prefix: str,
        timeout: float,
        retry_after: float,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.where = redacted(url)
        # One quick retry reconnects a pooled connection that a Redis restart
        # broke; more would spend the query's deadline on a dead server.
        self.client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self.health = Health(f"Redis at {self.where}", retry_after, on_change)
        self._release = self.client.register_script(RELEASE)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def run(self, op: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T:
        """Run one Redis operation; an outage raises RedisUnavailable."""
        return await self.guard(lambda: op(self.client))

    async def guard(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run any operation that talks to Redis, tracking its health."""
        if not self.health.usable():
            raise RedisUnavailable(self.health.reason)
        try:
            result = await op()
        except REDIS_FAILURES as err:
            self.health.failed(err)
            raise RedisUnavailable(self.health.reason) from err
        self.health.worked()
        return result

    async def ping(self) -> bool:
        """Check Redis once; the outcome lands in the health record."""
        try:
            await self.run(lambda client: client.ping())
        except RedisUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self.client.aclose()

    # In-flight locks: one replica calls, the others wait for the cache.

    async def claim(self, key: str, seconds: float) -> str | None:
        """Take the lock on a call for a bounded time; None if another holds it."""
        token = secrets.token_hex(8)
        milliseconds = max(1, int(seconds * 1000))
        taken = await self.run(
            lambda client: client.set(
                self.key("lock", key), token, nx=True, px=milliseconds
            )
        )
        return token if taken else None

    async def held(self, key: str) -> bool:
        return bool(await self.run(lambda client: client.exists(self.key("lock", key))))

    async def release(self, key: str, token: str) -> None:
        async def op() -> Any:
            return await self._release(keys=[self.key("lock", key)], args=[token])

        await self.guard(op)
