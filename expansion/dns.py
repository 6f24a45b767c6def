"""DNS: resolve names and addresses with the configured or system resolver."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

import dns.resolver
import dns.reversename
from pydantic import field_validator

from expansion._dns_client import (
    NOERROR,
    NXDOMAIN,
    RCODES,
    RDTYPES,
    Malformed,
    NameserverClient,
    Refused,
    Reply,
    Timeout,
    find_records,
)
from modules.context import Context
from modules.errors import BadResponse, Unavailable, UpstreamTimeout
from modules.module import ExpansionModule, ModuleConfig, setting
from modules.observable import Observable
from modules.results import Answer

log = logging.getLogger(__name__)

NAME_RECORDS = ("A", "AAAA", "CNAME", "MX", "NS", "TXT", "SOA")
RELATIONS = {
    "A": "a-record",
    "AAAA": "aaaa-record",
    "CNAME": "cname-record",
    "MX": "mx-record",
    "NS": "ns-record",
    "TXT": "txt-record",
    "SOA": "soa-record",
    "PTR": "ptr-record",
}
QUERY_TIMEOUT = 3.0
# Lookups in flight per nameserver, each of up to seven questions.
NAMESERVER_LOOKUPS = 150


def parse_nameserver(text: str) -> tuple[str, int]:
    """Split "IP", "IP:port" or "[IPv6]:port" into address and port."""
    text = text.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"'{text}' is not IP, IP:port or [IPv6]:port")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host).compressed
    except ValueError:
        raise ValueError(f"'{text}' is not IP, IP:port or [IPv6]:port") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{text}' has an invalid port")
    return address, int(port)


class DNSConfig(ModuleConfig):
    nameserver: str | None = setting(
        None, "resolver to ask: IP, IP:port or [IPv6]:port; default: the system's"
    )

    @field_validator("nameserver")
    @classmethod
    def _valid(cls, value: str | None) -> str | None:
        if value is not None:
            parse_nameserver(value)
        return value


def spf_addresses(txt: str) -> list[str]:
    """Return the ip4/ip6 networks an SPF record authorises."""
    if not txt.lower().startswith("v=spf1"):
        return []
    found = []
    for term in txt.split()[1:]:
        mechanism, _, value = term.lstrip("+-~?").partition(":")
        if mechanism.lower() in ("ip4", "ip6") and value:
            try:
                found.append(str(ipaddress.ip_network(value, strict=False)))
            except ValueError:
                continue
    return found


class DNS(ExpansionModule):
    name = "dns"
    title = "DNS"
    description = (
        "Resolve a domain or hostname (A, AAAA, CNAME, MX, NS, TXT/SPF, SOA) or an "
        "IP address (PTR) and answer a dns-record object."
    )
    input_types = ("hostname", "domain", "domain|ip", "ip-src", "ip-dst")
    output_types = ("ip-dst", "domain", "hostname", "text")
    references = ("https://www.rfc-editor.org/rfc/rfc1035",)
    features = (
        "Queries the record types concurrently; NXDOMAIN and empty answers are "
        "results. The nameserver setting picks the resolver, else the system's."
    )
    Config = DNSConfig
    # The query reaches the domain's authoritative servers, which an
    # adversary may run.
    third_party = True
    cache_ttl = 3600
    not_found_ttl = 300
    # Lookups of a name's record types in flight at once, all nameservers
    # together; each nameserver has a cap of its own (NAMESERVER_LOOKUPS).
    concurrency = 600
    # A lame delegation or a dead resolver a query names fails that query
    # alone; it says nothing about the next name or nameserver.
    uses_breaker = False

    def __init__(self) -> None:
        self._clients: dict[str | None, list[NameserverClient]] = {}
        self._gates: dict[str | None, asyncio.Semaphore] = {}

    def clients(self, nameserver: str | None) -> list[NameserverClient]:
        """Return clients for the nameserver, or for the system's, in order."""
        clients = self._clients.get(nameserver)
        if clients is None:
            if nameserver is None:
                system = dns.resolver.Resolver()
                clients = [
                    NameserverClient(str(address), system.port)
                    for address in system.nameservers
                ]
            else:
                clients = [NameserverClient(*parse_nameserver(nameserver))]
            self._clients[nameserver] = clients
        return clients

    async def close(self) -> None:
        for clients in self._clients.values():
            for client in clients:
                client.close()
        self._clients.clear()

    async def ask(
        self, ctx: Context, nameserver: str | None, name: str, rdtypes: tuple[str, ...]
    ) -> list[Reply]:
        """Return a reply per type, trying the system's nameservers in turn."""
        # Each nameserver waits in a queue of its own: a dead one that a
        # query names must not hold up the questions for the others.
        gate = self._gates.get(nameserver)
        if gate is None:
            gate = self._gates[nameserver] = asyncio.Semaphore(NAMESERVER_LOOKUPS)
        async with gate:
            return await self._ask(ctx, nameserver, name, rdtypes)

    async def _ask(
        self, ctx: Context, nameserver: str | None, name: str, rdtypes: tuple[str, ...]
    ) -> list[Reply]:
        asked = f"{name} {'/'.join(rdtypes)}"
        clients = self.clients(nameserver)
        if not clients:
            raise Unavailable(self.title, "the system has no nameserver configured")
        failure: Exception | None = None
        for client in clients:
            lifetime = max(0.1, min(QUERY_TIMEOUT, ctx.source.remaining()))
            where = client.where
            try:
                replies = await client.query_types(name, rdtypes, lifetime)
            except (Timeout, TimeoutError):
                ctx.source.answered("timeout")
                failure = UpstreamTimeout(
                    self.title,
                    f"no answer from {where} within {lifetime:.1f} s for {asked}",
                )
                continue
            except (Refused, OSError):
                ctx.source.answered("connection_error")
                failure = Unavailable(
                    self.title, f"nothing answers DNS at {where} (connection refused)"
                )
                continue
            except Malformed as err:
                ctx.source.answered("malformed")
                failure = BadResponse(
                    self.title, f"{where} sent an unreadable answer ({err})"
                )
                continue
            for reply in replies:
                ctx.source.answered(RCODES.get(reply.rcode, str(reply.rcode)))
            refused = [r for r in replies if r.rcode not in (NOERROR, NXDOMAIN)]
            if not refused:
                return replies
            rcode = RCODES.get(refused[0].rcode, str(refused[0].rcode))
            failure = Unavailable(
                self.title, f"the nameserver refused or failed {asked} ({rcode})"
            )
        assert failure is not None
        raise failure

    async def lookup(
        self, ctx: Context, nameserver: str | None, name: str, rdtypes: tuple[str, ...]
    ) -> dict[str, Any]:
        """Return {"records": {type: [...]}} or {"nxdomain": True}, through the cache.

        The types of one name are one cache entry: they are asked together,
        and one entry costs one cache read where a fleet shares Redis.
        """

        async def call() -> tuple[dict[str, Any], float | None]:
            replies = await self.ask(ctx, nameserver, name, rdtypes)
            not_found_ttl = ctx.source.policy.not_found_ttl
            if any(reply.rcode == NXDOMAIN for reply in replies):
                return {"nxdomain": True}, not_found_ttl
            records: dict[str, list[str]] = {}
            ttls: list[int] = []
            for rdtype, reply in zip(rdtypes, replies, strict=True):
                found = find_records(reply, name, RDTYPES[rdtype])
                ttls.extend(r.ttl for r in found)
                if rdtype == "MX":
                    records[rdtype] = [
                        host for _, host in sorted(r.value for r in found)
                    ]
                else:
                    records[rdtype] = sorted(str(r.value) for r in found)
            # A name with no records at all is kept as long as "not found".
            return {"records": records}, min(ttls) if ttls else not_found_ttl

        endpoint = ",".join(rdtypes)
        return await ctx.source.fetch(endpoint, f"{nameserver}|{name}", call)  # type: ignore[no-any-return]

    async def enrich(
        self, observable: Observable, config: DNSConfig, ctx: Context
    ) -> Answer:
        answer = ctx.answer()
        summary: list[str] = []

        host = observable.host
        if host:
            await self._name_records(ctx, config.nameserver, host, answer, summary)
        if observable.ip:
            await self._ptr_records(
                ctx, config.nameserver, observable.ip, answer, summary
            )

        answer.summary = "; ".join(summary)
        return answer

    async def _name_records(
        self,
        ctx: Context,
        nameserver: str | None,
        host: str,
        answer: Answer,
        summary: list[str],
    ) -> None:
        result = await self.lookup(ctx, nameserver, host, NAME_RECORDS)
        if result.get("nxdomain"):
            summary.append(f"{host}: no such domain (NXDOMAIN)")
            answer.note(f"{host} does not exist (NXDOMAIN)")
            return

        values: dict[str, Any] = {"queried-domain": host}
        parts = []
        for rdtype in NAME_RECORDS:
            records = result["records"][rdtype]
            if not records:
                continue
            values[RELATIONS[rdtype]] = records
            parts.append(f"{rdtype} {', '.join(records)}")
        spf = [
            net for txt in values.get("txt-record", []) for net in spf_addresses(txt)
        ]
        if spf:
            values["spf-record"] = spf

        if len(values) == 1:
            summary.append(f"{host}: no records")
            answer.note(f"{host} exists but has none of {', '.join(NAME_RECORDS)}")
            return
        answer.add_object("dns-record", values, relationship="describes")
        summary.append(f"{host}: " + " | ".join(parts))

    async def _ptr_records(
        self,
        ctx: Context,
        nameserver: str | None,
        ip: str,
        answer: Answer,
        summary: list[str],
    ) -> None:
        reverse = dns.reversename.from_address(ip).to_text(omit_final_dot=True)
        result = await self.lookup(ctx, nameserver, reverse, ("PTR",))
        records = (result.get("records") or {}).get("PTR", [])
        if not records:
            summary.append(f"{ip}: no PTR record")
            answer.note(f"{ip} has no PTR record")
            return
        answer.add_object(
            "dns-record",
            {"queried-domain": reverse, "ptr-record": records},
            relationship="describes",
        )
        summary.append(f"{ip}: PTR {', '.join(records)}")
