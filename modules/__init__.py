"""misp-enrich: an asynchronous enrichment module server for MISP."""

__version__ = "0.1.0"
