"""The DNS wire codec, checked against dnspython's own encoder and decoder."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import dns.flags
import dns.message
import dns.rdataclass
import dns.rrset
import pytest

from expansion._dns_client import (
    RDTYPES,
    RECEIVE_BUFFER,
    Malformed,
    NameserverClient,
    decode_reply,
    encode_query,
    find_records,
)


def test_query_is_what_dnspython_reads() -> None:
    wire = encode_query(4660, "xn--bcher-kva.example", RDTYPES["MX"])

    parsed = dns.message.from_wire(wire)

    assert parsed.id == 4660
    assert parsed.question[0].to_text() == "xn--bcher-kva.example. IN MX"
    assert parsed.flags & dns.flags.RD


def reply_with(*rrsets: tuple[str, str, list[str]]) -> bytes:
    query = dns.message.make_query("alias.example.com", "A")
    response = dns.message.make_response(query)
    for name, rdtype, values in rrsets:
        response.answer.append(
            dns.rrset.from_text_list(name, 300, dns.rdataclass.IN, rdtype, values)
        )
    return response.to_wire()


def test_reply_records_of_every_type_the_module_reads() -> None:
    wire = reply_with(
        ("alias.example.com.", "CNAME", ["www.example.com."]),
        ("www.example.com.", "A", ["192.0.2.10", "192.0.2.11"]),
        ("www.example.com.", "AAAA", ["2001:db8::10"]),
        ("example.com.", "MX", ["20 mx2.example.com.", "10 mx1.example.com."]),
        ("example.com.", "TXT", ['"v=spf1 " "ip4:192.0.2.0/24 -all"']),
        ("example.com.", "SOA", ["ns1.example.net. h.example.com. 1 2 3 4 5"]),
        ("10.2.0.192.in-addr.arpa.", "PTR", ["www.example.com."]),
    )

    reply = decode_reply(wire)
    values = {(r.name, r.rdtype): [] for r in reply.answers}
    for record in reply.answers:
        values[(record.name, record.rdtype)].append(record.value)
    # dnspython keeps an rrset's records as a set: their order on the wire varies.
    values = {key: sorted(found) for key, found in values.items()}

    assert reply.question == ("alias.example.com", RDTYPES["A"])
    assert reply.rcode == 0
    assert values == {
        ("alias.example.com", 5): ["www.example.com"],
        ("www.example.com", 1): ["192.0.2.10", "192.0.2.11"],
        ("www.example.com", 28): ["2001:db8::10"],
        ("example.com", 15): [(10, "mx1.example.com"), (20, "mx2.example.com")],
        ("example.com", 16): ["v=spf1 ip4:192.0.2.0/24 -all"],
        ("example.com", 6): ["ns1.example.net"],
        ("10.2.0.192.in-addr.arpa", 12): ["www.example.com"],
    }
    assert sorted(r.value for r in find_records(reply, "ALIAS.example.com", 1)) == [
        "192.0.2.10",
        "192.0.2.11",
    ]
    assert find_records(reply, "alias.example.com", 28)[0].value == "2001:db8::10"
    assert find_records(reply, "other.example.com", 1) == []


@pytest.mark.parametrize(
    "wire",
    [
        b"\x12\x34\x81\x80\x00\x01",
        # One question whose name points at itself, forever.
        b"\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
        reply_with(("www.example.com.", "A", ["192.0.2.10"]))[:-3],
    ],
    ids=["short-header", "pointer-loop", "cut-record"],
)
def test_malformed_replies_raise(wire: bytes) -> None:
    with pytest.raises(Malformed):
        decode_reply(wire)


class _Garbage(asyncio.DatagramProtocol):
    """A nameserver that answers each question with its id and nothing sane."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        header = data[:2] + b"\x81\x80\x00\x01\x00\x05\x00\x00\x00\x00"
        # The question's name is cut off after three of its seven letters.
        self.transport.sendto(header + b"\x07exa", addr)  # type: ignore[attr-defined]


async def test_an_unreadable_answer_is_malformed_not_a_timeout() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        _Garbage, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    client = NameserverClient("127.0.0.1", port)
    try:
        with pytest.raises(Malformed):
            await client.query("example.com", "A", 2.0)
    finally:
        client.close()
        transport.close()


def test_nameservers_are_named_as_people_write_them() -> None:
    assert NameserverClient("192.0.2.53", 5353).where == "192.0.2.53:5353"
    assert NameserverClient("2001:db8::53", 53).where == "[2001:db8::53]:53"


async def test_the_socket_holds_a_burst_of_answers() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        _Garbage, local_addr=("127.0.0.1", 0)
    )
    client = NameserverClient("127.0.0.1", transport.get_extra_info("sockname")[1])
    try:
        sock = (await client._socket()).get_extra_info("socket")
        size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        client.close()
        transport.close()

    # Linux grants up to net.core.rmem_max and reports twice what it grants.
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    assert size >= 2 * min(RECEIVE_BUFFER, rmem_max)
