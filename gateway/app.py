"""`create_app(settings)`: the one way to build the gateway, for the CLI and for tests."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway import __version__
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
)
from gateway.generation.pipeline import Endpoint
from gateway.observe.observer import Observation
from gateway.openapi_doc.document import document_of
from gateway.routes import admin, chat, completions, health, models, schemas
from gateway.server.asgi import ClientDisconnectedError, JSONResponse
from gateway.server.body_budget import BODY_BYTES_HELD
from gateway.server.reading import request_id
from gateway.server.runtime import MemoryTrimmer
from gateway.services import Services
from gateway.settings import Settings

log = logging.getLogger("gateway")


def _error_response(request: Request, error: GatewayError) -> Response:
    # Every error carries the request id, so a caller can quote it whatever went wrong; one
    # set once the request was sent upstream is already among the error's headers.
    headers = {"x-request-id": request_id(request), **error.headers}
    return JSONResponse(error.body(), status_code=error.status_code, headers=headers)


async def _on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    if exc.status_code >= 500:
        # The client gets the message; the operator needs it too, with the cause's type.
        cause = exc.__cause__
        log.warning("%s %s -> %d %s: %s%s", request.method, request.url.path, exc.status_code,
                    exc.code, exc, f" (cause: {cause!r})" if cause is not None else "")
    return _error_response(request, exc)


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
        # Starlette spells it "Allow", and lists a route's methods in its set's order.
        given = {name.lower(): value for name, value in (exc.headers or {}).items()}
        methods = (m.strip() for m in given.get("allow", "").split(","))
        error.headers["allow"] = ", ".join(sorted(m for m in methods if m))
    else:
        error = GatewayError(str(exc.detail))
        error.status_code = exc.status_code
    return _error_response(request, error)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return _error_response(request, InvalidRequestError(
        f"{where}: {first.get('msg', 'invalid')}", param=where or None))


async def _on_client_gone(request: Request, exc: Exception) -> Response:
    # Nobody reads this answer; its 499 (nginx's "client closed request") keeps such
    # requests apart from the gateway's own errors in the request metrics.
    return Response(status_code=499)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # The exception text may quote request data; it goes to the log, not to the client.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path,
              exc_info=exc)
    return _error_response(request, GatewayError("internal error in the gateway",
                                                 code="internal_error"))


class GatewayApp(FastAPI):
    """FastAPI, plus a direct path for the generation routes, and request metrics.

    A POST to a path of `direct` (the generation routes: they read their own body and build
    their own response) goes straight from ASGI to its endpoint, skipping Starlette's
    middleware stack and route matching: the overhead budget is about that path
    (bench/results/overhead.md). Errors map to responses through the same handlers as
    everywhere else. Everything else, and the OpenAPI document, is plain FastAPI.
    """

    def __init__(self, services: Services, direct: Mapping[str, Endpoint],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # A plain attribute, not `self.state.services`: Starlette's State finds its items
        # through __getattr__, i.e. after a failed lookup that formats an AttributeError,
        # twice per request on the hot path.
        self.services = services
        self._direct = dict(direct)
        self.trimmer = MemoryTrimmer(idle=lambda: services.metrics.inflight == 0)

    @property
    def direct_routes(self) -> frozenset[str]:
        return frozenset(self._direct)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        metrics = self.services.metrics
        endpoint = self._direct.get(scope["path"]) if scope["method"] == "POST" else None
        status = 500  # if the server never gets to send one
        metrics.inflight += 1
        observer = self.services.observer
        obs = observer.begin(scope) if endpoint is not None else None
        try:
            if obs is not None:
                scope["app"] = self
                response = await _respond(endpoint, Request(scope, receive), obs)
                status = response.status_code
                observer.stamp(obs, response)
                await response(scope, receive, send)
            else:
                async def noting_status(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                    await send(message)

                await super().__call__(scope, receive, noting_status)
        finally:
            metrics.inflight -= 1
            held = scope.get(BODY_BYTES_HELD)
            if held:
                self.services.body_budget.give(held)
                self.trimmer.after_request(held)
            if obs is not None:
                observer.end(obs, status)
            if endpoint is not None:
                route = scope["path"]
            else:  # the route's template, never the raw path: labels stay few
                matched = scope.get("route")
                route = matched.path if isinstance(matched, APIRoute) else "unmatched"
            metrics.answered(route, status)


async def _respond(endpoint: Endpoint, request: Request, obs: Observation) -> Response:
    try:
        return await endpoint(request)
    except GatewayError as exc:
        obs.error = exc
        return await _on_gateway_error(request, exc)
    except ClientDisconnectedError as exc:
        obs.error = exc
        return await _on_client_gone(request, exc)
    except Exception as exc:
        obs.error = exc
        return await _on_unexpected(request, exc)


def create_app(settings: Settings) -> GatewayApp:
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.aclose()

    app = GatewayApp(
        services,
        # The routes answered straight from ASGI (see GatewayApp); each is also included
        # below, for the OpenAPI document and the 405 of its other methods.
        direct={chat.CHAT.path: chat.endpoint, completions.COMPLETIONS.path: completions.endpoint},
        title="ir-gateway",
        version=__version__,
        description="OpenAI-compatible structured-output gateway for vLLM: named, versioned "
        "JSON schemas, strict output checking, API keys and rate limits.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        # A trailing slash is a 404 like any unknown path: Starlette's redirect would be a
        # bare 307 to an http:// URL built from the Host header, which clients follow.
        redirect_slashes=False,
    )
    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(ClientDisconnectedError, _on_client_gone)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
    for module in (chat, completions, models, schemas, health, admin):
        app.include_router(module.router)
    # `/openapi.json` serves the document that `openapi/openapi.json` checks in, not
    # FastAPI's bare one (which knows nothing of the bodies the raw handlers read).
    app.openapi = functools.cache(lambda: document_of(app))  # type: ignore[method-assign]
    return app
