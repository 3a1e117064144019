"""Prometheus metrics, one registry per app (so several apps can live in one process).

Labels never carry a key, a key id is fine to leave out: cardinality stays bounded by
routes, schemas and outcomes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "irgw_requests_total", "Requests answered, by route and status.",
            ["route", "status"], registry=self.registry,
        )
        self.outputs = Counter(
            "irgw_output_checks_total",
            "Checked answers by schema and outcome (passed, repaired, retried, failed, "
            "truncated).",
            ["schema", "outcome"], registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "irgw_upstream_seconds", "Time to a complete upstream answer (non-streaming).",
            ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.inflight = Gauge(
            "irgw_inflight_requests", "Requests being handled.", registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
