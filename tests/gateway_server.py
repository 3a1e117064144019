"""Run a real gateway (uvicorn, real sockets) inside the test's event loop."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from gateway.app import GatewayApp, create_app
from gateway.server.serving import uvicorn_options
from gateway.settings import Settings


@dataclass
class RunningGateway:
    url: str
    app: GatewayApp
    settings: Settings


@asynccontextmanager
async def running_gateway(settings: Settings, *,
                          own_protocol: bool = True) -> AsyncIterator[RunningGateway]:
    app = create_app(settings)
    # Without its own protocol: as under an ASGI server other than the gateway's, where
    # create_app's app can also be mounted.
    overrides = {} if own_protocol else {"http": "httptools"}
    async with serving(app, settings, **overrides) as url:
        yield RunningGateway(url, app, settings)


@asynccontextmanager
async def serving(app: Any, settings: Settings, **overrides: Any) -> AsyncIterator[str]:
    """Serve `app` with the options `ir-gateway serve` runs with (its protocol included),
    on a free port and in the test's own event loop; yields the base URL."""
    options = {**uvicorn_options(settings), "host": "127.0.0.1", "port": 0,
               "log_level": "warning", "lifespan": "on", "loop": "none", **overrides}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def gateway_process(settings: Settings) -> AsyncIterator[str]:
    """The gateway as its own `ir-gateway serve` process, as a deployment runs it: what
    several instances share must then really cross process boundaries."""
    async with serve_process(settings) as (url, _):
        yield url


@asynccontextmanager
async def serve_process(
        settings: Settings) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """`gateway_process`, with the process itself (to signal it)."""
    port = free_port()
    env = {**os.environ}
    for name, value in settings.model_dump(exclude_none=True).items():
        if name in ("host", "port", "config_file"):
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, list):  # pydantic-settings reads a list from JSON
            value = json.dumps(value)
        env[f"IRGW_{name.upper()}"] = str(value)
    env["IRGW_LOG_LEVEL"] = "warning"
    command = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    async with serving_process(command, env, url) as process:
        yield url, process


def _start(command: list[str], env: dict[str, str],
           stderr: Any = None) -> subprocess.Popen[bytes]:
    # Popen returns at once (it does not wait for the child); outside the async function
    # only so that ruff's ASYNC220 rule has no blocking call to flag.
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stderr=stderr)


@asynccontextmanager
async def serving_process(command: list[str], env: dict[str, str], url: str,
                          stderr: Any = None) -> AsyncIterator[subprocess.Popen[bytes]]:
    """Run `command` (a gateway server at `url`) with exactly `env` (its stderr to `stderr`,
    a file, if given); yields the process once its /healthz answers, and stops it after."""
    process = _start(command, env, stderr)
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                if process.poll() is not None:
                    raise RuntimeError(f"gateway exited with {process.returncode}")
                try:
                    if (await client.get(f"{url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("gateway did not start in 15 s")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
