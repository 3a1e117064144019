"""No vLLM outlives the dev stack (issue 17, finding 14): closing the terminal (SIGHUP) and
the stack's own death (SIGKILL) take vLLM and its workers down.

A fake vLLM stands in for the real one: a Python process that starts a fake engine worker
in its process group (as vLLM does) and sleeps, started by the real `VllmServer.start`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

# The fake vLLM: a fake engine worker in its group, both pids written where the test reads.
FAKE_VLLM = """
import json, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(json.dumps({"server": __import__("os").getpid(),
                                         "worker": worker.pid}))
time.sleep(600)
"""

# A dev stack around the fake vLLM: `DevStack.run` whose `_run` starts it, then (`hup`)
# gets SIGHUP as a closed terminal sends it, or (`serve`) waits to be killed.
FAKE_STACK = """
import os, signal, sys, time
from gateway.dev import stack
from gateway.dev.vllm_process import VllmServer

class FakeVllmServer(VllmServer):
    def command(self):
        return [sys.executable, "-c", sys.argv[3], sys.argv[2]]

class FakeStack(stack.DevStack):
    def _run(self):
        self.vllm = FakeVllmServer("fake-model", served_model_name="fake")
        self.vllm.start()
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.05)
        print("started", flush=True)
        if sys.argv[1] == "hup":
            os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(600)
        return 0

sys.exit(FakeStack(stack.DevOptions()).run())
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(map(alive, pids)):
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


@pytest.fixture
def fake_stack(tmp_path: Path) -> Iterator[tuple[str, Path, list[subprocess.Popen[str]]]]:
    pids_file = tmp_path / "fake-vllm.json"
    started: list[subprocess.Popen[str]] = []
    yield str(pids_file), pids_file, started
    for proc in started:  # whatever a failing run left, ended by the ids we know
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if pids_file.exists():
        for pid in json.loads(pids_file.read_text()).values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def start_fake_stack(mode: str, pids_file: str,
                     started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", FAKE_STACK, mode, pids_file, FAKE_VLLM],
                            env=env, stdout=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)  # signals meant for it reach only it
    started.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_fake_vllm_dies_with_a_killed_dev_stack(
        fake_stack: tuple[str, Path, list[subprocess.Popen[str]]]) -> None:
    """SIGKILL cannot be handled: only the kernel (PR_SET_PDEATHSIG) can tell vLLM's side."""
    name, pids_file, started = fake_stack
    proc = start_fake_stack("serve", name, started)
    pids = list(json.loads(pids_file.read_text()).values())
    assert all(map(alive, pids))
    proc.kill()
    proc.wait()
    assert wait_gone(pids, within_s=30) == []


def test_fake_vllm_stops_when_the_terminal_closes(
        fake_stack: tuple[str, Path, list[subprocess.Popen[str]]]) -> None:
    name, pids_file, started = fake_stack
    proc = start_fake_stack("hup", name, started)
    pids = list(json.loads(pids_file.read_text()).values())
    assert proc.wait(timeout=60) == 0  # stopped as on Ctrl-C, not killed by the SIGHUP
    assert wait_gone(pids, within_s=30) == []


def _orphan_reaper(pids_file: Path, started: list[subprocess.Popen[str]]) -> int:
    """A reaper group as an earlier run leaves it when both the stack and the reaper's
    death signal went missing: here, a reaper whose 'parent' is this test (alive)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.dev.reaper", str(os.getpid()), "1", "--",
         sys.executable, "-c", FAKE_VLLM, str(pids_file)],
        env=env, cwd=REPO, text=True, start_new_session=True)
    started.append(proc)
    deadline = time.monotonic() + 30
    while not pids_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc.pid


def test_a_vllm_left_by_an_earlier_run_is_stopped_by_the_next(
        fake_stack: tuple[str, Path, list[subprocess.Popen[str]]], tmp_path: Path) -> None:
    from gateway.dev.vllm_process import stop_leftover

    _, pids_file, started = fake_stack
    reaper = _orphan_reaper(pids_file, started)
    pids = [reaper, *json.loads(pids_file.read_text()).values()]
    pid_file = tmp_path / "dev-vllm.pid"
    pid_file.write_text(f"{reaper}\n")
    assert stop_leftover(pid_file, grace_s=5) is True
    assert wait_gone(pids, within_s=15) == []
    assert not pid_file.exists()


def test_a_pid_file_naming_another_process_kills_nothing(tmp_path: Path) -> None:
    """A pid is reused once its process is gone: only a live reaper group is ever ended."""
    from gateway.dev.vllm_process import stop_leftover

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    try:
        pid_file = tmp_path / "dev-vllm.pid"
        pid_file.write_text(f"{other.pid}\n")
        assert stop_leftover(pid_file, grace_s=1) is False
        assert other.poll() is None
        assert not pid_file.exists()
        assert stop_leftover(tmp_path / "missing.pid") is False
    finally:
        other.kill()
        other.wait()
