"""Reading a request: its headers, its id, and its body as JSON within every limit (size,
the global body budget, a deadline, nesting depth). What the generation pipeline and the
other handlers read before anything else."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import orjson
from starlette.requests import Request

from gateway.errors import (
    BodyTooLargeError,
    InvalidRequestError,
    OverloadedError,
    RequestTimeoutError,
)
from gateway.server.asgi import ClientDisconnectedError
from gateway.server.body_budget import BODY_BYTES_HELD, BodyBudget

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The deepest request body: what orjson can write (the gateway writes the body on to vLLM
# at the same depth it came in).
MAX_JSON_DEPTH = 255


def header(request: Request, name: bytes) -> str | None:
    """One request header, by its lowercase name. A dict built in C from the scope's list
    (ASGI names are already lowercase) costs less than Starlette's `Headers`, which scans
    the list in Python on every lookup; the generation routes read three headers."""
    headers = request.scope["headers"]
    by_name = dict(headers)
    value = by_name.get(name)
    if value is not None and len(by_name) != len(headers):
        # A name sent twice is one field whose values are joined (RFC 9110, 5.3), not the
        # last one alone: two Authorization headers read as one the key check refuses,
        # where a proxy in front that reads the first would disagree on who is calling.
        value = b", ".join(v for k, v in headers if k == name)
    return None if value is None else value.decode("latin-1")


def request_id(request: Request) -> str:
    """The caller's `x-request-id` if it is sane, else a fresh one."""
    given = header(request, b"x-request-id")
    if given and _REQUEST_ID_RE.fullmatch(given):
        return given
    return "req_" + os.urandom(16).hex()  # uuid4's randomness, without building a UUID


async def read_json(request: Request, limit: int, budget: BodyBudget,
                    deadline_s: float | None = None) -> Any:
    """The body as JSON, refused (413) past `limit` bytes before more of it is buffered, and
    (503) when the bodies of the requests in progress would take more than `budget` allows;
    a body in pieces must be whole within `deadline_s` of its first piece (408).
    What arrived is reserved as it arrives, never what a head declares (a head declaring
    the largest body, then nothing, held that much of everyone's budget); it is given back
    when the request ends (`GatewayApp`)."""
    declared = header(request, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    encoding = header(request, b"content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        # Read as it is, a gzip body was "not valid UTF-8: surrogates not allowed".
        raise InvalidRequestError(f"the request body is encoded ({encoding.strip()[:40]}); "
                                  "send it uncompressed, without Content-Encoding")
    # Straight from ASGI: Starlette's body() adds a generator per request and joins a copy.
    message = await request.receive()
    if message["type"] != "http.request":  # gone before sending the whole body
        raise ClientDisconnectedError(started=False)
    body: bytes | bytearray = message.get("body", b"")
    if len(body) > limit:
        raise _too_large(limit)
    _reserve(request, budget, len(body))
    if message.get("more_body", False):  # in pieces: gathered into one buffer, not a list
        body = await _gather(request, bytearray(body), limit, budget, deadline_s)
    if not body:
        raise InvalidRequestError("the request body is empty; send a JSON object")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, "
            f"column {exc.colno})"
        ) from None
    check_depth(body, document)
    return document


def check_depth(body: bytes, document: Any) -> None:
    """400 for a body nested deeper than MAX_JSON_DEPTH. orjson reads 1024 levels but
    writes 255, so such a body failed (a 500, which clients retry) when the gateway wrote
    it on to vLLM. A body with fewer brackets than that cannot be that deep (two C counts);
    any other is written once, as the gateway would, to find out."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return
    try:
        orjson.dumps(document)
    except orjson.JSONEncodeError:
        raise InvalidRequestError(
            f"the request body is nested deeper than {MAX_JSON_DEPTH} levels",
            code="nested_too_deeply",
        ) from None


async def _gather(request: Request, buffer: bytearray, limit: int, budget: BodyBudget,
                  deadline_s: float | None) -> bytearray:
    # The server's read timeout bounds the gap between two pieces; this bounds the whole, so
    # a body trickled a byte at a time cannot hold its share of the body budget for long.
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    while True:
        message = await request.receive()
        if message["type"] != "http.request":
            raise ClientDisconnectedError(started=False)
        if deadline is not None and time.monotonic() > deadline:
            raise RequestTimeoutError(
                f"the request body did not arrive whole within {deadline_s:g} s "
                "(IRGW_REQUEST_BODY_TIMEOUT_S)")
        chunk = message.get("body", b"")
        if len(buffer) + len(chunk) > limit:
            raise _too_large(limit)
        _reserve(request, budget, len(chunk))
        buffer += chunk
        if not message.get("more_body", False):
            return buffer


def _reserve(request: Request, budget: BodyBudget, size: int) -> None:
    if not budget.take(size):
        raise OverloadedError(
            "the gateway is holding as many request bodies as it may "
            "(IRGW_MAX_BODY_BYTES_IN_FLIGHT); retry shortly",
            code="body_budget_exhausted", headers={"retry-after": "1"})
    scope = request.scope
    scope[BODY_BYTES_HELD] = scope.get(BODY_BYTES_HELD, 0) + size


def _too_large(limit: int) -> BodyTooLargeError:
    return BodyTooLargeError(
        f"the request body is larger than {limit} bytes (IRGW_MAX_REQUEST_BYTES)"
    )
