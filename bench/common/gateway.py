"""The gateway as its own `ir-gateway serve` process, the way the benchmarks run it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from bench.common.procs import HOST, START_TIMEOUT_S, Child, free_port, wait_http


def gateway_argv(tree: Path | None = None) -> list[str]:
    """This venv's `ir-gateway`; with `tree`, the gateway of that source tree (an A/B) run
    by this venv's Python: `-P` keeps this checkout (the working directory) off its path."""
    if tree is not None:
        return [sys.executable, "-P", "-m", "gateway"]
    script = Path(sys.executable).parent / "ir-gateway"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def gateway_env(*, drop: tuple[str, ...] = ("IRGW_",), tree: Path | None = None,
                **settings: str) -> dict[str, str]:
    """This process's environment without its own gateway settings (`drop`), plus
    `settings`; with `tree`, that tree on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(settings)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def start_gateway(name: str, upstream_url: str, workdir: Path, env: dict[str, str], *,
                  tree: Path | None = None, ready: Iterable[str] = ("/healthz", "/readyz"),
                  timeout_s: float = START_TIMEOUT_S) -> tuple[Child, int]:
    """`ir-gateway serve` on a free loopback port in front of `upstream_url`, logging to
    `workdir/<name>.log`; returns once each of `ready` answers 200."""
    port = free_port()
    argv = [*gateway_argv(tree), "serve", "--upstream", upstream_url,
            "--host", HOST, "--port", str(port)]
    child = Child(name, argv, env=env, log=workdir / f"{name}.log")
    wait_http(child, port, ready, timeout_s)
    return child, port


def create_key(*args: str, env: dict[str, str] | None = None) -> str:
    """`ir-gateway keys create --name bench` with limits far beyond reach, plus `args`
    (the store: `--keys-file PATH` or `--backend redis`); returns the key."""
    argv = [*gateway_argv(), "keys", "create", "--name", "bench", "--rpm", "10000000",
            "--tpm", "1000000000", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True,
                          env=env)
    return done.stdout.strip()
