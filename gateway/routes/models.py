"""`GET /v1/models[/{id}]`: the upstream's models plus one `schema/<name>` alias per schema
the key may use. vLLM's list is reused for `models_cache_s`, and each call counts against
the key's requests per minute: a listing must not be a free way to make vLLM work."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.access.auth import Principal
from gateway.errors import ModelNotFoundError
from gateway.generation.planning import SCHEMA_MODEL_PREFIX
from gateway.routes.common import READ_METHODS, services_of
from gateway.server.asgi import JSONResponse
from gateway.server.reading import header
from gateway.services import Services

router = APIRouter()
_CREATED = int(time.time())


async def _models(services: Services, principal: Principal) -> list[dict[str, Any]]:
    upstream = await services.upstream.model_ids(max_age_s=services.settings.models_cache_s)
    models = [{"id": m, "object": "model", "created": _CREATED, "owned_by": "vllm"}
              for m in upstream]
    for schema in services.registry:
        if not principal.policy.allows_schema(schema.name):
            continue
        for alias in (schema.name, schema.ref):
            models.append({"id": SCHEMA_MODEL_PREFIX + alias, "object": "model",
                           "created": _CREATED, "owned_by": "ir-gateway"})
    unique = {m["id"]: m for m in models}
    return list(unique.values())


async def _reader(request: Request) -> tuple[Services, Principal, dict[str, str]]:
    services = services_of(request)
    principal = services.authenticator.authenticate(header(request, b"authorization"))
    return services, principal, await services.limiter.admit_read(principal)


@router.api_route("/v1/models", methods=READ_METHODS)
async def list_models(request: Request) -> Response:
    services, principal, headers = await _reader(request)
    return JSONResponse({"object": "list", "data": await _models(services, principal)},
                        headers=headers)


@router.api_route("/v1/models/{model_id:path}", methods=READ_METHODS)
async def get_model(model_id: str, request: Request) -> Response:
    services, principal, headers = await _reader(request)
    for model in await _models(services, principal):
        if model["id"] == model_id:
            return JSONResponse(model, headers=headers)
    error = ModelNotFoundError(f"The model {model_id!r} does not exist", param="model")
    error.headers.update(headers)
    raise error
