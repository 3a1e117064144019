"""The deploy's self-check (deploy/smoke.py) against a real gateway in front of the fake vLLM, and
the snapshot path's sleep/wake/canary logic (deploy/vllm_snapshot.py) against a fake of vLLM's
development routes (the CPU build cannot sleep: vLLM's sleep mode is CUDA-only)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import unit_settings
from tests.deploy_samples import ANSWERS_BY_SCHEMA
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import running_gateway
from tests.test_deploy import REPO, _load

smoke = _load(REPO / "deploy" / "smoke.py", "ir_gateway_smoke")
vllm_snapshot = _load(REPO / "deploy" / "vllm_snapshot.py", "ir_gateway_vllm_snapshot")


async def test_smoke_reports_every_registered_schema() -> None:
    async with FakeUpstream() as fake, running_gateway(unit_settings(fake.url)) as gateway:
        fake.script(*(Reply(answer) for answer in ANSWERS_BY_SCHEMA.values()))
        lines: list[str] = []
        results = await asyncio.to_thread(smoke.run_smoke, gateway.url, "any-key",
                                          wait_s=30, say=lines.append)
    assert [r.schema for r in results] == list(ANSWERS_BY_SCHEMA)
    assert all(r.ok and r.status == 200 and r.output == "passed" for r in results)
    assert all(r.completion_tokens and r.completion_tokens > 0 for r in results)
    # Each schema was asked for by name (`model: schema/<name>`) and reached vLLM as its own.
    assert [r.json["response_format"]["json_schema"]["name"] for r in fake.requests] == list(
        ANSWERS_BY_SCHEMA)
    text = "\n".join(lines)
    assert "constraint canary: not reported by this gateway" in text
    assert "time to first answer:" in text and "not a cold start" in text
    for name in ANSWERS_BY_SCHEMA:
        row = next(line for line in lines if line.strip().startswith(name))
        assert "HTTP 200" in row and "output passed" in row and "tok/s" in row


async def test_a_failing_schema_fails_the_smoke_after_all_are_tried() -> None:
    answers = dict(ANSWERS_BY_SCHEMA)
    answers["module_ir"] = ANSWERS_BY_SCHEMA["function_ir"]  # valid JSON, wrong schema
    async with FakeUpstream() as fake, running_gateway(unit_settings(fake.url)) as gateway:
        fake.script(*(Reply(answer) for answer in answers.values()))
        lines: list[str] = []
        with pytest.raises(smoke.SmokeError, match="module_ir") as failed:
            await asyncio.to_thread(smoke.run_smoke, gateway.url, "any-key", wait_s=30,
                                    say=lines.append)
        assert len(fake.requests) == 3  # the schema after the failing one was still tried
    assert "function_ir" not in str(failed.value) and "test_plan_ir" not in str(failed.value)
    failed_row = next(line for line in lines if line.strip().startswith("module_ir"))
    assert "HTTP 422" in failed_row and "FAILED" in failed_row


def test_the_smoke_entrypoint_exits_non_zero_on_a_failed_check() -> None:
    """`modal run ...::smoke` turns a SmokeError into SystemExit(message): a non-zero exit."""
    script = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('m', sys.argv[1])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "m.smoke.info.raw_f(url='http://127.0.0.1:9', wait_s=0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(REPO / "deploy" / "modal_app.py")],
                            env={"PATH": "/usr/bin:/bin", "IRGW_SMOKE_KEY": "k"},
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "smoke test FAILED: /healthz not reached" in result.stderr


@pytest.mark.parametrize(("ready", "passed"), [
    ({}, None),
    ({"canary": {"verdict": "constraining", "reason": "chat and completions", "age_s": 1}},
     True),
    ({"canary": {"verdict": "not_constraining", "reason": "free text on chat"}}, False),
    ({"canary": {"verdict": "inconclusive", "reason": "vLLM answered 500"}}, None),
    ({"canary": "constraining"}, None),  # not the gateway's shape: no verdict read from it
])
def test_canary_verdict(ready: dict[str, Any], passed: bool | None) -> None:
    assert smoke.canary_verdict(ready)[0] is passed


# --------------------------------------------------------------------------- sleep and wake


class FakeSleepyVllm(BaseHTTPRequestHandler):
    """vLLM 0.32's /health, /sleep, /wake_up, /is_sleeping and a greedy /v1/completions whose
    answer after waking is whatever the test sets (`after_wake`)."""

    state: dict[str, Any]

    def _send(self, status: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {})
        elif self.path == "/is_sleeping":
            self._send(200, {"is_sleeping": self.state["sleeping"]})
        else:
            self._send(404, {})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"] or 0)) or b"{}")
        self.state["calls"].append(self.path)
        if self.path.startswith("/sleep"):
            self.state["sleeping"] = True
            self._send(200, {"status": "sleeping"})
        elif self.path == "/wake_up":
            self.state["sleeping"] = False
            self.state["woken"] = True
            self._send(200, {"status": "awake"})
        elif self.state["sleeping"]:
            self._send(503, {"error": "sleeping"})
        elif self.path == "/v1/completions":
            assert self.headers["authorization"] == "Bearer k" and body["temperature"] == 0
            text, logprob = self.state["after_wake" if self.state["woken"] else "before"]
            self._send(200, {"choices": [{"text": text,
                                          "logprobs": {"token_logprobs": [logprob]}}]})
        else:  # the warm-up's structured request
            self._send(200, {"choices": [{"message": {"content": '{"name":"f"}'}}]})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def sleepy_vllm() -> Iterator[tuple[int, dict[str, Any]]]:
    state: dict[str, Any] = {"sleeping": False, "woken": False, "calls": [],
                             "before": ("    a, b = 0, 1", -0.0125)}
    state["after_wake"] = state["before"]
    handler = type("Handler", (FakeSleepyVllm,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], state
    finally:
        server.shutdown()
        server.server_close()


def _running_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])


def test_sleep_then_wake_checks_the_engine_answers_as_before(
        sleepy_vllm: tuple[int, dict[str, Any]]) -> None:
    port, state = sleepy_vllm
    process = _running_process()
    try:
        canary = vllm_snapshot.sleep_for_snapshot(process, port=port, model="m", key="k",
                                                  timeout_s=10)
    finally:
        process.kill()
    assert state["sleeping"] is True
    assert state["calls"] == ["/v1/completions", "/v1/chat/completions", "/sleep?level=1"]
    # Within vLLM's own snapshot tolerance (1e-3 on the log-probability): the same engine.
    state["after_wake"] = ("    a, b = 0, 1", -0.0129)
    vllm_snapshot.wake_up(canary, port=port, key="k")
    assert state["sleeping"] is False


@pytest.mark.parametrize("after_wake", [("    return n", -0.0125), ("    a, b = 0, 1", -0.5)])
def test_a_woken_engine_that_answers_differently_is_refused(
        sleepy_vllm: tuple[int, dict[str, Any]], after_wake: tuple[str, float]) -> None:
    port, state = sleepy_vllm
    process = _running_process()
    try:
        canary = vllm_snapshot.sleep_for_snapshot(process, port=port, model="m", key="k",
                                                  timeout_s=10)
    finally:
        process.kill()
    state["after_wake"] = after_wake
    with pytest.raises(vllm_snapshot.SnapshotError, match="answers differently"):
        vllm_snapshot.wake_up(canary, port=port, key="k")


def test_vllm_exiting_before_it_is_healthy_is_reported() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    with pytest.raises(vllm_snapshot.SnapshotError, match="exited with code 3"):
        vllm_snapshot.wait_healthy(process, "http://127.0.0.1:9", timeout_s=5)
