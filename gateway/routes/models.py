"""`GET /v1/models[/{id}]`: the upstream's models plus one `schema/<name>` alias per schema."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request

from gateway.errors import ModelNotFoundError
from gateway.planning import SCHEMA_MODEL_PREFIX
from gateway.routes.common import READ_METHODS, header, services_of
from gateway.services import Services

router = APIRouter()
_CREATED = int(time.time())


async def _models(services: Services) -> list[dict[str, Any]]:
    upstream = await services.upstream.model_ids(refresh=True)
    models = [{"id": m, "object": "model", "created": _CREATED, "owned_by": "vllm"}
              for m in upstream]
    for schema in services.registry:
        for alias in (schema.name, schema.ref):
            models.append({"id": SCHEMA_MODEL_PREFIX + alias, "object": "model",
                           "created": _CREATED, "owned_by": "ir-gateway"})
    unique = {m["id"]: m for m in models}
    return list(unique.values())


@router.api_route("/v1/models", methods=READ_METHODS)
async def list_models(request: Request) -> dict[str, Any]:
    services = services_of(request)
    services.authenticator.authenticate(header(request, b"authorization"))
    return {"object": "list", "data": await _models(services)}


@router.api_route("/v1/models/{model_id:path}", methods=READ_METHODS)
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    services = services_of(request)
    services.authenticator.authenticate(header(request, b"authorization"))
    for model in await _models(services):
        if model["id"] == model_id:
            return model
    raise ModelNotFoundError(f"The model {model_id!r} does not exist", param="model")
