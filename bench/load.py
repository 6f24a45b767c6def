"""The load generator: closed-loop aiohttp clients bounded in count and time."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.dns_server import ZONE

REQUEST_TIMEOUT = 30.0
MAX_ERROR_TEXT = 100


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Return the nearest-rank percentile of the values, or None if empty."""
    if not values:
        return None
    if not 0 <= pct <= 100:
        raise ValueError("pct must be between 0 and 100")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def bench_name(phase: str, index: int) -> str:
    """Return the name a phase asks for its index-th indicator."""
    return f"{phase}-{index}.{ZONE}"


def dns_query(name: str, nameserver: str) -> dict[str, Any]:
    """Return a misp_standard /query body for the dns module, as MISP sends it."""
    return {
        "module": "dns",
        "event_id": "1",
        "attribute": {
            "type": "domain",
            "value": name,
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
            "category": "Network activity",
            "to_ids": False,
            "event_id": "1",
        },
        "config": {"nameserver": nameserver},
    }


def classify(status: int, body: bytes) -> str:
    """Return "ok" for an answer with objects, else a short kind of failure."""
    if status != 200:
        return f"HTTP {status}"
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("error"):
        return f"error: {str(data['error'])[:MAX_ERROR_TEXT]}"
    results = data.get("results")
    if isinstance(results, dict) and results.get("Object"):
        return "ok"
    return "no object in the answer"


@dataclass
class Result:
    """What one phase observed."""

    requests: int = 0
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    cut: int = 0

    @property
    def rate(self) -> float:
        """Return successful answers per second of the phase's wall time."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def ms(self, pct: float) -> float | None:
        """Return a latency percentile of successful answers in milliseconds."""
        value = percentile(self.latencies, pct)
        return None if value is None else value * 1000

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "failures": dict(self.failures),
            "unfinished_at_time_limit": self.cut,
            "elapsed_s": round(self.elapsed, 3),
            "ok_per_s": round(self.rate, 1),
            "p50_ms": _round(self.ms(50)),
            "p99_ms": _round(self.ms(99)),
            "max_ms": _round(self.ms(100)),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def make_session(concurrency: int) -> aiohttp.ClientSession:
    """Return a client session that keeps one connection per worker."""
    connector = aiohttp.TCPConnector(
        limit=concurrency + 8, limit_per_host=concurrency + 8, force_close=False
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
    )


async def _send(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes | None
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else None
    async with session.request(method, url, data=body, headers=headers) as response:
        return response.status, await response.read()


async def closed_loop(
    url: str,
    bodies: Sequence[bytes | None],
    concurrency: int,
    max_seconds: float,
    *,
    method: str = "POST",
    session: aiohttp.ClientSession | None = None,
    judge: bool = True,
    stop: asyncio.Event | None = None,
) -> Result:
    """Send every body with `concurrency` workers, stopping at max_seconds.

    Each worker sends its next request when its previous one is answered, so
    at most `concurrency` requests are in flight. Requests still in flight at
    the time limit are cancelled and counted as cut; setting `stop` ends the
    phase early, letting the requests in flight finish.
    """
    result = Result()
    own = session is None
    session = session or make_session(concurrency)
    next_index = 0
    inflight = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop_at = started + max_seconds
    last_done = started

    async def worker() -> None:
        nonlocal next_index, inflight, last_done
        while next_index < len(bodies) and loop.time() < stop_at:
            if stop is not None and stop.is_set():
                break
            body = bodies[next_index]
            next_index += 1
            result.requests += 1
            inflight += 1
            sent = time.perf_counter()
            try:
                status, answer = await _send(session, method, url, body)
                kind = classify(status, answer) if judge else _plain_kind(status)
            except (aiohttp.ClientError, TimeoutError) as err:
                kind = f"client: {type(err).__name__}"
            finally:
                inflight -= 1
            last_done = loop.time()
            if kind == "ok":
                result.ok += 1
                result.latencies.append(time.perf_counter() - sent)
            else:
                result.failures[kind] += 1

    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        done, pending = await asyncio.wait(workers, timeout=max_seconds)
        # Count before cancelling: a cancelled worker no longer counts itself.
        result.cut = inflight
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()
        result.elapsed = (stop_at if pending else last_done) - started
    finally:
        if own:
            await session.close()
    return result


def _plain_kind(status: int) -> str:
    return "ok" if status == 200 else f"HTTP {status}"


async def probe_under_load(
    base: str,
    slow_bodies: Sequence[bytes],
    concurrency: int,
    probes: int,
    interval: float,
    max_seconds: float,
) -> tuple[Result, Result]:
    """Time GET /modules, one at a time, while slow queries keep the server busy.

    Returns the /modules result and the slow queries' result.
    """
    stop = asyncio.Event()
    load = asyncio.ensure_future(
        closed_loop(base + "/query", slow_bodies, concurrency, max_seconds, stop=stop)
    )
    # Let every slow worker send its first request before probing.
    await asyncio.sleep(min(0.5, max_seconds / 10))
    probe_session = make_session(1)
    try:
        probe = Result()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(probes):
            if load.done() or loop.time() - started > max_seconds / 2:
                break
            one = await closed_loop(
                base + "/modules",
                [None],
                1,
                5.0,
                method="GET",
                session=probe_session,
                judge=False,
            )
            probe.requests += one.requests
            probe.ok += one.ok
            probe.latencies += one.latencies
            probe.failures += one.failures
            await asyncio.sleep(interval)
        probe.elapsed = loop.time() - started
    finally:
        await probe_session.close()
        stop.set()
        load_result = await load
    return probe, load_result
