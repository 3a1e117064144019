"""Deploy on Modal: vLLM (xgrammar) on an A10G, the gateway in front of it.

    modal deploy deploy/modal_app.py          # both functions, one app
    modal run deploy/modal_app.py::smoke      # health, readiness, one named-schema request

Two functions, so the GPU scales on its own and the CPU-only gateway can answer `/healthz`,
an anonymous `/readyz` (`IRGW_READY_PROBE=with_key`: only a caller with a key makes it probe
vLLM) and 4xx errors without waking it:

* `vllm_server`: vLLM's OpenAI server on one A10G, started with `gateway.vllm_flags` (the same
  definition the local stack and the CPU integration tests use). Two locks on it: vLLM's bearer
  key (`VLLM_API_KEY`, guards `/v1`, `/v2`, `/inference`, `/cohere` only) and Modal proxy auth on
  the whole endpoint (every route, `/invocations` and `/tokenize` included, needs the
  `Modal-Key`/`Modal-Secret` headers of a workspace proxy token). Only the gateway holds both.
* `gateway_api`: `ir-gateway serve`, the same server the tests and benchmarks run (its own
  uvicorn protocol, uvloop), as a Modal web server. Keys come from the `ir-gateway` Secret
  (`IRGW_KEYS_JSON`, written to a file at container start), or from Redis when the Secret
  sets `IRGW_REDIS_URL` and no `IRGW_KEYS_JSON` (keys, limits and usage then shared, and a key
  change needs no redeploy); the vLLM URL from the `vllm_server` function. One container with
  in-process limits unless Redis is configured.

Importing this module builds Modal objects only; it makes no network call (tests check that).
Module-level code also runs inside both containers, so it must not touch local files.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import modal

# Locally the repo root holds `gateway` (usually installed editable anyway); in the containers
# `add_local_python_source` puts it in /root, which is on sys.path.
_REPO = Path(__file__).resolve().parent.parent
if (_REPO / "gateway" / "__init__.py").is_file() and str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from gateway import vllm_flags  # noqa: E402

log = logging.getLogger("ir-gateway.modal")

APP_NAME = "ir-gateway"

# -- the model and the GPU
GPU = "A10G"
MODEL = "Qwen/Qwen2.5-Coder-7B-Instruct"
# A Hub commit, not "main": a re-pushed tokenizer or config would otherwise change what the
# schemas are tested against without a deploy. Bump deliberately, together with a smoke run.
MODEL_REVISION = "c03e6d358207e414f1eca0bb1891e29f1db0e242"
# The name clients never see (they ask for `schema/...`), but the gateway pins it so schema
# aliases resolve without asking vLLM for its model list.
SERVED_MODEL_NAME = "qwen2.5-coder-7b"
VLLM_PORT = 8000
GATEWAY_PORT = 8000  # its own container, so the same number does not clash
GATEWAY_METRICS_PORT = 9090  # loopback inside the gateway container, never exposed

# -- pins. vLLM's own release pins flashinfer-python exactly; pinning the same version here
# makes a mismatch an image-build error instead of a silently different kernel set.
# 0.7.0.post1 is the `flashinfer-python==` in vllm 0.32.0's published wheel metadata (its
# Requires-Dist, next to torch==2.13.0 and xgrammar==0.2.8, which the CPU build pins too);
# a different pin makes the image build fail. When bumping VLLM_VERSION, read it again:
#   pip install --dry-run --no-deps --only-binary :all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 --target /tmp/x --report r.json vllm==<version>
FLASHINFER_VERSION = "0.7.0.post1"
VLLM_REQUIREMENTS = (
    f"vllm=={vllm_flags.VLLM_VERSION}",
    f"flashinfer-python=={FLASHINFER_VERSION}",
)
# The gateway's runtime dependencies, as in pyproject.toml [project].dependencies (a test keeps
# them equal). Listed here because module code also runs in the container, where there is no
# pyproject.toml to read.
GATEWAY_REQUIREMENTS = (
    "fastapi>=0.115,<1",
    "uvicorn[standard]>=0.30",
    "pydantic>=2.7,<3",
    "pydantic-settings>=2.3,<3",
    "httptools>=0.6",
    "jsonschema>=4.23,<5",
    "jsonschema-rs>=0.29",
    "orjson>=3.10",
    "redis>=5.0",
    "prometheus-client>=0.20",
)

# -- Modal resources (names are the operator's contract; see the README, "Deploy to Modal")
VLLM_SECRET_NAME = "ir-gateway-vllm"  # VLLM_API_KEY
GATEWAY_SECRET_NAME = "ir-gateway"  # IRGW_KEYS_JSON, optional IRGW_* (IRGW_REDIS_URL, ...)
PROXY_AUTH_SECRET_NAME = "ir-gateway-proxy-auth"  # PROXY_AUTH_TOKEN_ID, PROXY_AUTH_TOKEN_SECRET
HF_CACHE_VOLUME = "ir-gateway-hf-cache"
VLLM_CACHE_VOLUME = "ir-gateway-vllm-cache"
HF_CACHE_PATH = "/root/.cache/huggingface"
VLLM_CACHE_PATH = "/root/.cache/vllm"  # torch.compile artefacts: a warm cache saves ~30 s
GATEWAY_SCHEMAS_PATH = "/root/schemas"
GATEWAY_CONSTRAINTS_PATH = "/root/constraints.txt"

# -- timing
# First deploy downloads ~15 GB and compiles; later cold starts load from the volumes.
VLLM_STARTUP_TIMEOUT_S = 600
# `ir-gateway serve` listens within a few seconds (it loads schemas and keys, nothing more);
# it does not wait for vLLM, which may be cold.
GATEWAY_STARTUP_TIMEOUT_S = 60
# The functions' own timeout, longer than the gateway's upstream read timeout (300 s). Modal's
# proxy still answers a web request at 150 s with a 303 to a result URL that waits for the
# answer; the gateway follows those (`UpstreamClient._send`).
REQUEST_TIMEOUT_S = 600
# An idle A10G costs money; a cold start costs 30-60 s. Ten minutes keeps a working session warm.
VLLM_SCALEDOWN_S = 600
GATEWAY_SCALEDOWN_S = 600
# The gateway retries refused connections this long before a 503 with Retry-After.
GATEWAY_CONNECT_DEADLINE_S = 180.0

# -- concurrency. The gateway caps what it sends to vLLM (IRGW_MAX_INFLIGHT, default 16) and
# queues the rest itself, so Modal must never spread vLLM over a second GPU on its own.
VLLM_MAX_CONTAINERS = 1
VLLM_MAX_INPUTS = 64
GATEWAY_MAX_INPUTS = 256


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# Deploy-time knobs, read from the shell that runs `modal deploy`. The gateway's is also passed
# into its containers, which check it against the rate-limit backend at start.
MAX_CONTAINERS_ENV = "IRGW_DEPLOY_GATEWAY_MAX_CONTAINERS"
# More than one gateway container needs Redis: in-process limits would be per container.
GATEWAY_MAX_CONTAINERS = _env_int(MAX_CONTAINERS_ENV, 1)
# 1 keeps a GPU warm around the clock (no cold starts, ~24 x the hourly price a day).
VLLM_MIN_CONTAINERS = _env_int("IRGW_DEPLOY_VLLM_MIN_CONTAINERS", 0)

# Host 0.0.0.0: Modal's proxy reaches the server over the container's network interface, and
# outside traffic reaches the container only through that proxy (which requires proxy auth).
VLLM_ARGS: list[str] = vllm_flags.server_args(
    model=MODEL,
    served_model_name=SERVED_MODEL_NAME,
    port=VLLM_PORT,
    host="0.0.0.0",
    target="a10g",
    revision=MODEL_REVISION,
)

app = modal.App(APP_NAME)

hf_cache = modal.Volume.from_name(HF_CACHE_VOLUME, create_if_missing=True)
vllm_cache = modal.Volume.from_name(VLLM_CACHE_VOLUME, create_if_missing=True)
vllm_secret = modal.Secret.from_name(VLLM_SECRET_NAME, required_keys=[vllm_flags.API_KEY_ENV])
# IRGW_KEYS_JSON, or IRGW_REDIS_URL for the shared key store: checked at container start.
gateway_secret = modal.Secret.from_name(GATEWAY_SECRET_NAME)
proxy_auth_secret = modal.Secret.from_name(
    PROXY_AUTH_SECRET_NAME, required_keys=["PROXY_AUTH_TOKEN_ID", "PROXY_AUTH_TOKEN_SECRET"]
)

vllm_image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(*VLLM_REQUIREMENTS)
    # FlashInfer's precompiled kernels (flashinfer-cubin / -jit-cache) at the version matching
    # the installed flashinfer-python, from FlashInfer's own index: without them FlashInfer
    # needs nvcc at start-up, which this image has not. A GPU builder, so the CUDA probe sees one.
    .run_commands("vllm download-kernels", gpu=GPU)
    .env({
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
    })
    # Only `gateway.vllm_flags` is used here (stdlib only), so the vLLM image needs none of the
    # gateway's dependencies.
    .add_local_python_source("gateway")
)

gateway_image = (
    modal.Image.debian_slim(python_version="3.11")
    # Under the versions the tests and benchmarks ran with (constraints.txt pins the test
    # venv): gateway/server.py builds on uvicorn's protocol class, so production must run the
    # server stack that was tested, not whatever release is newest on the day of the build.
    .add_local_file(_REPO / "constraints.txt", GATEWAY_CONSTRAINTS_PATH, copy=True)
    .uv_pip_install(*GATEWAY_REQUIREMENTS, extra_options=f"--constraint {GATEWAY_CONSTRAINTS_PATH}")
    .env({"IRGW_SCHEMAS_DIR": GATEWAY_SCHEMAS_PATH})
    .add_local_python_source("gateway")
    .add_local_dir(_REPO / "schemas", remote_path=GATEWAY_SCHEMAS_PATH)
)


# --------------------------------------------------------------------------- vLLM


def vllm_command(python: str = sys.executable) -> list[str]:
    return vllm_flags.server_command(python, VLLM_ARGS)


def _exit_with(process: subprocess.Popen[bytes], name: str) -> None:
    # Modal would otherwise keep a container whose port never opens until the startup
    # timeout, or one that stopped serving: exiting lets Modal start a fresh container.
    code = process.wait()
    log.error("%s exited with code %s; stopping the container", name, code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


@app.function(
    image=vllm_image,
    gpu=GPU,
    secrets=[vllm_secret],
    volumes={HF_CACHE_PATH: hf_cache, VLLM_CACHE_PATH: vllm_cache},
    timeout=REQUEST_TIMEOUT_S,
    scaledown_window=VLLM_SCALEDOWN_S,
    min_containers=VLLM_MIN_CONTAINERS,
    max_containers=VLLM_MAX_CONTAINERS,
)
@modal.concurrent(max_inputs=VLLM_MAX_INPUTS)
@modal.web_server(port=VLLM_PORT, startup_timeout=VLLM_STARTUP_TIMEOUT_S,
                  requires_proxy_auth=True)
def vllm_server() -> None:
    if not os.environ.get(vllm_flags.API_KEY_ENV):
        raise RuntimeError(f"{vllm_flags.API_KEY_ENV} is empty in Secret {VLLM_SECRET_NAME!r}")
    # The key reaches vLLM through the inherited environment, never argv (argv shows in `ps`).
    process = subprocess.Popen(vllm_command(), stdin=subprocess.DEVNULL)
    threading.Thread(target=_exit_with, args=(process, "vLLM"), daemon=True).start()


# --------------------------------------------------------------------------- gateway


class DeploymentConfigError(RuntimeError):
    """The Secrets do not describe a gateway that can start; the message says what to set."""


def gateway_command(python: str = sys.executable, *, host: str = "0.0.0.0",
                    port: int = GATEWAY_PORT) -> list[str]:
    # Host 0.0.0.0: Modal's proxy reaches the server over the container's network interface.
    return [python, "-m", "gateway", "serve", "--host", host, "--port", str(port)]


def gateway_environment(
    env: Mapping[str, str],
    *,
    upstream_url: Callable[[], str],
    keys_dir: Path,
) -> dict[str, str]:
    """The environment `ir-gateway serve` starts with in the gateway container: the Secrets
    (`env`), plus, as `IRGW_*` variables, what they leave out and the deployment knows.

    Anything set as `IRGW_*` in the `ir-gateway` Secret wins; only what is missing is filled
    in. The settings are built here first, so a Secret that cannot work stops the container
    with a `DeploymentConfigError` naming it rather than a server that fails later. `env`
    must be the process environment in production (pydantic-settings reads `os.environ`);
    tests pass a patched `os.environ`.
    """
    from gateway.settings import Settings

    overrides = _settings_overrides(env, upstream_url=upstream_url, keys_dir=keys_dir)
    Settings(**overrides)
    return {**env, **{f"IRGW_{name.upper()}": _as_env_value(value)
                      for name, value in overrides.items()}}


def _as_env_value(value: object) -> str:
    # pydantic-settings reads structured fields (the proxy headers) as JSON.
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _settings_overrides(env: Mapping[str, str], *, upstream_url: Callable[[], str],
                        keys_dir: Path) -> dict[str, Any]:
    overrides: dict[str, Any] = {}

    redis_url = env.get("IRGW_REDIS_URL")
    # Keys from Redis when nothing names a keys file: a key change then reaches every
    # container within a second, without a redeploy. A keys file, where given, still wins.
    keys_in_redis = (env.get("IRGW_KEYS_BACKEND") == "redis" or (
        redis_url and not env.get("IRGW_KEYS_BACKEND") and not env.get("IRGW_KEYS_FILE")
        and not env.get("IRGW_KEYS_JSON")))
    if redis_url and not env.get("IRGW_USAGE_BACKEND"):
        overrides["usage_backend"] = "redis"  # containers come and go: usage must not
    if keys_in_redis:
        overrides["keys_backend"] = "redis"
    elif not env.get("IRGW_KEYS_FILE"):
        keys_json = env.get("IRGW_KEYS_JSON")
        if not keys_json:
            raise DeploymentConfigError(
                f"no API keys: put the keys file's JSON into Secret {GATEWAY_SECRET_NAME!r} as "
                "IRGW_KEYS_JSON (or mount a file and set IRGW_KEYS_FILE), or set "
                "IRGW_REDIS_URL there to keep keys in Redis"
            )
        try:
            json.loads(keys_json)
        except json.JSONDecodeError as exc:
            # The message names the problem, never the content.
            raise DeploymentConfigError(f"IRGW_KEYS_JSON is not JSON: {exc.msg}") from None
        keys_dir.mkdir(parents=True, exist_ok=True)
        keys_path = keys_dir / "keys.json"
        keys_path.write_text(keys_json, encoding="utf-8")
        keys_path.chmod(0o600)
        overrides["keys_file"] = keys_path

    if not env.get("IRGW_UPSTREAM_API_KEY"):
        key = env.get(vllm_flags.API_KEY_ENV)
        if not key:
            raise DeploymentConfigError(
                f"no vLLM key: Secret {VLLM_SECRET_NAME!r} must hold {vllm_flags.API_KEY_ENV}"
            )
        overrides["upstream_api_key"] = key

    if not env.get("IRGW_UPSTREAM_HEADERS"):
        overrides["upstream_headers"] = upstream_proxy_headers(env)
    if not env.get("IRGW_UPSTREAM_URL"):
        overrides["upstream_url"] = upstream_url()
    if not env.get("IRGW_UPSTREAM_MODEL"):
        overrides["upstream_model"] = SERVED_MODEL_NAME
    if not env.get("IRGW_CONNECT_DEADLINE_S"):
        overrides["connect_deadline_s"] = GATEWAY_CONNECT_DEADLINE_S
    if not env.get("IRGW_READY_PROBE"):
        # vLLM scales to zero: an anonymous /readyz (a monitor, a scanner) must not start it.
        overrides["ready_probe"] = "with_key"
    if not env.get("IRGW_METRICS_PORT"):
        # Modal exposes GATEWAY_PORT only: /metrics on its own port stays inside the
        # container (a sidecar or `modal shell` can read it), off the public URL.
        overrides["metrics_port"] = GATEWAY_METRICS_PORT

    if redis_url and not env.get("IRGW_RATELIMIT_BACKEND"):
        overrides["ratelimit_backend"] = "redis"
    max_containers = int(env.get(MAX_CONTAINERS_ENV) or 1)
    backend = overrides.get("ratelimit_backend") or env.get("IRGW_RATELIMIT_BACKEND", "memory")
    if max_containers > 1 and backend != "redis":
        raise DeploymentConfigError(
            f"{max_containers} gateway containers with in-process limits would give every key "
            f"{max_containers}x its limits: set IRGW_REDIS_URL in Secret "
            f"{GATEWAY_SECRET_NAME!r} or deploy with {MAX_CONTAINERS_ENV}=1"
        )
    return overrides


def upstream_proxy_headers(env: Mapping[str, str]) -> dict[str, str]:
    """Modal proxy-auth headers for requests to `vllm_server` (it requires them on every route)."""
    token_id = env.get("PROXY_AUTH_TOKEN_ID", "")
    token_secret = env.get("PROXY_AUTH_TOKEN_SECRET", "")
    if not (token_id.startswith("wk-") and token_secret.startswith("ws-")):
        raise DeploymentConfigError(
            f"Secret {PROXY_AUTH_SECRET_NAME!r} must hold PROXY_AUTH_TOKEN_ID (wk-...) and "
            "PROXY_AUTH_TOKEN_SECRET (ws-...) from `modal workspace proxy-tokens create`"
        )
    # Separate headers, not `Authorization: Bearer wk-...ws-...`: Authorization carries vLLM's key.
    return {"Modal-Key": token_id, "Modal-Secret": token_secret}


def _vllm_web_url() -> str:
    # Inside the app's own containers its functions are normally hydrated; the lookup by name
    # is the fallback (it finds the deployed app's function).
    url: str | None = None
    try:
        url = vllm_server.get_web_url()
    except Exception as error:  # any failure here has the same remedy: look it up by name
        log.warning("vllm_server URL not available in-app (%s); looking it up by name", error)
    if not url:
        url = modal.Function.from_name(APP_NAME, "vllm_server").get_web_url()
    if not url:
        raise DeploymentConfigError(f"no web URL for vllm_server in app {APP_NAME!r}")
    return url


@app.function(
    image=gateway_image,
    secrets=[gateway_secret, vllm_secret, proxy_auth_secret],
    env={MAX_CONTAINERS_ENV: str(GATEWAY_MAX_CONTAINERS)},
    timeout=REQUEST_TIMEOUT_S,
    scaledown_window=GATEWAY_SCALEDOWN_S,
    max_containers=GATEWAY_MAX_CONTAINERS,
)
@modal.concurrent(max_inputs=GATEWAY_MAX_INPUTS)
@modal.web_server(port=GATEWAY_PORT, startup_timeout=GATEWAY_STARTUP_TIMEOUT_S)
def gateway_api() -> None:
    # A web server rather than `@modal.asgi_app()`: production then runs `ir-gateway serve`,
    # the server every test and benchmark runs (its protocol sends each answer in one write
    # and tells the app of a lost client at once), not a second, untested one.
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    environment = gateway_environment(os.environ, upstream_url=_vllm_web_url,
                                      keys_dir=Path("/tmp/ir-gateway"))
    log.info("starting ir-gateway serve in front of %s", environment["IRGW_UPSTREAM_URL"])
    # cwd: `python -m` finds the `gateway` package where Modal put it (next to this file's
    # copy of it), without it being pip-installed in the image.
    source_root = Path(vllm_flags.__file__).resolve().parent.parent
    process = subprocess.Popen(gateway_command(), env=environment, cwd=source_root,
                               stdin=subprocess.DEVNULL)
    threading.Thread(target=_exit_with, args=(process, "ir-gateway serve"), daemon=True).start()


# --------------------------------------------------------------------------- smoke test


class SmokeError(RuntimeError):
    pass


SMOKE_PROMPT = (
    "Describe a Python function that returns the n-th Fibonacci number, n >= 0, iteratively."
)


def _http(method: str, url: str, *, key: str | None = None, body: object = None,
          timeout_s: float) -> tuple[int, dict[str, Any] | None]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if key:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return status, parsed if isinstance(parsed, dict) else None


def run_smoke(base_url: str, key: str, *, wait_s: float = 900.0,
              say: Callable[[str], None] = print) -> dict[str, Any]:
    """Health, readiness (through a cold start), one named-schema request. Returns the IR."""
    base_url = base_url.rstrip("/")
    started = time.monotonic()
    deadline = started + wait_s

    def poll(path: str, what: str, key: str | None = None) -> dict[str, Any]:
        last = "no answer"
        while True:
            try:
                # Modal holds a request while a container starts, so one attempt may take long.
                status, body = _http("GET", base_url + path, key=key, timeout_s=180)
                if status == 200 and body is not None:
                    return body
                last = f"HTTP {status}: {body}"
            except (urllib.error.URLError, TimeoutError, OSError) as error:
                last = f"{type(error).__name__}: {error}"
            if time.monotonic() >= deadline:
                raise SmokeError(f"{what} not reached after {wait_s:.0f}s; last: {last}")
            say(f"  waiting for {what} ({time.monotonic() - started:.0f}s): {last}")
            time.sleep(5)

    say(f"gateway: {base_url}")
    poll("/healthz", "/healthz")
    say(f"healthz ok ({time.monotonic() - started:.1f}s)")
    ready = poll("/readyz", "/readyz (vLLM up)", key=key)
    say(f"readyz ok ({time.monotonic() - started:.1f}s): vLLM {ready.get('upstream_version')}, "
        f"dialect {ready.get('dialect')}")

    request = {
        "model": "schema/function_ir",
        "messages": [{"role": "user", "content": SMOKE_PROMPT}],
        "temperature": 0,
        "max_tokens": 512,
    }
    sent = time.monotonic()
    try:
        status, body = _http("POST", base_url + "/v1/chat/completions", key=key, body=request,
                             timeout_s=300)
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise SmokeError(f"chat completion failed: {type(error).__name__}: {error}") from None
    latency = time.monotonic() - sent
    if status != 200 or body is None:
        raise SmokeError(f"chat completion failed: HTTP {status}: {body}")
    try:
        content = body["choices"][0]["message"]["content"]
        ir: dict[str, Any] = json.loads(content)
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise SmokeError(f"answer is not the expected JSON ({error!r}): {body}") from None
    usage = body.get("usage") or {}
    completion_tokens = usage.get("completion_tokens")
    rate = f", {completion_tokens / latency:.1f} tok/s" if completion_tokens else ""
    say(json.dumps(ir, indent=2))
    say(f"latency {latency:.2f}s, {completion_tokens} completion tokens{rate}, "
        f"finish_reason {body['choices'][0].get('finish_reason')}")
    return ir


@app.local_entrypoint()
def smoke(url: str = "", wait_s: int = 900) -> None:
    """`modal run deploy/modal_app.py::smoke [--url URL]` with IRGW_SMOKE_KEY set.

    Without --url it looks up the *deployed* app's gateway (`modal deploy` first), rather than
    the ephemeral copy `modal run` creates, so it tests what clients use.
    """
    key = os.environ.get("IRGW_SMOKE_KEY")
    if not key:
        raise SystemExit("set IRGW_SMOKE_KEY to a gateway key (ir-gateway keys create ...)")
    base_url = url or modal.Function.from_name(APP_NAME, "gateway_api").get_web_url()
    if not base_url:
        raise SystemExit(f"no deployed gateway_api in app {APP_NAME!r}: run `modal deploy` first")
    try:
        run_smoke(base_url, key, wait_s=wait_s)
    except SmokeError as error:
        raise SystemExit(f"smoke test FAILED: {error}") from None
    print("smoke test passed")
