"""The cache of upstream answers: one call per question, fresh MISP answers."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from expansion.dns import DNS
from modules.cache import MemoryCache, RecentFront, SQLiteCache
from modules.cli import main
from tests.engine.conftest import KEY, ask, lookup_module, query_body
from tests.fakes.dns import DNSServer
from tests.fakes.http import FakeUpstream, Reply

DOMAIN_PATH = "/v1/domains/example.com"
ANSWER = {"ips": ["192.0.2.1", "192.0.2.2"]}


def object_uuids(answer: dict[str, Any]) -> set[str]:
    uuids = set()
    for obj in answer["results"]["Object"]:
        uuids.add(obj["uuid"])
        uuids.update(attribute["uuid"] for attribute in obj["Attribute"])
    return uuids


def values(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted(
        (attribute["object_relation"], attribute["value"])
        for obj in answer["results"]["Object"]
        for attribute in obj["Attribute"]
    )


async def test_repeated_queries_call_once_with_fresh_uuids(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add(f"GET {DOMAIN_PATH}", ANSWER)
    client = await serve(lookup_module(upstream.url))

    answers = [await ask(client, query_body()) for _ in range(3)]

    assert len(upstream.calls(DOMAIN_PATH)) == 1
    assert all(values(a) == values(answers[0]) for a in answers)
    assert ("ip", "192.0.2.2") in values(answers[0])
    first, second, third = (object_uuids(a) for a in answers)
    assert first and not first & second and not second & third and not first & third


async def test_concurrent_identical_queries_call_once(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add(f"GET {DOMAIN_PATH}", Reply(body=ANSWER, delay=0.3))
    client = await serve(lookup_module(upstream.url))

    answers = await asyncio.gather(*(ask(client, query_body()) for _ in range(6)))

    assert len(upstream.calls(DOMAIN_PATH)) == 1
    assert all(values(a) == values(answers[0]) for a in answers)
    uuid_sets = [object_uuids(a) for a in answers]
    assert len(set().union(*uuid_sets)) == sum(len(u) for u in uuid_sets)


async def test_cache_keys_hold_neither_the_key_nor_the_indicator(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add(f"GET {DOMAIN_PATH}", ANSWER)
    cache = MemoryCache()
    client = await serve(lookup_module(upstream.url), store=cache)

    await ask(client, query_body())
    await ask(client, query_body(key="another-key-0000"))

    keys = cache.keys()
    assert len(keys) == 2, "each API key identity has its own entry"
    assert len(upstream.calls(DOMAIN_PATH)) == 2
    for key in keys:
        assert key.startswith("lookup:v1:")
        assert KEY not in key and "another-key" not in key
        assert "example.com" not in key


async def test_not_found_is_cached_and_errors_are_not(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add("GET /v1/domains/unknown.example", Reply(404, {"error": "no"}))
    upstream.add("GET /v1/domains/broken.example", Reply(500, {"error": "boom"}))
    client = await serve(lookup_module(upstream.url), breaker_threshold=10)

    unknown = [await ask(client, query_body("unknown.example")) for _ in range(2)]
    broken = [await ask(client, query_body("broken.example")) for _ in range(2)]

    assert len(upstream.calls("/v1/domains/unknown.example")) == 1
    assert unknown[1]["comment"] == "unknown.example is unknown to the source"
    assert len(upstream.calls("/v1/domains/broken.example")) == 2
    assert broken[1] == {
        "error": "Lookup: unavailable: HTTP 500 (boom); the source is failing, "
        "retry later",
        "results": [],
    }


async def test_cache_lifetime_is_overridable_per_module(
    serve: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.add(f"GET {DOMAIN_PATH}", ANSWER)
    monkeypatch.setenv("MISP_ENRICH_LOOKUP_CACHE_TTL", "0")
    client = await serve(lookup_module(upstream.url))

    await ask(client, query_body())
    await ask(client, query_body())

    assert len(upstream.calls(DOMAIN_PATH)) == 2


async def test_a_bad_lifetime_override_is_a_clear_error(
    serve: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISP_ENRICH_LOOKUP_CACHE_TTL", "a day")
    client = await serve(lookup_module(upstream.url))

    answer = await ask(client, query_body())

    assert answer["results"] == []
    assert answer["error"].startswith("lookup: MISP_ENRICH_LOOKUP_CACHE_TTL: 'a day'")
    assert upstream.calls() == []


async def test_dns_queries_the_resolver_once_per_record(
    serve: Any, dns_env: DNSServer
) -> None:
    client = await serve(DNS)
    body = {"module": "dns", "event_id": "1", "domain": "example.com"}

    await asyncio.gather(*(ask(client, body) for _ in range(4)))
    answer = await ask(client, body)

    assert sorted(dns_env.queries) == sorted(
        ("example.com", rdtype)
        for rdtype in ("A", "AAAA", "CNAME", "MX", "NS", "TXT", "SOA")
    )
    assert answer["results"][0]["values"]


async def test_dns_keeps_answers_no_longer_than_their_ttl(
    serve: Any, dns_env: DNSServer
) -> None:
    dns_env.zone.ttl = 0
    client = await serve(DNS)
    body = {"module": "dns", "event_id": "1", "ip-src": "192.0.2.10"}

    await ask(client, body)
    await ask(client, body)

    assert dns_env.queries == [("10.2.0.192.in-addr.arpa", "PTR")] * 2


async def test_sqlite_cache_persists_across_restarts(
    serve: Any, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(f"GET {DOMAIN_PATH}", ANSWER)
    path = tmp_path / "cache.sqlite3"
    module = lookup_module(upstream.url)

    first = await serve(module, cache="sqlite", cache_path=path)
    before = await ask(first, query_body())
    await first.close()
    second = await serve(module, cache="sqlite", cache_path=path)
    after = await ask(second, query_body())

    assert len(upstream.calls(DOMAIN_PATH)) == 1
    assert values(after) == values(before)
    assert not object_uuids(after) & object_uuids(before)
    assert isinstance(second.engine.cache, RecentFront)
    assert isinstance(second.engine.cache.back, SQLiteCache)


async def test_serves_through_a_corrupt_cache_file(
    serve: Any,
    upstream: FakeUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.add(f"GET {DOMAIN_PATH}", ANSWER)
    path = tmp_path / "cache.sqlite3"
    path.write_bytes(b"this is not a database " * 200)

    with caplog.at_level(logging.INFO):
        client = await serve(
            lookup_module(upstream.url), cache="sqlite", cache_path=path
        )
        answers = [await ask(client, query_body()) for _ in range(2)]

    assert all(values(a) == values(answers[0]) for a in answers)
    assert len(upstream.calls(DOMAIN_PATH)) == 1
    assert path.with_name("cache.sqlite3.corrupt").read_bytes().startswith(b"this is")
    corrupt = [r for r in caplog.records if "is corrupt" in r.getMessage()]
    assert len(corrupt) == 1


async def test_serves_while_the_cache_file_breaks_and_recovers(
    serve: Any,
    upstream: FakeUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.add(f"GET {DOMAIN_PATH}", ANSWER)
    path = tmp_path / "cache.sqlite3"
    client = await serve(
        lookup_module(upstream.url),
        cache="sqlite",
        cache_path=path,
        backend_retry=0,
        cache_hold=0,
    )
    await ask(client, query_body())

    # Damage the file and its write-ahead log under the open connection.
    for damaged in tmp_path.iterdir():
        damaged.write_bytes(b"\xff garbage " * 4000)
    with caplog.at_level(logging.INFO):
        during = await ask(client, query_body())
        after = [await ask(client, query_body()) for _ in range(3)]

    assert values(during) == values(after[-1])
    # The damaged file lost the entry: one call to refill it, then cached again.
    assert len(upstream.calls(DOMAIN_PATH)) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "is unavailable" in m]) == 1
    assert len([m for m in messages if "is back" in m]) == 1


def test_cache_command_shows_and_clears_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cache.sqlite3"

    async def fill() -> None:
        cache = SQLiteCache(path)
        await cache.set("dns:A:-:aaaa", b"{}", 60)
        await cache.set("dns:MX:-:bbbb", b"{}", 60)
        await cache.set("lookup:v1:1234:cccc", b"{}", 60)
        await cache.close()

    asyncio.run(fill())
    monkeypatch.setenv("MISP_ENRICH_CACHE_PATH", str(path))
    monkeypatch.delenv("MISP_ENRICH_REDIS_URL", raising=False)
    monkeypatch.delenv("MISP_ENRICH_CACHE", raising=False)

    assert main(["cache", "stats"]) == 0
    stats = capsys.readouterr().out
    assert main(["cache", "clear", "dns"]) == 0
    cleared = capsys.readouterr().out
    assert main(["cache", "stats"]) == 0
    after = capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    emptied = capsys.readouterr().out

    assert "sqlite" in stats and str(path) in stats
    assert re.search(r"^entries +3$", stats, re.M) and "dns 2, lookup 1" in stats
    assert "removed 2 entries for dns" in cleared
    assert re.search(r"^entries +1$", after, re.M)
    assert "lookup 1" in after and "dns" not in after
    assert "removed 1 entry" in emptied


async def test_a_follower_outlives_a_cancelled_leader(
    serve: Any, upstream: FakeUpstream
) -> None:
    upstream.add(f"GET {DOMAIN_PATH}", Reply(body=ANSWER, delay=0.6))
    client = await serve(lookup_module(upstream.url), hover_deadline=0.2, deadline=5)
    hover = {k: v for k, v in query_body().items() if k != "event_id"}

    async def enrich_later() -> dict[str, Any]:
        # Join the hover query's call while it is in flight.
        await asyncio.sleep(0.05)
        return await ask(client, query_body())

    short, long = await asyncio.gather(ask(client, hover), enrich_later())

    assert short["error"].startswith("Lookup: timed out: no answer within ")
    assert values(long) == [
        ("domain", "example.com"),
        ("ip", "192.0.2.1"),
        ("ip", "192.0.2.2"),
    ]
    assert len(upstream.calls(DOMAIN_PATH)) == 2


async def test_pages_damaged_after_opening_move_the_file_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite3"
    cache = SQLiteCache(path, retry_after=0)
    for n in range(2000):
        await cache.set(f"dns:A:-:{n:04d}", b"x" * 200, 600)
    await cache.close()
    # Keep the header page: the file opens, and only reads meet the damage.
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xa5" * (size - 4096))

    reopened = SQLiteCache(path, retry_after=0)
    with caplog.at_level(logging.INFO):
        misses = [await reopened.get(f"dns:A:-:{n:04d}") for n in range(1990, 2000)]
        await reopened.set("dns:A:-:fresh", b"{}", 600)
        fresh = await reopened.get("dns:A:-:fresh")
    await reopened.close()

    assert misses == [None] * 10
    assert fresh == b"{}"
    assert path.with_name("cache.sqlite3.corrupt").exists()
    corrupt = [r for r in caplog.records if "is corrupt" in r.getMessage()]
    assert len(corrupt) == 1


async def test_concurrent_reads_of_a_damaged_file_miss_and_recover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite3"
    cache = SQLiteCache(path, retry_after=0)
    for n in range(2000):
        await cache.set(f"dns:A:-:{n:04d}", b"x" * 200, 600)
    await cache.close()
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xa5" * (size - 4096))

    reopened = SQLiteCache(path, retry_after=0)
    await reopened.open()
    with caplog.at_level(logging.INFO):
        misses = await asyncio.gather(
            *(reopened.get(f"dns:A:-:{n:04d}") for n in range(1940, 2000))
        )
        await reopened.set("dns:A:-:fresh", b"{}", 600)
        fresh = await reopened.get("dns:A:-:fresh")
    await reopened.close()

    assert misses == [None] * 60
    assert fresh == b"{}"
    # The copy set aside is the damaged file, not the empty one that followed.
    assert path.with_name("cache.sqlite3.corrupt").stat().st_size == size
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "is corrupt" in m]) == 1
    assert len([m for m in messages if "is unavailable" in m]) == 1
    assert len([m for m in messages if "is back" in m]) == 1


def corrupt_error() -> sqlite3.DatabaseError:
    err = sqlite3.DatabaseError("database disk image is malformed")
    err.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
    return err


async def test_late_reports_from_a_dropped_connection_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.sqlite3"
    cache = SQLiteCache(path, retry_after=0)
    await cache.set("dns:A:-:old", b"{}", 600)
    gate = asyncio.Event()

    async def late(db: aiosqlite.Connection) -> bytes:
        await gate.wait()
        raise corrupt_error()

    async def broken(db: aiosqlite.Connection) -> bytes:
        raise corrupt_error()

    with caplog.at_level(logging.INFO):
        # Started on the first connection, failing after a fresh file replaced it.
        in_flight = asyncio.create_task(cache._guarded(late, b"missed"))
        await asyncio.sleep(0.05)
        assert await cache._guarded(broken, b"missed") == b"missed"
        await cache.set("dns:A:-:new", b"{}", 600)
        gate.set()
        assert await in_flight == b"missed"
        kept = await cache.get("dns:A:-:new")
    await cache.close()

    assert kept == b"{}"
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "is corrupt" in m]) == 1
    assert len([m for m in messages if "is unavailable" in m]) == 1


async def test_an_answer_from_a_dropped_connection_keeps_the_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = SQLiteCache(tmp_path / "cache.sqlite3", retry_after=60)
    await cache.open()
    gate = asyncio.Event()

    async def slow(db: aiosqlite.Connection) -> bytes:
        await gate.wait()
        return b"late"

    async def failing(db: aiosqlite.Connection) -> bytes:
        raise sqlite3.OperationalError("disk I/O error")

    with caplog.at_level(logging.INFO):
        in_flight = asyncio.create_task(cache._guarded(slow, b"missed"))
        await asyncio.sleep(0.05)
        assert await cache._guarded(failing, b"missed") == b"missed"
        gate.set()
        assert await in_flight == b"late"
    await cache.close()

    assert not cache.health.up
    assert not [r for r in caplog.records if "is back" in r.getMessage()]


class CountingSQLite(SQLiteCache):
    """A SQLite cache that counts the reads that reach the file."""

    reads = 0

    async def get_entry(self, key: str) -> tuple[bytes, float] | None:
        self.reads += 1
        return await super().get_entry(key)


async def test_the_front_reads_a_hot_entry_from_memory(tmp_path: Path) -> None:
    back = CountingSQLite(tmp_path / "cache.sqlite3")
    cache = RecentFront(back, hold=30)
    await back.set("dns:A:-:warm", b"from the file", 60)

    values = [await cache.get("dns:A:-:warm") for _ in range(5)]
    await cache.set("dns:A:-:fresh", b"written", 60)
    fresh = await cache.get("dns:A:-:fresh")
    await cache.close()

    assert values == [b"from the file"] * 5
    assert fresh == b"written"
    assert back.reads == 1


async def test_the_front_holds_nothing_past_its_entry_or_a_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    back = CountingSQLite(tmp_path / "cache.sqlite3")
    cache = RecentFront(back, hold=30)
    now = 1_000_000.0
    monkeypatch.setattr("modules.cache.time.time", lambda: now)
    await cache.set("dns:A:-:short", b"lives 5 s", 5)
    await cache.set("otx:general:-:kept", b"lives 1 h", 3600)

    now += 6
    expired = await cache.get("dns:A:-:short")
    removed = await cache.clear("otx:")
    cleared = await cache.get("otx:general:-:kept")
    await cache.close()

    assert expired is None
    assert removed == 1
    assert cleared is None
    assert back.reads == 2


async def test_the_front_keeps_to_its_byte_budget(tmp_path: Path) -> None:
    cache = RecentFront(SQLiteCache(tmp_path / "cache.sqlite3"), max_bytes=16_000)
    for index in range(20):
        await cache.set(f"dns:A:-:{index}", bytes(900), 60)

    held = cache._bytes
    oldest = "dns:A:-:0" in cache._entries
    newest = "dns:A:-:19" in cache._entries
    await cache.close()

    assert 15_000 < held <= 16_000
    assert not oldest
    assert newest
