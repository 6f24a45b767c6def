"""The upstream engine: cache, coalescing, limits and breakers, per process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from modules.cache import Cache, MemoryCache, NoCache
from modules.settings import ServerSettings

log = logging.getLogger(__name__)


class Coalescer:
    """Run identical calls that are in flight at once only once."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    async def run(self, key: str, call: Callable[[], Awaitable[Any]]) -> Any:
        future = self._inflight.get(key)
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await call()
        except BaseException as err:
            if not future.done():
                future.set_exception(err)
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
        self.cache: Cache = cache if cache is not None else make_cache(settings)
        self.coalescer = Coalescer()
        self._semaphores: dict[str, asyncio.Semaphore] = {}

    def semaphore(self, source: str, size: int) -> asyncio.Semaphore:
        """Return the concurrency cap of a source."""
        semaphore = self._semaphores.get(source)
        if semaphore is None:
            semaphore = self._semaphores[source] = asyncio.Semaphore(size)
        return semaphore

    async def close(self) -> None:
        await self.cache.close()


def make_cache(settings: ServerSettings) -> Cache:
    """Build the cache backend the settings ask for."""
    backend = settings.cache_backend
    if backend == "none":
        return NoCache()
    # Persistent backends arrive with the engine's storage layer; until then
    # every backend is kept in memory.
    return MemoryCache()
