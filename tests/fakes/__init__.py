"""Fake upstreams for tests: HTTP and DNS servers on 127.0.0.1 only."""
