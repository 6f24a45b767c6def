"""Run queries on an event loop of their own, apart from the HTTP loop.

Building MISP objects takes CPU. On the HTTP loop, a burst of answers
being built would queue GET /modules and /healthcheck behind them, and MISP
gives /modules one second. With queries on a worker thread, the HTTP loop
stays free: the interpreter hands it the GIL within its switch interval.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from modules.engine import Engine
from modules.protocol import Query
from modules.registry import Registry
from modules.runner import Enricher
from modules.settings import ServerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class WorkerEnricher:
    """An Enricher whose queries run on a worker thread's event loop."""

    def __init__(self, inner: Enricher) -> None:
        self.inner = inner
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="misp-enrich-queries", daemon=True
        )
        self._thread.start()

    @property
    def registry(self) -> Registry:
        return self.inner.registry

    @property
    def settings(self) -> ServerSettings:
        return self.inner.settings

    @property
    def engine(self) -> Engine:
        return self.inner.engine

    async def _on_worker(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wrap_future(future)

    async def start(self) -> None:
        await self._on_worker(self.inner.start())

    async def answer(self, query: Query) -> bytes:
        """Answer a query on the worker loop; cancelling here cancels it there."""
        return await self._on_worker(self.inner.answer(query))

    async def close(self) -> None:
        try:
            await self._on_worker(self.inner.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10)
            if not self._thread.is_alive():
                self._loop.close()
