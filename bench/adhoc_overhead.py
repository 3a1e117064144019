"""What an ad-hoc schema costs next to a named one, on the overhead benchmark's parts.

Usage::

    .venv/bin/python bench/adhoc_overhead.py            # ~1 minute, writes bench/results/
    .venv/bin/python bench/adhoc_overhead.py --quick    # smoke run

Same set-up as bench/overhead.py (its zero-latency fake vLLM, one gateway process with auth
off, all on 127.0.0.1), sequential requests (one at a time), in interleaved rounds so that
machine noise hits every case alike:

* direct: the fake itself, sent what the gateway would send it;
* named: `model: schema/function_ir`;
* ad-hoc repeat: `function_ir`'s schema sent in `response_format` with the same text every
  time, as `client.chat.completions.parse(response_format=Model)` does (compiled once,
  then taken from the gateway's cache);
* ad-hoc first-time: the same schema with a new `title` on every request (never cached:
  each one is measured, bounded and compiled).

"Added" is the case's median minus the direct median (and the same for the mean). The
target (issue 17, finding 3): ad-hoc repeat costs at most 1.5x the named schema's added
latency.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import payloads  # noqa: E402
from bench.common.fake_vllm import start_fake  # noqa: E402
from bench.common.load import new_session  # noqa: E402
from bench.common.machine import cpu_model, git_rev  # noqa: E402
from bench.common.procs import HOST, Children, exit_on_signals  # noqa: E402
from bench.common.stats import mean, median  # noqa: E402
from bench.overhead_run import start_overhead_gateway  # noqa: E402

RESULTS_MD = REPO / "bench" / "results" / "adhoc_overhead.md"
TARGET_RATIO = 1.5


def adhoc_body(title: str | None) -> bytes:
    schema = json.loads(payloads.SCHEMA_FILE.read_text())["schema"]
    if title is not None:
        schema = {"title": title, **schema}
    return orjson.dumps({
        "model": payloads.UPSTREAM_MODEL,
        "messages": [{"role": "user", "content": payloads.USER_CONTENT}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "FunctionIR", "schema": schema,
                                            "strict": True}},
    })


async def sequential(session: Any, url: str, body: Callable[[int], bytes], checked: bool,
                     n: int, samples: list[float]) -> None:
    for i in range(n):
        data = body(i)
        sent = time.perf_counter()
        async with session.post(url, data=data,
                                headers={"content-type": "application/json"}) as resp:
            await resp.read()
            if resp.status != 200 or (checked and resp.headers.get("x-irgw-output")
                                      != "passed"):
                raise RuntimeError(f"{url}: {resp.status} {resp.headers}")
        samples.append((time.perf_counter() - sent) * 1000)


async def run(rounds: int, per_round: int, fake_port: int, gw_port: int) -> dict[str, list[float]]:
    gateway = f"http://{HOST}:{gw_port}{payloads.CHAT_PATH}"
    direct = f"http://{HOST}:{fake_port}{payloads.CHAT_PATH}"
    named, to_fake, repeat = payloads.gateway_body(), payloads.direct_body(), adhoc_body(None)
    fresh = iter(range(10**9))
    cases: dict[str, tuple[str, Callable[[int], bytes], bool]] = {
        "direct": (direct, lambda i: to_fake, False),
        "named": (gateway, lambda i: named, True),
        "ad-hoc repeat": (gateway, lambda i: repeat, True),
        "ad-hoc first-time": (gateway, lambda i: adhoc_body(f"T{next(fresh)}"), True),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    session = new_session()
    try:
        for url, body, checked in cases.values():  # warm-up, not counted
            await sequential(session, url, body, checked, 200, [])
        for r in range(rounds):
            order = list(cases) if r % 2 == 0 else list(cases)[::-1]
            for name in order:
                url, body, checked = cases[name]
                await sequential(session, url, body, checked, per_round, samples[name])
    finally:
        await session.close()
    return samples


def report(samples: dict[str, list[float]], wall_s: float, quick: bool) -> str:
    base_p50 = median(samples["direct"])
    base_mean = mean(samples["direct"])
    added = {name: (median(s) - base_p50, mean(s) - base_mean)
             for name, s in samples.items()}
    named_p50 = added["named"][0]
    lines = [
        "# Ad-hoc schema overhead (bench/adhoc_overhead.py)",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, git {git_rev()}, "
        f"{'quick' if quick else 'full'} run, {wall_s:.0f} s; sequential requests, "
        f"interleaved rounds; {cpu_model()}",
        "",
        "| case | requests | p50 ms | mean ms | added p50 ms | added mean ms | x named (p50) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in samples.items():
        p50_added, mean_added = added[name]
        ratio = "" if name == "direct" else f"{p50_added / named_p50:.2f}" if named_p50 > 0 \
            else "n/a"
        lines.append(f"| {name} | {len(s)} | {median(s):.3f} | "
                     f"{mean(s):.3f} | "
                     f"{'' if name == 'direct' else f'{p50_added:+.3f}'} | "
                     f"{'' if name == 'direct' else f'{mean_added:+.3f}'} | {ratio} |")
    repeat_ratio = added["ad-hoc repeat"][0] / named_p50 if named_p50 > 0 else float("inf")
    verdict = "within" if repeat_ratio <= TARGET_RATIO else "OVER"
    lines += ["", f"Ad-hoc repeat vs named (added p50): {repeat_ratio:.2f}x, {verdict} the "
              f"{TARGET_RATIO}x target."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small samples")
    args = parser.parse_args()
    exit_on_signals()
    rounds, per_round = (2, 200) if args.quick else (6, 1000)

    import uvloop

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="irgw-adhoc-") as tmp, Children() as children:
        _, fake_port = children.add(start_fake())
        _, gw_port = children.add(start_overhead_gateway(fake_port, Path(tmp), None))
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            samples = runner.run(run(rounds, per_round, fake_port, gw_port))
    md = report(samples, time.monotonic() - started, args.quick)
    print(md)
    if not args.quick:
        RESULTS_MD.write_text(md)
        print(f"written: {RESULTS_MD}")


if __name__ == "__main__":
    main()
