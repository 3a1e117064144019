"""What bench/overhead.py measures, in order: warm-up, interleaved rounds at 200 req/s,
sequential rounds, the rate steps, the closed loop; the figures land in a `Run`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import load
from bench.common.fake_vllm import fake_stats
from bench.common.gateway import gateway_env, start_gateway
from bench.common.payloads import CHAT_PATH, direct_body, gateway_body
from bench.common.procs import HOST, Child, proc_status_kb

BUDGET_P50_MS = 1.0
BUDGET_P99_MS = 5.0
MAX_RATE_P99_MS = 50.0
MAX_RATE_ACHIEVED = 0.95
TOTAL_BUDGET_S = 270.0  # no new rate step starts after this much wall time


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


@dataclass
class Server:
    child: Child
    port: int


@dataclass
class Servers:
    """The processes one run measures: the fake vLLM, the floor and three gateways."""

    fake: Server
    floor: Server
    gateway: Server
    gateway_auth: Server
    gateway_tracing: Server
    key: str  # gateway_auth's key


def start_overhead_gateway(upstream_port: int, workdir: Path, keys_file: Path | None,
                           tracing: bool = False) -> tuple[Child, int]:
    """The gateway with auth off, with auth and in-memory limits (`keys_file`), or with
    every request traced to the fake's OTLP sink (`tracing`)."""
    settings = {"IRGW_LOG_LEVEL": "warning",
                "IRGW_CANARY": "off"}  # the fake vLLM does not constrain: no canary requests
    if tracing:  # auth off, every request traced (the SDK's default sampler), to the fake
        settings |= {"IRGW_AUTH_ENABLED": "false",
                     "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{upstream_port}"}
        name = "gateway+tracing"
    elif keys_file is None:
        settings["IRGW_AUTH_ENABLED"] = "false"
        name = "gateway"
    else:
        settings |= {"IRGW_AUTH_ENABLED": "true", "IRGW_KEYS_FILE": str(keys_file),
                     "IRGW_RATELIMIT_BACKEND": "memory"}
        name = "gateway+auth"
    env = gateway_env(drop=("IRGW_", "OTEL_"), **settings)
    return start_gateway(name, f"http://{HOST}:{upstream_port}", workdir, env)


@dataclass
class Run:
    sizes: Sizes
    rounds: list[dict[str, load.Phase]] = field(default_factory=list)
    steps: list[load.Phase] = field(default_factory=list)
    step_direct: list[load.Phase] = field(default_factory=list)
    closed: list[load.Phase] = field(default_factory=list)
    seq: list[dict[str, load.Phase]] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)
    rss_timeline: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    phase_marks: list[tuple[float, float, str]] = field(default_factory=list)
    max_rate: int | None = None
    first_fail: load.Phase | None = None
    upstream_body_bytes: dict[str, int] = field(default_factory=dict)
    upstream_calls: dict[str, int] = field(default_factory=dict)
    t0: float = 0.0


def step_passes(phase: load.Phase) -> tuple[bool, str]:
    reasons = []
    if phase.n_errors:
        reasons.append(f"{phase.n_errors} errors ({dict(phase.errors)})")
    if phase.ok and phase.pct(99) > MAX_RATE_P99_MS:
        reasons.append(f"p99 {phase.pct(99):.1f} ms > {MAX_RATE_P99_MS:g} ms")
    if phase.achieved_rps < MAX_RATE_ACHIEVED * phase.offered_rps:
        reasons.append(f"achieved {phase.achieved_rps:.0f}/s < "
                       f"{100 * MAX_RATE_ACHIEVED:.0f}% of {phase.offered_rps:.0f}/s")
    return not reasons, "; ".join(reasons)



async def bench(sizes: Sizes, servers: Servers, started: float) -> Run:
    run = Run(sizes, t0=time.perf_counter())
    json_headers = {"content-type": "application/json"}
    fake_port = servers.fake.port
    auth = {**json_headers, "authorization": f"Bearer {servers.key}"}

    def target(name: str, server: Server, body: bytes, headers: dict[str, str],
               checked: bool) -> load.Target:
        return load.Target(name, f"http://{HOST}:{server.port}{CHAT_PATH}", body, headers,
                           checked, server.child.pid)

    direct = target("direct", servers.fake, direct_body(), json_headers, False)
    gateway = target("gateway", servers.gateway, gateway_body(), json_headers, True)
    gateway_auth = target("gateway+auth", servers.gateway_auth, gateway_body(), auth, True)
    floor_target = target("floor", servers.floor, direct_body(), json_headers, False)
    gateway_tracing = target("gateway+tracing", servers.gateway_tracing, gateway_body(),
                             json_headers, True)
    targets = [direct, floor_target, gateway, gateway_auth, gateway_tracing]
    fake = servers.fake.child
    all_pids = [t.pid for t in targets]
    meters = {t.name: load.Meter(t, fake, [p for p in all_pids if p not in (t.pid, fake.pid)])
              for t in targets}
    sampler = load.RssSampler({t.name: t.pid for t in (gateway, gateway_auth, gateway_tracing)},
                              max_s=TOTAL_BUDGET_S + 120)
    row = sampler.sample()
    run.rss["gateway idle (before load)"] = row["gateway"]
    run.rss["gateway+auth idle (before load)"] = row["gateway+auth"]
    sampler.start()
    sessions = {t.name: load.new_session() for t in targets}

    def mark(phase: load.Phase) -> load.Phase:
        run.phase_marks.append((phase.started, phase.ended, f"{phase.target} {phase.label}"))
        print(load.describe(phase), flush=True)
        return phase

    try:
        print(f"warm-up: {sizes.warmup_s:g} s at {load.BUDGET_RATE}/s per target", flush=True)
        for t in targets:
            mark(await load.open_loop(sessions[t.name], t, load.BUDGET_RATE, sizes.warmup_s,
                                      meters[t.name], sampler, "warm-up"))
            run.upstream_body_bytes[t.name] = fake_stats(fake_port).get("last_body_bytes", 0)
        row = sampler.sample()
        run.rss["gateway after warm-up"] = row["gateway"]

        print(f"\n{sizes.rounds} interleaved rounds at {load.BUDGET_RATE}/s, "
              f"{sizes.round_s:g} s per target", flush=True)
        for r in range(sizes.rounds):
            order = targets if r % 2 == 0 else targets[::-1]
            phases: dict[str, load.Phase] = {}
            for t in order:
                calls0 = fake_stats(fake_port).get("chat", 0)
                phases[t.name] = mark(await load.open_loop(
                    sessions[t.name], t, load.BUDGET_RATE, sizes.round_s, meters[t.name], sampler,
                    f"{load.BUDGET_RATE}/s r{r + 1}"))
                calls = fake_stats(fake_port).get("chat", 0) - calls0
                run.upstream_calls[t.name] = run.upstream_calls.get(t.name, 0) + calls
            run.rounds.append(phases)

        print(f"\nsequential requests (one at a time), {sizes.seq_rounds} interleaved rounds of "
              f"{sizes.seq_s:g} s per target", flush=True)
        for r in range(sizes.seq_rounds):
            order = targets if r % 2 == 0 else targets[::-1]
            seq: dict[str, load.Phase] = {}
            for t in order:
                seq[t.name] = mark(await load.closed_loop(
                    sessions[t.name], t, 1, sizes.seq_s, 20_000, meters[t.name], sampler,
                    f"seq r{r + 1}"))
            run.seq.append(seq)

        print(f"\nrate steps against the gateway (+{sizes.step_rate}/s, {sizes.step_s:g} s each; "
              f"pass = no errors, p99 <= {MAX_RATE_P99_MS:g} ms, achieved >= "
              f"{100 * MAX_RATE_ACHIEVED:.0f}%)", flush=True)
        for k in range(1, sizes.max_steps + 1):
            rate = k * sizes.step_rate
            if time.monotonic() - started > TOTAL_BUDGET_S - 40:
                print("time budget reached; stopping the rate steps", flush=True)
                break
            phase = mark(await load.open_loop(sessions["gateway"], gateway, rate, sizes.step_s,
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
                    probe = mark(await load.open_loop(
                        sessions["gateway"], gateway, low, sizes.step_s, meters["gateway"],
                        sampler, f"{low}/s"))
                    run.steps.insert(0, probe)
                    if step_passes(probe)[0]:
                        run.max_rate = low
                        break
            # The load generator and the fake share the 2 cores: does the direct path hold?
            for probe in sorted({rate, max(sizes.step_rate, rate - sizes.step_rate)}):
                run.step_direct.append(mark(await load.open_loop(
                    sessions["direct"], direct, probe, sizes.step_s, meters["direct"], sampler,
                    f"{probe}/s")))
            break
        await asyncio.sleep(1.0)  # let stragglers settle before the closed loop

        print(f"\nclosed loop, 32 concurrent workers, {sizes.closed_s:g} s per target",
              flush=True)
        for t in (direct, gateway):
            run.closed.append(mark(await load.closed_loop(
                sessions[t.name], t, 32, sizes.closed_s, sizes.closed_max, meters[t.name],
                sampler)))
    finally:
        for s in sessions.values():
            await s.close()
    await asyncio.sleep(2.0)
    row = sampler.sample()
    run.rss["gateway after load (+2 s idle)"] = row["gateway"]
    run.rss["gateway+auth after load (+2 s idle)"] = row["gateway+auth"]
    await sampler.stop()
    run.rss["gateway peak, whole run (VmHWM)"] = proc_status_kb(gateway.pid, "VmHWM")
    run.rss["gateway+auth peak, whole run (VmHWM)"] = proc_status_kb(gateway_auth.pid, "VmHWM")
    run.rss_timeline = sampler.samples
    return run

