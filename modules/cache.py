"""Caches of upstream answers (never of whole MISP answers).

A key is `<module>:<endpoint>:<key identity>:<query digest>`; no key holds an
API key or an indicator in clear. Backends never fail a query: the SQLite and
Redis ones answer a miss while they are unavailable and log the outage once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite

from modules.health import Health, describe_error
from modules.redis_state import RedisLink, RedisUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
# Corruption codes: the file is not a database, or its pages are damaged.
CORRUPT = {sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT}
PURGE_EVERY = 256
SCAN_BATCH = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires);
"""


class CacheUnavailable(Exception):
    """The cache backend cannot be used right now."""


class Cache(Protocol):
    """What the engine needs from a cache backend."""

    name: str

    def describe(self) -> str: ...

    async def open(self) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def clear(self, prefix: str = "") -> int: ...

    async def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def module_of(key: str) -> str:
    return key.split(":", 1)[0]


class NoCache:
    """A cache that keeps nothing."""

    name = "none"

    def describe(self) -> str:
        return "none (every query calls its source)"

    async def open(self) -> None:
        return None

    async def get(self, key: str) -> bytes | None:
        return None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        return None

    async def clear(self, prefix: str = "") -> int:
        return 0

    async def stats(self) -> dict[str, Any]:
        return {"backend": self.name, "state": "up", "entries": 0, "modules": {}}

    async def close(self) -> None:
        return None


class MemoryCache:
    """A bounded in-process cache, for tests and single runs."""

    name = "memory"

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: dict[str, tuple[float, bytes]] = {}
        self._max_entries = max_entries

    def describe(self) -> str:
        return f"memory (in this process, up to {self._max_entries} entries)"

    async def open(self) -> None:
        return None

    def keys(self) -> list[str]:
        return list(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.time():
            del self._entries[key]
            return None
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if key not in self._entries and len(self._entries) >= self._max_entries:
            # Dicts keep insertion order: drop the oldest entry.
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (time.time() + ttl, value)

    async def clear(self, prefix: str = "") -> int:
        doomed = [key for key in self._entries if key.startswith(prefix)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    async def stats(self) -> dict[str, Any]:
        now = time.time()
        live = [key for key, (expires, _) in self._entries.items() if expires >= now]
        return {
            "backend": self.name,
            "state": "up",
            "entries": len(live),
            "modules": dict(Counter(module_of(key) for key in live)),
        }

    async def close(self) -> None:
        self._entries.clear()


class RecentFront:
    """Keep the entries read or written last in memory, in front of a file.

    Every SQLite call is a hand-off to aiosqlite's thread; a hot entry read
    from memory costs none. The front holds an entry no longer than it lives
    in the file, and at most `hold` seconds, so a `cache clear` run from the
    command line reaches a running server within that time.
    """

    def __init__(
        self, back: SQLiteCache, hold: float = 30.0, max_bytes: int = 64 << 20
    ) -> None:
        self.back = back
        self.name = back.name
        self.hold = hold
        self.max_bytes = max_bytes
        self._entries: dict[str, tuple[float, bytes]] = {}
        self._bytes = 0

    def describe(self) -> str:
        megabytes = self.max_bytes >> 20
        return (
            f"{self.back.describe()}, the last {megabytes} MiB read kept in memory "
            f"for {self.hold:g} s"
        )

    async def open(self) -> None:
        await self.back.open()

    async def get(self, key: str) -> bytes | None:
        held = self._entries.get(key)
        if held is not None:
            if held[0] >= time.time():
                return held[1]
            self._forget(key)
        entry = await self.back.get_entry(key)
        if entry is None:
            return None
        value, expires = entry
        self._hold(key, value, expires)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self.back.set(key, value, ttl)
        self._hold(key, value, time.time() + ttl)

    async def clear(self, prefix: str = "") -> int:
        for key in [key for key in self._entries if key.startswith(prefix)]:
            self._forget(key)
        return await self.back.clear(prefix)

    async def stats(self) -> dict[str, Any]:
        return await self.back.stats()

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0
        await self.back.close()

    def _hold(self, key: str, value: bytes, expires: float) -> None:
        if len(value) > self.max_bytes // 16:
            return
        self._forget(key)
        self._entries[key] = (min(expires, time.time() + self.hold), value)
        self._bytes += len(value)
        while self._bytes > self.max_bytes:
            # Dicts keep insertion order: the oldest entry goes first.
            self._forget(next(iter(self._entries)))

    def _forget(self, key: str) -> None:
        held = self._entries.pop(key, None)
        if held is not None:
            self._bytes -= len(held[1])


class SQLiteCache:
    """A cache in one SQLite file: the embedded default, kept across restarts."""

    name = "sqlite"

    def __init__(
        self,
        path: Path,
        retry_after: float = 5.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.health = Health(f"cache file {self.path}", retry_after, on_change)
        self._db: aiosqlite.Connection | None = None
        # Counts dropped connections: an operation that started on an older
        # connection has nothing to say about the current one.
        self._generation = 0
        self._lock = asyncio.Lock()
        self._writes = 0

    def describe(self) -> str:
        return f"sqlite at {self.path}"

    async def open(self) -> None:
        """Open the file now, so a start-up problem shows in the log at once."""
        await self._guarded(lambda db: _noop(), None)

    async def get(self, key: str) -> bytes | None:
        entry = await self.get_entry(key)
        return entry[0] if entry else None

    async def get_entry(self, key: str) -> tuple[bytes, float] | None:
        """Return a live entry's value and the time it expires, or None."""

        async def op(db: aiosqlite.Connection) -> tuple[bytes, float] | None:
            async with db.execute(
                "SELECT value, expires FROM entries WHERE key = ? AND expires >= ?",
                (key, time.time()),
            ) as cursor:
                row = await cursor.fetchone()
            return (bytes(row[0]), float(row[1])) if row else None

        return await self._guarded(op, None)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        async def op(db: aiosqlite.Connection) -> None:
            now = time.time()
            await db.execute(
                "INSERT OR REPLACE INTO entries (key, value, expires) VALUES (?, ?, ?)",
                (key, value, now + ttl),
            )
            self._writes += 1
            if self._writes % PURGE_EVERY == 0:
                await db.execute("DELETE FROM entries WHERE expires < ?", (now,))
            await db.commit()

        await self._guarded(op, None)

    async def clear(self, prefix: str = "") -> int:
        async def op(db: aiosqlite.Connection) -> int:
            cursor = await db.execute(
                "DELETE FROM entries WHERE substr(key, 1, ?) = ?",
                (len(prefix), prefix),
            )
            await db.commit()
            return cursor.rowcount

        return await self._strict(op)

    async def stats(self) -> dict[str, Any]:
        async def op(db: aiosqlite.Connection) -> dict[str, Any]:
            now = time.time()
            async with db.execute(
                "SELECT substr(key, 1, instr(key, ':') - 1), count(*) FROM entries "
                "WHERE expires >= ? GROUP BY 1",
                (now,),
            ) as cursor:
                modules = {str(name): int(count) async for name, count in cursor}
            async with db.execute(
                "SELECT count(*) FROM entries WHERE expires < ?", (now,)
            ) as cursor:
                row = await cursor.fetchone()
            return {
                "backend": self.name,
                "location": str(self.path),
                "state": "up",
                "entries": sum(modules.values()),
                "expired": int(row[0]) if row else 0,
                "bytes": _size(self.path),
                "modules": modules,
            }

        try:
            return await self._strict(op)
        except CacheUnavailable as err:
            return {
                "backend": self.name,
                "location": str(self.path),
                "state": f"down ({err})",
            }

    async def close(self) -> None:
        await self._drop()

    async def _guarded(
        self, op: Callable[[aiosqlite.Connection], Awaitable[T]], default: T
    ) -> T:
        """Run an operation; while the file is unusable, answer the default."""
        try:
            return await self._strict(op)
        except CacheUnavailable:
            return default

    async def _strict(self, op: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        if not self.health.usable():
            raise CacheUnavailable(self.health.reason)
        db, generation = await self._connection()
        try:
            result = await op(db)
        except (sqlite3.Error, OSError, ValueError) as err:
            await self._failed(generation, err)
            raise CacheUnavailable(describe_error(err)) from err
        if generation == self._generation:
            self.health.worked()
        return result

    async def _failed(self, generation: int, err: BaseException) -> None:
        """Drop the connection an operation failed on, unless it is gone already.

        Operations in flight on a dropped connection fail too; only the first
        failure of a connection drops it, so the file is moved aside once.
        """
        async with self._lock:
            if generation != self._generation:
                return
            # Drop the connection: the next try reopens. Pages damaged after
            # opening only show on use: move the file aside now, or every
            # retry would meet the same damage.
            await self._drop()
            if getattr(err, "sqlite_errorcode", None) in CORRUPT:
                self._quarantine("an empty one follows")
            self.health.failed(err)

    async def _connection(self) -> tuple[aiosqlite.Connection, int]:
        """Return the open connection and its generation, opening it if needed."""
        async with self._lock:
            if self._db is None:
                # Another operation may have failed to open it while we waited.
                if not self.health.usable():
                    raise CacheUnavailable(self.health.reason)
                try:
                    self._db = await self._open()
                except (sqlite3.Error, OSError, ValueError) as err:
                    self.health.failed(err)
                    raise CacheUnavailable(self.health.reason) from err
            return self._db, self._generation

    async def _open(self) -> aiosqlite.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return await self._connect()
        except sqlite3.DatabaseError as err:
            if getattr(err, "sqlite_errorcode", None) not in CORRUPT:
                raise
        self._quarantine("started an empty one")
        return await self._connect()

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, timeout=1.0)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.executescript(SCHEMA)
            await db.commit()
        except BaseException:
            await db.close()
            raise
        return db

    def _quarantine(self, then: str) -> None:
        """Move a corrupt cache file (and its journal) aside, keeping one copy."""
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            self.path.replace(aside)
        except OSError as err:
            # The next open meets the damage again and the cache stays down;
            # queries go on without it.
            log.warning(
                "cache file %s is corrupt and cannot be moved aside (%s)",
                self.path,
                describe_error(err),
            )
            return
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                self.path.with_name(self.path.name + suffix).unlink()
        log.warning(
            "cache file %s is corrupt; moved it to %s, %s", self.path, aside, then
        )

    async def _drop(self) -> None:
        db, self._db = self._db, None
        self._generation += 1
        if db is not None:
            with contextlib.suppress(sqlite3.Error, OSError, ValueError):
                await db.close()


async def _noop() -> None:
    return None


def _size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += path.with_name(path.name + suffix).stat().st_size
    return total


class RedisCache:
    """A cache in Redis, shared by every replica of a fleet."""

    name = "redis"

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def describe(self) -> str:
        return f"redis at {self.link.where} (prefix {self.link.prefix})"

    async def open(self) -> None:
        await self.link.ping()

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.link.run(
                lambda client: client.get(self.link.key("cache", key))
            )
        except RedisUnavailable:
            return None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        milliseconds = max(1, int(ttl * 1000))
        with contextlib.suppress(RedisUnavailable):
            await self.link.run(
                lambda client: client.set(
                    self.link.key("cache", key), value, px=milliseconds
                )
            )

    async def clear(self, prefix: str = "") -> int:
        keys = await self._keys(prefix)
        removed = 0
        for start in range(0, len(keys), SCAN_BATCH):
            batch = keys[start : start + SCAN_BATCH]
            removed += await self._strict(partial(_unlink, batch))
        return removed

    async def stats(self) -> dict[str, Any]:
        try:
            keys = await self._keys("")
        except CacheUnavailable as err:
            return {
                "backend": self.name,
                "location": self.link.where,
                "state": f"down ({err})",
            }
        skip = len(self.link.key("cache", ""))
        modules = Counter(module_of(key.decode()[skip:]) for key in keys)
        return {
            "backend": self.name,
            "location": f"{self.link.where} (prefix {self.link.prefix})",
            "state": "up",
            "entries": len(keys),
            "modules": dict(modules),
        }

    async def close(self) -> None:
        return None

    async def _keys(self, prefix: str) -> list[bytes]:
        pattern = _glob_escape(self.link.key("cache", prefix)) + "*"

        async def scan(client: Any) -> list[bytes]:
            return [key async for key in client.scan_iter(match=pattern, count=1000)]

        return await self._strict(scan)

    async def _strict(self, op: Callable[[Any], Awaitable[T]]) -> T:
        try:
            return await self.link.run(op)
        except RedisUnavailable as err:
            raise CacheUnavailable(str(err)) from err


async def _unlink(keys: list[bytes], client: Any) -> int:
    return int(await client.unlink(*keys))


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
