"""A DNS client for many questions at once: one UDP socket per nameserver.

dnspython's resolver opens a socket per question and builds rich objects for
every message; with seven questions per name that was most of the dns
module's CPU. Here one connected socket per nameserver carries every
question, and the few record types the module reads are encoded and decoded
directly from the wire format (RFC 1035).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

RDTYPES = {
    "A": 1,
    "NS": 2,
    "CNAME": 5,
    "SOA": 6,
    "PTR": 12,
    "MX": 15,
    "TXT": 16,
    "AAAA": 28,
}
RCODES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
}
NOERROR, NXDOMAIN = 0, 3
FLAG_QR, FLAG_TC, FLAG_RD = 0x8000, 0x0200, 0x0100
# Resend a question this long after the last send while the lifetime lasts:
# a datagram lost on the way should not cost the whole lifetime.
RECEIVE_BUFFER = 4 * 1024 * 1024
RESEND_AFTER = 1.0
MAX_CNAME_HOPS = 16
MAX_POINTERS = 64


class Timeout(Exception):
    """The nameserver did not answer within the lifetime."""


class Refused(Exception):
    """Nothing listens at the nameserver's address (ICMP port unreachable)."""


class Malformed(Exception):
    """The answer is not a DNS message this client can read."""


@dataclass
class Record:
    name: str
    rdtype: int
    ttl: int
    value: Any


@dataclass
class Reply:
    ident: int
    flags: int
    question: tuple[str, int]
    answers: list[Record] = field(default_factory=list)

    @property
    def rcode(self) -> int:
        return self.flags & 0x000F

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)


def encode_query(ident: int, name: str, rdtype: int) -> bytes:
    """Return a recursive query for an ASCII name."""
    header = struct.pack("!HHHHHH", ident, FLAG_RD, 1, 0, 0, 0)
    labels = [label for label in name.encode("ascii").split(b".") if label]
    qname = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return header + qname + struct.pack("!HH", rdtype, 1)


def _name(data: bytes, offset: int) -> tuple[str, int]:
    """Read a possibly compressed name; return it and the offset after it."""
    labels: list[str] = []
    end = -1
    for _ in range(MAX_POINTERS):
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length == 0:
            return ".".join(labels), (end if end >= 0 else offset + 1)
        labels.append(data[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise Malformed("too many compression pointers")


def _rdata(data: bytes, rdtype: int, start: int, length: int) -> Any:
    chunk = data[start : start + length]
    if rdtype == 1 and length == 4:
        return str(ipaddress.IPv4Address(chunk))
    if rdtype == 28 and length == 16:
        return ipaddress.IPv6Address(chunk).compressed
    if rdtype in (2, 5, 12, 6):
        # SOA: the primary nameserver, the part a dns-record keeps.
        return _name(data, start)[0]
    if rdtype == 15:
        (preference,) = struct.unpack("!H", chunk[:2])
        return preference, _name(data, start + 2)[0]
    if rdtype == 16:
        strings, at = [], 0
        while at < length:
            size = chunk[at]
            strings.append(chunk[at + 1 : at + 1 + size])
            at += 1 + size
        return b"".join(strings).decode("utf-8", "replace")
    return None


def decode_reply(data: bytes) -> Reply:
    """Read the header, question and answer records of a DNS message."""
    try:
        ident, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", data[:12])
        offset = 12
        question = ("", 0)
        for _ in range(qdcount):
            qname, offset = _name(data, offset)
            (qtype,) = struct.unpack("!H", data[offset : offset + 2])
            question = (qname, qtype)
            offset += 4
        reply = Reply(ident, flags, question)
        for _ in range(ancount):
            name, offset = _name(data, offset)
            rdtype, _, ttl, length = struct.unpack("!HHIH", data[offset : offset + 10])
            offset += 10
            value = _rdata(data, rdtype, offset, length)
            offset += length
            if value is not None:
                reply.answers.append(Record(name, rdtype, ttl, value))
    except (IndexError, struct.error, ValueError) as err:
        raise Malformed(str(err)) from None
    return reply


def find_records(reply: Reply, name: str, rdtype: int) -> list[Record]:
    """Return the records of the type for the name, following CNAMEs."""
    owner = name.lower()
    for _ in range(MAX_CNAME_HOPS):
        found = [
            r for r in reply.answers if r.rdtype == rdtype and r.name.lower() == owner
        ]
        if found:
            return found
        alias = [r for r in reply.answers if r.rdtype == 5 and r.name.lower() == owner]
        if not alias:
            return []
        owner = str(alias[0].value).lower()
    return []


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
        self._pending: dict[int, tuple[asyncio.Future[Reply], tuple[str, int]]] = {}

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
                # Answers to hundreds of questions in flight arrive together;
                # the default buffer drops a burst of a few hundred. The
                # kernel caps the size at net.core.rmem_max.
                sock = self._transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            return self._transport

    async def query(self, name: str, rdtype: str, lifetime: float) -> Reply:
        """Return the nameserver's reply; raise Timeout, Refused or Malformed."""
        [reply] = await self.query_types(name, (rdtype,), lifetime)
        return reply

    async def query_types(
        self, name: str, rdtypes: tuple[str, ...], lifetime: float
    ) -> list[Reply]:
        """Ask for several types of one name at once; replies in the same order.

        One coroutine waits for all the questions, with one resend timer:
        a task and a timer per question cost more than the question itself.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lifetime
        asked = []
        for rdtype in rdtypes:
            ident = random.randrange(65536)
            while ident in self._pending:
                ident = random.randrange(65536)
            code = RDTYPES[rdtype]
            future: asyncio.Future[Reply] = loop.create_future()
            self._pending[ident] = (future, (name.lower(), code))
            asked.append((ident, encode_query(ident, name, code), future))
        try:
            transport = await self._socket()
            waiting = asked
            while waiting:
                for _, wire, _ in waiting:
                    transport.sendto(wire)
                left = deadline - loop.time()
                await asyncio.wait(
                    [future for _, _, future in waiting],
                    timeout=max(0.0, min(RESEND_AFTER, left)),
                    return_when=asyncio.FIRST_EXCEPTION,
                )
                failed = [f for _, _, f in asked if f.done() and f.exception()]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
                waiting = [item for item in waiting if not item[2].done()]
                if waiting and loop.time() >= deadline:
                    raise Timeout(lifetime)
        finally:
            for ident, _, future in asked:
                self._pending.pop(ident, None)
                # A failure that lands after we stopped waiting is not news.
                if future.done() and not future.cancelled():
                    future.exception()
                else:
                    future.cancel()
        replies = [future.result() for _, _, future in asked]
        for index, reply in enumerate(replies):
            if reply.truncated:
                replies[index] = await asyncio.wait_for(
                    self._over_tcp(asked[index][1]), max(0.1, deadline - loop.time())
                )
        return replies

    async def _over_tcp(self, wire: bytes) -> Reply:
        reader, writer = await asyncio.open_connection(self.address, self.port)
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            return decode_reply(await reader.readexactly(length))
        except asyncio.IncompleteReadError:
            raise Malformed("the TCP answer ended early") from None
        finally:
            writer.close()

    @property
    def where(self) -> str:
        """Return the nameserver as people write it: IP:port or [IPv6]:port."""
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _answered(self, data: bytes) -> None:
        if len(data) < 12:
            return
        (ident,) = struct.unpack("!H", data[:2])
        pending = self._pending.get(ident)
        if pending is None:
            return
        future, question = pending
        try:
            reply = decode_reply(data)
        except Malformed as err:
            if not future.done():
                future.set_exception(err)
            return
        asked = (reply.question[0].lower(), reply.question[1])
        if reply.flags & FLAG_QR and asked == question and not future.done():
            future.set_result(reply)

    def _failed(self, err: Exception) -> None:
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(err)

    def _lost(self) -> None:
        self._transport = None
        self._failed(Refused("the socket closed"))
