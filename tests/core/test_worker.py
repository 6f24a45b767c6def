"""Queries on a worker loop: the HTTP loop stays free for /modules."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, ClassVar

from modules.app import create_app
from modules.context import Context
from modules.module import ExpansionModule
from modules.observable import Observable
from modules.registry import Registry
from modules.results import Answer
from modules.runner import Enricher
from modules.settings import ServerSettings
from modules.worker import WorkerEnricher

BUSY_SECONDS = 1.0


class Busy(ExpansionModule):
    name = "busy"
    title = "Busy"
    description = "Hold the CPU without awaiting, as building a big answer does."
    input_types = ("domain",)
    threads: ClassVar[list[str]] = []

    async def enrich(self, observable: Observable, config: Any, ctx: Context) -> Answer:
        type(self).threads.append(threading.current_thread().name)
        until = time.monotonic() + BUSY_SECONDS
        while time.monotonic() < until:
            pass
        answer = ctx.answer()
        answer.add_attribute("text", observable.value, "Other")
        return answer


async def worker_client(aiohttp_client: Any) -> Any:
    settings = ServerSettings(cache="memory")
    registry = Registry()
    registry.add(Busy, "tests")
    enricher = WorkerEnricher(Enricher(registry, settings))
    return await aiohttp_client(create_app(registry, settings, enricher))


async def test_queries_run_on_the_worker_thread(aiohttp_client: Any) -> None:
    client = await worker_client(aiohttp_client)
    Busy.threads.clear()
    body = {
        "module": "busy",
        "event_id": "1",
        "attribute": {"type": "domain", "value": "example.com", "uuid": "u"},
    }

    answer = await (await client.post("/query", json=body)).json()

    assert answer["results"]["Attribute"][0]["value"] == "example.com"
    assert Busy.threads == ["misp-enrich-queries"]


async def test_modules_answers_while_a_query_holds_the_cpu(aiohttp_client: Any) -> None:
    client = await worker_client(aiohttp_client)
    done: list[str] = []
    body = {"module": "busy", "event_id": "1", "domain": "example.com"}

    async def query() -> None:
        await (await client.post("/query", json=body)).read()
        done.append("query")

    async def modules() -> None:
        await asyncio.sleep(0.2)
        await (await client.get("/modules")).read()
        done.append("modules")

    await asyncio.gather(query(), modules())

    assert done == ["modules", "query"]


async def test_errors_cross_back_from_the_worker(aiohttp_client: Any) -> None:
    client = await worker_client(aiohttp_client)
    body = {"module": "busy", "event_id": "1", "domain": "not a domain"}

    answer = await (await client.post("/query", json=body)).json()

    assert answer == {
        "error": "'not a domain' is not a valid domain name",
        "results": [],
    }
