"""Where a request's time goes inside the gateway, warm and cold.

Usage::

    .venv/bin/python bench/critical_path.py     # ~30 s, writes bench/results/critical_path.md
    .venv/bin/python bench/critical_path.py --quick    # smoke run, prints only

The gateway's ASGI app runs in this process (no client socket, so the figures are the
gateway's own), against the fake vLLM (bench/common/fake_vllm.py) in a child process.
Timestamps are taken at the boundaries of each step of the named-schema request of the overhead
benchmark, once with requests back to back (*warm*: caches and predictors hold the
gateway's code) and once with 5 ms of idleness before each request (*cold*: the gap
between requests at 200 req/s). The first step also pays for waking up, so read it as
"until the body is read". Each step's figure is the median over all requests.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import gc
import sys
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import uvloop  # noqa: E402

import gateway.generation.checking as checking  # noqa: E402
import gateway.generation.pipeline as pipeline  # noqa: E402
import gateway.routes.chat as chat  # noqa: E402
import gateway.upstream.client as client  # noqa: E402
import gateway.upstream.transport as transport  # noqa: E402
from bench.common.fake_vllm import start_fake  # noqa: E402
from bench.common.procs import exit_on_signals  # noqa: E402
from bench.common.stats import median  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.server.asgi import DISCONNECT_EXTENSION, DisconnectSignal  # noqa: E402
from gateway.server.runtime import restart_on_huge_pages  # noqa: E402
from gateway.settings import Settings  # noqa: E402

RESULTS = REPO / "bench" / "results" / "critical_path.md"
REQUESTS = 2000
GAP_S = 0.005  # 200 req/s
BODY = (b'{"model":"schema/function_ir","messages":[{"role":"user",'
        b'"content":"IR for a function that adds two ints"}]}')
STEPS = [  # (label, mark at its end), in the order a request passes them
    ("app entry -> body read (incl. wake-up)", "read_json<"),
    ("plan (schema resolution, checks)", "plan_chat<"),
    ("prepare (scopes, limits, request id)", "prepare<"),
    ("upstream body", "upstream_chat_body<"),
    ("disconnect hook, serialise, pool checkout", "wire_write"),
    ("-- vLLM (the fake) answers --", "wire_data"),
    ("answer head parsed, task resumed", "request<"),
    ("body read, connection back to the pool", "read<"),
    ("JSON parse of vLLM's answer", "_decode<"),
    ("OpenAI response shape", "chat_completion<"),
    ("strict parse + schema validation", "check_output<"),
    ("metrics, limits settled, headers", "JSONResponse>"),
    ("response rendered and sent", "sent"),
]

marks: dict[str, float] = {}
clock = time.perf_counter


def _mark_sync(owner: Any, name: str) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        marks.setdefault(name + ">", clock())
        result = inner(*args, **kwargs)
        marks.setdefault(name + "<", clock())
        return result

    setattr(owner, name, wrapper)


def _mark_async(owner: Any, name: str) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = await inner(*args, **kwargs)
        marks.setdefault(name + "<", clock())
        return result

    setattr(owner, name, wrapper)


def instrument() -> None:
    _mark_sync(pipeline, "JSONResponse")
    _mark_sync(checking, "check_output")
    # The route's parts, wrapped in place: the pipeline's endpoint holds this very Route.
    parts = types.SimpleNamespace(plan_chat=chat.CHAT.plan,
                                  upstream_chat_body=chat.CHAT.upstream_body,
                                  chat_completion=chat.CHAT.shape)
    for name in vars(parts):
        _mark_sync(parts, name)
    for field, name in (("plan", "plan_chat"), ("upstream_body", "upstream_chat_body"),
                        ("shape", "chat_completion")):
        object.__setattr__(chat.CHAT, field, getattr(parts, name))
    for name in ("read_json", "prepare"):
        _mark_async(pipeline, name)
    _mark_async(transport.Pool, "request")
    _mark_async(transport.Response, "read")
    _mark_sync(client, "_decode")
    send, received = transport._Connection.send, transport._Connection.data_received

    def on_send(self: transport._Connection, data: bytes) -> None:
        marks.setdefault("wire_write", clock())
        send(self, data)

    def on_data(self: transport._Connection, data: bytes) -> None:
        marks.setdefault("wire_data", clock())
        received(self, data)

    transport._Connection.send = on_send  # type: ignore[method-assign]
    transport._Connection.data_received = on_data  # type: ignore[method-assign]


async def measure(port: int, requests: int) -> dict[str, dict[str, float]]:
    app = create_app(Settings(upstream_url=f"http://127.0.0.1:{port}", auth_enabled=False,
                              max_inflight=256, canary=False))
    services = app.services
    await services.start()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
             "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"gw"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(BODY)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
             # as under `ir-gateway serve`: the connection signals a disconnect itself
             "extensions": {DISCONNECT_EXTENSION: DisconnectSignal()}}
    never = asyncio.Event()

    async def one() -> dict[str, float]:
        given = False

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": BODY, "more_body": False}
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                raise RuntimeError(f"the gateway answered {message['status']}")
            if message["type"] == "http.response.body":
                marks.setdefault("sent", clock())

        marks.clear()
        marks["start"] = clock()
        await app(dict(scope), receive, send)
        return dict(marks)

    async def series(gap_s: float) -> dict[str, float]:
        rows = []
        for _ in range(requests):
            if gap_s:
                await asyncio.sleep(gap_s)
            rows.append(await one())
        out, previous = {}, "start"
        for label, mark in STEPS:
            out[label] = median(r[mark] - r[previous] for r in rows) * 1e6
            previous = mark
        out["whole request"] = median(r["sent"] - r["start"] for r in rows) * 1e6
        gateway_only = [r["sent"] - r["start"] - (r["wire_data"] - r["wire_write"])
                        for r in rows]
        out["the gateway's own time"] = median(gateway_only) * 1e6
        return out

    try:
        for _ in range(300):
            await one()
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)  # as `ir-gateway serve` runs
        return {"warm": await series(0.0), "cold": await series(GAP_S)}
    finally:
        await services.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help=f"{REQUESTS // 10} requests per column, print only")
    args = parser.parse_args()
    requests = REQUESTS // 10 if args.quick else REQUESTS
    restart_on_huge_pages()  # the heap `ir-gateway serve` runs with (gateway/server/runtime.py)
    exit_on_signals()
    instrument()
    fake, port = start_fake()
    try:
        result = uvloop.run(measure(port, requests))
    finally:
        fake.close()
    warm, cold = result["warm"], result["cold"]
    lines = [
        "# Where a request's time goes inside the gateway, warm and cold",
        "",
        f"Generated by `.venv/bin/python bench/critical_path.py` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {requests} named-schema requests per "
        "column, medians, µs. Method in the script's docstring.",
        "",
        "| step | warm (back to back) | cold (5 ms idle before each) | cold / warm |",
        "|---|---|---|---|",
    ]
    for label in [label for label, _ in STEPS] + ["whole request", "the gateway's own time"]:
        lines.append(f"| {label} | {warm[label]:.0f} | {cold[label]:.0f} | "
                     f"{cold[label] / max(warm[label], 0.1):.1f}x |")
    own_warm, own_cold = warm["the gateway's own time"], cold["the gateway's own time"]
    lines += [
        "",
        f"The same code costs {own_cold / own_warm:.1f}x as much time when each request "
        f"follows 5 ms of idleness ({own_cold:.0f} vs {own_warm:.0f} µs of the gateway's own "
        "time, vLLM's share left out; the timestamps themselves add a few µs per step). The "
        "likely reason: on these VMs 5 ms is long enough for the rest of the host to take "
        "the caches, TLBs and branch history this code needs (keeping both vCPUs busy "
        "meanwhile recovers only a little: bench/README.md), so at 200 req/s every step of "
        "the request runs cold (this harness runs with the heap on huge pages, as "
        "`ir-gateway serve` does: `gateway/server/runtime.py`). "
        "No single step dominates; the cost is spread over every piece of Python the "
        "request passes, so what shortens the cold path is less code on it, not a faster "
        "hot spot.",
        "",
    ]
    print("\n".join(lines))
    if not args.quick:
        RESULTS.write_text("\n".join(lines))
        print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
