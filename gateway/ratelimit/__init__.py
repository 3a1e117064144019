"""Per-key rate limits and the in-flight cap; `build_limiter` picks the backend."""

from __future__ import annotations

from gateway.ratelimit.base import Admission, Limiter, go_duration
from gateway.ratelimit.memory import MemoryLimiter
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


__all__ = ["Admission", "Limiter", "MemoryLimiter", "build_limiter", "go_duration"]
