"""A DNS client for many questions at once: one UDP socket per nameserver.

dnspython's resolver opens a socket per question and walks its own retry
machinery; with seven questions per name that was most of the dns module's
CPU. Here one connected socket per nameserver carries every question, and
answers are matched to questions by id and question section.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset

# Resend a question this long after the last send while the lifetime lasts:
# a datagram lost on the way should not cost the whole lifetime.
RESEND_AFTER = 1.0
MAX_CNAME_HOPS = 16


class Refused(Exception):
    """Nothing listens at the nameserver's address (ICMP port unreachable)."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: NameserverClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client._answered(data)

    def error_received(self, exc: Exception) -> None:
        self.client._failed(Refused(str(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost()


class NameserverClient:
    """Ask one nameserver, over one connected UDP socket (TCP when truncated)."""

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        self._transport: asyncio.DatagramTransport | None = None
        self._opening: asyncio.Lock | None = None
        self._pending: dict[int, tuple[asyncio.Future[dns.message.Message], Any]] = {}

    async def _socket(self) -> asyncio.DatagramTransport:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._transport is None or self._transport.is_closing():
                family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
                loop = asyncio.get_running_loop()
                self._transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self),
                    remote_addr=(self.address, self.port),
                    family=family,
                )
            return self._transport

    async def query(
        self, name: str, rdtype: str, lifetime: float
    ) -> dns.message.Message:
        """Return the nameserver's answer; raise Timeout or Refused."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lifetime
        question = dns.message.make_query(name, rdtype)
        while question.id in self._pending:
            question.id = random.randrange(65536)
        wire = question.to_wire()
        future: asyncio.Future[dns.message.Message] = loop.create_future()
        self._pending[question.id] = (future, question)
        try:
            transport = await self._socket()
            while True:
                transport.sendto(wire)
                left = deadline - loop.time()
                if left <= 0:
                    raise dns.exception.Timeout(timeout=lifetime)
                try:
                    response = await asyncio.wait_for(
                        asyncio.shield(future), min(RESEND_AFTER, left)
                    )
                    break
                except TimeoutError:
                    if loop.time() >= deadline:
                        raise dns.exception.Timeout(timeout=lifetime) from None
        finally:
            self._pending.pop(question.id, None)
        if response.flags & dns.flags.TC:
            left = max(0.1, deadline - loop.time())
            response = await dns.asyncquery.tcp(
                question, self.address, timeout=left, port=self.port
            )
        return response

    def _answered(self, data: bytes) -> None:
        if len(data) < 12:
            return
        (ident,) = struct.unpack("!H", data[:2])
        pending = self._pending.get(ident)
        if pending is None:
            return
        future, question = pending
        try:
            response = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        if question.is_response(response) and not future.done():
            future.set_result(response)

    def _failed(self, err: Exception) -> None:
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(err)

    def _lost(self) -> None:
        self._transport = None
        self._failed(Refused("the socket closed"))


def find_rrset(
    response: dns.message.Message, name: str, rdtype: str
) -> dns.rrset.RRset | None:
    """Return the answer's records of the type, following CNAMEs from the name."""
    wanted = dns.rdatatype.from_text(rdtype)
    owner = dns.name.from_text(name)
    for _ in range(MAX_CNAME_HOPS):
        found = None
        cname = None
        for rrset in response.answer:
            if rrset.name != owner:
                continue
            if rrset.rdtype == wanted:
                found = rrset
            elif rrset.rdtype == dns.rdatatype.CNAME:
                cname = rrset
        if found is not None:
            return found
        if cname is None:
            return None
        owner = cname[0].target
    return None
