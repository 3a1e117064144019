"""Ad-hoc schemas (sent with a request): bounded, compiled only once the request is
admitted, and compiled once per exact text.

Compiling is the costliest thing the gateway does for a request (meta-validation, the
grammar's copy, a validator): a 1.4 MB schema took seconds. So planning only notes what was
sent (`PendingAdhoc`); the key is checked for the ad-hoc right and admitted against its
limits first, and only then is the schema measured against the caps and compiled. A
repeated schema (`client.chat.completions.parse(response_format=Model)` resends the same
one every time) comes from a bounded LRU cache keyed by its exact text.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import InvalidSchemaError
from gateway.output.registry import RegisteredSchema, adhoc_schema
from gateway.settings import OutputPolicy, Settings

_PARAM = "response_format.json_schema.schema"


@dataclass(frozen=True)
class PendingAdhoc:
    """An ad-hoc schema as the request sent it, not yet checked or compiled."""

    name: str
    schema: Any
    param: str = _PARAM

    @property
    def ref(self) -> str:
        return f"{self.name} (ad-hoc)"


_PAST_64_BITS = 2.0**64


def shape_error(schema: Any, *, max_depth: int, max_nodes: int) -> str | None:
    """Why `schema` is too deep or too big, or None. Stops at the first value past a cap,
    so the walk costs at most `max_nodes` steps whatever was sent."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            return (f"has more than {max_nodes} JSON values (IRGW_ADHOC_SCHEMA_MAX_NODES); "
                    "register it as a named schema instead")
        if depth > max_depth:
            return f"is nested deeper than {max_depth} levels (IRGW_ADHOC_SCHEMA_MAX_DEPTH)"
        if isinstance(node, dict):
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)
        elif isinstance(node, float) and abs(node) >= _PAST_64_BITS:
            # The body's reader keeps integers exact up to 64 bits; one past them arrives
            # rounded (`"const": 18446744073709551617` as ...616.0), and the schema checked
            # and sent to vLLM would not be the one written.
            return (f"has the number {node:.17g}, past 64-bit integers, which the gateway "
                    "cannot read exactly; keep schema numbers within +-2**64")
    return None


class AdhocSchemas:
    """Compiles ad-hoc schemas under the caps, keeping the last `cache_size` of them."""

    def __init__(self, *, policy: OutputPolicy, max_bytes: int, max_depth: int,
                 max_nodes: int, cache_size: int) -> None:
        self.policy: OutputPolicy = policy
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, bytes], RegisteredSchema] = OrderedDict()
        # Compiles run in worker threads (`compile_off_loop`): the cache's
        # look-up-then-reorder and insert-then-evict steps must not interleave.
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AdhocSchemas:
        return cls(policy=settings.adhoc_output_policy,
                   max_bytes=settings.adhoc_schema_max_bytes,
                   max_depth=settings.adhoc_schema_max_depth,
                   max_nodes=settings.adhoc_schema_max_nodes,
                   cache_size=settings.adhoc_schema_cache_size)

    def __len__(self) -> int:
        return len(self._cache)

    def compile(self, pending: PendingAdhoc) -> RegisteredSchema:
        """The compiled schema, or InvalidSchemaError (400) naming the cap or the fault."""
        key = self._key(pending)
        return self._cached(key) or self._build(key, pending)

    async def compile_off_loop(self, pending: PendingAdhoc) -> RegisteredSchema:
        """`compile`, a cache miss compiled in a worker thread: within the caps a compile
        is still seconds of Python (bench/README.md, "Figures the code cites"), which on the
        event loop stalled every other request. The caps and the cache are checked here first."""
        key = self._key(pending)
        return self._cached(key) or await asyncio.to_thread(self._build, key, pending)

    def _key(self, pending: PendingAdhoc) -> tuple[str, bytes]:
        schema = pending.schema
        if not isinstance(schema, dict):  # `false` would accept nothing, `true` anything
            raise InvalidSchemaError(f"{pending.param} must be a JSON object",
                                     param=pending.param)
        try:  # C, linear; its text is the cache key and what the size cap measures
            text = orjson.dumps(schema)
        except orjson.JSONEncodeError as exc:  # past orjson's 255 levels, an integer past 64 bits
            why = (f"is nested deeper than {self.max_depth} levels (IRGW_ADHOC_SCHEMA_MAX_DEPTH)"
                   if "ecursion" in str(exc) else f"cannot be used: {exc}")
            raise self._refused(pending, why) from None
        if len(text) > self.max_bytes:
            raise self._refused(pending, f"is {len(text)} bytes of JSON, more than "
                                f"{self.max_bytes} (IRGW_ADHOC_SCHEMA_MAX_BYTES); register "
                                "it as a named schema instead")
        return pending.name, text

    def _cached(self, key: tuple[str, bytes]) -> RegisteredSchema | None:
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
            return cached

    def _build(self, key: tuple[str, bytes], pending: PendingAdhoc) -> RegisteredSchema:
        error = shape_error(pending.schema, max_depth=self.max_depth, max_nodes=self.max_nodes)
        if error is not None:
            raise self._refused(pending, error)
        compiled = adhoc_schema(pending.name, pending.schema, self.policy)
        with self._lock:
            if self.cache_size:
                self._cache[key] = compiled
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return compiled

    @staticmethod
    def _refused(pending: PendingAdhoc, why: str) -> InvalidSchemaError:
        return InvalidSchemaError(f"{pending.param} {why}", param=pending.param)
