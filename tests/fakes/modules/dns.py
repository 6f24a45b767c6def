"""What the conformance suite needs to run the dns module against a fake."""

SAMPLES = {
    "hostname": "www.example.com",
    "domain": "example.com",
    "domain|ip": "www.example.com|192.0.2.10",
    "ip-src": "192.0.2.10",
    "ip-dst": "2001:db8::5",
}
CONFIG: dict[str, str] = {}
