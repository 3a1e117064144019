"""`create_app(settings)`: the one way to build the gateway, for the CLI and for tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway import __version__
from gateway.asgi import JSONResponse
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
)
from gateway.routes import chat, completions, health, models, schemas
from gateway.services import Services
from gateway.settings import Settings

log = logging.getLogger("gateway")


def _error_response(error: GatewayError) -> Response:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


async def _on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    services: Services = request.app.state.services
    services.metrics.requests.labels(request.url.path, str(exc.status_code)).inc()
    return _error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        error: GatewayError = NotFoundError(
            f"Unknown route: {request.method} {request.url.path}", code="unknown_route"
        )
    elif exc.status_code == 405:
        error = MethodNotAllowedError(
            f"Method {request.method} is not allowed on {request.url.path}"
        )
        error.headers["allow"] = (exc.headers or {}).get("allow", "")
    else:
        error = GatewayError(str(exc.detail))
        error.status_code = exc.status_code
    return _error_response(error)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return _error_response(InvalidRequestError(f"{where}: {first.get('msg', 'invalid')}",
                                               param=where or None))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # The exception text may quote request data; it goes to the log, not to the client.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path,
              exc_info=exc)
    return _error_response(GatewayError("internal error in the gateway", code="internal_error"))


def create_app(settings: Settings) -> FastAPI:
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.aclose()

    app = FastAPI(
        title="ir-gateway",
        version=__version__,
        description="OpenAI-compatible structured-output gateway for vLLM: named, versioned "
        "JSON schemas, strict output checking, API keys and rate limits.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.state.services = services
    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
    for module in (chat, completions, models, schemas, health):
        app.include_router(module.router)
    return app
