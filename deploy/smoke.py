"""The deploy's self-check: what `modal run deploy/modal_app.py::smoke` runs against a gateway.

Plain functions over HTTP (stdlib only), so the tests run them against a local gateway in
front of tests/fake_upstream.py, and `--url` points them at any gateway (a self-hosted one).

1. `/healthz`, then `/readyz` with the key until vLLM answers (rides out a cold start). Whether
   vLLM was up at the first probe is noted, so the time to the first answer is reported as a
   cold start only when it was one.
2. The constraint canary, if the gateway's `/readyz` reports one (`canary_verdict`).
3. One request per registered schema (`GET /v1/schemas`), printing per schema: HTTP status,
   output check (`x-irgw-output`), completion tokens, tokens/s, latency.

Any failing check fails the run (`SmokeError` after every schema was tried; the entrypoint
exits non-zero).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# What `x-irgw-output` says of an answer that was checked against its schema and passed.
PASSING_OUTPUTS = frozenset({"passed", "repaired", "retried"})
# Where a gateway's /readyz reports its constraint canary (absent when the canary is off).
CANARY_FIELD = "canary"
POLL_INTERVAL_S = 5.0
# Modal holds a request while a container starts, so one probe may take long.
PROBE_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 300.0
MAX_TOKENS = 1024

SCHEMA_PROMPTS: dict[str, str] = {
    "function_ir": "Describe a Python function that returns the n-th Fibonacci number, n >= 0, "
                   "iteratively.",
    "module_ir": "Describe a small Python module `fib` with a public function returning the n-th "
                 "Fibonacci number and a private helper that validates n.",
    "test_plan_ir": "Plan the tests for a Python function fib(n: int) -> int that returns the "
                    "n-th Fibonacci number and raises ValueError for negative n.",
}


class SmokeError(RuntimeError):
    pass


@dataclass(frozen=True)
class SchemaResult:
    schema: str
    status: int
    output: str | None  # x-irgw-output
    completion_tokens: int | None
    latency_s: float
    problem: str | None  # why it failed, None if it passed

    @property
    def ok(self) -> bool:
        return self.problem is None

    def line(self) -> str:
        rate = (f"{self.completion_tokens / self.latency_s:.1f}"
                if self.completion_tokens and self.latency_s > 0 else "-")
        verdict = "ok" if self.ok else f"FAILED: {self.problem}"
        return (f"  {self.schema:<24} HTTP {self.status}  output {self.output or '-':<10} "
                f"tokens {self.completion_tokens if self.completion_tokens is not None else '-':>5}"
                f"  {rate:>6} tok/s  {self.latency_s:6.2f} s  {verdict}")


def _http(method: str, url: str, *, key: str | None = None, body: object = None,
          timeout_s: float) -> tuple[int, Mapping[str, str], dict[str, Any] | None]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if key:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, error.headers, error.read()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return status, headers, parsed if isinstance(parsed, dict) else None


def wait_until_ready(base_url: str, key: str, *, wait_s: float, say: Callable[[str], None],
                     started: float) -> tuple[dict[str, Any], bool]:
    """`/healthz`, then `/readyz` with the key. Returns the readiness body and whether vLLM
    was down at the first probe (a cold start)."""
    deadline = started + wait_s

    def poll(path: str, what: str, key: str | None = None) -> tuple[dict[str, Any], int]:
        last, probes = "no answer", 0
        while True:
            probes += 1
            try:
                status, _, body = _http("GET", base_url + path, key=key,
                                        timeout_s=PROBE_TIMEOUT_S)
                if status == 200 and body is not None:
                    return body, probes
                if status in (401, 403):  # a wrong key never becomes right by waiting
                    raise SmokeError(f"{what}: HTTP {status}: {body}")
                last = f"HTTP {status}: {body}"
            except (urllib.error.URLError, TimeoutError, OSError) as error:
                last = f"{type(error).__name__}: {error}"
            if time.monotonic() >= deadline:
                raise SmokeError(f"{what} not reached after {wait_s:.0f}s; last: {last}")
            say(f"  waiting for {what} ({time.monotonic() - started:.0f}s): {last}")
            time.sleep(POLL_INTERVAL_S)

    poll("/healthz", "/healthz")
    say(f"healthz ok ({time.monotonic() - started:.1f}s)")
    first_probe = time.monotonic()
    ready, probes = poll("/readyz", "/readyz (vLLM up)", key=key)
    # One probe that came back quickly: vLLM was already running (Modal holds a probe to a
    # cold container until it listens, so a cold start shows as a long or a repeated probe).
    cold = probes > 1 or time.monotonic() - first_probe > 10.0
    say(f"readyz ok ({time.monotonic() - started:.1f}s): vLLM {ready.get('upstream_version')}, "
        f"dialect {ready.get('dialect')}")
    return ready, cold


def canary_verdict(ready: Mapping[str, Any]) -> tuple[bool | None, str]:
    """(passed, text) for the constraint canary in a `/readyz` body (`gateway/upstream/canary.py`:
    `{"verdict", "reason", "age_s"}`); passed is None when there is no verdict (the canary off,
    or inconclusive). A gateway whose canary fails answers /readyz with a 503 naming the
    cause, which `wait_until_ready` already turns into a failure."""
    canary = ready.get(CANARY_FIELD)
    if not isinstance(canary, Mapping) or not isinstance(canary.get("verdict"), str):
        return None, (f"not reported by this gateway (no {CANARY_FIELD!r} in /readyz: the "
                      "canary is off); the per-schema requests below still show whether vLLM "
                      "constrains")
    verdict = canary["verdict"]
    passed = {"constraining": True, "not_constraining": False}.get(verdict)
    reason = canary.get("reason")
    return passed, f"{verdict} ({reason})" if reason else verdict


def list_schemas(base_url: str, key: str) -> list[dict[str, Any]]:
    status, _, body = _http("GET", base_url + "/v1/schemas", key=key, timeout_s=60)
    if status != 200 or body is None or not isinstance(body.get("data"), list):
        raise SmokeError(f"GET /v1/schemas failed: HTTP {status}: {body}")
    return [entry for entry in body["data"] if isinstance(entry, dict) and entry.get("name")]


def schema_request(name: str, description: str) -> dict[str, Any]:
    prompt = SCHEMA_PROMPTS.get(name) or (
        f"Fill in a {name} ({description}) for a Python function that returns the n-th "
        "Fibonacci number.")
    return {
        "model": f"schema/{name}",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
    }


def check_schema(base_url: str, key: str, name: str, description: str = "") -> SchemaResult:
    """One named-schema request; a result whose `problem` says what failed, if anything."""
    sent = time.monotonic()
    try:
        status, headers, body = _http("POST", base_url + "/v1/chat/completions", key=key,
                                      body=schema_request(name, description),
                                      timeout_s=REQUEST_TIMEOUT_S)
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        return SchemaResult(name, 0, None, None, time.monotonic() - sent,
                            f"{type(error).__name__}: {error}")
    latency = time.monotonic() - sent
    output = headers.get("x-irgw-output")
    usage = (body or {}).get("usage") or {}
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    tokens = tokens if isinstance(tokens, int) else None
    problem: str | None = None
    if status != 200 or body is None:
        error = (body or {}).get("error")
        problem = error.get("message") if isinstance(error, dict) else f"body {body}"
    elif output not in PASSING_OUTPUTS:
        problem = f"output check {output!r}, not one of {sorted(PASSING_OUTPUTS)}"
    else:
        try:
            json.loads(body["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError, ValueError) as error:
            problem = f"answer is not JSON ({error!r})"
    return SchemaResult(name, status, output, tokens, latency, problem)


def run_smoke(base_url: str, key: str, *, wait_s: float = 900.0,
              say: Callable[[str], None] = print) -> list[SchemaResult]:
    """The whole check; raises `SmokeError` naming every failed part."""
    base_url = base_url.rstrip("/")
    started = time.monotonic()
    say(f"gateway: {base_url}")
    ready, cold = wait_until_ready(base_url, key, wait_s=wait_s, say=say, started=started)

    failures: list[str] = []
    passed, text = canary_verdict(ready)
    say(f"constraint canary: {text}")
    if passed is False:
        failures.append(f"constraint canary failed: {text}")

    schemas = list_schemas(base_url, key)
    if not schemas:
        raise SmokeError("the gateway lists no schemas")
    say(f"{len(schemas)} schemas; one request each (temperature 0, max_tokens {MAX_TOKENS}):")
    results: list[SchemaResult] = []
    for entry in schemas:
        result = check_schema(base_url, key, str(entry["name"]), str(entry.get("description")))
        if not results:
            first = time.monotonic() - started
            how = ("vLLM was cold at the first probe: this is a cold start" if cold else
                   "vLLM was already up: not a cold start (see the README to measure one)")
            say(f"time to first answer: {first:.1f} s from the smoke's start ({how})")
        results.append(result)
        say(result.line())
        if not result.ok:
            failures.append(f"{result.schema}: {result.problem}")
    if failures:
        raise SmokeError("; ".join(failures))
    return results
