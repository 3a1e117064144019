"""Prometheus metrics, one registry per app (so several apps can live in one process).

Labels never carry a key, a key id is fine to leave out: cardinality stays bounded by
routes, schemas and outcomes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class _Counts(Collector):
    """A labelled counter kept as a plain dict and turned into Prometheus's shape only when
    scraped: counting costs a dict update, where a prometheus_client child takes a lock and
    a few calls per increment, twice per request. All updates come from the event loop."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self.values: dict[tuple[str, ...], int] = {}

    def inc(self, *labels: str) -> None:
        self.values[labels] = self.values.get(labels, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = _Counts(
            "irgw_requests", "Requests answered, by route and status.", ("route", "status"),
        )
        self.outputs = _Counts(
            "irgw_output_checks",
            "Checked answers by schema and outcome (passed, repaired, retried, reasked, "
            "failed, truncated).",
            ("schema", "outcome"),
        )
        self.grammar_failures = _Counts(
            "irgw_grammar_failures",
            "Requests vLLM failed while compiling or running their schema's grammar, "
            "answered 400 invalid_schema, by schema.",
            ("schema",),
        )
        self.registry.register(self.requests)
        self.registry.register(self.outputs)
        self.registry.register(self.grammar_failures)
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
        # The canary (gateway/upstream/canary.py): 1 vLLM enforces the constraint, 0 it does not
        # (or refused the constrained request), -1 no verdict yet (not run, vLLM down).
        self.canary_status = -1
        Gauge(
            "irgw_canary_constraining", "Whether vLLM enforced the canary's schema at its last "
            "check: 1 yes, 0 no (readiness fails), -1 no verdict.", registry=self.registry,
        ).set_function(lambda: self.canary_status)
        self.canary_runs = _Counts(
            "irgw_canary_checks", "Canary checks by verdict (constraining, not_constraining, "
            "inconclusive).", ("verdict",),
        )
        self.registry.register(self.canary_runs)
        # Labelled children, looked up once: `labels()` costs a lock and a few dict lookups
        # per call. Bounded, like the labels themselves, by the routes.
        self._upstream_children: dict[str, Any] = {}

    def answered(self, route: str, status: int) -> None:
        self.requests.inc(route, str(status))

    def output_checked(self, schema_ref: str, outcome: str) -> None:
        self.outputs.inc(schema_ref, outcome)

    def grammar_failed(self, schema_ref: str) -> None:
        self.grammar_failures.inc(schema_ref)

    def canary_checked(self, verdict: str) -> None:
        self.canary_runs.inc(verdict)

    def upstream_took(self, route: str, seconds: float) -> None:
        child = self._upstream_children.get(route)
        if child is None:
            child = self._upstream_children[route] = self.upstream_seconds.labels(route)
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsListener:
    """`/metrics` on a port of its own (IRGW_METRICS_PORT), so that the public port need not
    show it: prometheus_client's small threaded server, which serves nothing else."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    async def aclose(self) -> None:
        # shutdown() waits for the serving thread's next poll (up to 0.5 s): not on the loop.
        await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()
        await asyncio.to_thread(self._thread.join, 5.0)
