"""Circuit breakers per source and API key identity, in process or in Redis.

A breaker opens after `threshold` auth or availability failures in a row and
then answers at once with the last failure. After `cooldown` seconds one call
goes through as a probe (half-open): success closes the breaker, failure
keeps it open for another cool-down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from modules.errors import (
    AuthFailed,
    CircuitOpen,
    DeadlineExceeded,
    RateLimited,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from modules.metrics import Metrics
from modules.redis_state import RedisLink, RedisUnavailable

log = logging.getLogger(__name__)

FAILURES = (AuthFailed, Unavailable, UpstreamTimeout)
# Outcomes that say nothing about the source: our own limits and deadline.
NEUTRAL = (RateLimited, DeadlineExceeded, CircuitOpen)

# Count a failure; open the breaker at the threshold, or again after a probe.
# Returns 1 when this call opened a closed breaker.
RECORD_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'reason', ARGV[1])
local opened = 0
local was_open = redis.call('HEXISTS', KEYS[1], 'opened_at') == 1
if ARGV[4] == '1' or (not was_open and failures >= tonumber(ARGV[2])) then
  redis.call('HSET', KEYS[1], 'opened_at', ARGV[3])
  if not was_open then opened = 1 end
end
if ARGV[4] == '1' then redis.call('DEL', KEYS[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return opened
"""

# Forget the failures; returns 1 when the breaker was open.
RECORD_SUCCESS = """
local was_open = redis.call('HEXISTS', KEYS[1], 'opened_at')
redis.call('DEL', KEYS[1], KEYS[2])
return was_open
"""


@dataclass
class Ticket:
    """Leave to make one call, and what its outcome must update."""

    label: str
    name: str
    identity: str
    probe: bool = False
    dirty: bool = False
    shared: bool = False


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None
    reason: str = ""
    probing: bool = False


def is_failure(err: BaseException) -> bool:
    """Say whether an error means the source or the key is not working."""
    return isinstance(err, FAILURES)


def is_answer(err: BaseException | None) -> bool:
    """Say whether the source answered (not found and refusals included)."""
    return err is None or (
        isinstance(err, UpstreamError) and not isinstance(err, FAILURES + NEUTRAL)
    )


def failure_text(err: UpstreamError) -> str:
    return f"{err.reason}: {err.detail}" if err.detail else err.reason


class Breakers:
    """Every breaker of the process, kept in Redis when the fleet has one."""

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        link: RedisLink | None,
        metrics: Metrics,
        probe_seconds: float,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.link = link
        self.metrics = metrics
        self.probe_seconds = probe_seconds
        self._local: dict[tuple[str, str], _State] = {}
        self._open: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        if link is not None:
            self._fail_script = link.client.register_script(RECORD_FAILURE)
            self._success_script = link.client.register_script(RECORD_SUCCESS)

    async def admit(self, label: str, name: str, identity: str) -> Ticket:
        """Return leave to call, or raise CircuitOpen while the breaker is open."""
        ticket = Ticket(label, name, identity)
        if self.link is not None:
            try:
                return await self._admit_shared(ticket)
            except RedisUnavailable:
                pass
        return self._admit_local(ticket)

    async def record(self, ticket: Ticket, err: BaseException | None) -> None:
        """Update the breaker with the outcome of the call it admitted."""
        if ticket.shared and self.link is not None:
            try:
                await self._record_shared(ticket, err)
                return
            except RedisUnavailable:
                pass
        self._record_local(ticket, err)

    def abandon(self, ticket: Ticket) -> None:
        """Free a probe whose call was cancelled, without waiting."""
        if not ticket.probe:
            return
        if ticket.shared and self.link is not None:
            task = asyncio.ensure_future(self._release_probe(ticket))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        state = self._local.get((ticket.name, ticket.identity))
        if state is not None:
            state.probing = False

    # In-process state.

    def _admit_local(self, ticket: Ticket) -> Ticket:
        state = self._local.get((ticket.name, ticket.identity))
        if state is None:
            self._seen(ticket, opened=False)
            return ticket
        ticket.dirty = True
        if state.opened_at is None:
            return ticket
        self._seen(ticket, opened=True)
        left = state.opened_at + self.cooldown - time.time()
        if left > 0:
            self._reject(ticket, state.reason, f"next probe in {math.ceil(left)} s")
        if state.probing:
            self._reject(ticket, state.reason, "a probe call is in progress")
        state.probing = True
        ticket.probe = True
        return ticket

    def _record_local(self, ticket: Ticket, err: BaseException | None) -> None:
        key = (ticket.name, ticket.identity)
        state = self._local.get(key)
        if is_answer(err):
            if state is not None:
                del self._local[key]
                if state.opened_at is not None:
                    self._closed(ticket)
            return
        if not isinstance(err, FAILURES):
            if state is not None and ticket.probe:
                state.probing = False
            return
        state = self._local.setdefault(key, _State())
        state.failures += 1
        state.reason = failure_text(err)
        if ticket.probe:
            state.opened_at, state.probing = time.time(), False
        elif state.opened_at is None and state.failures >= self.threshold:
            state.opened_at = time.time()
            self._opened(ticket, state.failures, state.reason)

    # State shared in Redis.

    def _keys(self, ticket: Ticket) -> list[str]:
        assert self.link is not None
        key = self.link.key("breaker", ticket.name, ticket.identity)
        return [key, key + ":probe"]

    async def _admit_shared(self, ticket: Ticket) -> Ticket:
        assert self.link is not None
        key, probe = self._keys(ticket)
        data = await self.link.run(lambda client: client.hgetall(key))
        ticket.shared = True
        if not data:
            self._seen(ticket, opened=False)
            return ticket
        ticket.dirty = True
        opened_at = data.get(b"opened_at")
        if opened_at is None:
            return ticket
        self._seen(ticket, opened=True)
        reason = data.get(b"reason", b"")
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        left = float(opened_at) + self.cooldown - time.time()
        if left > 0:
            self._reject(ticket, reason, f"next probe in {math.ceil(left)} s")
        milliseconds = max(1, int(self.probe_seconds * 1000))
        took = await self.link.run(
            lambda client: client.set(probe, b"1", nx=True, px=milliseconds)
        )
        if not took:
            self._reject(ticket, reason, "a probe call is in progress")
        ticket.probe = True
        return ticket

    async def _record_shared(self, ticket: Ticket, err: BaseException | None) -> None:
        assert self.link is not None
        keys = self._keys(ticket)
        if is_answer(err):
            if ticket.dirty:
                was_open = await self.link.guard(
                    lambda: self._success_script(keys=keys)
                )
                if was_open:
                    self._closed(ticket)
            return
        if not isinstance(err, FAILURES):
            if ticket.probe:
                await self.link.run(lambda client: client.delete(keys[1]))
            return
        reason = failure_text(err)
        lifetime = int(max(self.cooldown * 4, 600) * 1000)
        args: list[str | int | float] = [
            reason,
            self.threshold,
            time.time(),
            int(ticket.probe),
            lifetime,
        ]
        opened = await self.link.guard(lambda: self._fail_script(keys=keys, args=args))
        if opened:
            self._opened(ticket, self.threshold, reason)

    async def _release_probe(self, ticket: Ticket) -> None:
        assert self.link is not None
        probe = self._keys(ticket)[1]
        try:
            await self.link.run(lambda client: client.delete(probe))
        except RedisUnavailable:
            # The probe lock expires on its own.
            return

    # Reporting.

    def _reject(self, ticket: Ticket, reason: str, when: str) -> None:
        self.metrics.breaker_rejections.labels(ticket.name).inc()
        raise CircuitOpen(ticket.label, f"last failure: {reason}; {when}")

    def _seen(self, ticket: Ticket, *, opened: bool) -> None:
        """Keep this process's view of open breakers, for the gauge."""
        key = (ticket.name, ticket.identity)
        if opened:
            self._open.add(key)
        else:
            self._open.discard(key)
        count = sum(1 for name, _ in self._open if name == ticket.name)
        self.metrics.breakers_open.labels(ticket.name).set(count)

    def _opened(self, ticket: Ticket, failures: int, reason: str) -> None:
        log.warning(
            "%s: circuit opened after %d failures in a row (last: %s); answering "
            "at once for %g s, then probing",
            ticket.label,
            failures,
            reason,
            self.cooldown,
        )
        self.metrics.breaker_transitions.labels(ticket.name, "open").inc()
        self._seen(ticket, opened=True)

    def _closed(self, ticket: Ticket) -> None:
        log.info("%s: circuit closed: a probe call succeeded", ticket.label)
        self.metrics.breaker_transitions.labels(ticket.name, "closed").inc()
        self._seen(ticket, opened=False)
