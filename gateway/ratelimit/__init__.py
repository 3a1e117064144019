"""Per-key rate limits and the in-flight cap: one `Limiter` over a quota store
(`QuotaStore`: memory, Redis, Redis falling back to memory); `build_limiter` picks it."""

from __future__ import annotations

from gateway.ratelimit.base import Admission, AdmissionControl, QuotaStore, go_duration
from gateway.ratelimit.limiter import Limiter
from gateway.ratelimit.memory import MemoryLimiter, MemoryQuotas
from gateway.settings import Settings


def build_limiter(settings: Settings) -> Limiter:
    gate = {
        "max_inflight": settings.max_inflight,
        "queue_size": settings.queue_size,
        "queue_timeout_s": settings.queue_timeout_s,
    }
    if settings.ratelimit_backend == "memory":
        return MemoryLimiter(**gate)
    if not settings.redis_url:
        raise ValueError("ratelimit_backend is 'redis' but no redis_url is set (IRGW_REDIS_URL)")
    # Imported here so the memory backend never needs the redis package loaded.
    from gateway.ratelimit.redis import RedisLimiter

    return RedisLimiter.from_url(
        settings.redis_url, failure_policy=settings.redis_failure_policy, **gate
    )


__all__ = [
    "Admission",
    "AdmissionControl",
    "Limiter",
    "MemoryLimiter",
    "MemoryQuotas",
    "QuotaStore",
    "build_limiter",
    "go_duration",
]
