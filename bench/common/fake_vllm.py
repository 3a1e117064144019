"""The zero-latency fake vLLM every bench script runs against, in its own process.

    python -m bench.common.fake_vllm [--answers function_ir|invoice]   # prints its port

A raw ASGI app on uvicorn + httptools + uvloop (how vLLM itself is served) on 127.0.0.1:
`GET /version` (0.32.0), `GET /v1/models`, `POST /v1/chat/completions` (the answer set's
`chat.completion`, or its 30-chunk SSE stream when the body asks for `"stream": true`),
`GET /stats` (chat calls so far, the last body's size) and `POST /v1/traces` (a sink for
the gateway's OTLP/HTTP exports). It exits when its parent dies."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bench.common import payloads
from bench.common.procs import HOST, Child, http_get, start_server

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

MAX_LIFETIME_S = 900.0  # bounded even if the parent's death went unnoticed
ANSWERS: dict[str, tuple[str, Callable[[], bytes]]] = {  # name: (model, completion)
    "function_ir": (payloads.UPSTREAM_MODEL, payloads.completion_body),
    "invoice": (payloads.INVOICE_MODEL, payloads.invoice_completion),
}


async def read_body(receive: Receive) -> bytes:
    chunks = []
    for _ in range(100_000):  # bounded: at most a few MB in body_memory.py
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _json(body: bytes) -> tuple[Headers, bytes]:
    return [(b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())], body


def fake_app(answers: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    model, completion_body = ANSWERS[answers]
    completion = _json(completion_body())
    chunks = payloads.sse_chunks(model)
    sse: Headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    version = _json(b'{"version":"0.32.0"}')
    models = _json(orjson.dumps({"object": "list", "data": [
        {"id": model, "object": "model", "created": payloads.CREATED, "owned_by": "vllm",
         "max_model_len": 32768}]}))
    stats = {"chat": 0, "last_body_bytes": 0}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        reply: tuple[Headers, bytes] | None = None
        if method == "POST" and path == payloads.CHAT_PATH:
            body = await read_body(receive)
            stats["chat"] += 1
            stats["last_body_bytes"] = len(body)
            if b'"stream"' in body and orjson.loads(body).get("stream") is True:
                await send({"type": "http.response.start", "status": 200, "headers": sse})
                for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await asyncio.sleep(0)  # one write per event, as a token stream makes
                await send({"type": "http.response.body", "body": b""})
                return
            reply = completion
        elif method == "GET" and path == "/version":
            reply = version
        elif method == "GET" and path == "/v1/models":
            reply = models
        elif method == "GET" and path == "/stats":
            reply = _json(orjson.dumps(stats))
        elif method == "POST" and path == "/v1/traces":
            await read_body(receive)
            stats["trace_exports"] = stats.get("trace_exports", 0) + 1
            reply = [(b"content-type", b"application/x-protobuf"),
                     (b"content-length", b"0")], b""
        if reply is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": reply[0]})
        await send({"type": "http.response.body", "body": reply[1]})

    return app


def serve_app(app: Any, http: Any = "httptools") -> None:
    """Serve a raw ASGI app on a free port; print the port; exit when the parent dies."""
    import uvicorn
    import uvloop

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(4096)  # listening before the port is printed: early connects queue
    config = uvicorn.Config(app, loop="none", http=http, lifespan="off",
                            access_log=False, log_level="warning", server_header=False,
                            date_header=False, timeout_keep_alive=120, backlog=4096)
    server = uvicorn.Server(config)
    parent = os.getppid()

    async def watchdog() -> None:
        for _ in range(int(MAX_LIFETIME_S / 0.5)):
            if os.getppid() != parent:
                break
            await asyncio.sleep(0.5)
        server.should_exit = True

    async def run() -> None:
        task = asyncio.create_task(watchdog())
        print(sock.getsockname()[1], flush=True)
        await server.serve(sockets=[sock])
        task.cancel()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


def start_fake(answers: str = "function_ir") -> tuple[Child, int]:
    return start_server("fake", "bench.common.fake_vllm", "--answers", answers)


def fake_stats(port: int) -> dict[str, int]:
    status, body = http_get(f"http://{HOST}:{port}/stats")
    return orjson.loads(body) if status == 200 else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--answers", choices=sorted(ANSWERS), default="function_ir")
    serve_app(fake_app(parser.parse_args().answers))


if __name__ == "__main__":
    main()
