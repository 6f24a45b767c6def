"""Normalise an attribute once, for every module: split, refang, validate."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import idna

from modules.errors import InvalidValue, shown

HASH_LENGTHS = {
    "md5": 32,
    "sha1": 40,
    "sha224": 56,
    "sha256": 64,
    "sha384": 96,
    "sha512": 128,
    "sha512/224": 56,
    "sha512/256": 64,
    "sha3-224": 56,
    "sha3-256": 64,
    "sha3-384": 96,
    "sha3-512": 128,
    "imphash": 32,
    "authentihash": 64,
    "impfuzzy": 0,
    "vhash": 0,
    "telfhash": 0,
    "tlsh": 0,
    "ssdeep": 0,
}
IP_TYPES = frozenset({"ip-src", "ip-dst"})
HOST_TYPES = frozenset({"domain", "hostname"})
URL_TYPES = frozenset({"url", "uri", "link"})
EMAIL_TYPES = frozenset({"email", "email-src", "email-dst", "target-email"})
NETWORK_TYPES = IP_TYPES | HOST_TYPES | URL_TYPES | EMAIL_TYPES

# Longest first, so "[://]" wins over "[:]".
_DEFANGS = [
    (re.compile(r"^hxxp", re.IGNORECASE), "http"),
    (re.compile(r"^fxp", re.IGNORECASE), "ftp"),
    (re.compile(r"\[://\]"), "://"),
    (re.compile(r"\[(?:\.|dot)\]|\((?:\.|dot)\)|\{(?:\.|dot)\}", re.IGNORECASE), "."),
    (re.compile(r"\[(?:@|at)\]|\((?:@|at)\)", re.IGNORECASE), "@"),
    (re.compile(r"\[:\]"), ":"),
]
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Observable:
    """An attribute's value after normalisation, with its composite parts."""

    type: str
    value: str
    parts: dict[str, str] = field(default_factory=dict)

    @property
    def ip(self) -> str | None:
        return self.parts.get("ip")

    @property
    def host(self) -> str | None:
        """Return the domain, hostname or URL host part, if any."""
        parts = self.parts
        return parts.get("domain") or parts.get("hostname") or parts.get("host")

    @property
    def url(self) -> str | None:
        return self.parts.get("url")

    @property
    def hash(self) -> tuple[str, str] | None:
        """Return the (hash type, value) part, if any."""
        for kind in HASH_LENGTHS:
            if kind in self.parts:
                return kind, self.parts[kind]
        return None


def refang(value: str) -> str:
    """Undo the usual defanging of network indicators."""
    for pattern, replacement in _DEFANGS:
        value = pattern.sub(replacement, value)
    return value


def normalise_ip(value: str) -> str:
    """Validate an IP address and return its compressed form."""
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    # A zone index names an interface of the machine that logged the address;
    # it is no part of the indicator.
    text = text.partition("%")[0] if ":" in text else text
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidValue(f"{shown(value)} is not a valid IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        # Written as people and sources write it, not as ::ffff:c000:201.
        return f"::ffff:{address.ipv4_mapped}"
    return address.compressed


def normalise_host(value: str) -> str:
    """Validate a domain or hostname and return it lower-case, as A-labels."""
    text = value.strip().rstrip(".")
    if not text:
        raise InvalidValue(f"{shown(value)} is not a valid domain name: it is empty")
    if text.isascii():
        # Already A-labels; underscores and other labels IDNA 2008 rejects
        # still occur in DNS, so only the label syntax below is checked.
        ascii_name = text
    else:
        try:
            ascii_name = idna.encode(text, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise InvalidValue(f"{shown(value)} is not a valid domain name") from None
    ascii_name = ascii_name.lower()
    if is_ip(ascii_name):
        raise InvalidValue(
            f"{shown(value)} is an IP address, not a domain name; enrich it as "
            "ip-dst or ip-src"
        )
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidValue(f"{shown(value)} is not a valid domain name")
    return ascii_name


def is_ip(text: str) -> bool:
    """Tell whether a text is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def normalise_port(value: str) -> str:
    """Validate a TCP/UDP port number."""
    text = value.strip()
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise InvalidValue(f"{shown(value)} is not a valid port (0-65535)")
    return str(int(text))


def normalise_url(value: str) -> tuple[str, str]:
    """Return the URL with its host normalised, and that host."""
    text = value.strip()
    has_scheme = "://" in text
    try:
        parts = urlsplit(text if has_scheme else f"http://{text}")
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise InvalidValue(f"{shown(value)} is not a valid URL") from None
    if not host:
        raise InvalidValue(f"{shown(value)} is not a valid URL: it has no host")
    try:
        host = normalise_ip(host)
        netloc_host = f"[{host}]" if ":" in host else host
    except InvalidValue:
        host = normalise_host(host)
        netloc_host = host
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@" if userinfo else ""
    netloc += netloc_host + (f":{port}" if port is not None else "")
    url = urlunsplit((parts.scheme.lower(), netloc, parts.path, parts.query, ""))
    if parts.fragment:
        url = f"{url}#{parts.fragment}"
    if not has_scheme:
        url = url.removeprefix("http://")
    return url, host


def normalise_hash(kind: str, value: str) -> str:
    """Validate a hash of the given type and return it lower-case."""
    text = value.strip()
    length = HASH_LENGTHS[kind]
    if kind in ("ssdeep", "tlsh", "vhash", "impfuzzy", "telfhash"):
        if not text:
            raise InvalidValue(f"{shown(value)} is not a valid {kind}: it is empty")
        return text
    text = text.lower()
    if len(text) != length or not re.fullmatch(r"[0-9a-f]+", text):
        raise InvalidValue(
            f"{shown(value)} is not a valid {kind}: expected {length} "
            "hexadecimal digits"
        )
    return text


def _normalise_part(kind: str, value: str) -> tuple[str, dict[str, str]]:
    """Normalise one single-typed value; return it and the parts it names."""
    if kind in NETWORK_TYPES:
        value = refang(value)
    if kind in IP_TYPES:
        ip = normalise_ip(value)
        return ip, {"ip": ip}
    if kind in HOST_TYPES:
        host = normalise_host(value)
        return host, {kind: host}
    if kind in URL_TYPES:
        url, host = normalise_url(value)
        return url, {"url": url, "host": host}
    if kind in EMAIL_TYPES:
        local, at, domain = value.strip().rpartition("@")
        if not at or not local:
            raise InvalidValue(f"{shown(value)} is not a valid email address")
        email = f"{local}@{normalise_host(domain)}"
        return email, {"email": email}
    if kind == "port":
        port = normalise_port(value)
        return port, {"port": port}
    if kind in HASH_LENGTHS:
        digest = normalise_hash(kind, value)
        return digest, {kind: digest}
    text = value.strip()
    if not text:
        raise InvalidValue(f"the {kind} value is empty")
    return text, {kind: text}


_COMPOSITE_PART_TYPES = {
    "domain|ip": ("domain", "ip-dst"),
    "ip-src|port": ("ip-src", "port"),
    "ip-dst|port": ("ip-dst", "port"),
    "hostname|port": ("hostname", "port"),
}


def normalise(attribute_type: str, value: str) -> Observable:
    """Return the normalised observable for a MISP attribute type and value."""
    if not isinstance(value, str):
        raise InvalidValue(f"the {attribute_type} value must be a string")
    if "|" not in attribute_type:
        normalised, parts = _normalise_part(attribute_type, value)
        return Observable(attribute_type, normalised, parts)

    left_type, right_type = _COMPOSITE_PART_TYPES.get(
        attribute_type, tuple(attribute_type.split("|", 1))
    )
    # A hash never holds "|", so the file name keeps any "|" of its own.
    if left_type == "filename":
        left, sep, right = value.rpartition("|")
    else:
        left, sep, right = value.partition("|")
    if not sep:
        raise InvalidValue(
            f"{shown(value)} is not a valid {attribute_type}: expected two values "
            "joined by '|'"
        )
    left_value, left_parts = _normalise_part(left_type, left)
    right_value, right_parts = _normalise_part(right_type, right)
    return Observable(
        attribute_type, f"{left_value}|{right_value}", {**left_parts, **right_parts}
    )
