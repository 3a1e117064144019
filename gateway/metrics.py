"""Prometheus metrics, one registry per app (so several apps can live in one process).

Labels never carry a key, a key id is fine to leave out: cardinality stays bounded by
routes, schemas and outcomes.
"""

from __future__ import annotations

from typing import Any

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
        # Read at scrape time from a plain int: a Gauge's inc()/dec() take a lock on every
        # request, this costs an addition.
        self.inflight = 0
        Gauge(
            "irgw_inflight_requests", "Requests being handled.", registry=self.registry,
        ).set_function(lambda: self.inflight)
        # Labelled children, looked up once: `labels()` costs a lock and a few dict lookups per
        # call. Bounded, like the labels themselves, by routes x statuses x schemas x outcomes.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def answered(self, route: str, status: int) -> None:
        self._child(self.requests, route, str(status)).inc()

    def output_checked(self, schema_ref: str, outcome: str) -> None:
        self._child(self.outputs, schema_ref, outcome).inc()

    def upstream_took(self, route: str, seconds: float) -> None:
        self._child(self.upstream_seconds, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
