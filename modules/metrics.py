"""Prometheus metrics of one server, in a registry of its own.

Labels name modules, sources, outcomes and HTTP statuses only: never an
indicator value, an API key or its identity.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# What generate_latest writes: the classic text format every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)
WAIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """Every metric the server exports."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.queries = Counter(
            "misp_enrich_queries",
            "Queries answered, by module and outcome.",
            ["module", "outcome"],
            registry=registry,
        )
        self.query_seconds = Histogram(
            "misp_enrich_query_seconds",
            "Time to answer a query, by module.",
            ["module"],
            buckets=QUERY_BUCKETS,
            registry=registry,
        )
        self.upstream_calls = Counter(
            "misp_enrich_upstream_calls",
            "Calls made to sources (each attempt), by source and outcome.",
            ["source", "outcome"],
            registry=registry,
        )
        self.upstream_responses = Counter(
            "misp_enrich_upstream_responses",
            "Answers from sources, by source and status (HTTP status, DNS rcode, ...).",
            ["source", "status"],
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "misp_enrich_upstream_seconds",
            "Duration of one call to a source.",
            ["source"],
            buckets=QUERY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "misp_enrich_upstream_retries",
            "Calls retried after a transient failure, by source and reason.",
            ["source", "reason"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "misp_enrich_cache_hits",
            "Upstream answers served from the cache, by source.",
            ["source"],
            registry=registry,
        )
        self.cache_misses = Counter(
            "misp_enrich_cache_misses",
            "Cache lookups that found nothing, by source.",
            ["source"],
            registry=registry,
        )
        self.coalesced = Counter(
            "misp_enrich_coalesced",
            "Calls shared with an identical call in flight, by source and scope.",
            ["source", "scope"],
            registry=registry,
        )
        self.ratelimit_waits = Counter(
            "misp_enrich_ratelimit_waits",
            "Calls that waited for a rate-limit slot, by source.",
            ["source"],
            registry=registry,
        )
        self.ratelimit_wait_seconds = Histogram(
            "misp_enrich_ratelimit_wait_seconds",
            "Time waited for a rate-limit slot, by source.",
            ["source"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.ratelimit_refusals = Counter(
            "misp_enrich_ratelimit_refusals",
            "Calls refused because no slot was free within the deadline.",
            ["source"],
            registry=registry,
        )
        self.breakers_open = Gauge(
            "misp_enrich_breakers_open",
            "Open circuit breakers (one per source and API key), by source.",
            ["source"],
            registry=registry,
        )
        self.breaker_transitions = Counter(
            "misp_enrich_breaker_transitions",
            "Circuit breakers that opened or closed, by source.",
            ["source", "state"],
            registry=registry,
        )
        self.breaker_rejections = Counter(
            "misp_enrich_breaker_rejections",
            "Calls answered at once because a breaker was open, by source.",
            ["source"],
            registry=registry,
        )
        self.backend_up = Gauge(
            "misp_enrich_backend_up",
            "Whether a storage backend works (1) or not (0).",
            ["backend"],
            registry=registry,
        )

    def query(self, module: str, outcome: str, seconds: float) -> None:
        """Record one answered query."""
        self.queries.labels(module, outcome).inc()
        self.query_seconds.labels(module).observe(seconds)

    def backend(self, name: str) -> Callable[[bool], None]:
        """Return a health callback that keeps a backend's gauge current."""
        gauge = self.backend_up.labels(name)
        gauge.set(1)

        def changed(up: bool) -> None:
            gauge.set(1 if up else 0)

        return changed

    def render(self) -> bytes:
        return generate_latest(self.registry)
