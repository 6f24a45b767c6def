"""Benchmark of misp-enrich against misp-modules on a slow loopback upstream."""
