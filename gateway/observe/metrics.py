"""The request metrics an operator's questions need, on the app's registry
(gateway.observe.prometheus).

Like `gateway.observe.prometheus._Counts`, each family is kept as plain dicts and lists updated from
the event loop and turned into Prometheus's shape only when scraped: recording a request
costs a few dict updates and a bisect, not a lock per sample. Names follow Prometheus's
conventions: a unit suffix (`_seconds`, `_tokens`), `_total` on counters (added by the
exposition), labels with few values (routes, schemas as the registry names them, outcomes,
reasons, causes; key ids only when an operator opts in, and then at most a set number).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

# Seconds: from a cache hit on a warm GPU (a few ms) to a long generation on a slow one.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The gateway's own share: what the overhead budget (1 ms median) is about, and queueing.
GATEWAY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
OTHER_KEYS = "(other)"  # the key id label of keys past IRGW_METRICS_MAX_KEYS

LIMITER_REASONS = ("requests", "tokens", "concurrency", "queue_full", "queue_timeout",
                   "limiter_unavailable", "request_too_large", "max_tokens_above_key_limit")
UPSTREAM_CAUSES = ("unavailable", "timeout", "rejected", "auth", "server_error",
                   "stream_error")


class Counter(Collector):
    def __init__(self, name: str, documentation: str, labels: tuple[str, ...],
                 initial: tuple[tuple[str, ...], ...] = ()) -> None:
        self._name, self._documentation, self._labels = name, documentation, labels
        # Known label sets start at 0, so a rate over them is 0 rather than no data.
        self.values: dict[tuple[str, ...], float] = dict.fromkeys(initial, 0)

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        yield family


class Histogram(Collector):
    def __init__(self, name: str, documentation: str, labels: tuple[str, ...],
                 buckets: tuple[float, ...]) -> None:
        self._name, self._documentation, self._labels = name, documentation, labels
        self._buckets = buckets
        self._bounds = [*(repr(float(b)) for b in buckets), "+Inf"]
        # Per label set: counts per bucket (the last is +Inf, not cumulative) and the sum.
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = ([0] * (len(self._buckets) + 1), [0.0])
        series[0][bisect_left(self._buckets, value)] += 1
        series[1][0] += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, (counts, total) in list(self._series.items()):
            cumulative, running = [], 0
            for bound, count in zip(self._bounds, counts, strict=True):
                running += count
                cumulative.append((bound, running))
            family.add_metric(labels, cumulative, total[0])
        yield family


class Gauges(Collector):
    """Gauges read when scraped, from functions that look at live state."""

    def __init__(self, gauges: list[tuple[str, str, Callable[[], float]]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, documentation, read in self._gauges:
            yield GaugeMetricFamily(name, documentation, value=read())


class RequestMetrics:
    """Recorded once per generation request, by `Observer.end`."""

    def __init__(self, registry: CollectorRegistry, *, key_labels: bool, max_keys: int,
                 limiter: Any) -> None:
        route_schema = ("route", "schema")
        self.duration = Histogram(
            "irgw_request_duration_seconds",
            "Generation requests, arrival to last byte sent (streams: to the end of the "
            "stream), by route and schema.", route_schema, LATENCY_BUCKETS)
        self.upstream = Histogram(
            "irgw_request_upstream_seconds",
            "Of a request's duration, the time spent waiting on vLLM (every attempt; for a "
            "stream, its head and each event).", ("route",), LATENCY_BUCKETS)
        self.gateway = Histogram(
            "irgw_request_gateway_seconds",
            "Of a request's duration, the gateway's own share: total minus the time waiting "
            "on vLLM (queueing for a GPU slot included).", ("route",), GATEWAY_BUCKETS)
        self.ttft = Histogram(
            "irgw_stream_time_to_first_token_seconds",
            "Streams: arrival to the first content chunk handed to the client.",
            ("route", "schema"), LATENCY_BUCKETS)
        self.prompt_tokens = Counter(
            "irgw_prompt_tokens", "Prompt tokens vLLM reported, by route and schema.",
            route_schema)
        self.completion_tokens = Counter(
            "irgw_completion_tokens", "Generated tokens vLLM reported, by route and schema.",
            route_schema)
        self.outcomes = Counter(
            "irgw_request_outcomes",
            "Generation requests by route, schema and outcome (passed, repaired, retried, "
            "failed, truncated, passthrough, refused, error, client_gone).",
            ("route", "schema", "outcome"))
        self.refusals = Counter(
            "irgw_limiter_refusals", "Requests refused by a limit, by reason.", ("reason",),
            initial=tuple((reason,) for reason in LIMITER_REASONS))
        self.upstream_errors = Counter(
            "irgw_upstream_errors", "Requests that vLLM failed, by cause.", ("cause",),
            initial=tuple((cause,) for cause in UPSTREAM_CAUSES))
        collectors: list[Collector] = [
            self.duration, self.upstream, self.gateway, self.ttft, self.prompt_tokens,
            self.completion_tokens, self.outcomes, self.refusals, self.upstream_errors]
        gate = getattr(limiter, "gate", None)
        if gate is not None:
            collectors.append(Gauges([
                ("irgw_upstream_slots_in_use", "Requests holding one of the IRGW_MAX_INFLIGHT "
                 "slots to vLLM.", lambda: gate.active),
                ("irgw_upstream_slots", "IRGW_MAX_INFLIGHT: the requests vLLM may be sent at "
                 "once.", lambda: gate.max_inflight),
                ("irgw_queue_depth", "Requests waiting for a slot (at most IRGW_QUEUE_SIZE).",
                 lambda: gate.waiting),
            ]))
        self.key_labels = key_labels
        self._max_keys = max_keys
        self._keys: set[str] = set()
        if key_labels:
            self.key_requests = Counter(
                "irgw_key_requests", "Generation requests per API key id (opt-in: "
                "IRGW_METRICS_KEY_LABELS), by status class.", ("key_id", "status_class"))
            self.key_tokens = Counter(
                "irgw_key_tokens", "Tokens per API key id (opt-in), prompt and completion.",
                ("key_id", "kind"))
            collectors += [self.key_requests, self.key_tokens]
        for collector in collectors:
            registry.register(collector)

    def key_label(self, key_id: str | None) -> str:
        """The key's own label while fewer than IRGW_METRICS_MAX_KEYS have one."""
        if key_id is None:
            return "(none)"
        if key_id in self._keys:
            return key_id
        if len(self._keys) < self._max_keys:
            self._keys.add(key_id)
            return key_id
        return OTHER_KEYS
