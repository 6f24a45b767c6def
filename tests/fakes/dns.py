"""A real DNS server on 127.0.0.1 (UDP and TCP) that answers from a zone dict."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


@dataclass
class Zone:
    """Records by (name, type), e.g. {("example.com", "A"): ["192.0.2.10"]}."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    ttl: int = 300
    delay: float = 0.0
    mode: str = "answer"  # answer | refuse | servfail | drop | truncate
    # Datagrams to ignore before answering, as a lossy network does.
    lose_first: int = 0

    def names(self) -> set[str]:
        return {name for name, _ in self.records}


def build_response(zone: Zone, wire: bytes, tcp: bool = False) -> bytes | None:
    """Answer one DNS query from the zone, or None to stay silent."""
    query = dns.message.from_wire(wire)
    if zone.mode == "drop":
        return None
    if not tcp and zone.lose_first > 0:
        zone.lose_first -= 1
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if zone.mode == "truncate" and not tcp:
        response.flags |= dns.flags.TC
        return response.to_wire()
    if zone.mode == "refuse":
        response.set_rcode(dns.rcode.REFUSED)
        return response.to_wire()
    if zone.mode == "servfail":
        response.set_rcode(dns.rcode.SERVFAIL)
        return response.to_wire()
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    rdtype = dns.rdatatype.to_text(question.rdtype)
    if name not in zone.names():
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()
    values = zone.records.get((name, rdtype), [])
    if values:
        rrset = dns.rrset.from_text_list(
            question.name, zone.ttl, dns.rdataclass.IN, rdtype, values
        )
        response.answer.append(rrset)
    return response.to_wire()


class DNSServer:
    """UDP and TCP DNS on 127.0.0.1, in a thread, counting the queries it gets."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.queries: list[tuple[str, str]] = []
        self._udp, self._tcp = self._bind_pair()
        self.port = self._udp.getsockname()[1]
        self._tcp.listen(16)
        self._loop = asyncio.new_event_loop()
        self._pending: set[asyncio.Future[None]] = set()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @staticmethod
    def _bind_pair() -> tuple[socket.socket, socket.socket]:
        """Bind UDP and TCP on one free port; the TCP side may be taken, so retry."""
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            return udp, tcp
        raise OSError("no free port for both UDP and TCP on 127.0.0.1")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DNSServer:
        self._thread.start()
        return self

    def _record(self, wire: bytes) -> None:
        try:
            question = dns.message.from_wire(wire).question[0]
        except Exception:
            return
        self.queries.append(
            (
                question.name.to_text(omit_final_dot=True),
                dns.rdatatype.to_text(question.rdtype),
            )
        )

    async def _answer(self, wire: bytes, tcp: bool = False) -> bytes | None:
        self._record(wire)
        if self.zone.delay:
            await asyncio.sleep(self.zone.delay)
        return build_response(self.zone, wire, tcp)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self

        class UDP(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                async def reply() -> None:
                    answer = await server._answer(data)
                    if answer is not None:
                        self.transport.sendto(answer, addr)  # type: ignore[attr-defined]

                task = asyncio.ensure_future(reply())
                server._pending.add(task)
                task.add_done_callback(server._pending.discard)

        async def tcp(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            try:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                answer = await server._answer(await reader.readexactly(length), True)
                if answer is not None:
                    writer.write(struct.pack("!H", len(answer)) + answer)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        async def main() -> None:
            await self._loop.create_datagram_endpoint(UDP, sock=self._udp)
            await asyncio.start_server(tcp, sock=self._tcp)

        self._loop.run_until_complete(main())
        self._loop.run_forever()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._udp.close()
        self._tcp.close()
