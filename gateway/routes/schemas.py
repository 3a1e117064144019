"""`GET /v1/schemas[/{name}]`: the registry, with versions and descriptions, as far as the
key may use it. A listing leaves out the schemas outside the key's scope; asking for one by
name is a 403 `schema_not_allowed`, as naming it in a generation request is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request

from gateway.routes.common import READ_METHODS, services_of
from gateway.server.reading import header

router = APIRouter()


@router.api_route("/v1/schemas", methods=READ_METHODS)
async def list_schemas(request: Request) -> dict[str, Any]:
    services = services_of(request)
    principal = services.authenticator.authenticate(header(request, b"authorization"))
    data = []
    for name in services.registry.names():
        if not principal.policy.allows_schema(name):
            continue
        versions = services.registry.versions(name)
        latest = versions[-1]
        data.append({
            "object": "schema",
            "name": name,
            "latest_version": latest.version,
            "versions": [v.version for v in versions],
            "description": latest.description,
            "model": f"schema/{name}",
        })
    return {"object": "list", "data": data}


@router.api_route("/v1/schemas/{ref}", methods=READ_METHODS)
async def get_schema(ref: str, request: Request) -> dict[str, Any]:
    """`name` (every version, newest last) or `name@version` (that one)."""
    services = services_of(request)
    principal = services.authenticator.authenticate(header(request, b"authorization"))
    services.authenticator.check_schema(principal, ref.partition("@")[0], adhoc=False)
    if "@" in ref:
        return {"object": "schema.version", **services.registry.resolve(
            ref, param="name", visible=principal.policy.allows_schema).public()}
    versions = services.registry.versions(ref)
    return {
        "object": "schema",
        "name": ref,
        "latest_version": versions[-1].version,
        "description": versions[-1].description,
        "versions": [{"object": "schema.version", **v.public()} for v in versions],
    }
