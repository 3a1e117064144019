"""Soak: the gateway under a few hundred misbehaving clients while vLLM and Redis die.

    .venv/bin/python bench/soak.py [--duration 180] [--clients 300] [--label TEXT]

Starts, on 127.0.0.1 only: redis-server (as tests/redis_server.py does), the real CPU vLLM
on the project's tiny model (gateway/dev/vllm_process.py, from `$VLLM_VENV`), and the
gateway as its own `ir-gateway serve` process with a keys file of limited keys and Redis
limits. Then `--clients` clients (bench/soak_clients.py) mix named-schema requests, streams,
legacy completions, slow readers, hang-ups, malformed, oversized and idle connections for
`--duration` seconds, while vLLM is SIGKILLed (its whole process group) and restarted, and
redis-server is SIGKILLed and restarted. Then it waits for the stack to settle and prints:
requests sent, answers by status and error code, requests with no answer (must be 0), 5xx
by cause, the gateway's RSS and open fds before and after (must be within 10 %), and each
key's tokens against its TPM bucket (capacity + rate x duration; must never be over).
Writes bench/results/soak.md. Every process it starts is stopped on exit, Ctrl-C, SIGTERM
or an error; the whole run is bounded by a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import shlex
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common.gateway import gateway_argv, gateway_env  # noqa: E402
from bench.common.machine import git_rev  # noqa: E402
from bench.common.procs import Child, exit_on_signals, free_port, wait_http  # noqa: E402
from bench.soak_clients import KINDS, Ctx, Key, Tally, chat_body, client  # noqa: E402
from bench.soak_http import Conn, NoAnswer, request_bytes  # noqa: E402
from bench.soak_report import Snapshot, metrics_counts, render, snapshot  # noqa: E402
from gateway.access.keys import KeyPolicy, KeyStore  # noqa: E402
from gateway.dev.vllm_flags import CPU_DEFAULT_MAX_MODEL_LEN  # noqa: E402
from gateway.dev.vllm_process import VllmServer, build_dev_model  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

SERVED_MODEL = "tiny-qwen2"
RESULTS_MD = REPO / "bench" / "results" / "soak.md"
# name, client weight, rpm, tpm, concurrency, schemas
KEYS = (
    ("tight", 25, 600, 2_000, 4, "*"),  # its TPM binds, not its RPM
    ("medium", 25, 300, 20_000, 6, "*"),
    ("wide", 30, 6_000, 300_000, 32, "*"),
    ("scoped", 20, 120, 10_000, 4, "function_ir"),
)
# What the gateway runs with besides the keys and Redis (defaults otherwise; --gateway-env
# adds or overrides). The upstream timeout is shortened so that every answer comes well
# within the clients' own timeout.
GATEWAY_ENV = {"IRGW_UPSTREAM_TIMEOUT_S": "60", "IRGW_LOG_LEVEL": "warning"}


class Stack:
    """redis-server, vLLM and the gateway; `close()` stops whatever was started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis: RedisServer | None = None
        self.vllm: VllmServer | None = None
        self.gateway: Child | None = None
        self.gateway_port = 0
        self.gateway_log = workdir / "gateway.log"
        self.gateway_env: dict[str, str] = {}

    def start_redis(self) -> None:
        self.redis = RedisServer()
        self.redis.start()

    def start_vllm(self, boot_timeout_s: float) -> float:
        model = build_dev_model(trained=True)
        self.vllm = VllmServer(model, served_model_name=SERVED_MODEL,
                               log_path=self.workdir / "vllm.log")
        self.vllm.start()
        return self.vllm.wait_ready(timeout_s=boot_timeout_s)

    def kill_vllm(self) -> None:
        """SIGKILL vLLM's whole process group (server and engine), as a crash would."""
        assert self.vllm is not None and self.vllm.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.vllm.process.pid, signal.SIGKILL)
        self.vllm.process.wait(timeout=30)
        self.vllm.stop()  # reaps what is left and closes its log

    def start_gateway(self, keys_file: Path, extra_env: dict[str, str]) -> None:
        assert self.redis is not None and self.vllm is not None
        self.gateway_port = free_port()
        self.gateway_env = {
            "IRGW_UPSTREAM_URL": self.vllm.url, "IRGW_UPSTREAM_MODEL": SERVED_MODEL,
            "IRGW_AUTH_ENABLED": "true", "IRGW_KEYS_FILE": str(keys_file),
            "IRGW_RATELIMIT_BACKEND": "redis", "IRGW_REDIS_URL": self.redis.url,
            **GATEWAY_ENV, **extra_env,
            "IRGW_HOST": "127.0.0.1", "IRGW_PORT": str(self.gateway_port),  # loopback only
        }
        self.gateway = Child("gateway", [*gateway_argv(), "serve"],
                             env=gateway_env(**self.gateway_env), log=self.gateway_log)
        wait_http(self.gateway, self.gateway_port, timeout_s=60, every_s=0.2)

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.close(grace_s=30)
        for part in (self.vllm, self.redis):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()


def make_keys(keys_file: Path) -> tuple[list[Key], str]:
    """The clients' keys, and one for warming up (used by no client): limited, so that
    warming up also opens the gateway's connections to Redis, but far beyond reach."""
    store = KeyStore(keys_file, create=True)
    keys = []
    for name, weight, rpm, tpm, concurrency, schemas in KEYS:
        policy = KeyPolicy(rpm=rpm, tpm=tpm, concurrency=concurrency,
                           schemas="*" if schemas == "*" else schemas.split(","))
        keys.append(Key(name, store.create(name, policy)[1], weight, rpm, tpm, concurrency,
                        schemas))
    warm = KeyPolicy(rpm=10**7, tpm=10**9, concurrency=10**4)
    return keys, store.create("warm-up", warm)[1]


async def probe(port: int, path: str, timeout_s: float = 3.0) -> tuple[int, bytes]:
    """GET `path`: (status, body), (0, b'') without an answer."""
    try:
        conn = await Conn.open(port)
    except NoAnswer:
        return 0, b""
    try:
        conn.send(request_bytes("GET", path, port))
        reply = await conn.read(time.monotonic() + timeout_s)
        return reply.status, bytes(reply.body)
    except NoAnswer:
        return 0, b""
    finally:
        await conn.close()


async def wait_vllm(vllm: VllmServer, timeout_s: float) -> float:
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < timeout_s:
        if not vllm.alive():
            raise RuntimeError(f"vLLM exited while restarting:\n{vllm.log_tail()}")
        if (await probe(vllm.port, "/version"))[0] == 200:
            return elapsed
        await asyncio.sleep(1.0)
    raise RuntimeError(f"vLLM not ready {timeout_s:.0f} s after its restart")


async def warm_up(ctx: Ctx, key: str, n: int) -> None:
    """`n` concurrent named requests on the unlimited key, so that the gateway's pools
    (vLLM, Redis) hold what a busy gateway holds before a snapshot is taken."""
    warm = dataclasses.replace(ctx, tally=Tally())
    rng = random.Random(0)
    k = Key("warm-up", key, 0, None, None, None, "*")

    async def one() -> None:
        body, _ = chat_body(warm, rng, k, max_tokens=100)
        with contextlib.suppress(NoAnswer):
            conn = await Conn.open(ctx.port)
            conn.send(request_bytes("POST", "/v1/chat/completions", ctx.port, key=key,
                                    body=body))
            with contextlib.suppress(NoAnswer):
                await conn.read(time.monotonic() + ctx.request_timeout_s)
            await conn.close()

    await asyncio.gather(*(one() for _ in range(n)))


def _hold_s(args: argparse.Namespace) -> float:
    """How long a client's request may still run once the load ends (its own timeout or
    hold), with a margin."""
    return max(args.request_timeout, args.slow_hold + 5, args.idle_hold) + 30


async def warm_load(ctx: Ctx, key: str, args: argparse.Namespace) -> None:
    """The soak's own mix of clients for `--warm-load` seconds, on the unlimited key and
    without faults, so that the baseline is a gateway that has worked: its heap grown to
    what this load takes, its pools and caches filled. What the run adds to that is what
    the faults and more of the same load leave behind (the measure of a leak)."""
    warm = dataclasses.replace(ctx, keys=[Key("warm-up", key, 1, None, None, None, "*")],
                               tally=Tally())
    warm.tally.load_ends = time.monotonic() + args.warm_load
    print(f"warm-up load: {args.clients} clients for {args.warm_load:g} s", flush=True)
    hold = _hold_s(args)
    clients = [asyncio.create_task(client(warm, random.Random(-1 - i), args.think))
               for i in range(args.clients)]
    _, pending = await asyncio.wait(clients, timeout=args.warm_load + hold)
    for task in pending:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)


async def settle(stack: Stack, settle_s: float) -> None:
    """Until the gateway has nothing in flight (bounded), then `settle_s` more."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = await probe(stack.gateway_port, "/metrics")
        if status != 200 or any(line.startswith(b"irgw_inflight_requests ") and
                                float(line.split()[1]) == 0 for line in body.splitlines()):
            break
        await asyncio.sleep(1.0)
    await asyncio.sleep(settle_s)


async def faults(stack: Stack, t0: float, args: argparse.Namespace, tally: Tally,
                 events: list[tuple[float, str]], windows: dict[str, list[float]]) -> None:
    """SIGKILL vLLM and restart it; SIGKILL redis-server and restart it after a pause.
    The load goes on until vLLM has been back for `--after-restart` seconds: recovery
    under load is part of what is measured."""
    assert stack.vllm is not None and stack.redis is not None
    redis = stack.redis

    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, t0 + fraction * args.duration - time.monotonic()))

    def note(what: str) -> None:
        events.append((time.monotonic() - t0, what))
        print(f"[{time.monotonic() - t0:6.1f} s] {what}", flush=True)

    async def vllm_fault() -> None:
        assert stack.vllm is not None
        await at(args.vllm_kill_at)
        stack.kill_vllm()
        windows["vLLM"] = [time.monotonic() - t0, float("inf")]
        note("vLLM SIGKILLed (its whole process group); restarting it")
        tally.load_ends = float("inf")  # the clients go on until vLLM is back
        back_for = 0.0
        try:
            stack.vllm.start()
            boot = await wait_vllm(stack.vllm, args.boot_timeout)
            note(f"vLLM answers again, {boot:.0f} s after the restart")
            windows["vLLM"][1] = time.monotonic() - t0
            back_for = args.after_restart
        finally:
            tally.load_ends = max(t0 + args.duration, time.monotonic() + back_for)

    async def redis_fault() -> None:
        await at(args.redis_kill_at)
        await asyncio.to_thread(redis.stop)
        windows["Redis"] = [time.monotonic() - t0, float("inf")]
        note("redis-server SIGKILLed")
        await asyncio.sleep(args.redis_down)
        await asyncio.to_thread(redis.start)
        windows["Redis"][1] = time.monotonic() - t0
        note("redis-server restarted (empty: no persistence)")

    results = await asyncio.gather(vllm_fault(), redis_fault(), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            note(f"fault injection failed: {result!r}")


async def lag_monitor(lags: list[float]) -> None:
    """How late this process's own loop runs (its clients' timing is only as good)."""
    while True:
        started = time.monotonic()
        await asyncio.sleep(0.1)
        lags.append(time.monotonic() - started - 0.1)


async def soak(stack: Stack, args: argparse.Namespace, keys: list[Key],
               warm_key: str) -> dict[str, object]:
    ctx = Ctx(port=stack.gateway_port, keys=keys, tally=Tally(),
              request_timeout_s=args.request_timeout, slow_hold_s=args.slow_hold,
              idle_hold_s=args.idle_hold, head_kb=args.head_kb, body_limit=args.body_limit,
              default_max_tokens=args.default_max_tokens, max_retries=2,
              max_model_len=CPU_DEFAULT_MAX_MODEL_LEN)
    assert stack.gateway is not None
    pid = stack.gateway.pid
    ports = {"vllm": stack.vllm.port if stack.vllm else 0,
             "redis": stack.redis.port if stack.redis else 0}
    await warm_up(ctx, warm_key, args.warm)
    await settle(stack, args.settle)
    cold = snapshot(pid, stack.gateway_port, ports)
    print(f"cold: {cold.line()}", flush=True)
    if args.warm_load > 0:
        await warm_load(ctx, warm_key, args)
        await warm_up(ctx, warm_key, args.warm)
        await settle(stack, args.settle)
    before = snapshot(pid, stack.gateway_port, ports)
    metrics_before = metrics_counts((await probe(stack.gateway_port, "/metrics"))[1])
    print(f"before: {before.line()}; {args.clients} clients for {args.duration:g} s", flush=True)

    events: list[tuple[float, str]] = []
    windows: dict[str, list[float]] = {}
    lags: list[float] = []
    lagger = asyncio.create_task(lag_monitor(lags))
    t0 = time.monotonic()
    ctx.tally.load_ends = t0 + args.duration
    fault_task = (asyncio.create_task(faults(stack, t0, args, ctx.tally, events, windows))
                  if args.faults else None)
    clients = [asyncio.create_task(client(ctx, random.Random(args.seed + i), args.think))
               for i in range(args.clients)]
    # Every client stops starting requests when the load ends; one under way ends by its
    # own timeout or hold. Whatever still runs at the hard stop is a bug here, counted.
    hold = _hold_s(args)
    hard_stop = t0 + args.duration + args.boot_timeout + args.after_restart + hold
    pending = set(clients)
    while pending and time.monotonic() < hard_stop:
        _, pending = await asyncio.wait(pending, timeout=5.0)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    load_s = max(ctx.tally.last_answer, ctx.tally.load_ends) - t0
    lagger.cancel()
    if fault_task is not None:
        await fault_task
    print(f"[{time.monotonic() - t0:6.1f} s] clients done; settling", flush=True)
    await warm_up(ctx, warm_key, args.warm)
    await settle(stack, args.settle)
    alive = stack.gateway.alive()
    after = snapshot(pid, stack.gateway_port, ports) if alive else Snapshot.gone()
    metrics_after = metrics_counts((await probe(stack.gateway_port, "/metrics"))[1])
    return {"tally": ctx.tally, "cold": cold, "before": before,
            "load_phase_s": ctx.tally.load_ends - t0, "t0": t0, "windows": windows,
            "after": after, "events": events,
            "load_s": load_s, "lags": lags, "cancelled": len(pending),
            "metrics": (metrics_before, metrics_after), "alive": alive}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="load phase, seconds")
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--think", type=float, default=1.0,
                        help="mean pause between a client's requests, seconds")
    parser.add_argument("--request-timeout", type=float, default=120.0,
                        help="client-side timeout of a request owed an answer")
    parser.add_argument("--slow-hold", type=float, default=30.0,
                        help="how long a slow reader stops reading")
    parser.add_argument("--idle-hold", type=float, default=30.0,
                        help="how long an idle socket waits for the server to close it")
    parser.add_argument("--head-kb", type=int, default=1024, help="the oversized header")
    parser.add_argument("--body-limit", type=int, default=8 * 1024 * 1024,
                        help="the gateway's body limit (oversized bodies exceed it)")
    parser.add_argument("--default-max-tokens", type=int, default=1024,
                        help="the gateway's default_max_tokens (for token bounds)")
    parser.add_argument("--vllm-kill-at", type=float, default=0.2,
                        help="fraction of the load phase")
    parser.add_argument("--redis-kill-at", type=float, default=0.55)
    parser.add_argument("--redis-down", type=float, default=5.0, help="seconds")
    parser.add_argument("--after-restart", type=float, default=30.0,
                        help="the load goes on at least this long after vLLM is back")
    parser.add_argument("--no-faults", dest="faults", action="store_false")
    parser.add_argument("--warm", type=int, default=64,
                        help="concurrent warm-up requests before each snapshot (64 fills "
                        "the gateway's Redis pool, so a full pool after the run is no "
                        "change)")
    parser.add_argument("--warm-load", type=float, default=30.0,
                        help="seconds of the same client mix, on an unlimited key and without "
                        "faults, before the baseline snapshot (0: none; the report shows the "
                        "process before it too)")
    parser.add_argument("--settle", type=float, default=8.0,
                        help="seconds of quiet before a snapshot (> the 5 s lingering close)")
    parser.add_argument("--boot-timeout", type=float, default=400.0)
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra IRGW_* setting for the gateway (repeatable)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--label", default="", help="what this run is (goes in the report)")
    parser.add_argument("--out", type=Path, default=RESULTS_MD)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    extra_env = dict(item.split("=", 1) for item in args.gateway_env)
    exit_on_signals()
    started = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="irgw-soak-"))
    stack = Stack(workdir)
    try:
        stack.start_redis()
        print(f"redis-server on {stack.redis.port if stack.redis else '?'}; booting vLLM "
              f"(logs in {workdir})", flush=True)
        boot = stack.start_vllm(args.boot_timeout)
        keys, warm_key = make_keys(workdir / "keys.json")
        stack.start_gateway(workdir / "keys.json", extra_env)
        print(f"vLLM ready in {boot:.0f} s; gateway on {stack.gateway_port}", flush=True)
        budget = (args.duration + args.request_timeout + 2 * args.boot_timeout
                  + args.after_restart + 300)
        result = asyncio.run(asyncio.wait_for(soak(stack, args, keys, warm_key), budget))
        gateway_log = stack.gateway_log.read_text(errors="replace")
    finally:
        stack.close()
    command = shlex.join([".venv/bin/python", "bench/soak.py", *sys.argv[1:]])
    report = render(result, args=args, keys=keys, kinds=KINDS, command=command,
                    started=started, rev=git_rev(), boot_s=boot,
                    gateway_env=stack.gateway_env, gateway_log=gateway_log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    print(f"written to {args.out}; logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
