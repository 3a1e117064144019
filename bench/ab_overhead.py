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

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import overhead  # noqa: E402

RESULTS_MD = BENCH / "results" / "ab_overhead.md"


def start_tree_gateway(tree: Path | None, fake_port: int,
                       workdir: Path) -> tuple[overhead.Child, int]:
    if tree is None:
        return overhead.start_gateway(fake_port, workdir, None)
    # -P: the tree on PYTHONPATH, not this one from the working directory.
    saved_argv, saved_path = overhead.gateway_argv, os.environ.get("PYTHONPATH")
    overhead.gateway_argv = lambda: [sys.executable, "-P", "-m", "gateway"]  # type: ignore[assignment]
    os.environ["PYTHONPATH"] = str(tree)
    try:
        return overhead.start_gateway(fake_port, workdir / "a", None)
    finally:
        overhead.gateway_argv = saved_argv  # type: ignore[assignment]
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path


async def ab(targets: list[overhead.Target], fake: overhead.Child, rounds: int,
             round_s: float) -> dict[str, list[overhead.Phase]]:
    pids = [t.pid for t in targets]
    meters = {t.name: overhead.Meter(t, fake, [p for p in pids if p != t.pid]) for t in targets}
    sampler = overhead.RssSampler({t.name: t.pid for t in targets}, max_s=rounds * round_s * 4
                                  + 120)
    sessions = {t.name: overhead.new_session() for t in targets}
    phases: dict[str, list[overhead.Phase]] = {t.name: [] for t in targets}
    try:
        for t in targets:  # warm-up
            await overhead.open_loop(sessions[t.name], t, overhead.BUDGET_RATE, 5,
                                     meters[t.name], sampler, "warm-up")
        for i in range(rounds):
            order = targets if i % 2 == 0 else targets[::-1]
            for t in order:
                phase = await overhead.open_loop(sessions[t.name], t, overhead.BUDGET_RATE,
                                                 round_s, meters[t.name], sampler, f"round {i}")
                print(overhead.describe(phase), flush=True)
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
    import uvloop

    children: list[overhead.Child] = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="irgw-ab-") as tmp:
        workdir = Path(tmp)
        (workdir / "a").mkdir()
        try:
            fake, fake_port = overhead.start_fake()
            children.append(fake)
            gw_a, port_a = start_tree_gateway(args.tree.resolve(), fake_port, workdir)
            children.append(gw_a)
            gw_b, port_b = start_tree_gateway(None, fake_port, workdir)
            children.append(gw_b)
            headers = {"content-type": "application/json"}
            chat = overhead.CHAT_PATH
            targets = [
                overhead.Target("direct", f"http://{overhead.HOST}:{fake_port}{chat}",
                                overhead.direct_body(), headers, False, fake.pid),
                overhead.Target(args.label_a, f"http://{overhead.HOST}:{port_a}{chat}",
                                overhead.gateway_body(), headers, True, gw_a.pid),
                overhead.Target(args.label_b, f"http://{overhead.HOST}:{port_b}{chat}",
                                overhead.gateway_body(), headers, True, gw_b.pid),
            ]
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                phases = runner.run(ab(targets, fake, args.rounds, args.round_s))
        finally:
            for child in reversed(children):
                child.close()
    direct = overhead.pooled(phases["direct"])
    d50, d99 = overhead.percentile(direct, 50), overhead.percentile(direct, 99)
    lines = [f"# Interleaved A/B at {overhead.BUDGET_RATE} req/s (bench/ab_overhead.py)", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, {args.rounds} rounds x {args.round_s:g} s per "
             f"target, order reversed every other round; load average at start {load}. "
             f"A = {args.label_a}, B = {args.label_b}.", "",
             "| target | requests | errors | p50 ms | p99 ms | added p50 | added p99 |",
             "|---|---|---|---|---|---|---|"]
    for name, runs in phases.items():
        data = overhead.pooled(runs)
        p50, p99 = overhead.percentile(data, 50), overhead.percentile(data, 99)
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
