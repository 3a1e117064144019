"""`ir-gateway dev` as a newcomer runs it: start, paste the printed curl, Ctrl-C, nothing left.

Runs the real command in a subprocess on the tiny model (vLLM CPU build, about 40-60 s to
boot on an idle 2-core machine), so it also checks what the unit tests cannot: the printed
curl command is correct and pasteable, the gateway really sits in front of vLLM with auth off,
and SIGINT takes vLLM's whole process group down with it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from gateway.dev import banner, stack
from gateway.dev.vllm_process import free_port
from tests.conftest import REPO

# Generous: the test machine may be busy; on an idle one the banner appears in under a minute
# with a cached tiny model.
READY_TIMEOUT_S = 420.0
STOP_TIMEOUT_S = 20.0


def dev_command(port: int) -> list[str]:
    script = REPO / ".venv" / "bin" / "ir-gateway"
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    return [*prefix, "dev", "--tiny", "--port", str(port)]


class Output:
    """Collects a process's stdout lines in a thread, so waiting never blocks on a read."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for(self, marker: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.text()
            if marker in text:
                return text
            if self._proc.poll() is not None:
                self._thread.join(timeout=5)
                pytest.fail(f"ir-gateway dev exited ({self._proc.returncode}) before "
                            f"{marker!r}:\n{self.text()}")
            time.sleep(0.5)
        pytest.fail(f"no {marker!r} after {timeout_s:.0f}s:\n{self.text()}")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _pgid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 5; the command name (field 2) is in parentheses and may contain spaces.
    return int(stat.rsplit(")", 1)[1].split()[2])


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def vllm_processes(vllm_port: int) -> list[int]:
    """Live processes of the vLLM server on that port: the server (found by `--port N` in its
    command line) and everything in its process group. Engine workers rename themselves
    (setproctitle), so their command lines cannot be matched; their group can."""
    me = os.getpid()
    servers = [pid for pid in _pids() if pid != me
               and "vllm.entrypoints.openai.api_server" in _cmdline(pid)
               and str(vllm_port) in _cmdline(pid)]
    groups = {g for g in map(_pgid, servers) if g is not None}
    return sorted(set(servers) | {pid for pid in _pids() if _pgid(pid) in groups})


def alive_in_groups(groups: set[int]) -> list[int]:
    alive = []
    for pid in _pids():
        if _pgid(pid) in groups:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":  # a zombie is dead, only not yet reaped by its parent
                alive.append(pid)
    return alive


# --------------------------------------------------------------------------- fast checks


def test_curl_command_is_one_pasteable_line() -> None:
    line = banner.curl_command("http://127.0.0.1:8080/v1")
    assert "\n" not in line
    argv = shlex.split(line)
    assert argv[:3] == ["curl", "-sS", "http://127.0.0.1:8080/v1/chat/completions"]
    body = json.loads(argv[argv.index("-d") + 1])
    assert body["model"] == "schema/function_ir"
    assert f"Authorization: Bearer {banner.DEV_API_KEY}" in argv
    # The worked example in the prompt must itself be valid IR, or it teaches the wrong shape.
    spec = json.loads((REPO / "schemas" / "function_ir.v1.json").read_text())
    jsonschema.Draft202012Validator(spec["schema"]).validate(
        json.loads(banner.EXAMPLE_SHOT_ANSWER))


def test_openai_snippet_is_valid_python() -> None:
    snippet = banner.openai_snippet("http://127.0.0.1:8080/v1")
    compile(snippet, "<snippet>", "exec")
    assert 'base_url="http://127.0.0.1:8080/v1"' in snippet


def test_model_choice_errors_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(stack.DevStackError, match="no such model directory"):
        stack.choose_model(stack.DevOptions(model=str(tmp_path / "missing")))
    with pytest.raises(stack.DevStackError, match=r"no config\.json"):
        stack.choose_model(stack.DevOptions(model=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    choice = stack.choose_model(stack.DevOptions(model=str(tmp_path)))
    assert (choice.model, choice.served_name, choice.from_hub) == (
        str(tmp_path.resolve()), tmp_path.name, False)
    hub = stack.choose_model(stack.DevOptions(model="HuggingFaceTB/SmolLM2-135M-Instruct"))
    assert hub.from_hub and hub.served_name == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_busy_port_fails_fast() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(stack.DevStackError, match="pass --port"):
            stack._check_port_free("127.0.0.1", port)


# --------------------------------------------------------------------------- the real thing


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
def test_dev_tiny_serves_printed_curl_and_stops_cleanly() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    proc = subprocess.Popen(dev_command(port), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # our SIGINT must reach only it
    output = Output(proc)
    groups: set[int] = set()
    try:
        text = output.wait_for("Ctrl-C stops the gateway and vLLM.", READY_TIMEOUT_S)
        ready_s = time.monotonic() - started

        base = re.search(r"Base URL:\s+(\S+)", text)
        assert base is not None, text
        assert base.group(1) == f"http://127.0.0.1:{port}/v1"
        assert "AUTH IS OFF" in text
        assert "dev-not-checked" in text
        vllm_port_match = re.search(r"vLLM:\s+http://127\.0\.0\.1:(\d+)", text)
        assert vllm_port_match is not None, text
        vllm_port = int(vllm_port_match.group(1))
        pids = vllm_processes(vllm_port)
        assert pids, f"no vLLM process found for port {vllm_port}"
        groups = {g for g in map(_pgid, pids) if g is not None}

        curl_lines = [line for line in text.splitlines() if line.startswith("curl ")]
        assert len(curl_lines) == 1, text
        curl = shlex.split(curl_lines[0])
        assert "schema/function_ir" in curl_lines[0]
        result = subprocess.run(curl, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        ir: object = body.get("error")
        if "error" in body:
            # The tiny model's IR can be schema-valid but not usable (a type hint that is not
            # a Python type): the promise is then a typed error, never a bad answer.
            assert body["error"]["code"] in ("output_validation_failed", "output_truncated"), body
            assert body["error"]["message"], body
        else:
            choice = body["choices"][0]
            assert choice["finish_reason"] == "stop", body
            ir = json.loads(choice["message"]["content"])
            spec = json.loads((REPO / "schemas" / "function_ir.v1.json").read_text())
            jsonschema.Draft202012Validator(spec["schema"]).validate(ir)

        stop_started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_TIMEOUT_S:.0f}s after SIGINT:\n{output.text()}")
        stop_s = time.monotonic() - stop_started
        assert code == 0, output.text()
        # VllmServer.stop waits for the group leader; give the kernel a moment to reap workers.
        deadline = time.monotonic() + 5
        while alive_in_groups(groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive_in_groups(groups), f"vLLM processes left: {alive_in_groups(groups)}"
        assert not vllm_processes(vllm_port)
        print(f"\nir-gateway dev --tiny: banner after {ready_s:.0f}s, stopped in {stop_s:.1f}s; "
              f"IR: {json.dumps(ir)}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Never leak a vLLM from a failed run: it would hold 1+ GiB and a port.
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
