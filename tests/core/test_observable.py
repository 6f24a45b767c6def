"""Normalisation: one table of what MISP sends and what modules receive."""

from __future__ import annotations

import pytest

from modules.errors import InvalidValue
from modules.observable import normalise, refang

VALID = [
    # type, value as sent, normalised value, parts
    ("ip-dst", "::FFFF:192.0.2.1", "::ffff:192.0.2.1", {"ip": "::ffff:192.0.2.1"}),
    ("domain", "Example.COM", "example.com", {"domain": "example.com"}),
    ("domain", "example.com.", "example.com", {"domain": "example.com"}),
    (
        "domain",
        "bücher.example",
        "xn--bcher-kva.example",
        {"domain": "xn--bcher-kva.example"},
    ),
    (
        "domain",
        "xn--bcher-kva.example",
        "xn--bcher-kva.example",
        {"domain": "xn--bcher-kva.example"},
    ),
    (
        "domain",
        "login.example[.]com",
        "login.example.com",
        {"domain": "login.example.com"},
    ),
    (
        "domain",
        "_dmarc.example.com",
        "_dmarc.example.com",
        {"domain": "_dmarc.example.com"},
    ),
    (
        "hostname",
        "WWW.Example.com.",
        "www.example.com",
        {"hostname": "www.example.com"},
    ),
    (
        "hostname",
        "www(.)example(.)net",
        "www.example.net",
        {"hostname": "www.example.net"},
    ),
    ("ip-src", "198.51.100.7", "198.51.100.7", {"ip": "198.51.100.7"}),
    ("ip-dst", "2001:0DB8:0000::0001", "2001:db8::1", {"ip": "2001:db8::1"}),
    ("ip-dst", "192.0.2[.]10", "192.0.2.10", {"ip": "192.0.2.10"}),
    ("ip-src", "[2001:db8::5]", "2001:db8::5", {"ip": "2001:db8::5"}),
    ("ip-src", "fe80::1%eth0", "fe80::1", {"ip": "fe80::1"}),
    (
        "domain|ip",
        "example.com|fe80::1%25",
        "example.com|fe80::1",
        {"domain": "example.com", "ip": "fe80::1"},
    ),
    (
        "url",
        "hxxps://login.example[.]com/verify",
        "https://login.example.com/verify",
        {"url": "https://login.example.com/verify", "host": "login.example.com"},
    ),
    (
        "url",
        "HXXP://WWW.Example.com:8080/A?b=C",
        "http://www.example.com:8080/A?b=C",
        {"url": "http://www.example.com:8080/A?b=C", "host": "www.example.com"},
    ),
    (
        "url",
        "https://bücher.example/pfad",
        "https://xn--bcher-kva.example/pfad",
        {"url": "https://xn--bcher-kva.example/pfad", "host": "xn--bcher-kva.example"},
    ),
    (
        "url",
        "http://[2001:db8::1]/x",
        "http://[2001:db8::1]/x",
        {"url": "http://[2001:db8::1]/x", "host": "2001:db8::1"},
    ),
    (
        "url",
        "example.com/path?q=1",
        "example.com/path?q=1",
        {"url": "example.com/path?q=1", "host": "example.com"},
    ),
    (
        "email-src",
        "Alice[@]Example[.]com",
        "Alice@example.com",
        {"email": "Alice@example.com"},
    ),
    (
        "md5",
        "44D88612FEA8A8F36DE82E1278ABB02F",
        "44d88612fea8a8f36de82e1278abb02f",
        {"md5": "44d88612fea8a8f36de82e1278abb02f"},
    ),
    (
        "sha1",
        " 77B0C41B7D340B8A3D903F21347BBF06AA766B5B ",
        "77b0c41b7d340b8a3d903f21347bbf06aa766b5b",
        {"sha1": "77b0c41b7d340b8a3d903f21347bbf06aa766b5b"},
    ),
    ("ssdeep", "3072:AbCd:QrSt", "3072:AbCd:QrSt", {"ssdeep": "3072:AbCd:QrSt"}),
    (
        "domain|ip",
        "www.example.com|192.0.2.10",
        "www.example.com|192.0.2.10",
        {"domain": "www.example.com", "ip": "192.0.2.10"},
    ),
    (
        "domain|ip",
        "WWW.bücher.example.|2001:DB8::A",
        "www.xn--bcher-kva.example|2001:db8::a",
        {"domain": "www.xn--bcher-kva.example", "ip": "2001:db8::a"},
    ),
    (
        "ip-dst|port",
        "2001:db8::5|443",
        "2001:db8::5|443",
        {"ip": "2001:db8::5", "port": "443"},
    ),
    (
        "ip-src|port",
        "198.51.100[.]7|0080",
        "198.51.100.7|80",
        {"ip": "198.51.100.7", "port": "80"},
    ),
    (
        "hostname|port",
        "Mail.Example.com|25",
        "mail.example.com|25",
        {"hostname": "mail.example.com", "port": "25"},
    ),
    (
        "filename|md5",
        "invoice.pdf.exe|44D88612FEA8A8F36DE82E1278ABB02F",
        "invoice.pdf.exe|44d88612fea8a8f36de82e1278abb02f",
        {"filename": "invoice.pdf.exe", "md5": "44d88612fea8a8f36de82e1278abb02f"},
    ),
    (
        "filename|sha256",
        "a|b.exe|" + "A" * 64,
        "a|b.exe|" + "a" * 64,
        {"filename": "a|b.exe", "sha256": "a" * 64},
    ),
    # Not a network type: brackets are part of the value and stay.
    ("filename", "report[.]pdf", "report[.]pdf", {"filename": "report[.]pdf"}),
    ("text", "  some note ", "some note", {"text": "some note"}),
]

INVALID = [
    ("domain", "192.0.2.1", "'192.0.2.1' is an IP address, not a domain name"),
    ("hostname", "2001:db8::1", "'2001:db8::1' is an IP address, not a domain"),
    ("ip-src", "999.1.1.1", "'999.1.1.1' is not a valid IP address"),
    ("ip-dst", "example.com", "'example.com' is not a valid IP address"),
    ("domain", "bad domain", "'bad domain' is not a valid domain name"),
    ("domain", "", "'' is not a valid domain name: it is empty"),
    ("hostname", "a" * 64 + ".example", "is not a valid domain name"),
    ("hostname", "-bad.example.com", "is not a valid domain name"),
    ("md5", "xyz", "'xyz' is not a valid md5: expected 32 hexadecimal digits"),
    ("sha256", "0" * 63, "is not a valid sha256: expected 64 hexadecimal digits"),
    ("domain|ip", "www.example.com", "expected two values joined by '|'"),
    ("ip-dst|port", "192.0.2.1|99999", "'99999' is not a valid port (0-65535)"),
    ("ip-dst|port", "192.0.2.1|https", "'https' is not a valid port (0-65535)"),
    ("url", "https:///nohost", "is not a valid URL: it has no host"),
    ("url", "http://[::1/x", "is not a valid URL"),
    ("email", "no-at-sign.example.com", "is not a valid email address"),
    ("text", "   ", "the text value is empty"),
    ("ip-src", "192.0.2.1%eth0", "'192.0.2.1%eth0' is not a valid IP address"),
    ("domain", "a" * 10_000, "'" + "a" * 80 + "... (10000 characters)' is not"),
]


@pytest.mark.parametrize(("kind", "value", "normalised", "parts"), VALID)
def test_normalise(
    kind: str, value: str, normalised: str, parts: dict[str, str]
) -> None:
    observable = normalise(kind, value)

    assert observable.type == kind
    assert observable.value == normalised
    assert observable.parts == parts


@pytest.mark.parametrize(("kind", "value", "message"), INVALID)
def test_invalid_value_is_a_clear_error(kind: str, value: str, message: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        normalise(kind, value)

    assert message in str(caught.value)


def test_accessors() -> None:
    observable = normalise("domain|ip", "www.example.com|192.0.2.10")
    assert observable.host == "www.example.com"
    assert observable.ip == "192.0.2.10"
    assert observable.hash is None
    assert normalise("url", "https://example.com/a").host == "example.com"
    assert normalise("filename|sha1", "a.exe|" + "b" * 40).hash == ("sha1", "b" * 40)


@pytest.mark.parametrize(
    ("defanged", "plain"),
    [
        ("hxxp://example[.]com", "http://example.com"),
        ("hXXps://example[dot]com", "https://example.com"),
        ("fxp://files{.}example.org", "ftp://files.example.org"),
        ("user[@]example.com", "user@example.com"),
        ("http[://]example.com[:]8080", "http://example.com:8080"),
    ],
)
def test_refang(defanged: str, plain: str) -> None:
    assert refang(defanged) == plain
