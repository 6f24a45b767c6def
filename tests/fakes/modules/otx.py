"""What the conformance suite needs to run the otx module against a fake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fakes.http import FakeUpstream

PAYLOADS = Path(__file__).parents[2] / "payloads" / "otx"

IPV4 = "198.51.100.7"
IPV6 = "2001:db8::5"
DOMAIN = "example.com"
HOSTNAME = "www.example.com"
URL = "https://login.example.com/verify"
MD5 = "c639ebf470845094f09478e758b962ef"
SHA1 = "49310913f54bede12c999d705b621dc6a87f6294"
SHA256 = "ac7c29f97d44a7faf225c90c71e5fe71d1d436b5b6dc504f74f2444dab34c1bb"

SAMPLES = {
    "ip-src": IPV4,
    "ip-dst": IPV6,
    "ip-src|port": f"{IPV4}|8080",
    "ip-dst|port": f"{IPV6}|443",
    "domain": DOMAIN,
    "domain|ip": f"{DOMAIN}|{IPV4}",
    "hostname": HOSTNAME,
    "url": URL,
    "md5": MD5,
    "sha1": SHA1,
    "sha256": SHA256,
}
CONFIG = {"apikey": "TEST-KEY"}

_FILE = {"general": "file-general", "analysis": "file-analysis"}
# The fixture each section answers with; a section left out answers 404.
ROUTES: dict[tuple[str, str], dict[str, str]] = {
    ("IPv4", IPV4): {
        "general": "ipv4-general",
        "reputation": "ipv4-reputation",
        "geo": "ipv4-geo",
        "malware": "ipv4-malware",
        "url_list": "ipv4-url_list",
        "passive_dns": "ipv4-passive_dns",
    },
    ("IPv6", IPV6): {
        "general": "ipv6-general",
        "reputation": "empty-reputation",
        "geo": "ipv6-geo",
        "malware": "empty-malware",
        "url_list": "empty-url_list",
        "passive_dns": "ipv6-passive_dns",
    },
    ("domain", DOMAIN): {
        "general": "domain-general",
        "geo": "domain-geo",
        "malware": "empty-malware",
        "url_list": "domain-url_list",
        "passive_dns": "domain-passive_dns",
    },
    ("hostname", HOSTNAME): {
        "general": "hostname-general",
        "passive_dns": "hostname-passive_dns",
    },
    ("url", URL): {"general": "url-general", "url_list": "url-url_list"},
    ("file", MD5): _FILE,
    ("file", SHA1): _FILE,
    ("file", SHA256): _FILE,
}


def payload(name: str) -> Any:
    """Return a fresh copy of a fixture under tests/payloads/otx/."""
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def route(kind: str, value: str, section: str) -> str:
    """Return the fake upstream's route key for one indicator section."""
    return f"GET /indicators/{kind}/{value}/{section}"


def install(upstream: FakeUpstream) -> None:
    """Answer every section of every sample with its fixture."""
    for (kind, value), sections in ROUTES.items():
        for section, name in sections.items():
            upstream.add(route(kind, value, section), payload(name))
