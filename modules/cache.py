"""Caches of upstream answers (never of whole MISP answers)."""

from __future__ import annotations

import time
from typing import Protocol


class Cache(Protocol):
    """What the engine needs from a cache backend."""

    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def clear(self, prefix: str = "") -> int: ...

    async def stats(self) -> dict[str, object]: ...

    async def close(self) -> None: ...


class NoCache:
    """A cache that keeps nothing."""

    name = "none"

    async def get(self, key: str) -> bytes | None:
        return None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        return None

    async def clear(self, prefix: str = "") -> int:
        return 0

    async def stats(self) -> dict[str, object]:
        return {"backend": self.name, "entries": 0}

    async def close(self) -> None:
        return None


class MemoryCache:
    """A bounded in-process cache, for tests and single runs."""

    name = "memory"

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: dict[str, tuple[float, bytes]] = {}
        self._max_entries = max_entries

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
        if len(self._entries) >= self._max_entries:
            # Dicts keep insertion order: drop the oldest entry.
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (time.time() + ttl, value)

    async def clear(self, prefix: str = "") -> int:
        doomed = [key for key in self._entries if key.startswith(prefix)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    async def stats(self) -> dict[str, object]:
        return {"backend": self.name, "entries": len(self._entries)}

    async def close(self) -> None:
        self._entries.clear()
