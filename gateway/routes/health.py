"""Liveness and readiness, for load balancers and `ir-gateway dev`."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError, NotFoundError
from gateway.routes.common import READ_METHODS, services_of
from gateway.server.asgi import JSONResponse
from gateway.server.reading import header
from gateway.upstream.canary import Verdict
from gateway.upstream.dialects import UnsupportedVersionError, dialect_for

router = APIRouter()
_READY_DEADLINE_S = 2.0


@router.api_route("/healthz", methods=READ_METHODS)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.api_route("/readyz", methods=READ_METHODS)
async def readyz(request: Request) -> Response:
    """Ready when vLLM answers `/version` now (no waiting out a cold start here) and, with
    the canary on, was not found ignoring the schemas it is sent (gateway/upstream/canary.py)."""
    services = services_of(request)
    if services.settings.ready_probe == "with_key" and not _has_valid_key(request):
        return JSONResponse({"status": "ready", "upstream": services.settings.upstream_url,
                             "reason": "vLLM not probed: send a valid key to probe it "
                             "(IRGW_READY_PROBE=with_key; a probe can start a GPU)"})
    try:
        data = await services.upstream.get_json("/version", deadline_s=0)
        dialect = dialect_for(str(data.get("version")))
    except (GatewayError, UnsupportedVersionError, AttributeError) as error:
        return JSONResponse(
            {"status": "unavailable", "upstream": services.settings.upstream_url,
             "reason": str(error)},
            status_code=503, headers={"retry-after": "5"},
        )
    body = {"status": "ready", "upstream_version": data.get("version"), "dialect": dialect.name}
    if services.canary.enabled:
        canary = await services.canary.result(str(data.get("version")))
        body["canary"] = canary.public()
        if canary.verdict is Verdict.NOT_CONSTRAINING:
            return JSONResponse(
                {**body, "status": "unavailable", "upstream": services.settings.upstream_url,
                 "reason": "vLLM does not enforce structured-output constraints (the canary "
                 f"failed): {canary.reason}"},
                status_code=503, headers={"retry-after": "15"},
            )
    return JSONResponse(body)


def _has_valid_key(request: Request) -> bool:
    try:
        services_of(request).authenticator.authenticate(header(request, b"authorization"))
    except GatewayError:
        return False
    return True


@router.api_route("/metrics", methods=READ_METHODS)
async def metrics(request: Request) -> Response:
    services = services_of(request)
    if services.settings.metrics_port is not None:
        # On its own listener: here it is any unknown route.
        raise NotFoundError(f"Unknown route: {request.method} {request.url.path}",
                            code="unknown_route")
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")
