"""Start, wait for and stop a local vLLM server process.

Shared by `ir-gateway dev` and the integration tests, so both run vLLM the same way, with
the flags from `gateway.dev.vllm_flags` (the definition the Modal deployment uses too).
vLLM runs from its own virtual environment (`.venv-vllm`): its pins must not decide the
gateway's. It is started in a new session so that stopping it takes its engine worker
processes along; no orphan keeps a port or memory after Ctrl-C or a failed test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from gateway.dev import vllm_flags

REPO = Path(__file__).resolve().parents[2]
# How long vLLM may take to stop after SIGTERM when the stack died without stopping it.
REAPER_GRACE_S = 20.0


class VllmStartError(RuntimeError):
    pass


def vllm_python() -> Path:
    """The interpreter of vLLM's environment: `$IRGW_VLLM_PYTHON`, else the venv that
    scripts/setup-vllm-env.sh made (`$VLLM_VENV`, by default `<repo>/.venv-vllm`)."""
    configured = os.environ.get("IRGW_VLLM_PYTHON")
    venv = Path(os.environ.get("VLLM_VENV") or REPO / ".venv-vllm")
    path = Path(configured) if configured else venv / "bin" / "python"
    if not path.exists():
        raise VllmStartError(
            f"no vLLM environment at {path}: run `make setup-vllm` (scripts/setup-vllm-env.sh) "
            "or set IRGW_VLLM_PYTHON"
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def build_dev_model(*, trained: bool = True, builder: str = "gateway.dev.models.tiny") -> Path:
    """Build (or reuse from cache) a project-made model with vLLM's environment."""
    args = [str(vllm_python()), "-m", builder]
    if not trained:
        args.append("--untrained")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise VllmStartError(f"building the model failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


class VllmServer:
    def __init__(
        self,
        model: str | Path,
        *,
        served_model_name: str,
        port: int | None = None,
        max_model_len: int | None = None,
        api_key: str | None = None,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        hub_access: bool = False,
        pid_file: Path | None = None,
    ) -> None:
        self.model = str(model)
        self.served_model_name = served_model_name
        self.port = port or free_port()
        self.max_model_len = max_model_len
        self.api_key = api_key
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.hub_access = hub_access
        self.pid_file = pid_file
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
            *vllm_flags.server_args(
                model=self.model, served_model_name=self.served_model_name, port=self.port,
                host="127.0.0.1", target="cpu", max_model_len=self.max_model_len,
            ),
            *self.extra_args,
        ]

    def start(self) -> None:
        env = vllm_flags.cpu_env(os.environ)
        if self.hub_access:
            # cpu_env assumes no Hub (true on the project's machines); someone who names a
            # hub model id has internet and wants the download. Their own setting still wins.
            for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
                env.pop(name, None)
                if name in os.environ:
                    env[name] = os.environ[name]
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key  # not a flag: flags show up in `ps`
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        # Behind the reaper, which leads vLLM's process group and ends it if we die
        # (SIGKILL, a crash): no vLLM outlives the stack that started it.
        reaper = [sys.executable, "-m", "gateway.dev.reaper", str(os.getpid()),
                  str(REAPER_GRACE_S), "--"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [*reaper, *self.command()], env=env, stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.pid_file is not None:
            # For the next run, should this one die in a way even the reaper cannot see.
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(f"{self.process.pid}\n")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/version", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 300.0,
                   progress: Callable[[float], None] | None = None) -> float:
        """Seconds until vLLM answered `/version`; raises with the log's tail if it died."""
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            if not self.alive():
                raise VllmStartError(f"vLLM exited during startup:\n{self.log_tail()}")
            if self.ready():
                return elapsed
            if elapsed > timeout_s:
                raise VllmStartError(f"vLLM not ready after {timeout_s:.0f}s:\n{self.log_tail()}")
            if progress is not None:
                progress(elapsed)
            time.sleep(0.5)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left."""
        process = self.process
        if process is not None and process.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if process is not None:
            # Engine workers share the group; make sure none outlives the server.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.pid_file is not None and process is not None:
            with contextlib.suppress(OSError):
                if self.pid_file.read_text().strip() == str(process.pid):
                    self.pid_file.unlink()


def _is_reaper(pid: int) -> bool:
    """Is `pid` a live `gateway.dev.reaper` leading its own process group? Nothing else is
    ever killed on a pid file's word: the pid may have been reused since."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    try:
        return b"gateway.dev.reaper" in cmdline and os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def stop_leftover(pid_file: Path, grace_s: float = 10.0) -> bool:
    """End the vLLM an earlier dev stack left running (its reaper's whole process group),
    so that it holds neither memory nor a port the next run wants. True if one was found."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    found = _is_reaper(pid)
    if found:
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait_s
            while _is_reaper(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _is_reaper(pid):
                break
    with contextlib.suppress(OSError):
        pid_file.unlink()
    return found
