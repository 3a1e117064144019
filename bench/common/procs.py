"""Child processes for the bench scripts: start one, wait until it is ready, stop it on exit
or on a signal, and read its CPU and memory from /proc (Linux only, like the benchmarks)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from gateway.dev.vllm_process import free_port  # one copy, shared with the dev stack

__all__ = [
    "HOST", "REPO", "START_TIMEOUT_S", "Child", "Children", "exit_on_signals", "free_port",
    "http_get", "proc_cpu_seconds", "proc_status_kb", "run_queue_wait_seconds", "start_server",
    "stop_group", "system_busy_seconds", "wait_http",
]

HOST = "127.0.0.1"  # every benchmark stays on loopback
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when the benchmark dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def exit_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP unwind the script like Ctrl-C, so that its `finally`
    blocks stop what it started. SIGINT too: a shell starts a background job with SIGINT
    ignored, and Python then installs no handler of its own."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)


class Child:
    """A process the benchmark started; `close()` stops it (SIGTERM, then SIGKILL).

    With `reads_port` its stdout is a pipe the parent reads the bound port from; otherwise
    stdout and stderr go to `log` (appended) or nowhere."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 log: Path | None = None, *, reads_port: bool = False,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        out: IO[bytes] | int = subprocess.DEVNULL
        if log is not None:
            out = log.open("ab")
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if reads_port else out,
                stderr=out, env=env, cwd=cwd, preexec_fn=_die_with_parent)
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own copy
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        return proc_status_kb(self.pid, "VmRSS")

    def log_tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-2000:]

    def read_port(self, timeout_s: float = START_TIMEOUT_S) -> int:
        """The port the child prints on its first stdout line once it listens."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline().strip() if ready else b""
        if not line.isdigit():
            self.close()
            raise RuntimeError(f"{self.name} failed to start: {line!r}")
        return int(line)

    def close(self, grace_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class Children:
    """The processes a script started, stopped in reverse order when its block ends (also
    on an error or, with `exit_on_signals`, a signal)."""

    def __init__(self) -> None:
        self.started: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for child in reversed(self.started):
            child.close()

    def add(self, started: tuple[Child, int]) -> tuple[Child, int]:
        self.started.append(started[0])
        return started


def start_server(name: str, module: str, *args: str,
                 env: dict[str, str] | None = None) -> tuple[Child, int]:
    """`python -m module args...` from the repository root: a server that binds a free port
    and prints it (bench/common/fake_vllm.py, bench/overhead_floor.py)."""
    child = Child(name, [sys.executable, "-m", module, *args], env=env, reads_port=True,
                  cwd=REPO)
    return child, child.read_port()


def wait_http(child: Child, port: int, paths: Iterable[str] = ("/healthz",),
              timeout_s: float = START_TIMEOUT_S, every_s: float = 0.1) -> None:
    """Until each of `paths` answers 200 in turn; stops the child and raises when it exits
    or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    for path in paths:
        while True:
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited: {child.log_tail()}")
            with contextlib.suppress(OSError):
                if http_get(f"http://{HOST}:{port}{path}")[0] == 200:
                    break
            if time.monotonic() > deadline:
                child.close()
                raise RuntimeError(f"{child.name} not ready within {timeout_s:g} s: "
                                   f"{child.log_tail()}")
            time.sleep(every_s)


def stop_group(proc: subprocess.Popen[Any], grace_s: float = 30.0) -> None:
    """SIGTERM a child started in its own session and everything it started, SIGKILL what
    is left after `grace_s`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int, key: str) -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_queue_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (schedstat field 2)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[1])
    except OSError:
        return float("nan")
    return total / 1e9


def system_busy_seconds() -> float:
    """Busy (non-idle, non-iowait) CPU seconds of the whole machine, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    except OSError:
        return float("nan")
    ticks = [int(x) for x in fields]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK
