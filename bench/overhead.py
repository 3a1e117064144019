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
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench import overhead_report, overhead_run  # noqa: E402
from bench.common.fake_vllm import start_fake  # noqa: E402
from bench.common.gateway import create_key  # noqa: E402
from bench.common.procs import Child, Children, exit_on_signals, system_busy_seconds  # noqa: E402
from bench.overhead_floor import start_floor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small samples, < 1 minute")
    args = parser.parse_args()
    exit_on_signals()

    import uvloop

    sizes = overhead_run.QUICK if args.quick else overhead_run.FULL
    started = time.monotonic()
    load_start = os.getloadavg()
    busy0, own0 = system_busy_seconds(), time.process_time()
    children = Children()

    def started_as(server: tuple[Child, int]) -> overhead_run.Server:
        return overhead_run.Server(*children.add(server))

    with tempfile.TemporaryDirectory(prefix="irgw-overhead-") as tmp, children:
        workdir = Path(tmp)
        fake = started_as(start_fake())
        floor = started_as(start_floor(fake.port))
        keys_file = workdir / "keys.json"
        key = create_key("--keys-file", str(keys_file))
        start_gateway = overhead_run.start_overhead_gateway
        servers = overhead_run.Servers(
            fake, floor,
            gateway=started_as(start_gateway(fake.port, workdir, None)),
            gateway_auth=started_as(start_gateway(fake.port, workdir, keys_file)),
            gateway_tracing=started_as(start_gateway(fake.port, workdir, None, tracing=True)),
            key=key)
        print(f"fake vLLM pid {fake.child.pid} :{fake.port}; gateway pid "
              f"{servers.gateway.child.pid} :{servers.gateway.port}; gateway+auth pid "
              f"{servers.gateway_auth.child.pid} :{servers.gateway_auth.port}; "
              f"load average {load_start}", flush=True)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            run = runner.run(overhead_run.bench(sizes, servers, started))
        ours = time.process_time() - own0 + sum(c.cpu() for c in children.started)
        for child in children.started:
            if child.proc.poll() is not None:
                print(f"warning: {child.name} exited early: {child.log_tail()}")
    wall = time.monotonic() - started
    other = max(0.0, 100 * (system_busy_seconds() - busy0 - ours) / wall)
    md = overhead_report.write_report(run, args.quick, wall, load_start, os.getloadavg(), other)
    print()
    print(md)
    written = (overhead_report.RESULTS_MD, overhead_report.RESULTS_PNG,
               overhead_report.RESULTS_JSON)
    print(f"written: {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
