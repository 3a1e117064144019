"""Answering a chat request from the response cache (gateway/access/cache.py), before it is
admitted: a hit costs no tokens and never reaches vLLM."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.access.auth import Principal
from gateway.access.cache import CACHE_KEY, fresh_copy
from gateway.generation.planning import ChatPlan
from gateway.server.asgi import JSONResponse
from gateway.server.reading import request_id
from gateway.services import Services


async def from_cache(request: Request, services: Services, principal: Principal,
                     plan: ChatPlan) -> Response | None:
    """The cached answer, or None (and, when the request may be cached, its key noted so
    that its answer is stored once checked)."""
    cache = services.cache
    if cache is None or plan.schema is None:
        return None
    # The key's scopes hold for cached answers too: checked before anything is looked up.
    services.authenticator.check_schema(principal, plan.schema.name, adhoc=plan.schema.adhoc)
    upstream_model = await services.default_model() if plan.model_alias else plan.body["model"]
    key = cache.key_for(principal, plan, upstream_model)
    if key is None:
        return None
    entry = await cache.get(key)
    if entry is None:
        request.scope[CACHE_KEY] = key
        return None
    limits = await services.limiter.admit_read(principal)  # a request, but no tokens
    if services.usage is not None:
        services.usage.record(principal.key_id, plan.schema.metric_label, "cached", None)
    headers = {"x-request-id": request_id(request), **limits,
               "x-irgw-schema": plan.schema.ref, "x-irgw-output": str(entry["outcome"]),
               "x-irgw-attempts": "0", "x-irgw-cache": "hit"}
    return JSONResponse(fresh_copy(entry["response"]), headers=headers)
