"""The load generator of overhead.py and the scripts built on it: an open loop at a fixed
arrival rate and a closed loop of N workers, with every process's CPU measured around each
phase and the gateways' RSS sampled in the background (aiohttp on uvloop)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.common.procs import (
    Child,
    proc_cpu_seconds,
    proc_status_kb,
    run_queue_wait_seconds,
    system_busy_seconds,
)
from bench.common.stats import percentile

BUDGET_RATE = 200  # req/s: the rate the overhead budget is stated at
REQUEST_TIMEOUT_S = 10.0


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

    def record(self, error: str | None, from_scheduled_ms: float, from_send_ms: float) -> None:
        if error is None:
            self.latencies_ms.append(from_scheduled_ms)
            self.from_send_ms.append(from_send_ms)
        else:
            self.errors[error] += 1

    def pct(self, p: float, data: list[float] | None = None) -> float:
        return percentile(self.latencies_ms if data is None else data, p)


def pooled(phases: list[Phase]) -> list[float]:
    return [x for ph in phases for x in ph.latencies_ms]


def cpu_us(phase: Phase, seconds: float) -> float:
    return 1e6 * seconds / phase.ok if phase.ok else float("nan")


def describe(phase: Phase) -> str:
    return (f"{phase.target:>13} {phase.label:<14} ok {phase.ok:>6}  err {phase.n_errors:>4}  "
            f"p50 {phase.pct(50):7.2f} ms  p99 {phase.pct(99):7.2f} ms  "
            f"{phase.achieved_rps:7.0f}/s  gw-CPU {cpu_us(phase, phase.target_cpu_s):6.0f} "
            f"us/req  wait {cpu_us(phase, phase.target_wait_s):6.0f} us/req  "
            f"other load {100 * phase.other_cpu_s / max(phase.wall_s, 1e-9):3.0f}%")


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


async def _post(session: Any, target: Target) -> str | None:
    """One request; None when it was answered as the target must answer, else the error."""
    try:
        async with session.post(target.url, data=target.body, headers=target.headers) as resp:
            await resp.read()
            if resp.status != 200:
                return f"HTTP {resp.status}"
            output = resp.headers.get("x-irgw-output")
            if target.checked and output != "passed":
                return f"x-irgw-output {output}"
            return None
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError as exc:
        return type(exc).__name__


def _ended(phase: Phase, t0: float, meter: Meter, before: tuple[float, ...],
           sampler: RssSampler) -> Phase:
    """The phase's wall time, its processes' CPU and its target's peak RSS."""
    phase.ended = time.perf_counter()
    phase.wall_s = phase.ended - t0
    meter.fill(phase, before)
    phase.rss_peak_kb = sampler.peak(phase.target, phase.started, phase.ended)
    return phase


async def open_loop(session: Any, target: Target, rate: float, duration_s: float,
                    meter: Meter, sampler: RssSampler, label: str) -> Phase:
    """Send `rate` x `duration_s` requests on a fixed clock, never waiting for answers."""
    phase = Phase(target.name, "open", rate, label)
    n = max(1, round(rate * duration_s))
    interval = 1.0 / rate
    tasks: set[asyncio.Task[None]] = set()
    clock = time.perf_counter

    async def one(scheduled: float) -> None:
        sent = clock()
        phase.send_lag_ms.append((sent - scheduled) * 1000)
        error = await _post(session, target)
        done = clock()
        phase.record(error, (done - scheduled) * 1000, (done - sent) * 1000)

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
    return _ended(phase, t0, meter, before, sampler)


async def closed_loop(session: Any, target: Target, concurrency: int, duration_s: float,
                      max_requests: int, meter: Meter, sampler: RssSampler,
                      label: str = "") -> Phase:
    """`concurrency` workers, each sending its next request when the previous one ends."""
    phase = Phase(target.name, "closed", concurrency, label or f"closed c{concurrency}")
    clock = time.perf_counter
    budget = [max_requests]

    async def worker(deadline: float) -> None:
        while budget[0] > 0 and clock() < deadline:
            budget[0] -= 1
            phase.sent += 1
            sent = clock()
            error = await _post(session, target)
            ms = (clock() - sent) * 1000  # nothing is scheduled: from the send
            phase.record(error, ms, ms)

    gc.collect()
    before = meter.snapshot()
    t0 = clock()
    phase.started = t0
    deadline = t0 + duration_s
    workers = [asyncio.create_task(worker(deadline)) for _ in range(concurrency)]
    _, pending = await asyncio.wait(workers, timeout=duration_s + REQUEST_TIMEOUT_S + 5)
    for task in pending:
        task.cancel()
    return _ended(phase, t0, meter, before, sampler)


def new_session() -> Any:
    """One pooled keep-alive aiohttp session (per target, so pools do not mix)."""
    connector = aiohttp.TCPConnector(limit=512, limit_per_host=512, keepalive_timeout=120,
                                     ttl_dns_cache=None)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )
