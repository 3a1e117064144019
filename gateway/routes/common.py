"""Small pieces every handler uses."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from gateway.services import Services

# What answers GET answers HEAD (RFC 9110; uptime monitors probe with HEAD); the server leaves
# the body out. FastAPI's `router.get`, unlike Starlette's routes, does not add it.
READ_METHODS = ["GET", "HEAD"]


def services_of(request: Request) -> Services:
    services: Services = request.app.services
    return services


class RawRoute(APIRoute):
    """A route whose endpoint takes the Request and returns a Response itself.

    FastAPI's usual handler solves dependencies and validates/serialises the return value;
    the generation routes parse their own bodies (to pass unknown fields through to vLLM)
    and build their own responses (FastAPI's documented extension point: a custom APIRoute
    class). Their POSTs are answered from `create_app`'s direct-route table before FastAPI
    sees them; the route stays an APIRoute so that the OpenAPI document lists it and other
    methods get their 405.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            response: Response = await endpoint(request)
            return response

        return handler
