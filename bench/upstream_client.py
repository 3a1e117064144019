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
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import payloads  # noqa: E402
from bench.common.fake_vllm import start_fake  # noqa: E402
from bench.common.procs import HOST, Child, exit_on_signals, system_busy_seconds  # noqa: E402
from bench.common.stats import nearest_rank as pct  # noqa: E402
from bench.upstream_client_adapters import CONCURRENCY, Adapter, adapter_factories  # noqa: E402
from bench.upstream_client_report import PROFILED_REQUESTS, RunInfo, write_report  # noqa: E402

PHASE_TIMEOUT_S = 60.0  # hard cap per measured phase
TOTAL_BUDGET_S = 160.0  # no new round starts if the previous one says it would end later
RESULTS_MD = REPO / "bench" / "results" / "upstream_client.md"


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
    fake: Child,
    sizes: Sizes,
    result: Result,
) -> None:
    req = payloads.invoice_request(stream=False)
    req_stream = payloads.invoice_request(stream=True)
    expect_len = len(payloads.invoice_completion())
    expect_lines = payloads.STREAM_CHUNKS + 1
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

        srv0 = fake.cpu()
        wall, clat, cpu, err = await run_concurrent(adapter, req, sizes.conc, expect_len)
        srv = fake.cpu() - srv0
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


async def bench(fake: Child, url: str, sizes: Sizes, started: float) -> list[Result]:
    factories = adapter_factories(url)
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
            await measure_round(name, factory, fake, sizes, results[name])
        last_round = time.monotonic() - round_start
        sizes.rounds_done = rnd + 1
    return [results[name] for name, _ in factories]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts, one round")
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="client event loop"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_MD, help=f"markdown report (default {RESULTS_MD})"
    )
    args = parser.parse_args()
    exit_on_signals()

    sizes = replace(QUICK if args.quick else FULL)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop

    started = time.monotonic()
    loadavg = os.getloadavg()
    fake, port = start_fake("invoice")
    try:
        url = f"http://{HOST}:{port}{payloads.CHAT_PATH}"
        print(f"fake upstream pid {fake.pid} on {url}", flush=True)
        busy0, own0, t0 = system_busy_seconds(), time.process_time(), time.monotonic()
        srv0 = fake.cpu()
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            results = runner.run(bench(fake, url, sizes, started))
        own = time.process_time() - own0 + fake.cpu() - srv0
        other = system_busy_seconds() - busy0 - own
        background = max(0.0, 100 * other / (time.monotonic() - t0))
    finally:
        fake.close()
    info = RunInfo(args.loop, time.monotonic() - started, background, loadavg)
    md = write_report(results, sizes, info, args.out)
    print()
    print(md)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
