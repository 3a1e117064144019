"""How the gateway is served: uvicorn's options, and which HTTP protocol.

`GatewayHttpProtocol` (gateway/server/protocol.py) subclasses uvicorn's internal httptools protocol,
so it runs only on the uvicorn series the tests ran (`TESTED_UVICORN`, pinned in
pyproject.toml); on any other the server falls back to uvicorn's stock protocol with a
warning, so an upgrade cannot break the server silently.
"""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from gateway.server.protocol import GatewayHttpProtocol
from gateway.settings import Settings

log = logging.getLogger("gateway.server.protocol")

# The uvicorn series `GatewayHttpProtocol` was written and tested against: [low, high).
# pyproject.toml pins the same range (tests/test_server_limits.py checks they agree).
TESTED_UVICORN = ((0, 54), (0, 55))


def _uvicorn_series(version: str) -> tuple[int, int] | None:
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def http_protocol(settings: Settings) -> type | str:
    """The gateway's protocol, configured from `settings`; on a uvicorn outside the tested
    series, uvicorn's stock httptools protocol, with a warning (an upgrade must not break
    the server silently: the subclass reaches into uvicorn's internals)."""
    version = uvicorn.__version__
    series = _uvicorn_series(version)
    low, high = TESTED_UVICORN
    if series is None or not low <= series < high:
        log.warning(
            "uvicorn %s is not the series the gateway's server protocol was tested with "
            "(%d.%d): serving with uvicorn's stock protocol, without the gateway's read, head "
            "and write timeouts, head limits, connection cap or write coalescing. Install "
            "the uvicorn pinned in pyproject.toml (constraints.txt).", version, *low)
        return "httptools"
    return type("GatewayHttpProtocol", (GatewayHttpProtocol,), {
        "read_timeout_s": settings.request_read_timeout_s,
        "head_timeout_s": settings.request_head_timeout_s,
        "max_head_bytes": settings.max_request_head_bytes,
        "max_headers": settings.max_request_headers,
        "max_connections": settings.max_connections,
        "write_timeout_s": settings.write_timeout_s,
    })


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How the gateway is served: `uvicorn.run(app, **uvicorn_options(settings))` in
    `ir-gateway serve`, and the same options in the tests' servers."""
    http = http_protocol(settings)
    return {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level,
        "loop": "uvloop", "access_log": False,
        "http": http,
        # No WebSocket endpoint: an upgrade request is answered as the HTTP request it also
        # is (a JSON error), not by uvicorn's WebSocket handshake (a bare text/plain 403).
        "ws": "none",
        # The stock protocol's only cap: a 503 once this many connections or requests are
        # open (counted at each request's head, not at accept).
        "limit_concurrency": settings.max_connections if isinstance(http, str) else None,
        # Nothing here reads the client's address (keys identify callers), so rewriting it
        # from X-Forwarded-For on every request would only cost time.
        "proxy_headers": False,
        # `server: uvicorn` tells a caller nothing it needs and a scanner what to try.
        "server_header": False,
        # Between kept-alive requests: uvicorn closes a connection idle this long.
        "timeout_keep_alive": settings.keepalive_timeout_s,
        # uvicorn's default waits for every request, however long its stream runs.
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
    }
