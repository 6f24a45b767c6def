"""VirusTotal: file, domain, IP and URL reports and their relationships (API v3)."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit

from pydantic import SecretStr

from modules.context import Context
from modules.errors import (
    BadResponse,
    CircuitOpen,
    ConfigError,
    DeadlineExceeded,
    Forbidden,
    NotFound,
    RateLimited,
    Rejected,
    Unavailable,
    UpstreamTimeout,
)
from modules.module import ExpansionModule, ModuleConfig, secret, setting
from modules.objects import ProposedObject
from modules.observable import Observable, is_ip
from modules.results import Answer
from modules.upstream import Source, Throttled

log = logging.getLogger(__name__)

GUI_URL = "https://www.virustotal.com/gui"
GUI_PATHS = {
    "files": "file",
    "domains": "domain",
    "ip_addresses": "ip-address",
    "urls": "url",
}
# VT's own cap on one page of related objects.
MAX_LIMIT = 40
# A much-shared sample carries hundreds of names seen in the wild.
MAX_NAMES = 10
DNS_RELATIONS = {
    "A": "a-record",
    "AAAA": "aaaa-record",
    "CNAME": "cname-record",
    "MX": "mx-record",
    "NS": "ns-record",
    "PTR": "ptr-record",
    "SOA": "soa-record",
    "SRV": "srv-record",
    "TXT": "txt-record",
}
NO_KEY = (
    "VirusTotal: no API key: set the virustotal apikey setting in MISP or "
    "MISP_ENRICH_VIRUSTOTAL_APIKEY on the server"
)


# The client: paths, the key header and VirusTotal's JSON envelope.


@dataclass
class Page:
    """One page of related objects, and whether VirusTotal holds more."""

    items: list[dict[str, Any]]
    total: int | None = None
    more: bool = False


def url_id(url: str) -> str:
    """Return VirusTotal's identifier of a URL: unpadded base64url."""
    return base64.urlsafe_b64encode(url.encode()).decode("ascii").rstrip("=")


class VirusTotalClient:
    """Ask VirusTotal API v3 for objects and their related objects."""

    def __init__(self, source: Source, apikey: SecretStr) -> None:
        self._source = source
        self._headers = {"x-apikey": apikey.get_secret_value()}

    async def _get_json(
        self,
        path: str,
        endpoint: str,
        validate: Callable[[Any], object],
        params: dict[str, str] | None = None,
    ) -> Any:
        """GET a document with the key in its header, checked before caching."""
        return await self._source.get_json(
            path,
            params=params,
            headers=self._headers,
            endpoint=endpoint,
            validate=validate,
        )

    async def get(self, collection: str, ident: str) -> dict[str, Any] | None:
        """Return the object's data, or None when VirusTotal does not know it."""
        try:
            body = await self._get_json(
                f"/{collection}/{quote(ident, safe=':')}", collection, self._single
            )
        except NotFound:
            return None
        return self._single(body)

    async def related(
        self, collection: str, ident: str, relationship: str, limit: int
    ) -> Page:
        """Return the first page of objects related to an object."""
        try:
            body = await self._get_json(
                f"/{collection}/{quote(ident, safe=':')}/{relationship}",
                f"{collection}/{relationship}",
                partial(self._collection, relationship),
                {"limit": str(limit)},
            )
        except NotFound:
            return Page([])
        data = self._collection(relationship, body)
        meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
        total = meta.get("count") if isinstance(meta.get("count"), int) else None
        page = data[:limit]
        more = bool(meta.get("cursor")) or len(data) > limit
        if total is not None and total > len(page):
            more = True
        # Items VirusTotal could not load carry an "error" instead of attributes.
        items = [
            item
            for item in page
            if isinstance(item, dict) and isinstance(item.get("attributes"), dict)
        ]
        return Page(items, total, more)

    def _collection(self, relationship: str, body: Any) -> list[Any]:
        """Check the envelope of a collection and return its items."""
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise BadResponse(
                self._source.label, "the answer has no data list of related objects"
            )
        return data

    def _single(self, body: Any) -> dict[str, Any]:
        """Check the envelope of a single object and return its data."""
        data = body.get("data") if isinstance(body, dict) else None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("id"), str)
            or not isinstance(data.get("attributes"), dict)
        ):
            raise BadResponse(
                self._source.label, "the answer has no data object with attributes"
            )
        return data


# The mapping from VirusTotal objects to MISP objects.


@dataclass(frozen=True)
class Link:
    """A VirusTotal relationship and the MISP reference it becomes."""

    name: str
    label: str
    relationship: str | None
    # True: the related object references the entity; False: the reverse.
    inward: bool = True


LINKS = {
    "files": (
        Link("contacted_domains", "contacted domains", "communicates-with", False),
        Link("contacted_ips", "contacted IP addresses", "communicates-with", False),
        Link("contacted_urls", "contacted URLs", "communicates-with", False),
        Link("itw_urls", "in-the-wild URLs", "downloaded-from", False),
    ),
    "domains": (
        Link("resolutions", "resolutions", None),
        Link("subdomains", "subdomains", "subdomain-of"),
        Link("siblings", "sibling domains", "sibling-of"),
        Link("communicating_files", "communicating files", "communicates-with"),
        Link("downloaded_files", "downloaded files", "downloaded-from"),
        Link("referrer_files", "referrer files", "references"),
    ),
    "ip_addresses": (Link("resolutions", "resolutions", None),),
    "urls": (
        Link("downloaded_files", "downloaded files", "downloaded-from"),
        Link("communicating_files", "communicating files", "communicates-with"),
    ),
}


@dataclass
class Target:
    """One thing to look up: a VirusTotal collection and identifier."""

    collection: str
    ident: str
    shown: str
    relation: str = ""


@dataclass
class Entity:
    """A looked-up target, its VirusTotal data and the object describing it."""

    target: Target
    data: dict[str, Any]
    obj: ProposedObject
    related: dict[tuple[str, str], ProposedObject] = field(default_factory=dict)

    @property
    def ident(self) -> str:
        return str(self.data["id"])


def targets(observable: Observable) -> list[Target]:
    """Return what to look up for an observable; domain|ip gives two targets."""
    digest = observable.hash
    if digest is not None:
        return [Target("files", digest[1], digest[1])]
    if observable.url:
        return [Target("urls", url_id(observable.url), observable.url)]
    found = []
    if observable.host:
        relation = "hostname" if "hostname" in observable.parts else "domain"
        found.append(Target("domains", observable.host, observable.host, relation))
    if observable.ip:
        found.append(Target("ip_addresses", observable.ip, observable.ip, "ip"))
    return found


def when(epoch: Any) -> datetime | None:
    """Return a VirusTotal epoch timestamp as an aware datetime."""
    if isinstance(epoch, int | float) and epoch > 0:
        return datetime.fromtimestamp(epoch, tz=UTC)
    return None


def detection_ratio(attributes: dict[str, Any]) -> str | None:
    """Return "malicious/total" from the last analysis, if there was one."""
    stats = attributes.get("last_analysis_stats")
    if not isinstance(stats, dict):
        return None
    total = sum(count for count in stats.values() if isinstance(count, int))
    if not total:
        return None
    return f"{stats.get('malicious', 0)}/{total}"


def community_score(attributes: dict[str, Any]) -> str | None:
    """Return the reputation and the community votes as one line."""
    reputation = attributes.get("reputation")
    votes = attributes.get("total_votes")
    parts = []
    if isinstance(reputation, int):
        parts.append(f"reputation {reputation}")
    if isinstance(votes, dict):
        parts.append(
            f"votes: {votes.get('harmless', 0)} harmless, "
            f"{votes.get('malicious', 0)} malicious"
        )
    return "; ".join(parts) or None


def verdict(attributes: dict[str, Any]) -> str:
    """Return the short verdict the hover line and related comments show."""
    parts = []
    ratio = detection_ratio(attributes)
    parts.append(
        f"{ratio} engines flag it malicious" if ratio else "no engine verdict yet"
    )
    if isinstance(attributes.get("reputation"), int):
        parts.append(f"reputation {attributes['reputation']}")
    first = when(attributes.get("first_submission_date"))
    if first is not None:
        parts.append(f"first seen {first.date().isoformat()}")
    return "; ".join(parts)


def file_values(
    attributes: dict[str, Any], names: list[str] | None = None
) -> dict[str, Any]:
    """Return the file object's values from a VirusTotal file."""
    pe_info = attributes.get("pe_info")
    all_names = list(names or [])
    for name in [attributes.get("meaningful_name"), *(attributes.get("names") or [])]:
        if isinstance(name, str) and name and name not in all_names:
            all_names.append(name)
    return {
        "md5": attributes.get("md5"),
        "sha1": attributes.get("sha1"),
        "sha256": attributes.get("sha256"),
        "size-in-bytes": attributes.get("size"),
        "filename": all_names[:MAX_NAMES],
        "ssdeep": attributes.get("ssdeep"),
        "tlsh": attributes.get("tlsh"),
        "vhash": attributes.get("vhash"),
        "imphash": pe_info.get("imphash") if isinstance(pe_info, dict) else None,
    }


def url_values(url: str, attributes: dict[str, Any]) -> dict[str, Any]:
    """Return the url object's values for a URL VirusTotal knows."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or ""
    host_is_ip = is_ip(host)
    return {
        "url": url,
        "scheme": parts.scheme if "://" in url else None,
        "host": None if host_is_ip else host,
        "ip": host if host_is_ip else None,
        "resource_path": parts.path if parts.path not in ("", "/") else None,
        "query_string": parts.query,
        "first-seen": when(attributes.get("first_submission_date")),
        "last-seen": when(attributes.get("last_analysis_date")),
    }


def add_report(
    answer: Answer, entity: ProposedObject, target: Target, data: dict
) -> None:
    """Add the virustotal-report object that the entity was analysed with."""
    attributes = data["attributes"]
    label = (attributes.get("popular_threat_classification") or {}).get(
        "suggested_threat_label"
    )
    report = answer.add_object(
        "virustotal-report",
        {
            "permalink": f"{GUI_URL}/{GUI_PATHS[target.collection]}/{data['id']}",
            "detection-ratio": detection_ratio(attributes),
            "community-score": community_score(attributes),
            "first-submission": when(attributes.get("first_submission_date")),
            "last-submission": when(
                attributes.get("last_submission_date")
                or attributes.get("last_analysis_date")
            ),
            "comment": f"suggested threat label: {label}" if label else None,
        },
        relationship=None,
    )
    entity.add_reference(report.uuid, "analysed-with")


def add_dns_records(
    answer: Answer, entity: ProposedObject, host: str, data: dict
) -> None:
    """Add a dns-record object from the domain's last DNS records."""
    values: dict[str, list[str]] = {}
    for record in data["attributes"].get("last_dns_records") or []:
        relation = DNS_RELATIONS.get(str(record.get("type", "")).upper())
        value = record.get("value")
        if relation and isinstance(value, str) and value:
            values.setdefault(relation, [])
            if value not in values[relation]:
                values[relation].append(value)
    if not values:
        return
    dns_record = answer.add_object(
        "dns-record", {"queried-domain": host, **values}, relationship=None
    )
    dns_record.add_reference(entity.uuid, "describes")


def add_whois(
    answer: Answer, entity: ProposedObject, target: Target, attributes: dict
) -> None:
    """Add a whois object from the whois text and registration dates."""
    text = attributes.get("whois")
    if not isinstance(text, str) or not text.strip():
        return
    is_domain = target.collection == "domains"
    whois = answer.add_object(
        "whois",
        {
            "text": text.strip(),
            "domain": target.ident if is_domain else None,
            "ip-address": None if is_domain else target.ident,
            "registrar": attributes.get("registrar") if is_domain else None,
            "creation-date": when(attributes.get("creation_date")),
            "expiration-date": when(attributes.get("expiration_date")),
            "modification-date": when(attributes.get("last_update_date")),
        },
        relationship=None,
    )
    whois.add_reference(entity.uuid, "describes")


def add_asn(answer: Answer, entity: ProposedObject, attributes: dict) -> None:
    """Add the asn object of the autonomous system that announces the IP."""
    asn = attributes.get("asn")
    if not isinstance(asn, int):
        return
    obj = answer.add_object(
        "asn",
        {
            "asn": str(asn),
            "subnet-announced": attributes.get("network"),
            "country": attributes.get("country"),
            "description": attributes.get("as_owner"),
        },
        relationship=None,
    )
    obj.add_reference(entity.uuid, "contains")


def add_entity(
    answer: Answer, target: Target, data: dict, observable: Observable
) -> Entity:
    """Add the object describing a looked-up target, and what comes with it."""
    attributes = data["attributes"]
    if target.collection == "files":
        filename = observable.parts.get("filename")
        values = file_values(attributes, [filename] if filename else None)
        obj = answer.add_object("file", values, relationship="describes")
    elif target.collection == "urls":
        url = attributes.get("url") or target.shown
        obj = answer.add_object(
            "url", url_values(url, attributes), relationship="describes"
        )
    else:
        obj = answer.add_object(
            "domain-ip", {target.relation: target.ident}, relationship="describes"
        )
    add_report(answer, obj, target, data)

    if target.collection == "domains":
        add_dns_records(answer, obj, target.ident, data)
        add_whois(answer, obj, target, attributes)
    elif target.collection == "ip_addresses":
        add_asn(answer, obj, attributes)
        add_whois(answer, obj, target, attributes)
    elif target.collection == "urls":
        add_final_url(answer, obj, attributes)
    return Entity(target, data, obj)


def add_final_url(answer: Answer, entity: ProposedObject, attributes: dict) -> None:
    """Add the URL the submitted one redirected to, when they differ."""
    final = attributes.get("last_final_url")
    if not isinstance(final, str) or not final or final == attributes.get("url"):
        return
    obj = answer.add_object("url", url_values(final, {}), relationship=None)
    entity.add_reference(obj.uuid, "redirects-to")


def related_object(answer: Answer, item: dict[str, Any]) -> ProposedObject | None:
    """Add the object for one related VirusTotal item, with its verdict."""
    kind, ident, attributes = item.get("type"), item.get("id"), item["attributes"]
    comment = f"VirusTotal: {verdict(attributes)}"
    if kind == "file" and (attributes.get("sha256") or ident):
        # A file's id is its SHA-256, so it stands in when attributes omit it.
        values = {
            **file_values(attributes),
            "sha256": attributes.get("sha256") or ident,
        }
        return answer.add_object("file", values, relationship=None, comment=comment)
    if kind == "domain" and ident:
        return answer.add_object(
            "domain-ip", {"domain": ident}, relationship=None, comment=comment
        )
    if kind == "ip_address" and ident:
        return answer.add_object(
            "domain-ip", {"ip": ident}, relationship=None, comment=comment
        )
    if kind == "url" and attributes.get("url"):
        return answer.add_object(
            "url", {"url": attributes["url"]}, relationship=None, comment=comment
        )
    log.debug("ignored a related VirusTotal item of type %s", kind)
    return None


def add_resolutions(answer: Answer, entity: Entity, page: Page) -> None:
    """Add the resolved IPs (of a domain) or names (of an IP) to the entity."""
    key = "ip_address" if entity.target.collection == "domains" else "host_name"
    relation = "ip" if key == "ip_address" else "domain"
    found: list[str] = []
    for item in page.items:
        value = item["attributes"].get(key)
        if isinstance(value, str) and value and value not in found:
            found.append(value)
    answer.add_values(entity.obj, relation, found)


def link_page(answer: Answer, entity: Entity, link: Link, page: Page) -> None:
    """Add the related objects of one page and reference them to the entity."""
    if link.relationship is None:
        add_resolutions(answer, entity, page)
        return
    for item in page.items:
        key = (str(item.get("type")), str(item.get("id")))
        if key == (entity.data.get("type"), entity.ident):
            continue
        obj = entity.related.get(key)
        if obj is None:
            obj = related_object(answer, item)
            if obj is None:
                continue
            entity.related[key] = obj
        if link.inward:
            obj.add_reference(entity.obj.uuid, link.relationship)
        else:
            entity.obj.add_reference(obj.uuid, link.relationship)


def truncation_note(entity: Entity, link: Link, page: Page, limit: int) -> str | None:
    """Say when VirusTotal has more related objects than event_limit lets in."""
    if not page.more:
        return None
    where = entity.target.shown
    listed = f"lists {page.total}" if page.total is not None else "has more"
    return (
        f"VirusTotal {listed} {link.label} for {where}; {len(page.items)} "
        f"included (event_limit {limit})"
    )


# The module.


class VirusTotalConfig(ModuleConfig):
    apikey: SecretStr | None = secret("VirusTotal API key (public or premium)")
    event_limit: int = setting(
        5,
        f"how many related objects to include per relationship (0: none; "
        f"VirusTotal gives at most {MAX_LIMIT})",
        ge=0,
    )


class VirusTotal(ExpansionModule):
    name = "virustotal"
    title = "VirusTotal"
    description = (
        "Look up a file hash, domain, hostname, IP address or URL on VirusTotal "
        "and answer its report, the entity's details and related objects."
    )
    # The object picks the first of these it holds: the strongest hash wins.
    input_types = (
        "sha256",
        "sha1",
        "md5",
        "filename|sha256",
        "filename|sha1",
        "filename|md5",
        "domain",
        "hostname",
        "ip-src",
        "ip-dst",
        "domain|ip",
        "url",
    )
    input_objects = ("file",)
    output_types = (
        "md5",
        "sha1",
        "sha256",
        "filename",
        "size-in-bytes",
        "ssdeep",
        "tlsh",
        "vhash",
        "imphash",
        "domain",
        "hostname",
        "ip-dst",
        "ip-src",
        "url",
        "AS",
        "link",
        "datetime",
        "text",
        "whois-registrar",
    )
    references = (
        "https://www.virustotal.com/",
        "https://docs.virustotal.com/reference/overview",
    )
    features = (
        "Files, domains, IPs and URLs become file, domain-ip and url objects with "
        "a virustotal-report (detection ratio, community score, submission dates), "
        "DNS records, whois and ASN. Related objects (contacted domains and IPs, "
        "in-the-wild URLs, resolutions, subdomains, siblings, communicating, "
        "downloaded and referrer files) are fetched concurrently, up to event_limit "
        "each; relationships a public key may not read are skipped with a note, "
        "and so is one that fails or answers malformed: only the entity's own "
        "lookup, or a refused key, fails the query. Hover answers a one-line "
        "verdict without the relationship calls."
    )
    Config = VirusTotalConfig
    base_url = "https://www.virustotal.com/api/v3"
    third_party = True
    cache_ttl = 86400
    # Short, so a sample submitted after a miss shows up soon.
    not_found_ttl = 1800
    rate_limits = ("4/minute", "500/day")

    async def enrich(
        self, observable: Observable, config: VirusTotalConfig, ctx: Context
    ) -> Answer:
        if config.apikey is None or not config.apikey.get_secret_value():
            raise ConfigError(NO_KEY)
        client = VirusTotalClient(ctx.source, config.apikey)
        answer = ctx.answer()

        wanted = targets(observable)
        found = await _all(client.get(t.collection, t.ident) for t in wanted)

        entities: list[Entity] = []
        verdicts: list[tuple[str, str | None]] = []
        for target, data in zip(wanted, found, strict=True):
            if data is None:
                answer.note(f"{target.shown} is not known to VirusTotal")
                verdicts.append((target.shown, None))
                continue
            entities.append(add_entity(answer, target, data, observable))
            verdicts.append((target.shown, verdict(data["attributes"])))
        answer.summary = summary(verdicts)

        if not ctx.hover and entities and config.event_limit > 0:
            limit = min(config.event_limit, MAX_LIMIT)
            if limit < config.event_limit:
                answer.note(
                    f"event_limit {config.event_limit} capped at {MAX_LIMIT}, the "
                    "most related objects VirusTotal gives per relationship"
                )
            await self._add_related(client, answer, entities, limit, ctx.source)
        return answer

    async def _add_related(
        self,
        client: VirusTotalClient,
        answer: Answer,
        entities: list[Entity],
        limit: int,
        source: Source,
    ) -> None:
        """Fetch every relationship of the entities at once and link the results."""
        jobs = [
            (entity, link)
            for entity in entities
            for link in LINKS[entity.target.collection]
        ]
        pages = await source.until_answer_time(
            [
                client.related(entity.target.collection, entity.ident, link.name, limit)
                for entity, link in jobs
            ]
        )

        skipped: dict[tuple[str, Skip], list[str]] = {}
        for (entity, link), page in zip(jobs, pages, strict=True):
            if isinstance(page, BaseException):
                skip = skip_reason(page, source)
                if skip is None:
                    raise page
                log.debug("left out relationship %s: %s", link.name, skip.reason)
                skipped.setdefault((entity.target.shown, skip), []).append(link.label)
        for (shown, skip), labels in skipped.items():
            answer.note(skip_note(labels, shown, skip))
        for (entity, link), page in zip(jobs, pages, strict=True):
            if isinstance(page, Page):
                link_page(answer, entity, link, page)
                note = truncation_note(entity, link, page, limit)
                if note:
                    answer.note(note)


@dataclass(frozen=True)
class Skip:
    """Why relationships were left out, in the words of their note."""

    verb: str
    reason: str


PREMIUM = Skip("skipped", "premium")
TIMED_OUT = Skip(
    "left out", "VirusTotal did not answer in time for the query's deadline"
)
# The entity's own report came through: a relationship that fails this way
# costs only its related objects. A refused key (AuthFailed) fails them all.
FAILING = (BadResponse, Unavailable, Rejected, CircuitOpen)


def skip_reason(error: BaseException, source: Source) -> Skip | None:
    """Return why a failed relationship is left out, or None if it fails all."""
    if isinstance(error, Forbidden):
        return PREMIUM
    if isinstance(error, Throttled):
        return Skip(
            "skipped", "the VirusTotal quota is used up, enrich again later for them"
        )
    if isinstance(error, RateLimited):
        # Refused before any request left: our limiter, not VirusTotal, said no.
        declared = ", ".join(rule.text for rule in source.limits) or "its limit"
        return Skip(
            "skipped",
            f"this server's own rate limit for the VirusTotal key ({declared}) "
            f"was reached; for a premium key, raise it with "
            f"{VirusTotal.env_prefix()}RATE_LIMITS",
        )
    if isinstance(error, UpstreamTimeout | DeadlineExceeded):
        return TIMED_OUT
    if isinstance(error, FAILING):
        return Skip("left out", error.message)
    return None


def skip_note(labels: list[str], shown: str, skip: Skip) -> str:
    """Say which relationships of a target were left out, and why."""
    what = f"{join_words(labels)} of {shown}"
    if skip == PREMIUM:
        needs = "this relationship needs" if len(labels) == 1 else "these need"
        return f"{what} skipped: {needs} a premium VirusTotal key"
    return f"{what} {skip.verb}: {skip.reason}"


def join_words(words: list[str]) -> str:
    """Join words as a sentence lists them: "a", "a and b", "a, b and c"."""
    if len(words) < 3:
        return " and ".join(words)
    return ", ".join(words[:-1]) + f" and {words[-1]}"


async def _all(calls: Any) -> list[Any]:
    """Await the calls together; raise the first failure in call order."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def summary(verdicts: list[tuple[str, str | None]]) -> str:
    """Return the one-line hover verdict; None stands for "not known"."""
    if len(verdicts) == 1 and verdicts[0][1] is not None:
        # The popup sits on the attribute, so one verdict needs no name.
        return f"VirusTotal: {verdicts[0][1]}"
    lines = [
        f"{shown}: {text}" if text else f"{shown} is not known to VirusTotal"
        for shown, text in verdicts
    ]
    return "VirusTotal: " + " | ".join(lines)
