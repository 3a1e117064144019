"""The floor of bench/overhead.py: a proxy with no logic at all on the gateway's own stack.

    python -m bench.overhead_floor UPSTREAM_PORT    # prints its port; exits with its parent

Its server protocol (gateway/server/protocol.py: uvicorn's httptools protocol with coalesced
writes) on uvloop in front, the gateway's own upstream transport (`UpstreamClient.pool`)
behind. It forwards the body as it came and the answer as it came. Its added latency is the
floor for any Python gateway built from these parts on this machine."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common.fake_vllm import read_body, serve_app
from bench.common.payloads import CHAT_PATH
from bench.common.procs import HOST, Child, start_server
from gateway.server.runtime import glibc_version, huge_page_environment, thp_mode


def floor_main(upstream_port: int) -> None:
    from gateway.server.protocol import GatewayHttpProtocol
    from gateway.settings import Settings
    from gateway.upstream.client import UpstreamClient

    upstream = UpstreamClient(Settings(upstream_url=f"http://{HOST}:{upstream_port}"))
    started: list[bool] = []

    async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                  send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":  # readiness probe
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = await read_body(receive)
        if not started:  # the pool must be made inside the running loop
            await upstream.start()
            started.append(True)
        reply = await upstream.pool.request("POST", CHAT_PATH, body)
        answer = await reply.read()
        await send({"type": "http.response.start", "status": reply.status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    serve_app(app, http=GatewayHttpProtocol)


def start_floor(upstream_port: int) -> tuple[Child, int]:
    # The process set-up `ir-gateway serve` gives itself (gateway/server/runtime.py), so that
    # the gateway's margin over the floor is its own work, not a difference in memory layout.
    env = huge_page_environment(os.environ, glibc=glibc_version(), thp=thp_mode())
    return start_server("floor", "bench.overhead_floor", str(upstream_port), env=env)


if __name__ == "__main__":
    floor_main(int(sys.argv[1]))
