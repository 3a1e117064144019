"""The gateway's own OpenAPI 3.1 document, generated from the app and checked in.

FastAPI's `app.openapi()` knows the routes but nothing of their bodies: the handlers read
raw JSON (to pass unknown fields on to vLLM untouched) and return `Response` objects. So the
document is post-processed here, without touching the route modules: request bodies for the
POST routes, response shapes, the OpenAI error shape for every error status, the rate-limit
and `x-irgw-*` headers, and the bearer security scheme.

    python -m gateway.openapi_doc --write   # regenerate openapi/openapi.json
    python -m gateway.openapi_doc --check   # exit 1 (with a summary) if the file is stale

The output is deterministic: insertion order as built here (never sorted, so a reader sees
`model` before `messages`), `indent=2`, a trailing newline.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator

from fastapi import FastAPI

from gateway.openapi_doc.admin import (
    ADMIN_OPERATIONS,
    ADMIN_PARAMETER_DESCRIPTIONS,
    ADMIN_SCHEMAS,
)
from gateway.openapi_doc.headers import _HEADER_COMPONENT_NAMES, _HEADERS, JSON
from gateway.openapi_doc.operations import _OPERATIONS as _API_OPERATIONS
from gateway.openapi_doc.operations import (
    _PATH_PARAMETER_DESCRIPTIONS as _API_PARAMETER_DESCRIPTIONS,
)
from gateway.openapi_doc.operations import (
    _PATH_PARAMETER_EXAMPLES,
    _response_components,
)
from gateway.openapi_doc.requests import REQUEST_SCHEMAS
from gateway.openapi_doc.schemas import _COMPONENT_SCHEMAS as _API_SCHEMAS

_OPERATIONS = {**_API_OPERATIONS, **ADMIN_OPERATIONS}
_PATH_PARAMETER_DESCRIPTIONS = {**_API_PARAMETER_DESCRIPTIONS, **ADMIN_PARAMETER_DESCRIPTIONS}
_COMPONENT_SCHEMAS = {**REQUEST_SCHEMAS, **_API_SCHEMAS, **ADMIN_SCHEMAS}

_METHOD_ORDER = ("get", "head", "post", "put", "patch", "delete", "options", "trace")


def _head_of(get: JSON) -> JSON:
    """A GET operation's HEAD twin: the same statuses and headers, no body."""
    components = _response_components()
    responses: JSON = {}
    for status, response in get["responses"].items():
        if "$ref" in response:
            response = components[response["$ref"].rsplit("/", 1)[1]]
        responses[status] = {k: v for k, v in response.items() if k != "content"}
    return {**get, "summary": f"{get['summary']} (headers only)", "responses": responses}


class UndocumentedRouteError(Exception):
    """The app has a route this module does not describe: add it to `operations._OPERATIONS`."""


def enrich(generated: JSON) -> JSON:
    """FastAPI's document for the app, with what the handlers cannot declare filled in."""
    doc = copy.deepcopy(generated)
    missing = [
        f"{method.upper()} {path}"
        for path, item in doc.get("paths", {}).items()
        for method in item
        if (path, method) not in _OPERATIONS
        and not (method == "head" and (path, "get") in _OPERATIONS)
    ]
    if missing:
        raise UndocumentedRouteError(
            "routes without documentation in gateway/openapi_doc/operations.py: "
            + ", ".join(missing)
        )
    paths: JSON = {}
    for path, item in doc["paths"].items():
        paths[path] = {}
        # In one order whatever the order of a route's set of methods (hash-seeded).
        for method, operation in sorted(item.items(), key=lambda kv: _METHOD_ORDER.index(kv[0])):
            extra = _OPERATIONS.get((path, method)) or _head_of(_OPERATIONS[(path, "get")])
            operation_id = operation["operationId"]
            # FastAPI names every method of a route with several (GET+HEAD, or GET+HEAD+POST)
            # after whichever its set of methods yields first.
            base, _, suffix = operation_id.rpartition("_")
            if suffix in _METHOD_ORDER:
                operation_id = f"{base}_{method}"
            described: JSON = {
                "summary": extra["summary"],
                "operationId": operation_id,
                "tags": extra["tags"],
            }
            if "description" in operation:
                described["description"] = operation["description"]
            if "security" in extra:
                described["security"] = extra["security"]
            # FastAPI's generated titles add nothing; keep name/in/required/schema.
            parameters = [
                {"name": p["name"], "in": p["in"], "required": p.get("required", False),
                 **({"description": _PATH_PARAMETER_DESCRIPTIONS[p["name"]]}
                    if p["name"] in _PATH_PARAMETER_DESCRIPTIONS else {}),
                 "schema": {"type": p["schema"].get("type", "string"),
                            **({"examples": _PATH_PARAMETER_EXAMPLES[p["name"]]}
                               if p["name"] in _PATH_PARAMETER_EXAMPLES else {})}}
                for p in operation.get("parameters", [])
            ]
            parameters.extend(extra.get("parameters", []))
            if parameters:
                described["parameters"] = parameters
            if "requestBody" in extra:
                described["requestBody"] = extra["requestBody"]
            # FastAPI's 422 HTTPValidationError never reaches clients: the gateway turns
            # request validation errors into a 400 in OpenAI's shape.
            described["responses"] = extra["responses"]
            paths[path][method] = described
    result: JSON = {
        "openapi": doc["openapi"],
        "info": doc["info"],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "inference", "description": "OpenAI-compatible endpoints."},
            {"name": "models", "description": "Upstream models and schema aliases."},
            {"name": "schemas", "description": "The named, versioned schema registry."},
            {"name": "operations", "description": "Health, readiness, metrics (no key needed)."},
            {"name": "admin", "description": "Keys and usage; only for a key with the `admin` "
             "scope."},
        ],
        "paths": paths,
        "components": {
            "schemas": _COMPONENT_SCHEMAS,
            "responses": _response_components(),
            "headers": {_HEADER_COMPONENT_NAMES[name]: header
                        for name, header in _HEADERS.items()},
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "An ir-gateway API key (`irgw-<id>-<secret>`), sent the way "
                "OpenAI's clients send `api_key`.",
            }},
        },
    }
    # A deep copy: the module-level constants are shared between calls and must not be
    # aliased into a document a caller might mutate.
    return copy.deepcopy(result)


@contextlib.contextmanager
def _quiet_auth_warning() -> Iterator[None]:
    # Building the app with auth off (no keys file needed) logs a loud warning meant for
    # operators; it is noise when only the route table is wanted.
    logger = logging.getLogger("gateway.access.auth")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def document_of(app: FastAPI) -> JSON:
    """The document for `app`'s routes (what the app serves at `/openapi.json`)."""
    with warnings.catch_warnings():
        # A route that answers GET and HEAD gets one operationId from FastAPI, for both
        # methods; `enrich` gives each its own.
        warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
        generated = FastAPI.openapi(app)
    return enrich(generated)
