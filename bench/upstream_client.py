"""Benchmark pooled async HTTP clients for the gateway -> vLLM upstream hop.

Usage::

    python bench/upstream_client.py            # full run (~1-2 min), writes bench/results/
    python bench/upstream_client.py --quick    # smoke run (~10 s), same output format

A zero-latency fake upstream (uvicorn + httptools + uvloop, raw ASGI app, one
process) is started as a child process on 127.0.0.1.  It answers
``POST /v1/chat/completions`` with a fixed ~1 KB ``chat.completion`` JSON body, or,
when the request JSON has ``"stream": true``, with 30 SSE ``data:`` chunks and
``data: [DONE]``.  Every client is then measured in this process, in interleaved
rounds, on the same event loop implementation the gateway runs under (uvloop by
default, as with ``uvicorn[standard]``):

1. sequential non-streaming POST of a ~1.5 KB JSON body: p50/p99 latency;
2. 32 concurrent workers, non-streaming: requests/s over a fixed request count;
3. sequential streaming: time to read every SSE line (p50/p99);
4. client-process CPU time per request (``time.process_time`` delta / count) for each.

Response bodies are read fully but not JSON-decoded: decoding costs the same with
every client, so leaving it out keeps the transport differences visible.

All traffic stays on 127.0.0.1; every loop is bounded by a count and by a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import gc
import importlib.metadata
import os
import platform
import select
import socket
import statistics
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
CONCURRENCY = 32
PROFILED_REQUESTS = 200  # sequential requests run under cProfile to count Python calls
STREAM_CHUNKS = 30
REQUEST_TIMEOUT_S = 30.0
PHASE_TIMEOUT_S = 60.0  # hard cap per measured phase
TOTAL_BUDGET_S = 160.0  # no new round starts if the previous one says it would end later
SERVER_START_TIMEOUT_S = 20.0
SERVER_MAX_LIFETIME_S = 600.0  # the fake upstream exits by itself after this
RESULTS_MD = Path(__file__).resolve().parent / "results" / "upstream_client.md"

# --------------------------------------------------------------------------------------
# Payloads (shared by server and client)
# --------------------------------------------------------------------------------------

MODEL = "Qwen/Qwen2.5-7B-Instruct"


def _pad(text: str, size: int) -> str:
    return (text * (size // len(text) + 1))[:size]


def build_request_body(stream: bool) -> bytes:
    """A ~1.5 KB OpenAI chat request with a json_schema response_format."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {
                "role": "system",
                "content": "You extract structured records. Answer with JSON only.",
            },
            {
                "role": "user",
                "content": _pad("Invoice 2024-118 from ACME GmbH, total 1,234.50 EUR. ", 720),
            },
        ],
        "temperature": 0.0,
        "max_tokens": 256,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "invoice",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {
                        "number": {"type": "string"},
                        "vendor": {"type": "string"},
                        "total": {"type": "number"},
                        "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
                    },
                    "required": ["number", "vendor", "total", "currency"],
                    "additionalProperties": False,
                },
            },
        },
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def build_completion_body() -> bytes:
    """A fixed ~1 KB ``chat.completion`` response."""
    content = orjson.dumps(
        {
            "number": "2024-118",
            "vendor": "ACME GmbH",
            "total": 1234.5,
            "currency": "EUR",
            "notes": _pad("line item widget x4; ", 420),
        }
    ).decode()
    body = {
        "id": "chatcmpl-6f1c2e9a4b7d4e0f9a3c1b2d5e8f7a60",
        "object": "chat.completion",
        "created": 1732700000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "tool_calls": []},
                "logprobs": None,
                "finish_reason": "stop",
                "stop_reason": None,
            }
        ],
        "usage": {"prompt_tokens": 312, "total_tokens": 468, "completion_tokens": 156},
        "prompt_logprobs": None,
    }
    return orjson.dumps(body)


def build_sse_chunks() -> list[bytes]:
    """30 ``chat.completion.chunk`` events plus ``data: [DONE]``, as vLLM sends them."""
    chunks: list[bytes] = []
    for i in range(STREAM_CHUNKS):
        delta: dict[str, Any] = {"content": f"tok{i:03d} "}
        if i == 0:
            delta = {"role": "assistant", "content": ""}
        event = {
            "id": "chatcmpl-6f1c2e9a4b7d4e0f9a3c1b2d5e8f7a60",
            "object": "chat.completion.chunk",
            "created": 1732700000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": "stop" if i == STREAM_CHUNKS - 1 else None,
                }
            ],
        }
        chunks.append(b"data: " + orjson.dumps(event) + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return chunks


# --------------------------------------------------------------------------------------
# Fake upstream (runs in a child process: ``--serve``)
# --------------------------------------------------------------------------------------


def serve_main() -> None:
    """Run the fake upstream; print the bound port on stdout; exit when the parent dies."""
    import uvicorn
    import uvloop

    completion = build_completion_body()
    chunks = build_sse_chunks()
    json_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(completion)).encode()),
    ]
    sse_headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

    async def app(
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] != PATH:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        parts: list[bytes] = []
        for _ in range(10_000):  # bounded: request bodies here are a few KB
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        stream = b'"stream"' in body and orjson.loads(body).get("stream") is True
        if not stream:
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": completion})
            return
        await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0)  # one write per event, as a token stream produces
        await send({"type": "http.response.body", "body": b""})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(2048)
    config = uvicorn.Config(
        app,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_keep_alive=60,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    parent = os.getppid()

    async def watchdog() -> None:
        for _ in range(int(SERVER_MAX_LIFETIME_S / 0.5)):  # bounded lifetime
            if os.getppid() != parent:  # parent died: do not linger
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


class Upstream:
    """Handle on the fake upstream child process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], SERVER_START_TIMEOUT_S)
        if not ready:
            self.close()
            raise RuntimeError("fake upstream did not start in time")
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.close()
            raise RuntimeError(f"fake upstream failed to start: {line!r}")
        self.port = int(line)
        self.url = f"http://{HOST}:{self.port}{PATH}"
        self._clk_tck = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        """User+system CPU time used so far by the server process (Linux /proc)."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return float("nan")
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._clk_tck

    def wait_listening(self) -> None:
        for _ in range(100):
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("fake upstream is not accepting connections")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


# --------------------------------------------------------------------------------------
# Client adapters
# --------------------------------------------------------------------------------------

JSON_HEADERS = {"content-type": "application/json"}


class Adapter(ABC):
    """One pooled client; ``post`` returns the body size, ``stream`` the data-line count."""

    name: str

    @abstractmethod
    async def post(self, body: bytes) -> int: ...

    @abstractmethod
    async def stream(self, body: bytes) -> int: ...

    @abstractmethod
    async def aclose(self) -> None: ...


class HttpxAdapter(Adapter):
    """httpx (or the API-compatible httpx2) AsyncClient, HTTP/1.1, pool sized to 32."""

    def __init__(self, module_name: str, url: str) -> None:
        mod: Any = importlib.import_module(module_name)
        self.name = f"{module_name}.AsyncClient"
        self.url = url
        limits = mod.Limits(
            max_connections=CONCURRENCY,
            max_keepalive_connections=CONCURRENCY,
            keepalive_expiry=60.0,
        )
        self.client: Any = mod.AsyncClient(
            http1=True,
            http2=False,
            limits=limits,
            timeout=mod.Timeout(REQUEST_TIMEOUT_S),
            trust_env=False,
            headers=JSON_HEADERS,
        )

    async def post(self, body: bytes) -> int:
        resp = await self.client.post(self.url, content=body)
        if resp.status_code != 200:
            raise RuntimeError(f"status {resp.status_code}")
        return len(resp.content)

    async def stream(self, body: bytes) -> int:
        n = 0
        async with self.client.stream("POST", self.url, content=body) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"status {resp.status_code}")
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    n += 1
        return n

    async def aclose(self) -> None:
        await self.client.aclose()


class AiohttpAdapter(Adapter):
    """aiohttp ClientSession over a pooled TCPConnector; ``tuned`` trims per-request work."""

    def __init__(self, url: str, tuned: bool) -> None:
        import aiohttp
        import yarl

        self.url: str | yarl.URL
        if tuned:
            self.name = "aiohttp (tuned)"
            connector = aiohttp.TCPConnector(
                limit=CONCURRENCY,
                limit_per_host=CONCURRENCY,
                keepalive_timeout=60.0,
                use_dns_cache=True,
                ttl_dns_cache=None,
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                headers=JSON_HEADERS,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
            self.url = yarl.URL(url)  # parsed once instead of per request
        else:
            self.name = "aiohttp.ClientSession"
            connector = aiohttp.TCPConnector(
                limit=CONCURRENCY, limit_per_host=CONCURRENCY, keepalive_timeout=60.0
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                headers=JSON_HEADERS,
            )
            self.url = url

    async def post(self, body: bytes) -> int:
        async with self.session.post(self.url, data=body) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            return len(data)

    async def stream(self, body: bytes) -> int:
        n = 0
        async with self.session.post(self.url, data=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            async for line in resp.content:
                if line.startswith(b"data:"):
                    n += 1
        return n

    async def aclose(self) -> None:
        await self.session.close()


class GatewayTransportAdapter(Adapter):
    """The gateway's own keep-alive pool over httptools (gateway/upstream/transport.py)."""

    name = "ir-gateway transport"

    def __init__(self, url: str) -> None:
        from urllib.parse import urlsplit

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from gateway.upstream.transport import Pool

        parts = urlsplit(url)
        self.path = parts.path
        self.pool = Pool(f"{parts.scheme}://{parts.netloc}", size=CONCURRENCY, keepalive_s=60.0,
                         connect_timeout_s=5.0, read_timeout_s=REQUEST_TIMEOUT_S,
                         headers=list(JSON_HEADERS.items()))

    async def post(self, body: bytes) -> int:
        resp = await self.pool.request("POST", self.path, body)
        data = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}")
        return len(data)

    async def stream(self, body: bytes) -> int:
        from gateway.upstream.client import _sse_data  # the gateway's own SSE reader

        resp = await self.pool.request("POST", self.path, body)
        try:
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            return sum([1 async for _ in _sse_data(resp)])
        finally:
            resp.release()

    async def aclose(self) -> None:
        await self.pool.aclose()


def adapter_factories(url: str) -> list[tuple[str, Callable[[], Adapter]]]:
    factories: list[tuple[str, Callable[[], Adapter]]] = [
        ("httpx.AsyncClient", lambda: HttpxAdapter("httpx", url)),
        ("aiohttp.ClientSession", lambda: AiohttpAdapter(url, tuned=False)),
        ("aiohttp (tuned)", lambda: AiohttpAdapter(url, tuned=True)),
        ("ir-gateway transport", lambda: GatewayTransportAdapter(url)),
    ]
    try:
        importlib.import_module("httpx2")
    except ImportError:
        pass
    else:  # present as a dependency of the openai SDK; cheap to include
        factories.append(("httpx2.AsyncClient", lambda: HttpxAdapter("httpx2", url)))
    return factories


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------


@dataclass
class Sizes:
    rounds: int
    warmup: int
    seq: int
    conc: int
    stream: int
    rounds_done: int = 0


# Per round and client; latency samples are pooled over rounds (3 x 1000 = 3000 sequential).
FULL = Sizes(rounds=3, warmup=200, seq=1000, conc=2000, stream=400)
QUICK = Sizes(rounds=1, warmup=50, seq=300, conc=600, stream=100)


@dataclass
class Result:
    name: str
    seq_lat_us: list[float] = field(default_factory=list)
    seq_cpu_us: list[float] = field(default_factory=list)
    conc_rps: list[float] = field(default_factory=list)
    conc_lat_us: list[float] = field(default_factory=list)
    conc_cpu_us: list[float] = field(default_factory=list)
    conc_client_cpu_pct: list[float] = field(default_factory=list)
    conc_server_cpu_pct: list[float] = field(default_factory=list)
    stream_lat_us: list[float] = field(default_factory=list)
    stream_cpu_us: list[float] = field(default_factory=list)
    py_calls_per_req: float = float("nan")
    errors: int = 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


async def run_sequential(
    call: Callable[[bytes], Awaitable[int]], body: bytes, n: int, expect: int
) -> tuple[list[float], float, int]:
    """n sequential calls; returns (latencies in µs, CPU seconds, errors)."""
    lat: list[float] = []
    errors = 0
    gc.collect()
    cpu0 = time.process_time()
    try:
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            for _ in range(n):
                t0 = time.perf_counter_ns()
                got = await call(body)
                lat.append((time.perf_counter_ns() - t0) / 1000)
                if got != expect:
                    errors += 1
    except TimeoutError:
        print(f"    phase cut at {PHASE_TIMEOUT_S:.0f} s after {len(lat)}/{n} calls", flush=True)
    return lat, time.process_time() - cpu0, errors


async def run_concurrent(
    adapter: Adapter, body: bytes, n: int, expect: int
) -> tuple[float, list[float], float, int]:
    """n calls spread over CONCURRENCY workers; returns (wall s, lat µs, cpu s, errors)."""
    remaining = n
    lat: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal remaining, errors
        for _ in range(n):  # bounded; exits as soon as the shared budget is used up
            if remaining <= 0:
                return
            remaining -= 1
            t0 = time.perf_counter_ns()
            got = await adapter.post(body)
            lat.append((time.perf_counter_ns() - t0) / 1000)
            if got != expect:
                errors += 1

    gc.collect()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    except TimeoutError:
        print(f"    phase cut at {PHASE_TIMEOUT_S:.0f} s after {len(lat)}/{n} calls", flush=True)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return wall, lat, cpu, errors


async def count_python_calls(adapter: Adapter, body: bytes, n: int) -> float:
    """Python-level function calls per sequential request (cProfile; load-independent)."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            for _ in range(n):
                await adapter.post(body)
    finally:
        profiler.disable()
    return sum(entry.callcount for entry in profiler.getstats()) / n


async def measure_round(
    name: str,
    factory: Callable[[], Adapter],
    upstream: Upstream,
    sizes: Sizes,
    result: Result,
) -> None:
    req = build_request_body(stream=False)
    req_stream = build_request_body(stream=True)
    expect_len = len(build_completion_body())
    expect_lines = STREAM_CHUNKS + 1
    adapter = factory()
    try:
        # Warm-up: fill the pool to CONCURRENCY connections, prime code paths.
        await run_sequential(adapter.post, req, sizes.warmup, expect_len)
        await run_concurrent(adapter, req, CONCURRENCY * 10, expect_len)
        await run_sequential(adapter.stream, req_stream, sizes.warmup // 5, expect_lines)

        seq_lat, cpu, err = await run_sequential(adapter.post, req, sizes.seq, expect_len)
        result.seq_lat_us += seq_lat
        result.seq_cpu_us.append(cpu / max(1, len(seq_lat)) * 1e6)
        result.errors += err

        srv0 = upstream.cpu_seconds()
        wall, clat, cpu, err = await run_concurrent(adapter, req, sizes.conc, expect_len)
        srv = upstream.cpu_seconds() - srv0
        result.conc_rps.append(len(clat) / wall)
        result.conc_lat_us += clat
        result.conc_cpu_us.append(cpu / max(1, len(clat)) * 1e6)
        result.conc_client_cpu_pct.append(100 * cpu / wall)
        result.conc_server_cpu_pct.append(100 * srv / wall)
        result.errors += err

        st_lat, cpu, err = await run_sequential(
            adapter.stream, req_stream, sizes.stream, expect_lines
        )
        result.stream_lat_us += st_lat
        result.stream_cpu_us.append(cpu / max(1, len(st_lat)) * 1e6)
        result.errors += err

        if result.py_calls_per_req != result.py_calls_per_req:  # NaN: first round only
            result.py_calls_per_req = await count_python_calls(adapter, req, PROFILED_REQUESTS)
    finally:
        await adapter.aclose()
    print(
        f"  {name:<22} seq p50 {pct(seq_lat, 50):7.0f} us | "
        f"c32 {result.conc_rps[-1]:8.0f} req/s | "
        f"stream p50 {pct(st_lat, 50):7.0f} us",
        flush=True,
    )


async def bench(upstream: Upstream, sizes: Sizes, started: float) -> list[Result]:
    factories = adapter_factories(upstream.url)
    results = {name: Result(name) for name, _ in factories}
    last_round = 0.0
    for rnd in range(sizes.rounds):
        if time.monotonic() - started + last_round > TOTAL_BUDGET_S:
            print(f"time budget reached, stopping after {rnd} round(s)", flush=True)
            break
        print(f"round {rnd + 1}/{sizes.rounds}", flush=True)
        round_start = time.monotonic()
        # Rotate the order each round so no client always runs first/last.
        order = factories[rnd % len(factories) :] + factories[: rnd % len(factories)]
        for name, factory in order:
            await measure_round(name, factory, upstream, sizes, results[name])
        last_round = time.monotonic() - round_start
        sizes.rounds_done = rnd + 1
    return [results[name] for name, _ in factories]


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread_pct(values: list[float]) -> float:
    """(max - min) / median across rounds, in %."""
    if len(values) < 2:
        return 0.0
    return 100 * (max(values) - min(values)) / statistics.median(values)


def versions() -> str:
    names = ["httpx", "httpcore", "httpx2", "httpcore2", "aiohttp", "yarl", "multidict"]
    names += ["uvicorn", "httptools", "uvloop", "orjson", "anyio", "h11"]
    out: list[str] = []
    for n in names:
        try:
            out.append(f"{n} {importlib.metadata.version(n)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(out)


def table(results: list[Result]) -> str:
    head = (
        "| client | seq p50 µs | seq p99 µs | seq CPU µs/req "
        "| c32 req/s (spread) | c32 req/s per client core | c32 p50 / p99 µs | c32 CPU µs/req "
        "| c32 CPU client / server "
        "| stream p50 µs | stream p99 µs | stream CPU µs/req | Python calls/req | errors |"
    )
    sep = "|" + "---|" * 14
    rows = [head, sep]
    for r in results:
        spread = f"(±{spread_pct(r.conc_rps) / 2:.0f}%)" if len(r.conc_rps) > 1 else "(1 round)"
        rows.append(
            f"| {r.name} "
            f"| {pct(r.seq_lat_us, 50):.0f} | {pct(r.seq_lat_us, 99):.0f} "
            f"| {med(r.seq_cpu_us):.0f} "
            f"| {med(r.conc_rps):,.0f} {spread} "
            f"| {1e6 / med(r.conc_cpu_us):,.0f} "
            f"| {pct(r.conc_lat_us, 50):.0f} / {pct(r.conc_lat_us, 99):.0f} "
            f"| {med(r.conc_cpu_us):.0f} "
            f"| {med(r.conc_client_cpu_pct):.0f}% / {med(r.conc_server_cpu_pct):.0f}% "
            f"| {pct(r.stream_lat_us, 50):.0f} | {pct(r.stream_lat_us, 99):.0f} "
            f"| {med(r.stream_cpu_us):.0f} | {r.py_calls_per_req:,.0f} | {r.errors} |"
        )
    return "\n".join(rows)


def conclusion(results: list[Result], background_pct: float) -> str:
    """Winner = lowest client CPU per request at c32 (robust to other load on the box)."""
    by_name = {r.name: r for r in results}
    hx = by_name["httpx.AsyncClient"]
    aio = by_name["aiohttp.ClientSession"]
    tuned = by_name["aiohttp (tuned)"]
    win = min(results, key=lambda r: med(r.conc_cpu_us))
    fastest = max(results, key=lambda r: med(r.conc_rps))

    def x(a: float, b: float) -> str:
        return f"{a / b:.1f}x"

    text = (
        f"**Winner: {win.name}.** Against httpx.AsyncClient it needs "
        f"{x(med(hx.conc_cpu_us), med(win.conc_cpu_us))} less client CPU per request at "
        f"concurrency 32 ({med(win.conc_cpu_us):.0f} vs {med(hx.conc_cpu_us):.0f} µs, i.e. "
        f"{1e6 / med(win.conc_cpu_us):,.0f} vs {1e6 / med(hx.conc_cpu_us):,.0f} req/s per "
        f"core) and {x(med(hx.seq_cpu_us), med(win.seq_cpu_us))} less sequentially "
        f"({med(win.seq_cpu_us):.0f} vs {med(hx.seq_cpu_us):.0f} µs); measured c32 "
        f"throughput is {x(med(win.conc_rps), med(hx.conc_rps))} "
        f"({med(win.conc_rps):,.0f} vs {med(hx.conc_rps):,.0f} req/s), sequential p50 latency "
        f"{pct(win.seq_lat_us, 50):.0f} vs {pct(hx.seq_lat_us, 50):.0f} µs and p50 time to "
        f"read a 30-chunk SSE stream {pct(win.stream_lat_us, 50):.0f} vs "
        f"{pct(hx.stream_lat_us, 50):.0f} µs. It executes "
        f"{x(hx.py_calls_per_req, win.py_calls_per_req)} fewer Python function calls per "
        f"request ({win.py_calls_per_req:,.0f} vs {hx.py_calls_per_req:,.0f}, with a warm "
        f"{CONCURRENCY}-connection pool), a load-independent count that explains the gap."
    )
    if fastest is not win:
        text += f" (Highest raw c32 req/s: {fastest.name}.)"
    if win in (aio, tuned):
        other = tuned if win is aio else aio
        diff = 100 * (med(other.conc_cpu_us) / med(win.conc_cpu_us) - 1)
        rounds = min(len(aio.conc_cpu_us), len(tuned.conc_cpu_us))
        noise = max(spread_pct(aio.conc_cpu_us), spread_pct(tuned.conc_cpu_us)) / 2
        if rounds < 2:
            noise_text, threshold = "one round only, noise not estimated", 25.0
        else:
            noise_text, threshold = f"round-to-round noise ±{noise:.0f}%", max(noise, 5.0)
        verdict = "a real difference" if abs(diff) > threshold else "not significant"
        if background_pct > 15:
            verdict = "unconfirmed, since other load was high; rerun on an idle machine"
        text += (
            f" The two aiohttp configurations differ by {abs(diff):.0f}% in c32 CPU/request "
            f"({other.name} {'higher' if diff > 0 else 'lower'}; {noise_text}): {verdict}."
        )
    hx2 = by_name.get("httpx2.AsyncClient")
    if hx2 is not None and hx2 is not win:
        text += (
            f" httpx2 (the openai SDK's transport) is no alternative: "
            f"{med(hx2.conc_cpu_us):.0f} µs CPU/request at c32."
        )
    client_busy, server_busy = med(win.conc_client_cpu_pct), med(win.conc_server_cpu_pct)
    if server_busy >= 90:
        text += (
            f" The fake upstream was {server_busy:.0f}% busy in the winner's c32 phase and "
            "capped its req/s; the real gap is at least as large as shown."
        )
    elif client_busy >= 90:
        text += " The client process saturated its core at c32, as intended."
    else:
        text += (
            f" Neither process saturated a core in the winner's c32 phase (client "
            f"{client_busy:.0f}%, upstream {server_busy:.0f}%): scheduling and other load "
            "limited wall-clock req/s, so the CPU/request figures are the ones to trust."
        )
    own = by_name.get("ir-gateway transport")
    if own is not None:
        best_aio = min(aio, tuned, key=lambda r: med(r.conc_cpu_us))
        text += (
            f" The gateway's own transport (a keep-alive pool of asyncio protocols parsed by "
            f"httptools) against the better aiohttp configuration: "
            f"{med(own.conc_cpu_us):.0f} vs {med(best_aio.conc_cpu_us):.0f} µs client CPU per "
            f"request at c32, {med(own.seq_cpu_us):.0f} vs {med(best_aio.seq_cpu_us):.0f} µs "
            f"sequentially, {own.py_calls_per_req:,.0f} vs {best_aio.py_calls_per_req:,.0f} "
            "Python calls per request. It was written after bench/overhead.py showed aiohttp "
            "to be the largest single cost in the gateway; it is what the gateway uses."
        )
    return text


def system_busy_seconds() -> float:
    """Busy (non-idle) CPU seconds of the whole machine so far, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    ticks = [int(x) for x in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class RunInfo:
    loop_name: str
    wall_s: float
    background_pct: float  # CPU used by other processes during the run, % of one core
    loadavg_start: tuple[float, float, float]


def write_report(results: list[Result], sizes: Sizes, info: RunInfo, out: Path) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = (
        f"- date: {now}\n"
        f"- machine: nproc {len(os.sched_getaffinity(0))}, {cpu_model()}, "
        f"{platform.platform()}\n"
        f"- python: {platform.python_implementation()} {platform.python_version()}; "
        f"client event loop: {info.loop_name}\n"
        f"- packages: {versions()}\n"
        f"- sizes: {sizes.rounds_done} interleaved rounds x (seq {sizes.seq}, "
        f"c{CONCURRENCY} {sizes.conc}, stream {sizes.stream}) requests per client and round, "
        f"after warm-up; run took {info.wall_s:.0f} s\n"
        f"- other load: load average {info.loadavg_start[0]:.2f} at start; other processes "
        f"used {info.background_pct:.0f}% of one core on average during the run\n"
    )
    if info.background_pct > 15:
        machine += (
            "- **warning:** other processes competed for the 2 cores during this run; "
            "wall-clock numbers (latency, req/s) are inflated, CPU µs/req and the ratios "
            "between clients are the more reliable figures\n"
        )
    method = (
        "Fake upstream: separate process, uvicorn + httptools + uvloop, raw ASGI app on "
        "127.0.0.1, zero latency; ~1 KB `chat.completion` JSON, or 30 SSE chunks + "
        '`data: [DONE]` when `"stream": true` (one write per chunk). Request body: '
        f"{len(build_request_body(False))} bytes; response body: "
        f"{len(build_completion_body())} bytes. Latency percentiles pool all rounds; "
        "req/s and CPU are the median of rounds (± = half the max-min spread). "
        "CPU µs/req = `time.process_time()` delta / count in the client process. "
        "'c32 CPU client / server' = CPU utilisation of each process during the c32 phase "
        "(100% = one full core); 'req/s per client core' = 1e6 / (c32 CPU µs/req), the "
        "throughput one fully used core would give, which is robust to other load. "
        "'Python calls/req' = function calls recorded by cProfile per sequential request "
        f"({PROFILED_REQUESTS} requests, first round, pool already holding {CONCURRENCY} "
        "connections); a count, so unaffected by other load. "
        "Bodies are read fully, not JSON-decoded. Streaming reads line by line with each "
        "library's line iterator (`aiter_lines()` / "
        "`async for line in resp.content`). aiohttp (tuned) = `auto_decompress=False`, "
        "no auto User-Agent/Accept-Encoding, pre-parsed `yarl.URL`, DNS cache without TTL."
    )
    md = (
        "# Upstream HTTP client benchmark (gateway -> vLLM hop)\n\n"
        "Generated by `python bench/upstream_client.py`.\n\n"
        f"{machine}\n## Results\n\n{table(results)}\n\n## Method\n\n{method}\n\n"
        f"## Conclusion\n\n{conclusion(results, info.background_pct)}\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    return md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts, one round")
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="client event loop"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_MD, help=f"markdown report (default {RESULTS_MD})"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_main()
        return

    sizes = replace(QUICK if args.quick else FULL)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop

    started = time.monotonic()
    loadavg = os.getloadavg()
    upstream = Upstream()
    try:
        upstream.wait_listening()
        print(f"fake upstream pid {upstream.proc.pid} on {upstream.url}", flush=True)
        busy0, own0, t0 = system_busy_seconds(), time.process_time(), time.monotonic()
        srv0 = upstream.cpu_seconds()
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            results = runner.run(bench(upstream, sizes, started))
        own = time.process_time() - own0 + upstream.cpu_seconds() - srv0
        other = system_busy_seconds() - busy0 - own
        background = max(0.0, 100 * other / (time.monotonic() - t0))
    finally:
        upstream.close()
    info = RunInfo(args.loop, time.monotonic() - started, background, loadavg)
    md = write_report(results, sizes, info, args.out)
    print()
    print(md)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
