"""`/admin/v1/`: manage keys and read usage over HTTP, with a key that has the `admin` scope.

Any other key (and any caller when auth is off) gets a 403 that names nothing but the scope
it lacks; nothing here is listed in `/v1/models`. A created or rotated key's plaintext is in
that one answer (`key`) and nowhere else.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from gateway.access import admin_ops
from gateway.access.admin_ops import KeyRequest
from gateway.access.records import KeyNotFoundError, KeyRevokedError, KeyStoreError
from gateway.access.store import KeyBackend
from gateway.access.usage import parse_since
from gateway.errors import (
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
)
from gateway.routes.common import READ_METHODS, services_of
from gateway.server.asgi import JSONResponse
from gateway.server.reading import header, read_json

router = APIRouter()
_ID = re.compile(r"^[A-Za-z0-9]{12}$")
# Admin bodies are a name and a policy: far below the generation routes' limit.
_MAX_BODY_BYTES = 64 * 1024


def admin_keys(request: Request) -> KeyBackend:
    """The key store, for a caller whose key has the admin scope; 401/403 otherwise."""
    services = services_of(request)
    principal = services.authenticator.authenticate(header(request, b"authorization"))
    keys = services.authenticator.keys
    if not principal.policy.is_admin or keys is None:
        raise PermissionDeniedError("This API key may not use the admin API (it needs the "
                                    "'admin' scope).", code="admin_scope_required")
    return keys


def _first_error(exc: ValidationError) -> InvalidRequestError:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    return InvalidRequestError(f"{where}: {first['msg']}", param=where or None)


async def _run(call: Any) -> Any:
    """A store call, its failures as the gateway's errors."""
    try:
        return await call
    except KeyNotFoundError:
        raise NotFoundError("No such key.", code="key_not_found") from None
    except KeyRevokedError as exc:
        raise InvalidRequestError(str(exc), code="key_revoked") from None
    except KeyStoreError as exc:
        raise OverloadedError(f"The key store cannot be used right now: {exc}",
                              code="key_store_unavailable") from None
    except ValidationError as exc:
        raise _first_error(exc) from None
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    except (RedisError, OSError) as exc:  # the usage store
        raise OverloadedError(f"The usage store cannot be read right now: {exc!r}",
                              code="usage_store_unavailable") from None


def _key_id(key_id: str) -> str:
    if not _ID.fullmatch(key_id):
        raise NotFoundError("No such key.", code="key_not_found")
    return key_id


async def _body(request: Request) -> dict[str, Any]:
    services = services_of(request)
    raw = await read_json(request, _MAX_BODY_BYTES, services.body_budget,
                          services.settings.request_body_timeout_s)
    if not isinstance(raw, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return raw


# One route for both, so that a 405 on the path lists every method it answers (Starlette's
# `Allow` names only the methods of the route that matched the path).
@router.api_route("/admin/v1/keys", methods=[*READ_METHODS, "POST"])
async def keys(request: Request) -> Response:
    backend = admin_keys(request)
    if request.method != "POST":
        return JSONResponse({"object": "list",
                             "data": await _run(admin_ops.list_keys(backend))})
    try:
        key_request = KeyRequest.model_validate(await _body(request))
        key_request.policy()
    except ValidationError as exc:
        raise _first_error(exc) from None
    created = await _run(admin_ops.create_key(backend, key_request))
    return JSONResponse(created, status_code=201, headers={"cache-control": "no-store"})


@router.api_route("/admin/v1/keys/{key_id}", methods=READ_METHODS)
async def show_key(key_id: str, request: Request) -> Response:
    keys = admin_keys(request)
    return JSONResponse(await _run(admin_ops.show_key(keys, _key_id(key_id))))


@router.post("/admin/v1/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request) -> Response:
    keys = admin_keys(request)
    return JSONResponse(await _run(admin_ops.revoke_key(keys, _key_id(key_id))))


@router.post("/admin/v1/keys/{key_id}/rotate")
async def rotate_key(key_id: str, request: Request) -> Response:
    keys = admin_keys(request)
    declared = header(request, b"content-length")
    body = await _body(request) if declared not in (None, "0") else {}
    unknown = set(body) - {"grace"}
    if unknown:
        raise InvalidRequestError(f"unknown field {sorted(unknown)[0]!r}; only 'grace'")
    grace = body.get("grace", "0s")
    if not isinstance(grace, str | int) or isinstance(grace, bool):
        raise InvalidRequestError("'grace' is a duration: '1h', '30m', or seconds",
                                  param="grace")
    rotated = await _run(admin_ops.rotate_key(keys, _key_id(key_id), grace))
    return JSONResponse(rotated, headers={"cache-control": "no-store"})


@router.api_route("/admin/v1/usage", methods=READ_METHODS)
async def usage(request: Request, key: str | None = None, since: str | None = None) -> Response:
    admin_keys(request)
    recorder = services_of(request).usage
    if recorder is None:
        raise InvalidRequestError("Usage accounting is off on this gateway "
                                  "(IRGW_USAGE_BACKEND).", code="usage_accounting_off")
    if key is not None and not _ID.fullmatch(key):
        raise InvalidRequestError("'key' is a key id (12 letters and digits)", param="key")
    try:
        first_day = parse_since(since)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="since") from None
    rows = await _run(recorder.report(key, first_day))
    return JSONResponse({"object": "list", "data": rows})
