"""What one structured request costs end to end on real vLLM (CPU build, tiny model),
through the gateway and directly against vLLM, measured in the same run.

    .venv/bin/python bench/vllm_e2e.py [--requests 60] [--concurrency 1,8]

Starts vLLM (the integration tests' flags and model) and the gateway (auth off), then for
each concurrency level alternates direct and gateway rounds so machine noise hits both.
Direct requests send exactly what the gateway would send (the named schema's text as a
json_schema response_format); the gateway's answers are also checked, so its figures
include parsing and validation. Writes bench/results/vllm_e2e.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common.procs import exit_on_signals  # noqa: E402
from bench.common.stats import median, nearest_rank  # noqa: E402
from gateway.dev.vllm_process import VllmServer, build_dev_model  # noqa: E402
from gateway.output.registry import SchemaRegistry  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from tests.gateway_server import running_gateway  # noqa: E402

PROMPT = "Describe a function that parses an ISO date string into a date."


async def run_round(url: str, body: dict[str, Any], n: int, concurrency: int,
                    check: bool) -> tuple[list[float], int, float, int]:
    """(latencies s, completion tokens, wall s, failures)."""
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0
    failures = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens, failures
        async with semaphore:
            started = time.perf_counter()
            response = await client.post(url, json={**body, "seed": i})
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200 or (
                check and response.headers.get("x-irgw-output") not in ("passed", "repaired")
            ):
                failures += 1
                return
            tokens += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(n)))
        wall = time.perf_counter() - started
    return latencies, tokens, wall, failures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    exit_on_signals()

    model = build_dev_model(trained=True)
    vllm = VllmServer(model, served_model_name="tiny-qwen2",
                      log_path=Path("/tmp/ir-gateway-bench-vllm.log"))
    vllm.start()
    try:
        boot = vllm.wait_ready(timeout_s=400)
        schema = SchemaRegistry.load(REPO / "schemas").resolve("function_ir")
        common = {"messages": [{"role": "user", "content": PROMPT}], "temperature": 0.8,
                  "max_tokens": 400}
        direct_body = {**common, "model": "tiny-qwen2", "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "function_ir", "schema": orjson.loads(schema.schema_json),
                            "strict": True}}}
        gateway_body = {**common, "model": "schema/function_ir"}
        settings = Settings(upstream_url=vllm.url, upstream_model="tiny-qwen2",
                            auth_enabled=False, max_inflight=64, queue_size=64,
                            schemas_dir=REPO / "schemas")
        rows = []
        async with running_gateway(settings) as gateway:
            # Warm up: grammar compilation and the first connections.
            await run_round(f"{vllm.url}/v1/chat/completions", direct_body, 4, 4, False)
            await run_round(f"{gateway.url}/v1/chat/completions", gateway_body, 4, 4, True)
            for concurrency in levels:
                results: dict[str, list[Any]] = {"direct": [], "gateway": []}
                for _ in range(args.rounds):
                    for name, url, body in (
                        ("direct", f"{vllm.url}/v1/chat/completions", direct_body),
                        ("gateway", f"{gateway.url}/v1/chat/completions", gateway_body),
                    ):
                        results[name].append(await run_round(
                            url, body, args.requests // args.rounds, concurrency,
                            name == "gateway"))
                for name, rounds in results.items():
                    latencies = [x for r in rounds for x in r[0]]
                    tokens = sum(r[1] for r in rounds)
                    wall = sum(r[2] for r in rounds)
                    failures = sum(r[3] for r in rounds)
                    rows.append((concurrency, name, len(latencies),
                                 median(latencies) * 1000,
                                 nearest_rank(latencies, 95) * 1000,
                                 tokens / wall, tokens / max(1, len(latencies)), failures))
    finally:
        vllm.stop()

    header = ("| concurrency | path | requests | median ms | p95 ms | completion tok/s | "
              "tokens/answer | not passed |\n|---|---|---|---|---|---|---|---|")
    lines = [f"| {c} | {p} | {n} | {m:.0f} | {p95:.0f} | {tps:.0f} | {tpa:.0f} | {f} |"
             for c, p, n, m, p95, tps, tpa, f in rows]
    load = os.getloadavg()
    report = "\n".join([
        "# End-to-end cost of a structured request on real vLLM (CPU, tiny model)",
        "",
        "Generated by `.venv/bin/python bench/vllm_e2e.py`.",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores, "
        f"{platform.machine()}, Python {platform.python_version()}",
        f"- load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other work "
        "shares these 2 cores; compare the two paths, not absolute figures)",
        f"- vLLM 0.32.0 CPU build, xgrammar, tiny Qwen2 from `gateway.dev.models.tiny` "
        f"(booted in {boot:.0f}s); schema `function_ir@1`, temperature 0.8, max_tokens 400",
        f"- {args.rounds} interleaved rounds per path and level; latency is per request, "
        "tok/s is completion tokens over the rounds' wall time",
        "- 'not passed': gateway answers that were a 422 (the model's answer failed the "
        "schema) or not 200; direct answers are not checked (that is the gateway's job)",
        "",
        header,
        *lines,
    ])
    out = REPO / "bench" / "results" / "vllm_e2e.md"
    out.write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    asyncio.run(main())
