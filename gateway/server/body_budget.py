"""The memory all request bodies together may hold (IRGW_MAX_BODY_BYTES_IN_FLIGHT).

A parsed body takes several times its size in Python objects, a body of tiny JSON values
the most (bench/results/body_memory.md), for as long as its request runs, so the
bytes of the bodies of all requests in progress are counted against one budget. A request
whose body does not fit gets a 503 with `retry-after` (the openai client retries it): the
gateway is busy, the request itself is fine.
"""

from __future__ import annotations

# The scope key under which a request notes what it reserved; `GatewayApp` gives it back
# when the request ends, whatever way it ends.
BODY_BYTES_HELD = "irgw.body_bytes"


class BodyBudget:
    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size
