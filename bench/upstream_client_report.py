"""bench/upstream_client.py's report: the table, the conclusion it draws, the method."""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common.machine import cpu_model, versions
from bench.common.payloads import invoice_completion, invoice_request
from bench.common.stats import median as med
from bench.common.stats import nearest_rank as pct
from bench.common.stats import spread_pct
from bench.upstream_client_adapters import CONCURRENCY

if TYPE_CHECKING:
    from bench.upstream_client import Result, Sizes

PROFILED_REQUESTS = 200  # sequential requests run under cProfile to count Python calls
PACKAGES = ["httpx", "httpcore", "httpx2", "httpcore2", "aiohttp", "yarl", "multidict",
            "uvicorn", "httptools", "uvloop", "orjson", "anyio", "h11"]


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
        f"- packages: {versions(PACKAGES, missing=None)}\n"
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
        f"{len(invoice_request(False))} bytes; response body: "
        f"{len(invoice_completion())} bytes. Latency percentiles pool all rounds; "
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

