"""Gateway overhead benchmark: added latency, highest sustained rate and memory.

Usage::

    .venv/bin/python bench/overhead.py            # full run (~3-4 min), writes bench/results/
    .venv/bin/python bench/overhead.py --quick    # smoke run (< 1 min), same output format

What it measures (the issue's overhead budget):

* a zero-latency fake vLLM runs in its own process (uvicorn + httptools + uvloop, raw ASGI
  app on 127.0.0.1). It answers ``GET /version``, ``GET /v1/models`` and
  ``POST /v1/chat/completions``; the latter with a ``chat.completion`` whose content is a
  valid compact ``function_ir`` document, plus usage;
* the gateway runs as a separate process, one worker (``ir-gateway serve``), auth off; a
  second gateway process with auth on (a key store with one generous key, in-memory
  limiter) runs next to it for the auth+limits figure, and a third with tracing on
  (OTEL_EXPORTER_OTLP_ENDPOINT at the fake, which sinks OTLP/HTTP exports) for tracing's cost;
* the load generator (this process, aiohttp on uvloop, one pooled session per target) sends
  an open-loop stream at a fixed arrival rate: sends are scheduled by the clock and never
  wait for earlier responses, and latency is measured from each request's *scheduled* send
  time to the end of its response body, so queueing anywhere (client, gateway, fake) counts;
* at 200 req/s the same open loop goes to the fake directly (model ``qwen-coder`` plus the
  exact ``response_format`` and ``max_tokens`` the gateway adds), to the gateway, and to the
  gateway with auth, and to the *floor* (a proxy with no logic on the same server and client
  stack: what any Python gateway built from these parts costs here), in interleaved rounds
  so machine noise hits all four alike. Requests are not paired, so "added latency" is the
  difference of percentiles (gateway p50 - direct p50, gateway p99 - direct p99), not a
  percentile of differences;
* highest sustained rate: the open-loop rate is stepped up until p99 > 50 ms, any error,
  or achieved rate < 95% of the target; the last passing step is reported. A closed loop
  with 32 concurrent workers gives a throughput figure as well;
* every gateway answer must be 200 with ``x-irgw-output: passed``; anything else counts as
  an error. Gateway RSS (``/proc/<pid>/status`` VmRSS) is sampled every 50 ms throughout.

All traffic stays on 127.0.0.1; every loop is bounded by a count and by a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gateway.server.runtime import glibc_version, huge_page_environment, thp_mode  # noqa: E402
from tests.ir_samples import FUNCTION_IR  # noqa: E402  (the same answer the unit tests use)

HOST = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"
UPSTREAM_MODEL = "qwen-coder"
RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_MD = RESULTS / "overhead.md"
RESULTS_PNG = RESULTS / "overhead.png"
RESULTS_JSON = RESULTS / "overhead.json"
SCHEMA_FILE = REPO / "schemas" / "function_ir.v1.json"

BUDGET_P50_MS = 1.0
BUDGET_P99_MS = 5.0
BUDGET_RATE = 200
MAX_RATE_P99_MS = 50.0
MAX_RATE_ACHIEVED = 0.95
REQUEST_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0
CHILD_MAX_LIFETIME_S = 900.0  # the fake upstream exits by itself after this
TOTAL_BUDGET_S = 270.0  # no new rate step starts after this much wall time
USER_CONTENT = "IR for a function that adds two ints"
LITELLM_MS = 4.0
BIFROST_MS = 0.5



@dataclass(frozen=True)
class Sizes:
    rounds: int  # interleaved rounds at 200 req/s (direct, gateway, gateway+auth)
    round_s: float  # seconds per target per round
    warmup_s: float  # per target, at 200 req/s, before the rounds
    step_s: float  # seconds per rate step
    step_rate: int  # rate increment
    max_steps: int
    closed_s: float  # closed-loop c32 duration per target
    closed_max: int  # and request cap
    seq_rounds: int  # interleaved rounds of sequential (one at a time) requests
    seq_s: float  # seconds per target per sequential round


FULL = Sizes(rounds=3, round_s=7.0, warmup_s=3.0, step_s=5.0, step_rate=200, max_steps=15,
             closed_s=8.0, closed_max=40_000, seq_rounds=2, seq_s=3.0)
QUICK = Sizes(rounds=1, round_s=4.0, warmup_s=1.0, step_s=2.0, step_rate=400, max_steps=5,
              closed_s=2.0, closed_max=10_000, seq_rounds=1, seq_s=1.5)


# --------------------------------------------------------------------------------------
# Payloads
# --------------------------------------------------------------------------------------


def gateway_body() -> bytes:
    return orjson.dumps({"model": "schema/function_ir",
                         "messages": [{"role": "user", "content": USER_CONTENT}]})


def direct_body() -> bytes:
    """What the gateway sends vLLM for `gateway_body()`: model, constraint, max_tokens."""
    schema = json.loads(SCHEMA_FILE.read_text())["schema"]
    return orjson.dumps({
        "model": UPSTREAM_MODEL,
        "messages": [{"role": "user", "content": USER_CONTENT}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "function_ir", "schema": schema, "strict": True},
        },
        "max_tokens": 1024,
    })


def completion_body() -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-6f1c2e9a4b7d4e0f9a3c1b2d5e8f7a60",
        "object": "chat.completion",
        "created": 1732700000,
        "model": UPSTREAM_MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": orjson.dumps(FUNCTION_IR).decode(),
                        "tool_calls": []},
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
        }],
        "usage": {"prompt_tokens": 212, "total_tokens": 268, "completion_tokens": 56},
        "prompt_logprobs": None,
    })


# --------------------------------------------------------------------------------------
# Fake vLLM (child process: ``--serve-fake``)
# --------------------------------------------------------------------------------------


async def read_body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
    chunks = []
    for _ in range(10_000):  # bounded: bodies here are a few KB
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def fake_main() -> None:
    """Serve the fake vLLM; print the bound port on stdout; exit when the parent dies."""
    Scope = dict[str, Any]
    Receive = Callable[[], Awaitable[dict[str, Any]]]
    Send = Callable[[dict[str, Any]], Awaitable[None]]

    def json_reply(body: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
        return [(b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())], body

    completion = json_reply(completion_body())
    version = json_reply(b'{"version":"0.32.0"}')
    models = json_reply(orjson.dumps({"object": "list", "data": [
        {"id": UPSTREAM_MODEL, "object": "model", "created": 1732700000, "owned_by": "vllm",
         "max_model_len": 32768}]}))
    stats = {"chat": 0, "last_body_bytes": 0}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        reply: tuple[list[tuple[bytes, bytes]], bytes] | None = None
        if method == "POST" and path == CHAT_PATH:
            size = len(await read_body(receive))
            stats["chat"] += 1
            stats["last_body_bytes"] = size
            reply = completion
        elif method == "GET" and path == "/version":
            reply = version
        elif method == "GET" and path == "/v1/models":
            reply = models
        elif method == "GET" and path == "/stats":
            reply = json_reply(orjson.dumps(stats))
        elif method == "POST" and path == "/v1/traces":  # the OTLP/HTTP sink for tracing on
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

    serve_child(app)


def floor_main(upstream_port: int) -> None:
    """A proxy with no logic at all on the gateway's own stack: its server protocol
    (gateway/server/protocol.py: uvicorn's httptools protocol with coalesced writes) on uvloop in
    front, the gateway's own upstream transport (`UpstreamClient.pool`) behind. It forwards
    the body as it came and the answer as it came. Its added latency is the floor for any
    Python gateway built from these parts on this machine."""
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
        status = reply.status
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    from gateway.server.protocol import GatewayHttpProtocol

    serve_child(app, http=GatewayHttpProtocol)


def serve_child(app: Any, http: Any = "httptools") -> None:
    """Serve a raw ASGI app on a free port; print the port; exit when the parent dies.
    The fake stands for vLLM, which is served by plain uvicorn: `http` stays httptools."""
    import uvicorn
    import uvloop

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(4096)
    config = uvicorn.Config(app, loop="none", http=http, lifespan="off",
                            access_log=False, log_level="warning", server_header=False,
                            date_header=False, timeout_keep_alive=120, backlog=4096)
    server = uvicorn.Server(config)
    parent = os.getppid()

    async def watchdog() -> None:
        for _ in range(int(CHILD_MAX_LIFETIME_S / 0.5)):  # bounded lifetime
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


# --------------------------------------------------------------------------------------
# Child processes and /proc readings
# --------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when this benchmark dies (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_queue_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (schedstat field 2)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[1])
    except OSError:
        return float("nan")
    return total / 1e9


def system_busy_seconds() -> float:
    """Busy (non-idle, non-iowait) CPU seconds of the whole machine, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.name = name
        self.log = log
        stderr: Any = subprocess.DEVNULL
        if log is not None:
            stderr = log.open("wb")  # closed when the child exits (fd inherited)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=stderr, env=env, preexec_fn=_die_with_parent)
        self.pid = self.proc.pid

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmRSS")

    def log_tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-2000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_fake() -> tuple[Child, int]:
    return start_child("fake", "--serve-fake")


def start_floor(upstream_port: int) -> tuple[Child, int]:
    # The process set-up `ir-gateway serve` gives itself (gateway/server/runtime.py), so that the
    # gateway's margin over the floor is its own work, not a difference in memory layout.
    env = huge_page_environment(os.environ, glibc=glibc_version(), thp=thp_mode())
    return start_child("floor", "--serve-floor", str(upstream_port), env=env)


def start_child(name: str, *args: str,
                env: dict[str, str] | None = None) -> tuple[Child, int]:
    child = Child(name, [sys.executable, str(Path(__file__).resolve()), *args], env=env)
    assert child.proc.stdout is not None
    ready, _, _ = select.select([child.proc.stdout], [], [], START_TIMEOUT_S)
    line = child.proc.stdout.readline().strip() if ready else b""
    if not line.isdigit():
        child.close()
        raise RuntimeError(f"{name} failed to start: {line!r}")
    return child, int(line)


def gateway_argv() -> list[str]:
    script = Path(sys.executable).parent / "ir-gateway"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_gateway(upstream_port: int, workdir: Path, keys_file: Path | None,
                  tracing: bool = False) -> tuple[Child, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IRGW_") and not k.startswith("OTEL_")}
    env["IRGW_LOG_LEVEL"] = "warning"
    env["IRGW_CANARY"] = "off"  # the fake vLLM does not constrain: no canary requests in runs
    if tracing:  # auth off, every request traced (the SDK's default sampler), to the fake
        env["IRGW_AUTH_ENABLED"] = "false"
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{HOST}:{upstream_port}"
        name = "gateway+tracing"
    elif keys_file is None:
        env["IRGW_AUTH_ENABLED"] = "false"
        name = "gateway"
    else:
        env["IRGW_AUTH_ENABLED"] = "true"
        env["IRGW_KEYS_FILE"] = str(keys_file)
        env["IRGW_RATELIMIT_BACKEND"] = "memory"
        name = "gateway+auth"
    argv = [*gateway_argv(), "serve", "--upstream", f"http://{HOST}:{upstream_port}",
            "--host", HOST, "--port", str(port)]
    child = Child(name, argv, env=env, log=workdir / f"{name}.log")
    deadline = time.monotonic() + START_TIMEOUT_S
    for path in ("/healthz", "/readyz"):
        for _ in range(int(START_TIMEOUT_S / 0.1)):
            if child.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {child.log_tail()}")
            with contextlib.suppress(OSError):
                status, _ = http_get(f"http://{HOST}:{port}{path}")
                if status == 200:
                    break
            if time.monotonic() > deadline:
                child.close()
                raise RuntimeError(f"{name} not ready within {START_TIMEOUT_S}s: "
                                   f"{child.log_tail()}")
            time.sleep(0.1)
    return child, port


def create_key(keys_file: Path) -> str:
    argv = [*gateway_argv(), "keys", "create", "--keys-file", str(keys_file), "--name", "bench",
            "--rpm", "10000000", "--tpm", "1000000000"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


# --------------------------------------------------------------------------------------
# Load generation
# --------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    checked: bool  # gateway: require x-irgw-output: passed
    pid: int


@dataclass
class Phase:
    target: str
    kind: str  # "open" or "closed"
    offered_rps: float  # open loop: the arrival rate; closed loop: the concurrency
    label: str
    started: float = 0.0  # perf_counter, for the RSS timeline
    ended: float = 0.0
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # from scheduled send time
    from_send_ms: list[float] = field(default_factory=list)  # from actual send time
    send_lag_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0
    target_cpu_s: float = 0.0
    fake_cpu_s: float = 0.0
    own_cpu_s: float = 0.0
    other_cpu_s: float = 0.0  # machine busy time not used by the bench's own processes
    target_wait_s: float = 0.0  # target process: runnable but waiting for a CPU
    rss_peak_kb: int = 0

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())

    @property
    def achieved_rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def pct(self, p: float, data: list[float] | None = None) -> float:
        return percentile(self.latencies_ms if data is None else data, p)


def percentile(data: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not data:
        return float("nan")
    values = sorted(data)
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def pooled(phases: list[Phase]) -> list[float]:
    return [x for ph in phases for x in ph.latencies_ms]


class Meter:
    """CPU of every process involved, around one phase."""

    def __init__(self, target: Target, fake: Child, others: list[int]) -> None:
        self.target, self.fake, self.others = target, fake, others

    def snapshot(self) -> tuple[float, ...]:
        own = time.process_time()
        other_own = sum(proc_cpu_seconds(pid) for pid in self.others)
        return (proc_cpu_seconds(self.target.pid), self.fake.cpu(), own, other_own,
                system_busy_seconds(), run_queue_wait_seconds(self.target.pid))

    def fill(self, phase: Phase, before: tuple[float, ...]) -> None:
        after = self.snapshot()
        d = [a - b for a, b in zip(after, before, strict=True)]
        phase.target_cpu_s, phase.fake_cpu_s, phase.own_cpu_s = d[0], d[1], d[2]
        phase.target_wait_s = d[5]
        ours = d[0] + d[1] + d[2] + d[3]
        if self.target.pid in self.others or self.target.pid == self.fake.pid:
            ours -= d[0]
        phase.other_cpu_s = max(0.0, d[4] - ours)


class RssSampler:
    """Samples the gateways' VmRSS every 50 ms in the background (bounded by a deadline)."""

    def __init__(self, pids: dict[str, int], max_s: float) -> None:
        self.pids = pids
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.max_s = max_s
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> dict[str, int]:
        row = {name: proc_status_kb(pid, "VmRSS") for name, pid in self.pids.items()}
        self.samples.append((time.perf_counter(), row))
        return row

    async def _run(self) -> None:
        for _ in range(int(self.max_s / 0.05)):
            self.sample()
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def peak(self, name: str, start: float, end: float) -> int:
        return max((row[name] for t, row in self.samples if start <= t <= end and name in row),
                   default=0)


def _classify(status: int, output: str | None, checked: bool) -> str | None:
    if status != 200:
        return f"HTTP {status}"
    if checked and output != "passed":
        return f"x-irgw-output {output}"
    return None


async def open_loop(session: Any, target: Target, rate: float, duration_s: float,
                    meter: Meter, sampler: RssSampler, label: str) -> Phase:
    """Send `rate` x `duration_s` requests on a fixed clock, never waiting for answers."""
    import aiohttp

    phase = Phase(target.name, "open", rate, label)
    n = max(1, round(rate * duration_s))
    interval = 1.0 / rate
    tasks: set[asyncio.Task[None]] = set()
    clock = time.perf_counter

    async def one(scheduled: float) -> None:
        sent = clock()
        phase.send_lag_ms.append((sent - scheduled) * 1000)
        try:
            async with session.post(target.url, data=target.body,
                                    headers=target.headers) as resp:
                await resp.read()
                error = _classify(resp.status, resp.headers.get("x-irgw-output"),
                                  target.checked)
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = type(exc).__name__
        done = clock()
        if error is None:
            phase.latencies_ms.append((done - scheduled) * 1000)
            phase.from_send_ms.append((done - sent) * 1000)
        else:
            phase.errors[error] += 1

    gc.collect()
    before = meter.snapshot()
    t0 = clock() + 0.02
    phase.started = t0
    i = 0
    send_deadline = t0 + duration_s * 3 + 5  # bounded even if the loop falls far behind
    while i < n and clock() < send_deadline:
        now = clock()
        while i < n and t0 + i * interval <= now:
            task = asyncio.create_task(one(t0 + i * interval))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i * interval - clock()))
    phase.sent = i
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=REQUEST_TIMEOUT_S + 5)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
            phase.errors["unfinished"] += len(pending)
    if n > i:
        phase.errors["not sent (generator fell behind)"] += n - i
    phase.ended = clock()
    phase.wall_s = phase.ended - t0
    meter.fill(phase, before)
    phase.rss_peak_kb = sampler.peak(target.name, phase.started, phase.ended)
    return phase


async def closed_loop(session: Any, target: Target, concurrency: int, duration_s: float,
                      max_requests: int, meter: Meter, sampler: RssSampler,
                      label: str = "") -> Phase:
    """`concurrency` workers, each sending its next request when the previous one ends."""
    import aiohttp

    phase = Phase(target.name, "closed", concurrency, label or f"closed c{concurrency}")
    clock = time.perf_counter
    budget = [max_requests]

    async def worker(deadline: float) -> None:
        while budget[0] > 0 and clock() < deadline:
            budget[0] -= 1
            phase.sent += 1
            sent = clock()
            try:
                async with session.post(target.url, data=target.body,
                                        headers=target.headers) as resp:
                    await resp.read()
                    error = _classify(resp.status, resp.headers.get("x-irgw-output"),
                                      target.checked)
            except TimeoutError:
                error = "timeout"
            except aiohttp.ClientError as exc:
                error = type(exc).__name__
            if error is None:
                ms = (clock() - sent) * 1000
                phase.latencies_ms.append(ms)
                phase.from_send_ms.append(ms)
            else:
                phase.errors[error] += 1

    gc.collect()
    before = meter.snapshot()
    t0 = clock()
    phase.started = t0
    deadline = t0 + duration_s
    workers = [asyncio.create_task(worker(deadline)) for _ in range(concurrency)]
    _, pending = await asyncio.wait(workers, timeout=duration_s + REQUEST_TIMEOUT_S + 5)
    for task in pending:
        task.cancel()
    phase.ended = clock()
    phase.wall_s = phase.ended - t0
    meter.fill(phase, before)
    phase.rss_peak_kb = sampler.peak(target.name, phase.started, phase.ended)
    return phase


def new_session() -> Any:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=512, limit_per_host=512, keepalive_timeout=120,
                                     ttl_dns_cache=None)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclass
class Run:
    sizes: Sizes
    rounds: list[dict[str, Phase]] = field(default_factory=list)
    steps: list[Phase] = field(default_factory=list)
    step_direct: list[Phase] = field(default_factory=list)
    closed: list[Phase] = field(default_factory=list)
    seq: list[dict[str, Phase]] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)
    rss_timeline: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    phase_marks: list[tuple[float, float, str]] = field(default_factory=list)
    max_rate: int | None = None
    first_fail: Phase | None = None
    upstream_body_bytes: dict[str, int] = field(default_factory=dict)
    upstream_calls: dict[str, int] = field(default_factory=dict)
    t0: float = 0.0


def step_passes(phase: Phase) -> tuple[bool, str]:
    reasons = []
    if phase.n_errors:
        reasons.append(f"{phase.n_errors} errors ({dict(phase.errors)})")
    if phase.ok and phase.pct(99) > MAX_RATE_P99_MS:
        reasons.append(f"p99 {phase.pct(99):.1f} ms > {MAX_RATE_P99_MS:g} ms")
    if phase.achieved_rps < MAX_RATE_ACHIEVED * phase.offered_rps:
        reasons.append(f"achieved {phase.achieved_rps:.0f}/s < "
                       f"{100 * MAX_RATE_ACHIEVED:.0f}% of {phase.offered_rps:.0f}/s")
    return not reasons, "; ".join(reasons)


def fake_stats(port: int) -> dict[str, int]:
    status, body = http_get(f"http://{HOST}:{port}/stats")
    return orjson.loads(body) if status == 200 else {}


def describe(phase: Phase) -> str:
    return (f"{phase.target:>13} {phase.label:<14} ok {phase.ok:>6}  err {phase.n_errors:>4}  "
            f"p50 {phase.pct(50):7.2f} ms  p99 {phase.pct(99):7.2f} ms  "
            f"{phase.achieved_rps:7.0f}/s  gw-CPU {cpu_us(phase, phase.target_cpu_s):6.0f} "
            f"us/req  wait {cpu_us(phase, phase.target_wait_s):6.0f} us/req  "
            f"other load {100 * phase.other_cpu_s / max(phase.wall_s, 1e-9):3.0f}%")


def cpu_us(phase: Phase, seconds: float) -> float:
    return 1e6 * seconds / phase.ok if phase.ok else float("nan")


async def bench(sizes: Sizes, fake: Child, fake_port: int, floor: Child, floor_port: int,
                gw: Child, gw_port: int, gwa: Child, gwa_port: int, key: str,
                started: float, gwt: Child, gwt_port: int) -> Run:
    run = Run(sizes, t0=time.perf_counter())
    json_headers = {"content-type": "application/json"}
    direct = Target("direct", f"http://{HOST}:{fake_port}{CHAT_PATH}", direct_body(),
                    json_headers, False, fake.pid)
    gateway = Target("gateway", f"http://{HOST}:{gw_port}{CHAT_PATH}", gateway_body(),
                     json_headers, True, gw.pid)
    gateway_auth = Target("gateway+auth", f"http://{HOST}:{gwa_port}{CHAT_PATH}",
                          gateway_body(), {**json_headers, "authorization": f"Bearer {key}"},
                          True, gwa.pid)
    floor_target = Target("floor", f"http://{HOST}:{floor_port}{CHAT_PATH}", direct_body(),
                          json_headers, False, floor.pid)
    gateway_tracing = Target("gateway+tracing", f"http://{HOST}:{gwt_port}{CHAT_PATH}",
                             gateway_body(), json_headers, True, gwt.pid)
    targets = [direct, floor_target, gateway, gateway_auth, gateway_tracing]
    all_pids = [fake.pid, floor.pid, gw.pid, gwa.pid, gwt.pid]
    meters = {t.name: Meter(t, fake, [p for p in all_pids if p not in (t.pid, fake.pid)])
              for t in targets}
    sampler = RssSampler({"gateway": gw.pid, "gateway+auth": gwa.pid, "gateway+tracing": gwt.pid},
                         max_s=TOTAL_BUDGET_S + 120)
    row = sampler.sample()
    run.rss["gateway idle (before load)"] = row["gateway"]
    run.rss["gateway+auth idle (before load)"] = row["gateway+auth"]
    sampler.start()
    sessions = {t.name: new_session() for t in targets}

    def mark(phase: Phase) -> Phase:
        run.phase_marks.append((phase.started, phase.ended, f"{phase.target} {phase.label}"))
        print(describe(phase), flush=True)
        return phase

    try:
        print(f"warm-up: {sizes.warmup_s:g} s at {BUDGET_RATE}/s per target", flush=True)
        for t in targets:
            mark(await open_loop(sessions[t.name], t, BUDGET_RATE, sizes.warmup_s, meters[t.name],
                                 sampler, "warm-up"))
            run.upstream_body_bytes[t.name] = fake_stats(fake_port).get("last_body_bytes", 0)
        row = sampler.sample()
        run.rss["gateway after warm-up"] = row["gateway"]

        print(f"\n{sizes.rounds} interleaved rounds at {BUDGET_RATE}/s, {sizes.round_s:g} s "
              "per target", flush=True)
        for r in range(sizes.rounds):
            order = targets if r % 2 == 0 else targets[::-1]
            phases: dict[str, Phase] = {}
            for t in order:
                calls0 = fake_stats(fake_port).get("chat", 0)
                phases[t.name] = mark(await open_loop(
                    sessions[t.name], t, BUDGET_RATE, sizes.round_s, meters[t.name], sampler,
                    f"{BUDGET_RATE}/s r{r + 1}"))
                calls = fake_stats(fake_port).get("chat", 0) - calls0
                run.upstream_calls[t.name] = run.upstream_calls.get(t.name, 0) + calls
            run.rounds.append(phases)

        print(f"\nsequential requests (one at a time), {sizes.seq_rounds} interleaved rounds of "
              f"{sizes.seq_s:g} s per target", flush=True)
        for r in range(sizes.seq_rounds):
            order = targets if r % 2 == 0 else targets[::-1]
            seq: dict[str, Phase] = {}
            for t in order:
                seq[t.name] = mark(await closed_loop(sessions[t.name], t, 1, sizes.seq_s, 20_000,
                                                     meters[t.name], sampler, f"seq r{r + 1}"))
            run.seq.append(seq)

        print(f"\nrate steps against the gateway (+{sizes.step_rate}/s, {sizes.step_s:g} s each; "
              f"pass = no errors, p99 <= {MAX_RATE_P99_MS:g} ms, achieved >= "
              f"{100 * MAX_RATE_ACHIEVED:.0f}%)", flush=True)
        for k in range(1, sizes.max_steps + 1):
            rate = k * sizes.step_rate
            if time.monotonic() - started > TOTAL_BUDGET_S - 40:
                print("time budget reached; stopping the rate steps", flush=True)
                break
            phase = mark(await open_loop(sessions["gateway"], gateway, rate, sizes.step_s,
                                         meters["gateway"], sampler, f"{rate}/s"))
            run.steps.append(phase)
            passed, why = step_passes(phase)
            if passed:
                run.max_rate = rate
                continue
            run.first_fail = phase
            print(f"  -> fails at {rate}/s: {why}", flush=True)
            if run.max_rate is None:  # even the first step failed: look below it
                for low in (rate // 2, rate // 4):
                    probe = mark(await open_loop(sessions["gateway"], gateway, low, sizes.step_s,
                                                 meters["gateway"], sampler, f"{low}/s"))
                    run.steps.insert(0, probe)
                    if step_passes(probe)[0]:
                        run.max_rate = low
                        break
            # The load generator and the fake share the 2 cores: does the direct path hold?
            for probe in sorted({rate, max(sizes.step_rate, rate - sizes.step_rate)}):
                run.step_direct.append(mark(await open_loop(
                    sessions["direct"], direct, probe, sizes.step_s, meters["direct"], sampler,
                    f"{probe}/s")))
            break
        await asyncio.sleep(1.0)  # let stragglers settle before the closed loop

        print(f"\nclosed loop, 32 concurrent workers, {sizes.closed_s:g} s per target",
              flush=True)
        for t in (direct, gateway):
            run.closed.append(mark(await closed_loop(sessions[t.name], t, 32, sizes.closed_s,
                                                     sizes.closed_max, meters[t.name], sampler)))
    finally:
        for s in sessions.values():
            await s.close()
    await asyncio.sleep(2.0)
    row = sampler.sample()
    run.rss["gateway after load (+2 s idle)"] = row["gateway"]
    run.rss["gateway+auth after load (+2 s idle)"] = row["gateway+auth"]
    await sampler.stop()
    run.rss["gateway peak, whole run (VmHWM)"] = proc_status_kb(gw.pid, "VmHWM")
    run.rss["gateway+auth peak, whole run (VmHWM)"] = proc_status_kb(gwa.pid, "VmHWM")
    run.rss_timeline = sampler.samples
    return run


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def huge_pages_note() -> str:
    env = huge_page_environment({}, glibc=glibc_version(), thp=thp_mode())
    if env is None:
        return f"here: none, THP mode {thp_mode()}, glibc {glibc_version()}"
    return ", ".join(f"`{key}={value}`" for key, value in env.items())


def versions() -> str:
    names = ["fastapi", "starlette", "uvicorn", "httptools", "uvloop", "aiohttp", "jsonschema",
             "rpds-py", "orjson", "pydantic", "ir-gateway"]
    out = []
    for name in names:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} ?")
    return ", ".join(out)


def git_rev() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        rev = subprocess.run([git, "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run([git, "-C", str(REPO), "status", "--porcelain", "--", "gateway"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev or 'unknown'}{' (gateway/ has uncommitted changes)' if dirty else ''}"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@dataclass
class Summary:
    name: str
    n: int
    errors: int
    p50: float
    p90: float
    p99: float
    max: float
    p50_send: float
    p99_send: float
    lag_p99: float
    cpu_us: float
    wait_us: float
    other_pct: float
    rss_peak_mb: float


def summarise(phases: list[Phase]) -> Summary:
    lat = pooled(phases)
    send = [x for ph in phases for x in ph.from_send_ms]
    lag = [x for ph in phases for x in ph.send_lag_ms]
    ok = sum(ph.ok for ph in phases)
    cpu = sum(ph.target_cpu_s for ph in phases)
    wall = sum(ph.wall_s for ph in phases)
    return Summary(
        name=phases[0].target, n=ok, errors=sum(ph.n_errors for ph in phases),
        p50=percentile(lat, 50), p90=percentile(lat, 90), p99=percentile(lat, 99),
        max=max(lat, default=float("nan")), p50_send=percentile(send, 50),
        p99_send=percentile(send, 99), lag_p99=percentile(lag, 99),
        cpu_us=1e6 * cpu / ok if ok else float("nan"),
        wait_us=1e6 * sum(ph.target_wait_s for ph in phases) / ok if ok else float("nan"),
        other_pct=100 * sum(ph.other_cpu_s for ph in phases) / wall if wall else 0.0,
        rss_peak_mb=max(ph.rss_peak_kb for ph in phases) / 1024,
    )


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def write_plot(run: Run, summaries: dict[str, Summary]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    ax = axes[0]
    colors = {"direct": "tab:blue", "floor": "tab:gray", "gateway": "tab:orange",
              "gateway+auth": "tab:green"}
    for name in ("direct", "floor", "gateway", "gateway+auth"):
        data = sorted(pooled([r[name] for r in run.rounds]))
        if not data:
            continue
        ys = [(i + 1) / len(data) for i in range(len(data))]
        s = summaries[name]
        ax.plot(data, ys, color=colors[name], lw=1.6,
                label=f"{name}: p50 {s.p50:.2f} / p99 {s.p99:.2f} ms")
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.axhline(0.99, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (from scheduled send; log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Latency CDF, open loop at {BUDGET_RATE} req/s "
                 f"({len(run.rounds)} interleaved rounds)")
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[1]
    rates = [ph.offered_rps for ph in run.steps]
    ax.plot(rates, [ph.pct(50) for ph in run.steps], "o-", color="tab:orange",
            label="gateway p50")
    ax.plot(rates, [ph.pct(99) for ph in run.steps], "s-", color="tab:red", label="gateway p99")
    if run.step_direct:
        dr = [ph.offered_rps for ph in run.step_direct]
        ax.plot(dr, [ph.pct(50) for ph in run.step_direct], "o", mfc="none", color="tab:blue",
                label="direct p50 (probe)")
        ax.plot(dr, [ph.pct(99) for ph in run.step_direct], "s", mfc="none", color="tab:blue",
                label="direct p99 (probe)")
    for ph in run.steps:
        if ph.n_errors or ph.achieved_rps < MAX_RATE_ACHIEVED * ph.offered_rps:
            ax.annotate(f"{ph.n_errors} errors\n{ph.achieved_rps:.0f}/s done",
                        (ph.offered_rps, ph.pct(50)), fontsize=8, ha="center", va="top",
                        textcoords="offset points", xytext=(0, -10))
    ax.axhline(MAX_RATE_P99_MS, color="grey", ls="--", lw=1, label=f"{MAX_RATE_P99_MS:g} ms limit")
    if run.max_rate:
        ax.axvline(run.max_rate, color="tab:green", ls=":", lw=1.2,
                   label=f"highest passing rate {run.max_rate}/s")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate, req/s (open loop)")
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_title("Gateway latency vs offered rate")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[2]
    t0 = run.rss_timeline[0][0] if run.rss_timeline else 0.0
    for name in ("gateway", "gateway+auth"):
        pts = [(t - t0, row[name] / 1024) for t, row in run.rss_timeline if name in row]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[name], lw=1.2, label=name)
    shade = {"warm-up": "#eeeeee", "closed": "#e0ecff"}
    for start, end, label in run.phase_marks:
        if label.startswith("gateway ") and not label.startswith("gateway+"):
            kind = "closed" if "closed" in label else ("warm-up" if "warm" in label else "")
            step = any(label == f"gateway {ph.label}" for ph in run.steps)
            color = shade.get(kind) or ("#ffe7cc" if step else "#fff6cc")
            ax.axvspan(start - t0, end - t0, color=color, lw=0)
    ax.set_xlabel("time since start of load, s (shaded: gateway phases; orange = rate steps)")
    ax.set_ylabel("RSS, MiB")
    ax.set_title("Gateway process RSS (VmRSS, sampled every 50 ms)")
    ax.legend(fontsize=9, loc="lower right")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS_PNG, dpi=110)
    plt.close(fig)


def write_report(run: Run, quick: bool, wall_s: float, load_start: tuple[float, float, float],
                 load_end: tuple[float, float, float], other_pct_run: float) -> str:
    summaries = {name: summarise([r[name] for r in run.rounds])
                 for name in ("direct", "floor", "gateway", "gateway+auth", "gateway+tracing")}
    d, g, a = summaries["direct"], summaries["gateway"], summaries["gateway+auth"]
    tr = summaries["gateway+tracing"]
    trace50, trace99 = tr.p50 - d.p50, tr.p99 - d.p99
    f = summaries["floor"]
    add50, add99 = g.p50 - d.p50, g.p99 - d.p99
    floor50, floor99 = f.p50 - d.p50, f.p99 - d.p99
    auth50, auth99 = a.p50 - d.p50, a.p99 - d.p99
    pass50, pass99 = add50 <= BUDGET_P50_MS, add99 <= BUDGET_P99_MS
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    rows = ["| target | ok | errors | p50 ms | p90 ms | p99 ms | max ms | p50 / p99 from send ms "
            "| target CPU µs/req | target run-queue wait µs/req | other load (% of 1 core) "
            "| peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in (d, f, g, a, tr):
        rss = "-" if s.name in ("direct", "floor") else fmt(s.rss_peak_mb, 1)
        rows.append(f"| {s.name} | {s.n} | {s.errors} | {fmt(s.p50)} | {fmt(s.p90)} | "
                    f"{fmt(s.p99)} | {fmt(s.max, 1)} | {fmt(s.p50_send)} / {fmt(s.p99_send)} | "
                    f"{fmt(s.cpu_us, 0)} | {fmt(s.wait_us, 0)} | {s.other_pct:.0f} | {rss} |")
    main_table = "\n".join(rows)

    added = [
        "| | added p50 ms | added p99 ms | budget | result |",
        "|---|---|---|---|---|",
        f"| gateway (auth off) | **{add50:+.2f}** | **{add99:+.2f}** | p50 <= {BUDGET_P50_MS:g}, "
        f"p99 <= {BUDGET_P99_MS:g} | p50 {'PASS' if pass50 else 'FAIL'}, p99 "
        f"{'PASS' if pass99 else 'FAIL'} |",
        f"| gateway + auth + in-memory limits | {auth50:+.2f} | {auth99:+.2f} | (same) | p50 "
        f"{'PASS' if auth50 <= BUDGET_P50_MS else 'FAIL'}, p99 "
        f"{'PASS' if auth99 <= BUDGET_P99_MS else 'FAIL'} |",
        f"| gateway + tracing on (every request a trace of 4 spans, OTLP/HTTP to a local sink) "
        f"| {trace50:+.2f} | {trace99:+.2f} | (same) | p50 "
        f"{'PASS' if trace50 <= BUDGET_P50_MS else 'FAIL'}, p99 "
        f"{'PASS' if trace99 <= BUDGET_P99_MS else 'FAIL'} |",
        f"| tracing on over tracing off | {tr.p50 - g.p50:+.2f} | {tr.p99 - g.p99:+.2f} | "
        f"(CPU {tr.cpu_us - g.cpu_us:+.0f} µs/req) | - |",
        f"| floor: a proxy with no logic, same server and client | {floor50:+.2f} | "
        f"{floor99:+.2f} | (reference) | - |",
        f"| gateway (auth off) over the floor | {g.p50 - f.p50:+.2f} | {g.p99 - f.p99:+.2f} | "
        "(what the gateway's own work costs) | - |",
    ]
    per_round = ["| round | direct p50 / p99 | gateway p50 / p99 | gateway+auth p50 / p99 | "
                 "added p50 / p99 (gateway) | other load % |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(run.rounds, 1):
        dd, gg, aa = r["direct"], r["gateway"], r["gateway+auth"]
        other = 100 * sum(ph.other_cpu_s for ph in r.values()) / sum(
            ph.wall_s for ph in r.values())
        per_round.append(
            f"| {i} | {dd.pct(50):.2f} / {dd.pct(99):.2f} | {gg.pct(50):.2f} / {gg.pct(99):.2f} | "
            f"{aa.pct(50):.2f} / {aa.pct(99):.2f} | {gg.pct(50) - dd.pct(50):+.2f} / "
            f"{gg.pct(99) - dd.pct(99):+.2f} | {other:.0f} |")

    steps = ["| offered req/s | sent | ok | errors | achieved req/s | p50 ms | p99 ms | max ms | "
             "gateway CPU µs/req | gateway CPU % of 1 core | gateway run-queue wait µs/req | "
             "peak RSS MiB | other load % | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ph in run.steps:
        ok, why = step_passes(ph)
        busy = 100 * ph.target_cpu_s / ph.wall_s if ph.wall_s else 0.0
        steps.append(
            f"| {ph.offered_rps:.0f} | {ph.sent} | {ph.ok} | {ph.n_errors} | "
            f"{ph.achieved_rps:.0f} | {fmt(ph.pct(50))} | {fmt(ph.pct(99))} | "
            f"{fmt(max(ph.latencies_ms, default=float('nan')), 1)} | "
            f"{fmt(cpu_us(ph, ph.target_cpu_s), 0)} | {busy:.0f} | "
            f"{fmt(cpu_us(ph, ph.target_wait_s), 0)} | {ph.rss_peak_kb / 1024:.1f} | "
            f"{100 * ph.other_cpu_s / ph.wall_s:.0f} | {'pass' if ok else 'FAIL: ' + why} |")
    for ph in run.step_direct:
        ok, why = step_passes(ph)
        steps.append(
            f"| {ph.offered_rps:.0f} (direct probe) | {ph.sent} | {ph.ok} | {ph.n_errors} | "
            f"{ph.achieved_rps:.0f} | {fmt(ph.pct(50))} | {fmt(ph.pct(99))} | "
            f"{fmt(max(ph.latencies_ms, default=float('nan')), 1)} | - | - | - | - | "
            f"{100 * ph.other_cpu_s / ph.wall_s:.0f} | {'pass' if ok else 'FAIL: ' + why} |")

    closed = ["| target | requests | errors | req/s | p50 ms | p99 ms | target CPU µs/req | "
              "target CPU % of 1 core | target run-queue wait µs/req | other load % |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for ph in run.closed:
        closed.append(
            f"| {ph.target} | {ph.ok} | {ph.n_errors} | {ph.achieved_rps:,.0f} | "
            f"{fmt(ph.pct(50))} | {fmt(ph.pct(99))} | {fmt(cpu_us(ph, ph.target_cpu_s), 0)} | "
            f"{100 * ph.target_cpu_s / ph.wall_s:.0f} | {fmt(cpu_us(ph, ph.target_wait_s), 0)} | "
            f"{100 * ph.other_cpu_s / ph.wall_s:.0f} |")

    seq_rows = ["| target | requests | p50 ms | p99 ms | added p50 ms | added p99 ms | "
                "target CPU µs/req | target run-queue wait µs/req | other load % |",
                "|---|---|---|---|---|---|---|---|---|"]
    seq_added50 = seq_cpu = float("nan")
    if run.seq:
        seq_sum = {name: summarise([r[name] for r in run.seq])
                   for name in ("direct", "floor", "gateway", "gateway+auth")}
        sd = seq_sum["direct"]
        seq_added50 = seq_sum["gateway"].p50 - sd.p50
        seq_cpu = seq_sum["gateway"].cpu_us
        for s in seq_sum.values():
            a50 = "-" if s.name == "direct" else f"{s.p50 - sd.p50:+.2f}"
            a99 = "-" if s.name == "direct" else f"{s.p99 - sd.p99:+.2f}"
            seq_rows.append(f"| {s.name} | {s.n} | {fmt(s.p50)} | {fmt(s.p99)} | {a50} | {a99} | "
                            f"{fmt(s.cpu_us, 0)} | {fmt(s.wait_us, 0)} | {s.other_pct:.0f} |")

    step_peak = max((ph.rss_peak_kb for ph in run.steps), default=0) / 1024
    mem = [f"- {name}: {kb / 1024:.1f} MiB" for name, kb in run.rss.items()]
    mem.insert(2, f"- gateway peak during the {BUDGET_RATE} req/s rounds: {g.rss_peak_mb:.1f} MiB"
                  f" (gateway+auth: {a.rss_peak_mb:.1f} MiB)")
    mem.insert(3, f"- gateway peak during the rate steps (up to "
                  f"{run.steps[-1].offered_rps:.0f} req/s offered): {step_peak:.1f} MiB"
               if run.steps else "- (no rate steps ran)")

    if run.max_rate is None:
        max_text = "no step passed"
    else:
        max_text = f"**{run.max_rate} req/s**"
    fail_text = ""
    above = [ph for ph in run.steps
             if ph.offered_rps > (run.max_rate or 0) and not step_passes(ph)[0]]
    if above:
        nxt = min(above, key=lambda ph: ph.offered_rps)
        fail_text = f" (next step {nxt.offered_rps:.0f} req/s failed: {step_passes(nxt)[1]})"
    elif run.steps:
        fail_text = " (the step ladder ended without a failing step: the real limit is higher)"

    contention = other_pct_run > 15 or load_start[0] > 1.0
    verdict = "PASS" if pass50 and pass99 else "FAIL"
    lines = [
        "# Gateway overhead benchmark",
        "",
        "Generated by `.venv/bin/python bench/overhead.py" + (" --quick`" if quick else "`") +
        " (script: `bench/overhead.py`; figures also in `bench/results/overhead.json`, plot "
        "`bench/results/overhead.png`).",
        "",
        f"- date: {now}; run took {wall_s:.0f} s" + (" (**--quick: small samples**)" if quick
                                                     else ""),
        f"- machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
        f"{cpu_model()}, {platform.platform()}",
        f"- load average: {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f} at "
        f"start, {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f} at end; other "
        f"processes (not the benchmark, fake or gateways) used {other_pct_run:.0f}% of one core "
        "on average during the run",
        f"- python {platform.python_version()}; {versions()}; gateway at git {git_rev()}",
        "",
    ]
    if contention:
        lines += [
            "> **Contention:** the 2 cores were shared with other work during this run "
            "(see the load average and the 'other load' columns; a vLLM/dev process may have "
            "been running). The load generator, the fake upstream and the gateway also share "
            "those 2 cores. Wall-clock latencies, and above all p99, are inflated by CPU "
            "scheduling delays; 'target CPU µs/req' is the figure least affected by it.",
            "",
        ]
    lines += [
        "## Verdict",
        "",
        f"Budget: added latency at {BUDGET_RATE} req/s, median <= {BUDGET_P50_MS:g} ms and "
        f"p99 <= {BUDGET_P99_MS:g} ms. **{verdict}**: added p50 {add50:+.2f} ms, added p99 "
        f"{add99:+.2f} ms (auth on: {auth50:+.2f} / {auth99:+.2f} ms). Gateway CPU per request "
        f"{g.cpu_us:.0f} µs (auth on: {a.cpu_us:.0f} µs), so one worker with a whole core to "
        f"itself would top out near {1e6 / g.cpu_us:,.0f} req/s (CPU-bound estimate; the "
        f"sequential test measured {seq_cpu:.0f} µs/req, i.e. ~{1e6 / seq_cpu:,.0f} req/s).",
        "",
        f"For scale: LiteLLM's proxy adds about {LITELLM_MS:g} ms per request and Bifrost (Go) "
        f"about {BIFROST_MS:g} ms in an independent sequential test. This gateway's median "
        f"addition in the comparable sequential test here is {seq_added50:.2f} ms "
        f"({seq_added50 / LITELLM_MS:.2f}x LiteLLM's, {seq_added50 / BIFROST_MS:.1f}x Bifrost's) "
        f"and {add50:.2f} ms at {BUDGET_RATE} req/s open loop (different machines and methods: "
        "an order-of-magnitude comparison only).",
        "",
        f"The floor on this machine: a proxy with no logic at all, built from the same parts "
        f"(the gateway's server protocol on uvicorn + uvloop in front, its own pooled upstream "
        f"transport "
        f"behind), adds "
        f"{floor50:+.2f} ms median / {floor99:+.2f} ms p99 at {BUDGET_RATE} req/s "
        f"({f.cpu_us:.0f} µs CPU per request). The gateway's own work (schema resolution, "
        f"limits, strict parse and validation, OpenAI shapes, metrics, disconnect watching) "
        f"adds {g.p50 - f.p50:+.2f} ms median over that floor.",
        "",
        f"- highest sustained open-loop rate: {max_text}{fail_text}",
        "- closed loop, 32 concurrent: "
        + ", ".join(f"{ph.target} {ph.achieved_rps:,.0f} req/s" for ph in run.closed),
        f"- gateway RSS: idle {run.rss.get('gateway idle (before load)', 0) / 1024:.1f} MiB, "
        f"peak at {BUDGET_RATE} req/s {g.rss_peak_mb:.1f} MiB, peak at max rate steps "
        f"{step_peak:.1f} MiB, after "
        f"{run.rss.get('gateway after load (+2 s idle)', 0) / 1024:.1f} MiB",
        "",
        f"## Added latency at {BUDGET_RATE} req/s",
        "",
        "\n".join(added),
        "",
        "Requests to the gateway and to the fake are separate streams, so there is no "
        "per-request pairing: 'added' is the **difference of percentiles** (gateway pN - "
        "direct pN), not a percentile of per-request differences.",
        "",
        f"### Pooled over {len(run.rounds)} interleaved rounds of {run.sizes.round_s:g} s each",
        "",
        main_table,
        "",
        "Latency runs from the request's scheduled send time to the end of the response "
        "body. 'from send' starts at the moment the generator actually issued it (the gap is "
        "the generator's own timer/loop lag: p99 "
        f"{d.lag_p99:.2f} / {g.lag_p99:.2f} / {a.lag_p99:.2f} ms for direct / gateway / "
        "gateway+auth; it hits both sides alike). 'target CPU' is the user+system CPU of the "
        "target process (the fake for direct, the gateway process otherwise) per request; "
        "'run-queue wait' is the time its threads were runnable but had no CPU "
        "(`/proc/<pid>/task/*/schedstat`), per request: the direct cost of sharing the cores.",
        "",
        "### Per round",
        "",
        "\n".join(per_round),
        "",
        "## Sequential requests (one at a time, closed loop c1)",
        "",
        "The setting of the LiteLLM/Bifrost figures: each request is sent when the previous "
        f"one has finished; {len(run.seq)} interleaved rounds of {run.sizes.seq_s:g} s per "
        "target; latency from send to end of body; 'added' = difference of percentiles.",
        "",
        "\n".join(seq_rows),
        "",
        "## Highest sustained rate (gateway, auth off)",
        "",
        f"Open loop, {run.sizes.step_s:g} s per step; a step passes with no errors, p99 <= "
        f"{MAX_RATE_P99_MS:g} ms and achieved rate >= {100 * MAX_RATE_ACHIEVED:.0f}% of offered "
        "(achieved = successful responses / time from the first scheduled send to the last "
        "response). At the first failing step the same rates are sent to the fake directly, "
        "to tell a gateway limit from a load-generator/machine limit. The gateway runs with "
        "its default in-flight cap (max_inflight 16, queue 16, queue timeout 5 s): beyond "
        "that it sheds load with 503 `overloaded`, which counts as an error here.",
        "",
        "\n".join(steps),
        "",
        "### Closed loop, 32 concurrent workers",
        "",
        "\n".join(closed),
        "",
        "## Gateway memory (VmRSS)",
        "",
        "\n".join(mem),
        "",
        "## Method",
        "",
        "- fake vLLM: its own process, uvicorn + httptools + uvloop, raw ASGI app, zero "
        "latency; `GET /version` -> 0.32.0, `GET /v1/models` -> `qwen-coder`, `POST "
        f"/v1/chat/completions` -> a {len(completion_body())}-byte `chat.completion` whose "
        "content is a compact valid `function_ir` document, with usage.",
        "- floor: its own process, the gateway's server protocol (`gateway/server/protocol.py`: "
        "uvicorn's httptools protocol with coalesced writes) on uvloop in front and the "
        "gateway's own upstream transport (`UpstreamClient`) behind; it forwards the direct "
        "request's bytes to the fake and the fake's answer back, nothing else; it runs with "
        f"the environment the gateway restarts itself in ({huge_pages_note()}).",
        "- gateway: `ir-gateway serve --upstream ... --port ...` as its own process (one "
        "uvicorn worker, uvloop + the gateway's protocol; its heap on huge pages where the "
        "system allows, `gateway/server/runtime.py`), `IRGW_AUTH_ENABLED=false`, "
        "`IRGW_LOG_LEVEL=warning`, all other settings default. The auth-on gateway is a "
        "second such process with `IRGW_KEYS_FILE` (one key from `ir-gateway keys create "
        "--rpm 10000000 --tpm 1000000000`) and the in-memory limiter; both run side by side, "
        "and only one receives traffic at a time.",
        f"- request to the gateway: `{gateway_body().decode()}` "
        f"({len(gateway_body())} bytes); the gateway resolves the schema, forwards to the fake "
        "with the schema as `response_format` (strict), parses the answer strictly and "
        "validates it against the JSON Schema, and must answer 200 with `x-irgw-output: "
        f"passed`. Direct request: the same messages with model `qwen-coder`, the same "
        f"`response_format` and `max_tokens: 1024` ({len(direct_body())} bytes; the gateway's "
        f"upstream body measured at the fake: {run.upstream_body_bytes.get('gateway', 0)} "
        "bytes). Upstream calls counted at the fake during the rounds vs successful answers: "
        + ", ".join(f"{k} {v} calls / {sum(r[k].ok for r in run.rounds)} ok"
                    for k, v in run.upstream_calls.items())
        + " (no retries happen; requests refused with 503 by the gateway's in-flight cap "
        "never reach the fake).",
        "- load generator: this process, aiohttp on uvloop, one pooled keep-alive session per "
        "target; open loop: sends are scheduled on a fixed clock (rate x duration requests) "
        "and never wait for earlier responses. Warm-up "
        f"{run.sizes.warmup_s:g} s per target first. The {BUDGET_RATE} req/s rounds go "
        "direct -> gateway -> gateway+auth, reversed on even rounds. Percentiles pool all "
        "rounds, by linear interpolation.",
        "- CPU: `/proc/<pid>/stat` utime+stime deltas; 'other load' = machine busy time "
        "(`/proc/stat`) minus the CPU of the benchmark, fake and gateway processes, as % of "
        "one core. Memory: `/proc/<pid>/status` VmRSS every 50 ms, VmHWM at the end.",
    ]
    md = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    RESULTS_MD.write_text(md)
    write_plot(run, summaries)

    def phase_json(ph: Phase) -> dict[str, Any]:
        return {
            "target": ph.target, "kind": ph.kind, "offered": ph.offered_rps, "label": ph.label,
            "sent": ph.sent, "ok": ph.ok, "errors": dict(ph.errors), "wall_s": ph.wall_s,
            "achieved_rps": ph.achieved_rps, "p50_ms": ph.pct(50), "p90_ms": ph.pct(90),
            "p99_ms": ph.pct(99), "max_ms": max(ph.latencies_ms, default=None),
            "p50_from_send_ms": ph.pct(50, ph.from_send_ms),
            "p99_from_send_ms": ph.pct(99, ph.from_send_ms),
            "target_cpu_us_per_req": cpu_us(ph, ph.target_cpu_s),
            "target_run_queue_wait_us_per_req": cpu_us(ph, ph.target_wait_s),
            "fake_cpu_us_per_req": cpu_us(ph, ph.fake_cpu_s),
            "generator_cpu_us_per_req": cpu_us(ph, ph.own_cpu_s),
            "other_load_pct": 100 * ph.other_cpu_s / ph.wall_s if ph.wall_s else None,
            "rss_peak_kb": ph.rss_peak_kb,
        }

    doc = {
        "date": now, "quick": quick, "wall_s": wall_s, "loadavg_start": load_start,
        "loadavg_end": load_end, "other_load_pct": other_pct_run, "versions": versions(),
        "git": git_rev(), "sizes": asdict(run.sizes),
        "summary_200rps": {k: asdict(v) for k, v in summaries.items()},
        "added_ms": {"gateway": {"p50": add50, "p99": add99},
                     "gateway+auth": {"p50": auth50, "p99": auth99},
                     "gateway+tracing": {"p50": trace50, "p99": trace99}},
        "budget_pass": {"p50": pass50, "p99": pass99},
        "max_rate_rps": run.max_rate,
        "rounds": [{k: phase_json(v) for k, v in r.items()} for r in run.rounds],
        "steps": [phase_json(ph) for ph in run.steps],
        "step_direct_probes": [phase_json(ph) for ph in run.step_direct],
        "closed_c32": [phase_json(ph) for ph in run.closed],
        "rss_kb": run.rss,
        "sequential": [{k: phase_json(v) for k, v in r.items()} for r in run.seq],
    }
    RESULTS_JSON.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small samples, < 1 minute")
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", type=int, metavar="UPSTREAM_PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        fake_main()
        return
    if args.serve_floor:
        floor_main(args.serve_floor)
        return

    import uvloop

    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    load_start = os.getloadavg()
    busy0, own0 = system_busy_seconds(), time.process_time()
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="irgw-overhead-") as tmp:
        workdir = Path(tmp)
        try:
            fake, fake_port = start_fake()
            children.append(fake)
            floor, floor_port = start_floor(fake_port)
            children.append(floor)
            keys_file = workdir / "keys.json"
            key = create_key(keys_file)
            gw, gw_port = start_gateway(fake_port, workdir, None)
            children.append(gw)
            gwa, gwa_port = start_gateway(fake_port, workdir, keys_file)
            children.append(gwa)
            gwt, gwt_port = start_gateway(fake_port, workdir, None, tracing=True)
            children.append(gwt)
            print(f"fake vLLM pid {fake.pid} :{fake_port}; gateway pid {gw.pid} :{gw_port}; "
                  f"gateway+auth pid {gwa.pid} :{gwa_port}; load average {load_start}",
                  flush=True)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                run = runner.run(bench(sizes, fake, fake_port, floor, floor_port, gw, gw_port,
                                       gwa, gwa_port, key, started, gwt, gwt_port))
            ours = time.process_time() - own0 + sum(c.cpu() for c in children)
            for child in children:
                if child.proc.poll() is not None:
                    print(f"warning: {child.name} exited early: {child.log_tail()}")
        finally:
            for child in reversed(children):
                child.close()
    wall = time.monotonic() - started
    other = max(0.0, 100 * (system_busy_seconds() - busy0 - ours) / wall)
    md = write_report(run, args.quick, wall, load_start, os.getloadavg(), other)
    print()
    print(md)
    print(f"written: {RESULTS_MD}, {RESULTS_PNG}, {RESULTS_JSON}")


if __name__ == "__main__":
    main()
