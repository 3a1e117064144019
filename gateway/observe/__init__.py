"""Seeing inside the gateway: per-request metrics, JSON request logs, OpenTelemetry traces
and the `x-irgw-overhead-ms` header. The request path calls `gateway.observe.hooks`."""

from gateway.observe.hooks import (
    completed,
    identified,
    phase,
    planned,
    relayed,
    upstream_attempt,
)

__all__ = ["completed", "identified", "phase", "planned", "relayed", "upstream_attempt"]
