"""AlienVault OTX: pulses, passive DNS, malware, URLs, geolocation, file analysis."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pydantic import SecretStr

from modules.context import Context
from modules.errors import (
    AuthFailed,
    BadResponse,
    ConfigError,
    DeadlineExceeded,
    NotFound,
    RateLimited,
    Unavailable,
    UpstreamTimeout,
)
from modules.module import ExpansionModule, ModuleConfig, secret
from modules.observable import Observable
from modules.results import Answer

log = logging.getLogger(__name__)

# What the answer shows at most per section; the rest is counted in a note.
MAX_PULSES = 10
MAX_PASSIVE_DNS = 10
MAX_MALWARE = 10
MAX_URLS = 10
SUMMARY_PULSES = 3

SECTIONS = {
    "IPv4": ("general", "reputation", "geo", "malware", "url_list", "passive_dns"),
    "IPv6": ("general", "reputation", "geo", "malware", "url_list", "passive_dns"),
    "domain": ("general", "geo", "malware", "url_list", "passive_dns"),
    "hostname": ("general", "geo", "malware", "url_list", "passive_dns"),
    "url": ("general", "url_list"),
    "file": ("general", "analysis"),
}
# The paged sections: asking for no more than we show keeps answers small.
PAGE_LIMITS = {"malware": MAX_MALWARE, "url_list": MAX_URLS}
PULSE_URL = "https://otx.alienvault.com/pulse/{}"
TECHNIQUE_ID = re.compile(r"T\d{4}(?:\.\d{3})?")
PLAIN_NAME = re.compile(r"[\w ,.()/&+'-]+")
MAX_TECHNIQUE_NAME = 100
HASH_RELATIONS = {32: "md5", 40: "sha1", 64: "sha256"}
# A geolocation object needs one of these, a file object one of those.
PLACE_KEYS = ("latitude", "longitude", "city", "region", "country", "countrycode")
FILE_KEYS = ("md5", "sha1", "sha256", "ssdeep", "size-in-bytes")


class OTXConfig(ModuleConfig):
    apikey: SecretStr | None = secret(
        "OTX DirectConnect API key; optional, OTX allows fewer queries without one"
    )


# The client part: OTX paths, headers and JSON.


def indicators(observable: Observable) -> list[tuple[str, str]]:
    """Return the OTX (indicator type, value) pairs an observable stands for."""
    if observable.hash:
        return [("file", observable.hash[1])]
    if observable.url:
        return [("url", observable.url)]
    found = []
    if observable.host:
        kind = "hostname" if "hostname" in observable.parts else "domain"
        found.append((kind, observable.host))
    if observable.ip:
        found.append(("IPv6" if ":" in observable.ip else "IPv4", observable.ip))
    return found


def auth_headers(config: OTXConfig) -> dict[str, str]:
    """Return the header carrying the API key, or none for keyless use."""
    if config.apikey is None:
        return {}
    return {"X-OTX-API-KEY": config.apikey.get_secret_value()}


def is_count(value: Any) -> bool:
    """Tell whether a value is an integer (JSON true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_objects(value: Any) -> bool:
    """Tell whether a value is a list of JSON objects."""
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def is_object(value: Any) -> bool:
    """Tell whether a value is a JSON object."""
    return isinstance(value, dict)


def is_object_or_null(value: Any) -> bool:
    """Tell whether a value is a JSON object or null."""
    return value is None or isinstance(value, dict)


def is_text_or_null(value: Any) -> bool:
    """Tell whether a value is a string or null."""
    return value is None or isinstance(value, str)


def is_number_or_null(value: Any) -> bool:
    """Tell whether a value is a number or null."""
    return value is None or (
        isinstance(value, int | float) and not isinstance(value, bool)
    )


@dataclass(frozen=True)
class Rule:
    """A key OTX documents in a section, and what its value is."""

    # Dotted for a nested key; a parent's rule comes before its children's,
    # and the children of a null parent are not looked at.
    path: str
    check: Callable[[Any], bool]
    wanted: str
    required: bool = True


GEO_TEXT = (
    "asn",
    "city",
    "region",
    "subdivision",
    "country_code",
    "country_name",
    "postal_code",
)
GEO_NUMBERS = ("latitude", "longitude", "accuracy_radius")
# What OTX documents for the keys the mapping reads. Any other shape is a
# malformed answer, never "no data": read as empty, it would tell the analyst
# that OTX knows nothing of the indicator.
SHAPES: dict[str, tuple[Rule, ...]] = {
    "general": (
        Rule("pulse_info", is_object, "an object"),
        Rule("pulse_info.count", is_count, "an integer"),
        Rule("pulse_info.pulses", is_objects, "a list of objects"),
    ),
    "passive_dns": (
        Rule("passive_dns", is_objects, "a list of objects"),
        # Counts only tell how many there were: absent, the list's length does.
        Rule("count", is_count, "an integer", False),
    ),
    "malware": (
        Rule("data", is_objects, "a list of objects"),
        Rule("count", is_count, "an integer", False),
    ),
    "url_list": (
        Rule("url_list", is_objects, "a list of objects"),
        Rule("full_size", is_count, "an integer", False),
    ),
    "geo": (
        *(Rule(key, is_text_or_null, "text or null", False) for key in GEO_TEXT),
        *(
            Rule(key, is_number_or_null, "a number or null", False)
            for key in GEO_NUMBERS
        ),
    ),
    "reputation": (Rule("reputation", is_object_or_null, "an object or null"),),
    "analysis": (
        Rule("analysis", is_object_or_null, "an object or null"),
        Rule("analysis.info", is_object_or_null, "an object or null", False),
        Rule("analysis.info.results", is_object_or_null, "an object or null", False),
    ),
}


def shape_problem(section: str, data: Any) -> str | None:
    """Say how a section differs from what OTX documents, or None if it does not."""
    if not isinstance(data, dict):
        return f"the {section} section is not an object"
    for rule in SHAPES.get(section, ()):
        *parents, key = rule.path.split(".")
        holder: Any = data
        for parent in parents:
            holder = holder.get(parent) if isinstance(holder, dict) else None
        if not isinstance(holder, dict):
            continue
        if key not in holder:
            if rule.required:
                return f"the {section} section has no {rule.path}"
            continue
        if not rule.check(holder[key]):
            return f"the {section} section's {rule.path} is not {rule.wanted}"
    return None


async def fetch_section(
    ctx: Context, headers: dict[str, str], kind: str, value: str, section: str
) -> dict[str, Any] | None:
    """Return one section of an indicator, or None when OTX has none (404)."""
    path = f"/indicators/{kind}/{quote(value, safe=':/')}/{section}"
    limit = PAGE_LIMITS.get(section)
    params = {"limit": str(limit)} if limit else None

    def validate(data: Any) -> None:
        problem = shape_problem(section, data)
        if problem is not None:
            raise BadResponse(ctx.source.label, problem)

    try:
        data = await ctx.source.get_json(
            path,
            params=params,
            headers=headers,
            endpoint=f"{kind}-{section}",
            validate=validate,
        )
    except NotFound:
        log.debug("no %s section for %s %s", section, kind, value)
        return None
    return data


Found = dict[tuple[str, str], dict[str, dict[str, Any] | None]]
# A section left out of the answer, and the malformed answer that left it
# out (None: it came too late for the deadline).
LeftOut = list[tuple[str, str, str, BadResponse | Unavailable | RateLimited | None]]


async def fetch_all(
    ctx: Context, headers: dict[str, str], targets: list[tuple[str, str]]
) -> tuple[Found, LeftOut]:
    """Fetch every section of every indicator at once; raise the first failure.

    The general sections (the pulses) may take until the query's deadline;
    the others until shortly before it. Those late or malformed are returned
    apart, to be left out: the pulses are the answer, the rest adds to it.
    """
    calls = [
        (kind, value, section)
        for kind, value in targets
        for section in (("general",) if ctx.hover else SECTIONS[kind])
    ]
    generals = [call for call in calls if call[2] == "general"]
    extras = [call for call in calls if call[2] != "general"]
    pulses = asyncio.ensure_future(
        asyncio.gather(
            *(fetch_section(ctx, headers, *call) for call in generals),
            return_exceptions=True,
        )
    )
    try:
        outcomes = dict(
            zip(
                extras,
                await ctx.source.until_answer_time(
                    [fetch_section(ctx, headers, *call) for call in extras]
                ),
                strict=True,
            )
        )
        outcomes.update(zip(generals, await pulses, strict=True))
    finally:
        pulses.cancel()

    found: Found = {target: {} for target in targets}
    left_out: LeftOut = []
    # Raising in call order makes the error the analyst sees the same
    # whichever call failed first.
    for kind, value, section in calls:
        outcome = outcomes[kind, value, section]
        error = outcome if isinstance(outcome, BaseException) else None
        if section != "general" and isinstance(
            error, UpstreamTimeout | DeadlineExceeded
        ):
            left_out.append((kind, value, section, None))
        elif section != "general" and isinstance(
            error, BadResponse | Unavailable | RateLimited
        ):
            # A failing section leaves the pulses, which are the answer.
            left_out.append((kind, value, section, error))
        elif error is not None:
            raise error
        else:
            found[kind, value][section] = outcome
    return found, left_out


def note_left_out(answer: Answer, left_out: LeftOut) -> None:
    """Say which sections of which indicator the answer leaves out, and why."""
    late: dict[str, list[str]] = {}
    for _, value, section, error in left_out:
        name = section.replace("_", " ")
        if error is None:
            late.setdefault(value, []).append(name)
        else:
            answer.note(f"otx: the {name} section of {value} left out: {error}")
    for value, sections in late.items():
        answer.note(
            f"otx: AlienVault OTX did not answer the {', '.join(sections)} "
            f"section{'s' if len(sections) > 1 else ''} of {value} in time for the "
            "query's deadline; left out"
        )


# The mapping part: OTX sections to MISP objects, tags and notes.


def as_int(value: Any) -> int:
    """Return an integer count, or 0 for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def number(value: Any) -> str | None:
    """Return a JSON number as text: MISP's schema takes only string values."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def utc(text: Any) -> datetime | None:
    """Parse an OTX timestamp; OTX writes UTC without saying so."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def ip_or_none(text: Any) -> str | None:
    """Return an IP address in compressed form, or None if it is none."""
    try:
        return ipaddress.ip_address(str(text)).compressed
    except ValueError:
        return None


def is_link(text: Any) -> bool:
    # MISP refuses a link attribute that is not a URL.
    return isinstance(text, str) and text.startswith(("http://", "https://"))


def names(items: Any) -> list[str]:
    """Return display names from a list of strings or {display_name} dicts."""
    found = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            item = item.get("display_name") or item.get("name")
        if isinstance(item, str) and item.strip():
            found.append(item.strip())
    return found


def note_truncation(answer: Answer, total: int, shown: int, what: str) -> None:
    """Note that a section had more entries than the answer shows."""
    if total > shown:
        answer.note(f"otx: {total} {what}, {shown} shown")


def attack_tag(entry: Any) -> str | None:
    """Return the MITRE ATT&CK galaxy tag of a pulse attack id, if a technique."""
    if not isinstance(entry, dict):
        return None
    technique = str(entry.get("id") or "").strip()
    if not TECHNIQUE_ID.fullmatch(technique):
        return None
    display = str(entry.get("display_name") or "")
    prefix = f"{technique} - "
    name = display.removeprefix(prefix) if display.startswith(prefix) else ""
    name = name or str(entry.get("name") or "")
    # The galaxy names a sub-technique alone ("Web Protocols - T1071.001")
    # where some ATT&CK exports write "Application Layer Protocol: Web Protocols".
    name = name.rpartition(": ")[2].strip()
    # A galaxy cluster's name is a short plain phrase; anything else is not
    # one, and a quote would end the tag early.
    if not name or len(name) > MAX_TECHNIQUE_NAME or not PLAIN_NAME.fullmatch(name):
        return None
    return f'misp-galaxy:mitre-attack-pattern="{name} - {technique}"'


def pulse_facts(pulse: dict[str, Any]) -> str:
    """Return one line with a pulse's author, TLP, tags and context."""
    author = pulse.get("author")
    username = author.get("username") if isinstance(author, dict) else None
    attack_ids = [
        entry.get("id") if isinstance(entry, dict) else entry
        for entry in pulse.get("attack_ids") or []
    ]
    facts = {
        "author": username or pulse.get("author_name"),
        "TLP": pulse.get("TLP") or pulse.get("tlp"),
        "created": str(pulse.get("created") or "")[:10],
        "tags": ", ".join(names(pulse.get("tags"))),
        "adversary": pulse.get("adversary"),
        "malware families": ", ".join(names(pulse.get("malware_families"))),
        "ATT&CK": ", ".join(str(i) for i in attack_ids if i),
    }
    return "; ".join(f"{key}: {text}" for key, text in facts.items() if text)


def add_pulse(answer: Answer, pulse: dict[str, Any]) -> None:
    """Add a pulse as a report object, and its ATT&CK techniques as tags."""
    links = [PULSE_URL.format(pulse["id"])] if pulse.get("id") else []
    links += [ref for ref in pulse.get("references") or [] if is_link(ref)]
    # A pulse is a community-written threat report: `report` holds its title,
    # links and free text. `publication` is meant for books and journals and
    # `intelligence-report` for military INTREP messages; no template has
    # author or TLP fields for such a report, so they go in the summary.
    answer.add_object(
        "report",
        {
            "title": pulse.get("name"),
            "type": "OTX pulse",
            "summary": [pulse.get("description"), pulse_facts(pulse)],
            "link": list(dict.fromkeys(links)),
        },
        relationship="mentions",
    )
    for entry in pulse.get("attack_ids") or []:
        tag = attack_tag(entry)
        if tag:
            answer.add_tag(tag)


def add_pulses(
    answer: Answer, value: str, general: dict[str, Any], seen: set[str]
) -> str:
    """Add the pulses that mention the indicator; return a summary of them."""
    # fetch_section checked the shape: pulse_info holds a count and pulses.
    info = general["pulse_info"]
    pulses = [pulse for pulse in info["pulses"] if pulse.get("id") or pulse.get("name")]
    total = max(info["count"], len(pulses))
    if not total:
        answer.note(f"otx: {value} is in no AlienVault OTX pulse")
        return "in no pulses"

    shown = pulses[:MAX_PULSES]
    for pulse in shown:
        # Both halves of a domain|ip attribute are often in the same pulse.
        key = str(pulse.get("id") or pulse.get("name"))
        if key not in seen:
            seen.add(key)
            add_pulse(answer, pulse)
    note_truncation(answer, total, len(shown), f"pulses mention {value}")

    top = "; ".join(str(p.get("name")) for p in shown[:SUMMARY_PULSES] if p.get("name"))
    counted = f"in {total} pulse{'s' if total > 1 else ''}"
    return f"{counted}: {top}" if top else counted


def dns_relationship(name: str, data: str, value: str) -> str:
    """Say how a passive DNS record relates to the enriched indicator."""
    if data.lower() == value:
        return "resolves-to"
    if name.lower() == value:
        return "describes"
    if name.lower().endswith("." + value):
        return "sub-domain-of"
    return "related-to"


def add_passive_dns(
    answer: Answer, kind: str, value: str, data: dict[str, Any]
) -> None:
    """Add the most recent passive DNS records as passive-dns objects."""
    records = [
        record
        for record in data.get("passive_dns") or []
        if isinstance(record, dict)
        and all(record.get(k) for k in ("hostname", "record_type", "address"))
    ]
    # Show the most recent resolutions first.
    records.sort(key=lambda record: str(record.get("last") or ""), reverse=True)
    shown = records[:MAX_PASSIVE_DNS]
    for record in shown:
        name, data_value = str(record["hostname"]), str(record["address"])
        answer.add_object(
            "passive-dns",
            {
                "rrname": name,
                "rrtype": record["record_type"],
                "rdata": data_value,
                "time_first": utc(record.get("first")),
                "time_last": utc(record.get("last")),
            },
            relationship=dns_relationship(name, data_value, value),
        )
    total = max(as_int(data.get("count")), len(records))
    note_truncation(answer, total, len(shown), f"passive DNS records of {value}")


def add_geo(answer: Answer, kind: str, value: str, data: dict[str, Any]) -> None:
    """Add where OTX places the address, and its AS when OTX names one."""
    place = {
        "countrycode": data.get("country_code"),
        "country": data.get("country_name"),
        "city": data.get("city"),
        "region": data.get("region") or data.get("subdivision"),
        "latitude": number(data.get("latitude")),
        "longitude": number(data.get("longitude")),
        "zipcode": data.get("postal_code"),
        "accuracy-radius": number(data.get("accuracy_radius")),
    }
    if any(place[key] not in (None, "") for key in PLACE_KEYS):
        answer.add_object("geolocation", place, relationship="located")

    asn, _, holder = str(data.get("asn") or "").partition(" ")
    if re.fullmatch(r"AS\d+", asn, re.IGNORECASE):
        answer.add_object(
            "asn",
            {"asn": asn[2:], "description": holder.strip()},
            relationship="hosts" if kind in ("domain", "hostname") else "includes",
        )


def add_malware(answer: Answer, kind: str, value: str, data: dict[str, Any]) -> None:
    """Add the malware samples OTX ties to the indicator as file objects."""
    samples = [
        sample
        for sample in data.get("data") or []
        if isinstance(sample, dict) and len(str(sample.get("hash"))) in HASH_RELATIONS
    ]
    shown = samples[:MAX_MALWARE]
    for sample in shown:
        digest = str(sample["hash"]).lower()
        detections = sample.get("detections")
        detections = detections if isinstance(detections, dict) else {}
        parts = [f"seen {sample['date']}"] if sample.get("date") else []
        parts += [f"{engine}: {name}" for engine, name in detections.items() if name]
        answer.add_object(
            "file",
            {HASH_RELATIONS[len(digest)]: digest},
            relationship="communicates-with",
            comment="; ".join(parts),
        )
    total = max(as_int(data.get("count")), len(samples))
    note_truncation(answer, total, len(shown), f"malware samples of {value}")


def url_relationship(kind: str, url: str, value: str) -> str:
    """Say how a URL OTX lists relates to the enriched indicator."""
    if kind != "url":
        return "hosted-by"
    return "describes" if url == value else "related-to"


def add_urls(answer: Answer, kind: str, value: str, data: dict[str, Any]) -> None:
    """Add the URLs OTX lists for the indicator as url objects."""
    entries = [
        entry
        for entry in data.get("url_list") or []
        if isinstance(entry, dict) and entry.get("url")
    ]
    shown = entries[:MAX_URLS]
    for entry in shown:
        result = entry.get("result")
        worker = result.get("urlworker") if isinstance(result, dict) else None
        worker = worker if isinstance(worker, dict) else {}
        code = worker.get("http_code") or entry.get("httpcode")
        seen = [f"seen {entry['date']}" if entry.get("date") else ""]
        seen.append(f"HTTP {code}" if code else "")
        answer.add_object(
            "url",
            {
                "url": entry["url"],
                "domain": entry.get("domain"),
                "host": entry.get("hostname"),
                "ip": ip_or_none(worker.get("ip")),
            },
            relationship=url_relationship(kind, str(entry["url"]), value),
            comment=", ".join(part for part in seen if part),
        )
    total = max(as_int(data.get("full_size")), len(entries))
    note_truncation(answer, total, len(shown), f"URLs of {value}")


def add_analysis(answer: Answer, kind: str, value: str, data: dict[str, Any]) -> None:
    """Add OTX's analysis of a file as a file object."""
    analysis = data.get("analysis") or {}
    results = (analysis.get("info") or {}).get("results") or {}
    facts = {
        "md5": results.get("md5"),
        "sha1": results.get("sha1"),
        "sha256": results.get("sha256"),
        "ssdeep": results.get("ssdeep"),
        "size-in-bytes": number(results.get("filesize")),
        "magic": results.get("file_type"),
    }
    if not any(facts[key] for key in FILE_KEYS):
        answer.note(f"otx: no file analysis of {value}")
        return
    answer.add_object("file", facts, relationship="describes")


def add_reputation(answer: Answer, kind: str, value: str, data: dict[str, Any]) -> None:
    """Add OTX's reputation of an address, when it has one."""
    reputation = data.get("reputation")
    if not isinstance(reputation, dict):
        return
    facts = {
        "threat score": reputation.get("threat_score"),
        "activities": ", ".join(names(reputation.get("activities"))),
        "blocklists": ", ".join(names(reputation.get("matched_bl"))),
        "first seen": reputation.get("first_seen"),
        "last seen": reputation.get("last_seen"),
    }
    text = "; ".join(
        f"{key}: {fact}" for key, fact in facts.items() if fact not in (None, "")
    )
    if text:
        # misp-objects has no generic reputation template; an annotation
        # keeps OTX's verdict as text attached to the attribute.
        answer.add_object(
            "annotation",
            {"text": f"AlienVault OTX reputation of {value}: {text}", "type": "Other"},
            relationship="annotates",
        )


SECTION_MAPPERS = {
    "reputation": add_reputation,
    "geo": add_geo,
    "malware": add_malware,
    "url_list": add_urls,
    "passive_dns": add_passive_dns,
    "analysis": add_analysis,
}


def add_indicator(
    answer: Answer,
    kind: str,
    value: str,
    sections: dict[str, dict[str, Any] | None],
    seen: set[str],
) -> str:
    """Add what OTX knows about one indicator; return its summary."""
    general = sections.get("general")
    if general is None:
        answer.note(f"otx: {value} is not known to AlienVault OTX")
        summary = "not known"
    else:
        summary = add_pulses(answer, value, general, seen)

    for section, data in sections.items():
        if data is not None and section in SECTION_MAPPERS:
            SECTION_MAPPERS[section](answer, kind, value, data)
    return summary


class OTX(ExpansionModule):
    name = "otx"
    title = "AlienVault OTX"
    description = (
        "Look an IP address, domain, hostname, URL or file hash up in AlienVault "
        "OTX: the pulses that mention it (report objects, ATT&CK galaxy tags), "
        "passive DNS, related malware and URLs, geolocation, ASN, reputation and "
        "file analysis."
    )
    input_types = (
        "ip-src",
        "ip-dst",
        "ip-src|port",
        "ip-dst|port",
        "domain",
        "domain|ip",
        "hostname",
        "url",
        "md5",
        "sha1",
        "sha256",
    )
    output_types = (
        "text",
        "link",
        "url",
        "domain",
        "hostname",
        "ip-dst",
        "AS",
        "md5",
        "sha1",
        "sha256",
        "ssdeep",
        "size-in-bytes",
        "datetime",
        "float",
    )
    references = (
        "https://otx.alienvault.com/api",
        "https://github.com/AlienVault-OTX/OTX-Python-SDK",
    )
    features = (
        "Fetches the OTX DirectConnect v1 indicator sections concurrently; hover "
        "asks only for the pulses. The apikey setting is optional: without it OTX "
        f"answers at a lower rate. Shows at most {MAX_PULSES} pulses and "
        f"{MAX_PASSIVE_DNS} passive DNS records, malware samples and URLs each, "
        "and says in a note how many there were. An unknown indicator or one in "
        "no pulse is a result, not an error; a general section of another shape "
        "than OTX documents is a malformed answer. Sections other than the "
        "pulses that answer malformed or too late for the deadline are left out "
        "with a note, as are those that fail with a server error. Rate limited "
        "to what OTX allows: 10,000 calls an hour with a key, 1,000 without."
    )
    Config = OTXConfig

    base_url = "https://otx.alienvault.com/api/v1"
    # OTX answers 403, not 401, for an invalid key.
    auth_statuses = (401, 403)
    cache_ttl = 6 * 3600
    not_found_ttl = 3600
    rate_limits = ("10000/hour",)
    keyless_rate_limits = ("1000/hour",)
    third_party = True

    async def enrich(
        self, observable: Observable, config: OTXConfig, ctx: Context
    ) -> Answer:
        targets = indicators(observable)
        headers = auth_headers(config)

        try:
            found, left_out = await fetch_all(ctx, headers, targets)
        except AuthFailed as err:
            if config.apikey is None:
                raise ConfigError(
                    "otx: AlienVault OTX refused a query without an API key; set "
                    "the otx apikey in MISP or MISP_ENRICH_OTX_APIKEY"
                ) from err
            raise

        answer = ctx.answer()
        seen: set[str] = set()
        summaries = [
            (value, add_indicator(answer, kind, value, found[kind, value], seen))
            for kind, value in targets
        ]
        note_left_out(answer, left_out)

        if len(summaries) == 1:
            answer.summary = f"{self.title}: {summaries[0][1]}"
        else:
            answer.summary = f"{self.title}: " + " | ".join(
                f"{value}: {summary}" for value, summary in summaries
            )
        return answer
