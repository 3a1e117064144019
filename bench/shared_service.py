"""What running as a shared service costs per request: the Redis key store and usage
accounting (and, separately, Redis limits with a token budget) next to the keys file.

Usage::

    .venv/bin/python bench/shared_service.py          # ~2 min, writes bench/results/
    .venv/bin/python bench/shared_service.py --quick  # smoke run

Same harness as bench/overhead.py (its zero-latency fake vLLM in its own process, gateways as
`ir-gateway serve` processes, an open loop at a fixed arrival rate, latency from each
request's scheduled send time), all in one run against one real `redis-server`:

* `file`: auth on, the keys file, in-memory limits, no usage accounting (before this work);
* `redis-keys+usage`: the Redis key store (IRGW_KEYS_BACKEND=redis) and usage accounting in
  Redis (IRGW_USAGE_BACKEND=redis), in-memory limits;
* `file+redis-limits`: the keys file with Redis limits (IRGW_RATELIMIT_BACKEND=redis), no
  budget: what the shared limits cost before this work, to compare the next one with;
* `redis-all+budget`: the Redis key store and usage, plus Redis limits and a daily token
  budget on the key (two Lua calls to Redis per request: the limits' ADMIT and the budget's
  SPEND, and their settlements after the answer).

The targets are measured in interleaved rounds, so machine noise hits them alike; the figures
are the median and p99 over all rounds, and their difference from `file`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.overhead import (  # noqa: E402
    CHAT_PATH,
    HOST,
    START_TIMEOUT_S,
    Child,
    Meter,
    Phase,
    RssSampler,
    Target,
    free_port,
    gateway_argv,
    gateway_body,
    http_get,
    new_session,
    open_loop,
    percentile,
    start_fake,
)
from tests.redis_server import RedisServer  # noqa: E402

RESULTS_MD = REPO / "bench" / "results" / "shared_service.md"
RATE = 200


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRGW_")}
    # A high in-flight cap: a gateway that falls behind shows it in latency, not 503s.
    # The canary off: the fake vLLM does not constrain, so /readyz would never answer 200.
    env.update({"IRGW_LOG_LEVEL": "warning", "IRGW_AUTH_ENABLED": "true", "IRGW_CANARY": "off",
                "IRGW_MAX_INFLIGHT": "256", "IRGW_QUEUE_SIZE": "256", **settings})
    return env


def _key(env: dict[str, str], *extra: str) -> str:
    argv = [*gateway_argv(), "keys", "create", "--name", "bench", "--rpm", "10000000",
            "--tpm", "1000000000", *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True,
                          env=env)
    return done.stdout.strip()


def _usage(redis_url: str, env: dict[str, str]) -> str:
    done = subprocess.run([*gateway_argv(), "usage", "--backend", "redis", "--redis-url",
                           redis_url], capture_output=True, text=True, timeout=60, env=env)
    return done.stdout


def _start(name: str, upstream_port: int, env: dict[str, str], workdir: Path) -> tuple[Child, int]:
    port = free_port()
    argv = [*gateway_argv(), "serve", "--upstream", f"http://{HOST}:{upstream_port}",
            "--host", HOST, "--port", str(port)]
    child = Child(name, argv, env=env, log=workdir / f"{name}.log")
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {child.log_tail()}")
        try:
            if http_get(f"http://{HOST}:{port}/readyz")[0] == 200:
                return child, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            child.close()
            raise RuntimeError(f"{name} not ready: {child.log_tail()}")
        time.sleep(0.1)


async def run(rounds: int, round_s: float, warmup_s: float) -> str:
    redis = RedisServer()
    redis.start()
    fake, fake_port = start_fake()
    children: list[Child] = [fake]
    try:
        with tempfile.TemporaryDirectory(prefix="irgw-shared-bench-") as tmp:
            workdir = Path(tmp)
            file_env = _env(IRGW_KEYS_FILE=str(workdir / "keys.json"),
                            IRGW_RATELIMIT_BACKEND="memory")
            keys_env = _env(IRGW_KEYS_BACKEND="redis", IRGW_REDIS_URL=redis.url,
                            IRGW_USAGE_BACKEND="redis", IRGW_RATELIMIT_BACKEND="memory")
            all_env = {**keys_env, "IRGW_RATELIMIT_BACKEND": "redis"}
            limits_env = {**file_env, "IRGW_RATELIMIT_BACKEND": "redis",
                          "IRGW_REDIS_URL": redis.url}
            keys_file_key = _key({**file_env}, "--keys-file", str(workdir / "keys.json"))
            keys = {
                "file": keys_file_key,
                "redis-keys+usage": _key(keys_env, "--backend", "redis"),
                "file+redis-limits": keys_file_key,
                "redis-all+budget": _key(all_env, "--backend", "redis",
                                         "--budget-tokens", "1000000000"),
            }
            envs = {"file": file_env, "redis-keys+usage": keys_env,
                    "file+redis-limits": limits_env, "redis-all+budget": all_env}
            targets: list[Target] = []
            for name, env in envs.items():
                child, port = _start(name, fake_port, env, workdir)
                children.append(child)
                targets.append(Target(name, f"http://{HOST}:{port}{CHAT_PATH}", gateway_body(),
                                      {"content-type": "application/json",
                                       "authorization": f"Bearer {keys[name]}"},
                                      True, child.pid))
            sampler = RssSampler({t.name: t.pid for t in targets},
                                 max_s=(rounds * round_s + warmup_s) * len(targets) * 3 + 60)
            sampler.start()
            phases: dict[str, list[Phase]] = {t.name: [] for t in targets}
            async with new_session() as session:
                for target in targets:
                    meter = Meter(target, fake, [])
                    await open_loop(session, target, RATE, warmup_s, meter, sampler, "warmup")
                for index in range(rounds):
                    order = targets if index % 2 == 0 else list(reversed(targets))
                    for target in order:
                        meter = Meter(target, fake, [])
                        phases[target.name].append(await open_loop(
                            session, target, RATE, round_s, meter, sampler, f"round {index}"))
            await sampler.stop()
            for child in children[1:]:  # stopped first: each flushes its usage as it stops
                child.close()
            usage = await asyncio.to_thread(_usage, redis.url, keys_env)
            return report(phases, rounds, round_s, usage)
    finally:
        for child in reversed(children):
            child.close()
        redis.stop()


def report(phases: dict[str, list[Phase]], rounds: int, round_s: float, usage: str) -> str:
    base = [ms for phase in phases["file"] for ms in phase.latencies_ms]
    base_p50, base_p99 = percentile(base, 50), percentile(base, 99)
    lines = [
        "# Shared-service overhead: Redis key store + usage vs the keys file",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, `bench/shared_service.py`, "
        f"{rounds} interleaved rounds of {round_s:.0f} s at {RATE} req/s per target, "
        f"auth on, IRGW_MAX_INFLIGHT=256, named schema (`schema/function_ir`), "
        f"zero-latency fake vLLM, local "
        f"redis-server; {os.cpu_count()} CPUs shared with other work (figures are noisy).",
        "",
        "| target | requests | errors | p50 ms | p99 ms | p50 vs file | p99 vs file | "
        "gateway CPU µs/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in phases.items():
        lat = [ms for phase in runs for ms in phase.latencies_ms]
        counted: Counter[str] = Counter()
        for phase in runs:
            counted.update(phase.errors)
        errors = ", ".join(f"{n} {what}" for what, n in counted.most_common()) or "0"
        cpu = sum(getattr(phase, "target_cpu_s", 0.0) for phase in runs)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        lines.append(f"| {name} | {len(lat)} | {errors} | {p50:.2f} | {p99:.2f} | "
                     f"{p50 - base_p50:+.2f} | {p99 - base_p99:+.2f} | "
                     f"{cpu / max(1, len(lat)) * 1e6:.0f} |")
    lines += ["", "Usage recorded (warm-up included; read with `ir-gateway usage --backend redis` "
              "after the gateways were stopped, which flushes what they held):", "",
              "```", usage.strip(), "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, round_s, warmup_s = (1, 3.0, 1.0) if args.quick else (3, 8.0, 3.0)
    text = asyncio.run(run(rounds, round_s, warmup_s))
    if not args.quick:
        RESULTS_MD.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
