"""An interleaved A/B of two gateway source trees: added latency at 200 req/s, one fake.

Usage::

    git archive BASE | tar -x -C /tmp/base      # the tree to compare against
    .venv/bin/python bench/ab_overhead.py /tmp/base [--rounds 6 --round-s 10]

`overhead.py`'s open loop, fake vLLM and named-schema request (auth off), against three
targets in interleaved rounds (the order reversed every other round, so machine noise hits
all alike): the fake directly, the gateway of TREE ("A") and this tree's ("B"), both run
as `ir-gateway serve` in this venv. Prints pooled p50/p99 and each gateway's added median
and p99 over direct, and writes bench/results/ab_overhead.md.
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
from bench.common import load  # noqa: E402
from bench.common.fake_vllm import start_fake  # noqa: E402
from bench.common.gateway import gateway_env, start_gateway  # noqa: E402
from bench.common.payloads import CHAT_PATH, direct_body, gateway_body  # noqa: E402
from bench.common.procs import HOST, Child, Children, exit_on_signals  # noqa: E402
from bench.common.stats import percentile  # noqa: E402

RESULTS_MD = REPO / "bench" / "results" / "ab_overhead.md"


def start_tree_gateway(name: str, tree: Path | None, fake_port: int,
                       workdir: Path) -> tuple[Child, int]:
    """overhead.py's auth-off gateway, of `tree` (None: this one)."""
    env = gateway_env(drop=("IRGW_", "OTEL_"), tree=tree, IRGW_LOG_LEVEL="warning",
                      IRGW_CANARY="off", IRGW_AUTH_ENABLED="false")
    return start_gateway(name, f"http://{HOST}:{fake_port}", workdir, env, tree=tree)


async def ab(targets: list[load.Target], fake: Child, rounds: int,
             round_s: float) -> dict[str, list[load.Phase]]:
    pids = [t.pid for t in targets]
    meters = {t.name: load.Meter(t, fake, [p for p in pids if p != t.pid]) for t in targets}
    sampler = load.RssSampler({t.name: t.pid for t in targets}, max_s=rounds * round_s * 4 + 120)
    sessions = {t.name: load.new_session() for t in targets}
    phases: dict[str, list[load.Phase]] = {t.name: [] for t in targets}
    try:
        for t in targets:  # warm-up
            await load.open_loop(sessions[t.name], t, load.BUDGET_RATE, 5, meters[t.name],
                                 sampler, "warm-up")
        for i in range(rounds):
            order = targets if i % 2 == 0 else targets[::-1]
            for t in order:
                phase = await load.open_loop(sessions[t.name], t, load.BUDGET_RATE, round_s,
                                             meters[t.name], sampler, f"round {i}")
                print(load.describe(phase), flush=True)
                phases[t.name].append(phase)
    finally:
        for session in sessions.values():
            await session.close()
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("tree", type=Path, help="the other gateway's source tree (A)")
    parser.add_argument("--label-a", default="A")
    parser.add_argument("--label-b", default="B (this tree)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--round-s", type=float, default=10.0)
    args = parser.parse_args()
    exit_on_signals()
    import uvloop

    loadavg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="irgw-ab-") as tmp, Children() as children:
        workdir = Path(tmp)
        fake, fake_port = children.add(start_fake())
        gw_a, port_a = children.add(start_tree_gateway("gateway-a", args.tree.resolve(),
                                                       fake_port, workdir))
        gw_b, port_b = children.add(start_tree_gateway("gateway-b", None, fake_port,
                                                       workdir))
        headers = {"content-type": "application/json"}
        targets = [
            load.Target("direct", f"http://{HOST}:{fake_port}{CHAT_PATH}", direct_body(),
                        headers, False, fake.pid),
            load.Target(args.label_a, f"http://{HOST}:{port_a}{CHAT_PATH}", gateway_body(),
                        headers, True, gw_a.pid),
            load.Target(args.label_b, f"http://{HOST}:{port_b}{CHAT_PATH}", gateway_body(),
                        headers, True, gw_b.pid),
        ]
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            phases = runner.run(ab(targets, fake, args.rounds, args.round_s))
    direct = load.pooled(phases["direct"])
    d50, d99 = percentile(direct, 50), percentile(direct, 99)
    lines = [f"# Interleaved A/B at {load.BUDGET_RATE} req/s (bench/ab_overhead.py)", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, {args.rounds} rounds x {args.round_s:g} s per "
             f"target, order reversed every other round; load average at start {loadavg}. "
             f"A = {args.label_a}, B = {args.label_b}.", "",
             "| target | requests | errors | p50 ms | p99 ms | added p50 | added p99 |",
             "|---|---|---|---|---|---|---|"]
    for name, runs in phases.items():
        data = load.pooled(runs)
        p50, p99 = percentile(data, 50), percentile(data, 99)
        errors = sum(r.n_errors for r in runs)
        added = ("", "") if name == "direct" else (f"+{p50 - d50:.3f}", f"+{p99 - d99:.3f}")
        lines.append(f"| {name} | {len(data)} | {errors} | {p50:.3f} | {p99:.3f} | "
                     f"{added[0]} | {added[1]} |")
    md = "\n".join(lines) + "\n"
    print(md)
    RESULTS_MD.write_text(md)
    print(f"written: {RESULTS_MD}")


if __name__ == "__main__":
    main()
