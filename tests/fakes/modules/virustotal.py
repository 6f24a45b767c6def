"""What the conformance suite needs to run the virustotal module against a fake."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.fakes.http import FakeUpstream

PAYLOADS = Path(__file__).parents[2] / "payloads" / "virustotal"

SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
SHA1 = "5fe6212e63b7baaa9d4b9830f6b98fa1555dbe13"
MD5 = "44d88612fea8a8f36de82e1278abb02f"
DOMAIN = "example.com"
HOSTNAME = "www.example.com"
IP = "198.51.100.7"
URL = "https://login.example.com/verify"
URL_ID = base64.urlsafe_b64encode(URL.encode()).decode().rstrip("=")
# VirusTotal answers a URL lookup with the URL's SHA-256 as its id.
URL_SHA256 = "ac4e1a4df1fba3a0a95fe8c07bc91747a1fc418d290f13bec4d8d286a8bcc841"

SAMPLES = {
    "sha256": SHA256,
    "sha1": SHA1,
    "md5": MD5,
    "filename|sha256": f"invoice.pdf.exe|{SHA256}",
    "filename|sha1": f"invoice.pdf.exe|{SHA1}",
    "filename|md5": f"invoice.pdf.exe|{MD5}",
    "domain": DOMAIN,
    "hostname": HOSTNAME,
    "ip-src": IP,
    "ip-dst": IP,
    "domain|ip": f"{DOMAIN}|{IP}",
    "url": URL,
}
# Object enrichment: (object relation, value) pairs of each input object.
OBJECT_SAMPLES = {"file": [("filename", "invoice.pdf.exe"), ("md5", MD5)]}
CONFIG = {"apikey": "TEST-KEY"}

# Path under the API root -> payload under tests/payloads/virustotal/.
ROUTES = {
    f"/files/{SHA256}": "file",
    f"/files/{SHA1}": "file",
    f"/files/{MD5}": "file",
    f"/files/{SHA256}/contacted_domains": "file_contacted_domains",
    f"/files/{SHA256}/contacted_ips": "file_contacted_ips",
    f"/files/{SHA256}/contacted_urls": "file_contacted_urls",
    f"/files/{SHA256}/itw_urls": "file_itw_urls",
    f"/domains/{DOMAIN}": "domain",
    f"/domains/{DOMAIN}/resolutions": "domain_resolutions",
    f"/domains/{DOMAIN}/subdomains": "domain_subdomains",
    f"/domains/{DOMAIN}/siblings": "domain_siblings",
    f"/domains/{DOMAIN}/communicating_files": "related_file",
    f"/domains/{DOMAIN}/downloaded_files": "empty",
    f"/domains/{DOMAIN}/referrer_files": "related_file",
    f"/domains/{HOSTNAME}": "hostname",
    f"/domains/{HOSTNAME}/resolutions": "hostname_resolutions",
    f"/domains/{HOSTNAME}/subdomains": "empty",
    f"/domains/{HOSTNAME}/siblings": "empty",
    f"/domains/{HOSTNAME}/communicating_files": "empty",
    f"/domains/{HOSTNAME}/downloaded_files": "empty",
    f"/domains/{HOSTNAME}/referrer_files": "empty",
    f"/ip_addresses/{IP}": "ip",
    f"/ip_addresses/{IP}/resolutions": "ip_resolutions",
    f"/urls/{URL_ID}": "url",
    f"/urls/{URL_SHA256}/downloaded_files": "related_file",
    f"/urls/{URL_SHA256}/communicating_files": "empty",
}


def install(upstream: FakeUpstream) -> None:
    """Serve every payload the samples need, as VirusTotal would."""
    for path, payload in ROUTES.items():
        body = json.loads((PAYLOADS / f"{payload}.json").read_text())
        upstream.add(f"GET {path}", body)
