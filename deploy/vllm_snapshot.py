"""vLLM's sleep and wake around a Modal memory + GPU snapshot (`IRGW_DEPLOY_GPU_SNAPSHOT=1`).

Before the snapshot (`@modal.enter(snap=True)`): wait for vLLM, ask it a greedy canary
question, warm it up (one structured request, so xgrammar and the sampler kernels are
compiled), then `POST /sleep?level=1`: the KV cache is freed and the weights move to CPU
memory, so the snapshot holds a loaded, compiled engine without gigabytes of empty cache.
After a restore (`snap=False`): `POST /wake_up`, then the same canary question must get the
same answer (token text, and the first token's log-probability within 1e-3, the tolerance
vLLM 0.32's own snapshot check uses in vllm/snapshot/types.py). Sleep and wake have had
output bugs in vLLM (a stale prefix cache after wake, vllm#17103 and #16234, fixed for the
server in #22726; level 2 gibberish, vllm#29341): a restored engine that answers differently
must not serve.

vLLM 0.32.0 serves /sleep, /wake_up and /is_sleeping only with VLLM_SERVER_DEV_MODE=1
(vllm/entrypoints/launchers/api_server/routers.py), which also opens its other development
routes (/collective_rpc, /reset_prefix_cache, /server_info, the RL routes). VLLM_API_KEY does
not guard them; Modal proxy auth on the whole endpoint does, and the gateway forwards none.

Stdlib only: it runs in the vLLM image (as /root/vllm_snapshot.py) and in the tests.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

VLLM_SNAPSHOT_ENV: dict[str, str] = {"VLLM_SERVER_DEV_MODE": "1"}
SLEEP_LEVEL = 1  # weights kept (in CPU memory), KV cache dropped; level 2 drops the weights
CANARY_PROMPT = "def fibonacci(n: int) -> int:\n"
CANARY_TOKENS = 8
LOGPROB_TOLERANCE = 1e-3
HEALTH_POLL_S = 2.0
CALL_TIMEOUT_S = 120.0


class SnapshotError(RuntimeError):
    pass


@dataclass(frozen=True)
class Canary:
    model: str
    text: str
    first_logprob: float

    def matches(self, other: Canary) -> bool:
        return (self.text == other.text
                and math.isclose(self.first_logprob, other.first_logprob, rel_tol=0.0,
                                 abs_tol=LOGPROB_TOLERANCE))


def _call(method: str, url: str, *, key: str | None = None,
          body: object = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if key:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw[:200]


def wait_healthy(process: subprocess.Popen[bytes], base: str, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise SnapshotError(f"vLLM exited with code {process.returncode} while starting")
        try:
            if _call("GET", f"{base}/health")[0] == 200:
                return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet
        if time.monotonic() >= deadline:
            raise SnapshotError(f"vLLM not healthy after {timeout_s:.0f}s")
        time.sleep(HEALTH_POLL_S)


def ask_canary(base: str, *, model: str, key: str) -> Canary:
    status, body = _call("POST", f"{base}/v1/completions", key=key, body={
        "model": model, "prompt": CANARY_PROMPT, "max_tokens": CANARY_TOKENS,
        "temperature": 0, "logprobs": 1, "seed": 0,
    })
    try:
        choice = body["choices"][0]
        return Canary(model=model, text=choice["text"],
                      first_logprob=float(choice["logprobs"]["token_logprobs"][0]))
    except (KeyError, IndexError, TypeError, ValueError):
        raise SnapshotError(f"canary question failed: HTTP {status}: {body}") from None


def warm_up(base: str, *, model: str, key: str) -> None:
    """One structured request: xgrammar's compiler and the constrained sampler's kernels run
    once before the snapshot instead of on the first client request after every restore."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}},
              "required": ["name"], "additionalProperties": False}
    status, body = _call("POST", f"{base}/v1/chat/completions", key=key, body={
        "model": model, "max_tokens": 32, "temperature": 0,
        "messages": [{"role": "user", "content": "Name a Python function."}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "warm_up", "schema": schema, "strict": True}},
    })
    if status != 200:
        raise SnapshotError(f"warm-up request failed: HTTP {status}: {body}")


def _is_sleeping(base: str) -> bool:
    status, body = _call("GET", f"{base}/is_sleeping")
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("is_sleeping"), bool):
        raise SnapshotError(f"GET /is_sleeping: HTTP {status}: {body} (VLLM_SERVER_DEV_MODE=1?)")
    return bool(body["is_sleeping"])


def sleep_for_snapshot(process: subprocess.Popen[bytes], *, port: int, model: str, key: str,
                       timeout_s: float) -> Canary:
    """Start-up half: returns the canary answer the woken engine must give again."""
    base = f"http://127.0.0.1:{port}"
    wait_healthy(process, base, timeout_s=timeout_s)
    canary = ask_canary(base, model=model, key=key)
    warm_up(base, model=model, key=key)
    status, body = _call("POST", f"{base}/sleep?level={SLEEP_LEVEL}")
    if status != 200 or not _is_sleeping(base):
        raise SnapshotError(f"POST /sleep: HTTP {status}: {body}")
    return canary


def wake_up(canary: Canary, *, port: int, key: str) -> None:
    """Restore half: raises `SnapshotError` unless vLLM is awake and answers as before."""
    base = f"http://127.0.0.1:{port}"
    status, body = _call("POST", f"{base}/wake_up")
    if status != 200 or _is_sleeping(base):
        raise SnapshotError(f"POST /wake_up: HTTP {status}: {body}")
    again = ask_canary(base, model=canary.model, key=key)
    if not canary.matches(again):
        raise SnapshotError(f"the woken engine answers differently: before {canary}, "
                            f"after {again}")
