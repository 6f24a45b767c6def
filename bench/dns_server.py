"""A wildcard DNS server on 127.0.0.1 that answers after a delay and counts queries.

It runs in its own process so that building answers does not take the load
generator's CPU or GIL, and it writes DNS wire format by hand because a
dnspython message per query costs more CPU than the servers being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

ZONE = "bench.example"
TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1
RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_NXDOMAIN = 3
QR = 0x8000
AA = 0x0400
OPCODE_MASK = 0x7800
RD = 0x0100
# Big enough for thousands of queued queries; Linux caps it at rmem_max.
RECEIVE_BUFFER = 8 * 1024 * 1024
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Question:
    """The one question of a DNS query, as read from the wire."""

    qid: int
    flags: int
    name: str
    qtype: int
    end: int


def parse_question(wire: bytes) -> Question:
    """Read the header and first question of a query; raise ValueError if bad."""
    if len(wire) < 12:
        raise ValueError("shorter than a DNS header")
    qid, flags, qdcount = struct.unpack_from("!HHH", wire)
    if flags & QR or qdcount != 1:
        raise ValueError("not a query with one question")
    labels = []
    offset = 12
    # A name has at most 127 labels; bound the walk by that.
    for _ in range(128):
        if offset >= len(wire):
            raise ValueError("name runs past the end")
        length = wire[offset]
        offset += 1
        if length == 0:
            break
        if length > 63:
            raise ValueError("compressed or invalid label in a question")
        labels.append(wire[offset : offset + length].decode("ascii", "replace"))
        offset += length
    else:
        raise ValueError("too many labels")
    if offset + 4 > len(wire):
        raise ValueError("question type and class missing")
    (qtype,) = struct.unpack_from("!H", wire, offset)
    name = ".".join(labels).lower()
    return Question(qid, flags, name, qtype, offset + 4)


def in_zone(name: str, zone: str = ZONE) -> bool:
    """Tell whether a name is the zone or any name under it."""
    return name == zone or name.endswith("." + zone)


def address_for(name: str, qtype: int) -> bytes | None:
    """Return the A or AAAA rdata the wildcard gives a name, stable per name."""
    digest = zlib.crc32(name.encode())
    if qtype == TYPE_A:
        # TEST-NET-2: documentation addresses, never routed anywhere.
        return bytes([198, 51, 100, digest % 254 + 1])
    if qtype == TYPE_AAAA:
        return bytes.fromhex("20010db8" + "0" * 16) + struct.pack("!I", digest)
    return None


def build_response(wire: bytes, ttl: int = 300, zone: str = ZONE) -> bytes | None:
    """Answer a query: A/AAAA for any name in the zone, NXDOMAIN outside it."""
    try:
        question = parse_question(wire)
    except ValueError:
        if len(wire) < 2:
            return None
        return wire[:2] + struct.pack("!HHHHH", QR | RCODE_FORMERR, 0, 0, 0, 0)
    rdatas: list[bytes] = []
    rcode = RCODE_NXDOMAIN
    if in_zone(question.name, zone):
        rcode = RCODE_NOERROR
        rdata = address_for(question.name, question.qtype)
        if rdata is not None:
            rdatas.append(rdata)
    flags = QR | AA | (question.flags & (OPCODE_MASK | RD)) | rcode
    header = struct.pack("!HHHHHH", question.qid, flags, 1, len(rdatas), 0, 0)
    answers = b"".join(
        # 0xC00C points at the question's name, right after the header.
        b"\xc0\x0c" + struct.pack("!HHIH", question.qtype, CLASS_IN, ttl, len(rd)) + rd
        for rd in rdatas
    )
    return header + wire[12 : question.end] + answers


class Tally:
    """Counts of the queries received, by name and type."""

    def __init__(self) -> None:
        self.total = 0
        self.by_question: Counter[tuple[str, int]] = Counter()

    def add(self, wire: bytes) -> None:
        self.total += 1
        with contextlib.suppress(ValueError):
            question = parse_question(wire)
            self.by_question[(question.name, question.qtype)] += 1

    def snapshot(self) -> dict[str, int]:
        """Return total queries, distinct names and questions, and repeats."""
        names = {name for name, _ in self.by_question}
        return {
            "queries": self.total,
            "names": len(names),
            "questions": len(self.by_question),
            "repeats": sum(n - 1 for n in self.by_question.values()),
        }

    def reset(self) -> None:
        self.total = 0
        self.by_question.clear()


class Responder(asyncio.DatagramProtocol):
    """Answer each datagram after the delay, without a task per query."""

    def __init__(self, delay: float, tally: Tally) -> None:
        self.delay = delay
        self.tally = tally
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.tally.add(data)
        answer = build_response(data)
        if answer is None or self.transport is None:
            return
        if self.delay > 0:
            asyncio.get_running_loop().call_later(
                self.delay, self.transport.sendto, answer, addr
            )
        else:
            self.transport.sendto(answer, addr)


def bind_udp(port: int) -> socket.socket:
    """Bind a UDP socket on 127.0.0.1 with a large receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def serve(conn: Connection, port: int, delay: float) -> None:
    """Run the server until told to stop; obey commands on the pipe."""
    try:
        sock = bind_udp(port)
    except OSError as err:
        conn.send(("error", f"cannot bind 127.0.0.1:{port}/udp: {err}"))
        return
    tally = Tally()
    loop = asyncio.new_event_loop()

    def on_command() -> None:
        try:
            command = conn.recv()
        except (EOFError, OSError):
            # The parent is gone: stop rather than linger.
            loop.stop()
            return
        if command == "stats":
            conn.send(tally.snapshot())
        elif command == "reset":
            tally.reset()
            conn.send("ok")
        else:
            loop.stop()

    async def start() -> None:
        await loop.create_datagram_endpoint(lambda: Responder(delay, tally), sock=sock)

    loop.run_until_complete(start())
    loop.add_reader(conn.fileno(), on_command)
    conn.send(("ready", sock.getsockname()[1]))
    try:
        loop.run_forever()
    finally:
        sock.close()
        loop.close()


class DNSProcess:
    """The wildcard DNS server in a child process, with its query counts."""

    def __init__(self, port: int = 0, delay: float = 0.1) -> None:
        self.requested_port = port
        self.delay = delay
        self.port = 0
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=serve, args=(child, port, delay), daemon=True, name="bench-dns"
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self) -> DNSProcess:
        """Start the child and wait until it listens; raise OSError if it cannot."""
        self._process.start()
        if not self._conn.poll(START_TIMEOUT):
            self.stop()
            raise OSError("the DNS server did not start in time")
        status, detail = self._conn.recv()
        if status != "ready":
            self.stop()
            raise OSError(detail)
        self.port = int(detail)
        return self

    def _ask(self, command: str) -> Any:
        self._conn.send(command)
        if not self._conn.poll(5):
            raise TimeoutError(f"the DNS server did not answer '{command}'")
        return self._conn.recv()

    def stats(self) -> dict[str, int]:
        """Return the counts since the last reset."""
        return self._ask("stats")  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        """Stop the child, forcibly if it does not obey within seconds."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send("stop")
            self._process.join(3)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(3)
        self._conn.close()

    def __enter__(self) -> DNSProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
