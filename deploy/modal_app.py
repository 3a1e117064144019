"""Deploy on Modal: vLLM (xgrammar) on a GPU, the gateway in front of it.

    modal deploy deploy/modal_app.py          # both functions, one app
    modal run deploy/modal_app.py::smoke      # readiness, canary, one request per schema

    IRGW_MODAL_PROFILE=qwen2.5-coder-7b-awq modal deploy deploy/modal_app.py   # another model
    IRGW_DEPLOY_GPU_SNAPSHOT=1 modal deploy deploy/modal_app.py   # cold starts from a snapshot

The model, its GPU and its vLLM settings are one profile (deploy/profiles.py), chosen by
`IRGW_MODAL_PROFILE` in the shell that deploys; the choice is passed into both containers,
which import this module again and must build the same objects.

Two functions, so the GPU scales on its own and the CPU-only gateway can answer `/healthz`,
an anonymous `/readyz` (`IRGW_READY_PROBE=with_key`: only a caller with a key makes it probe
vLLM) and 4xx errors without waking it:

* `vllm_server`: vLLM's OpenAI server on the profile's GPU, started with `gateway.dev.vllm_flags`
  (the same definition the local stack and the CPU integration tests use). Two locks on it:
  vLLM's bearer key (`VLLM_API_KEY`, guards `/v1`, `/v2`, `/inference`, `/cohere` only) and
  Modal proxy auth on the whole endpoint (every route, `/invocations` and `/tokenize`
  included, needs the `Modal-Key`/`Modal-Secret` headers of a workspace proxy token). Only the
  gateway holds both.
* `gateway_api`: `ir-gateway serve`, the same server the tests and benchmarks run (its own
  uvicorn protocol, uvloop), as a Modal web server. Keys come from the `ir-gateway` Secret
  (`IRGW_KEYS_JSON`, written to a file at container start), or from Redis when the Secret
  sets `IRGW_REDIS_URL` and no `IRGW_KEYS_JSON` (keys, limits and usage then shared, and a key
  change needs no redeploy); the vLLM URL from the `vllm_server` function. One container with
  in-process limits unless Redis is configured.

With `IRGW_DEPLOY_GPU_SNAPSHOT=1`, the class `VllmSnapshotServer` replaces `vllm_server`: vLLM
starts from a Modal memory + GPU snapshot (deploy/vllm_snapshot.py; docs/deploy.md, "Cold starts").

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import modal

# Locally the repo root holds `gateway` (usually installed editable anyway); in the containers
# `add_local_python_source` puts it in /root, which is on sys.path.
_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parent
if (_REPO / "gateway" / "__init__.py").is_file() and str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))
# deploy/profiles.py; in the containers it is /root/profiles.py (added to both images).
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import profiles  # noqa: E402

from gateway.dev import vllm_flags  # noqa: E402

log = logging.getLogger("ir-gateway.modal")

APP_NAME = "ir-gateway"

# -- the model and the GPU: one profile (deploy/profiles.py), chosen at deploy time
PROFILE = profiles.select(os.environ)
GPU = PROFILE.gpu
MODEL = PROFILE.model
MODEL_REVISION = PROFILE.revision
# The name clients never see (they ask for `schema/...`), but the gateway pins it so schema
# aliases resolve without asking vLLM for its model list.
SERVED_MODEL_NAME = PROFILE.served_model_name
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
    "uvicorn[standard]>=0.54,<0.55",
    "pydantic>=2.7,<3",
    "pydantic-settings>=2.3,<3",
    "httptools>=0.6",
    "jsonschema-rs>=0.61",
    "orjson>=3.10",
    "redis>=5.0",
    "prometheus-client>=0.20",
    "opentelemetry-sdk>=1.30",
    "opentelemetry-exporter-otlp-proto-http>=1.30",
)

# -- Modal resources (names are the operator's contract; see docs/deploy.md, "Modal")
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
# 1: vLLM starts from a Modal memory + GPU snapshot taken with the model loaded and asleep
# (`VllmSnapshotServer`). Off by default; docs/deploy.md's "Cold starts from a snapshot" says why.
GPU_SNAPSHOT_ENV = "IRGW_DEPLOY_GPU_SNAPSHOT"
GPU_SNAPSHOT = _env_int(GPU_SNAPSHOT_ENV, 0) == 1
# What every container must see to rebuild the same objects when it imports this module.
DEPLOY_ENV: dict[str, str] = {
    profiles.PROFILE_ENV: PROFILE.name,
    GPU_SNAPSHOT_ENV: "1" if GPU_SNAPSHOT else "0",
}

# Host 0.0.0.0: Modal's proxy reaches the server over the container's network interface, and
# outside traffic reaches the container only through that proxy (which requires proxy auth).
VLLM_ARGS: list[str] = PROFILE.vllm_args(port=VLLM_PORT, host="0.0.0.0", sleep_mode=GPU_SNAPSHOT)

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
    # Only `gateway.dev.vllm_flags` is used here (stdlib only), so the vLLM image needs none of the
    # gateway's dependencies.
    .add_local_python_source("gateway")
    .add_local_file(_HERE / "profiles.py", "/root/profiles.py")
    .add_local_file(_HERE / "vllm_snapshot.py", "/root/vllm_snapshot.py")
)

gateway_image = (
    modal.Image.debian_slim(python_version="3.11")
    # Under the versions the tests and benchmarks ran with (constraints.txt pins the test
    # venv): gateway/server/protocol.py builds on uvicorn's protocol class, so production must
    # run the
    # server stack that was tested, not whatever release is newest on the day of the build.
    .add_local_file(_REPO / "constraints.txt", GATEWAY_CONSTRAINTS_PATH, copy=True)
    .uv_pip_install(*GATEWAY_REQUIREMENTS, extra_options=f"--constraint {GATEWAY_CONSTRAINTS_PATH}")
    .env({"IRGW_SCHEMAS_DIR": GATEWAY_SCHEMAS_PATH})
    .add_local_python_source("gateway")
    .add_local_dir(_REPO / "schemas", remote_path=GATEWAY_SCHEMAS_PATH)
    .add_local_file(_HERE / "profiles.py", "/root/profiles.py")
    .add_local_file(_HERE / "vllm_snapshot.py", "/root/vllm_snapshot.py")
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


def _start_vllm(extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    if not os.environ.get(vllm_flags.API_KEY_ENV):
        raise RuntimeError(f"{vllm_flags.API_KEY_ENV} is empty in Secret {VLLM_SECRET_NAME!r}")
    # The key reaches vLLM through the inherited environment, never argv (argv shows in `ps`).
    env = {**os.environ, **(extra_env or {})}
    return subprocess.Popen(vllm_command(), stdin=subprocess.DEVNULL, env=env)


_VLLM_FUNCTION_OPTIONS: dict[str, Any] = {
    "image": vllm_image,
    "gpu": GPU,
    "secrets": [vllm_secret],
    "env": DEPLOY_ENV,
    "volumes": {HF_CACHE_PATH: hf_cache, VLLM_CACHE_PATH: vllm_cache},
    "timeout": REQUEST_TIMEOUT_S,
    "scaledown_window": VLLM_SCALEDOWN_S,
    "min_containers": VLLM_MIN_CONTAINERS,
    "max_containers": VLLM_MAX_CONTAINERS,
}

if not GPU_SNAPSHOT:
    @app.function(**_VLLM_FUNCTION_OPTIONS)
    @modal.concurrent(max_inputs=VLLM_MAX_INPUTS)
    @modal.web_server(port=VLLM_PORT, startup_timeout=VLLM_STARTUP_TIMEOUT_S,
                      requires_proxy_auth=True)
    def vllm_server() -> None:
        process = _start_vllm()
        threading.Thread(target=_exit_with, args=(process, "vLLM"), daemon=True).start()

    VLLM_WEB_ENDPOINT = "vllm_server"
else:
    from vllm_snapshot import VLLM_SNAPSHOT_ENV, Canary, SnapshotError, sleep_for_snapshot, wake_up

    @app.cls(**_VLLM_FUNCTION_OPTIONS, startup_timeout=VLLM_STARTUP_TIMEOUT_S,
             enable_memory_snapshot=True, experimental_options={"enable_gpu_snapshot": True})
    @modal.concurrent(max_inputs=VLLM_MAX_INPUTS)
    class VllmSnapshotServer:
        """vLLM started, warmed up and put to sleep before Modal's snapshot; woken after a
        restore and checked against the answer it gave before sleeping."""

        @modal.enter(snap=True)
        def start_and_sleep(self) -> None:
            self.process = _start_vllm(VLLM_SNAPSHOT_ENV)
            self.canary: Canary = sleep_for_snapshot(
                self.process, port=VLLM_PORT, model=SERVED_MODEL_NAME,
                key=os.environ[vllm_flags.API_KEY_ENV], timeout_s=VLLM_STARTUP_TIMEOUT_S)

        @modal.enter(snap=False)
        def wake(self) -> None:
            try:
                wake_up(self.canary, port=VLLM_PORT, key=os.environ[vllm_flags.API_KEY_ENV])
            except SnapshotError as error:
                # Serving answers that differ from the model's is worse than not serving.
                log.error("vLLM after restore: %s; stopping the container", error)
                os._exit(1)
            threading.Thread(target=_exit_with, args=(self.process, "vLLM"),
                             daemon=True).start()

        @modal.web_server(port=VLLM_PORT, startup_timeout=VLLM_STARTUP_TIMEOUT_S,
                          requires_proxy_auth=True)
        def serve(self) -> None:
            pass  # vLLM already listens: it was started before the snapshot

    VLLM_WEB_ENDPOINT = "VllmSnapshotServer.serve"


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
        url = (VllmSnapshotServer().serve if GPU_SNAPSHOT else vllm_server).get_web_url()
    except Exception as error:  # any failure here has the same remedy: look it up by name
        log.warning("%s URL not available in-app (%s); looking it up by name",
                    VLLM_WEB_ENDPOINT, error)
    if not url and GPU_SNAPSHOT:
        url = modal.Cls.from_name(APP_NAME, "VllmSnapshotServer")().serve.get_web_url()
    elif not url:
        url = modal.Function.from_name(APP_NAME, "vllm_server").get_web_url()
    if not url:
        raise DeploymentConfigError(f"no web URL for {VLLM_WEB_ENDPOINT} in app {APP_NAME!r}")
    return url


@app.function(
    image=gateway_image,
    secrets=[gateway_secret, vllm_secret, proxy_auth_secret],
    env={**DEPLOY_ENV, MAX_CONTAINERS_ENV: str(GATEWAY_MAX_CONTAINERS)},
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
    source_root = Path(vllm_flags.__file__).resolve().parents[2]
    process = subprocess.Popen(gateway_command(), env=environment, cwd=source_root,
                               stdin=subprocess.DEVNULL)
    threading.Thread(target=_exit_with, args=(process, "ir-gateway serve"), daemon=True).start()


# --------------------------------------------------------------------------- smoke test


@app.local_entrypoint()
def smoke(url: str = "", wait_s: int = 900) -> None:
    """`modal run deploy/modal_app.py::smoke [--url URL]` with IRGW_SMOKE_KEY set.

    Without --url it looks up the *deployed* app's gateway (`modal deploy` first), rather than
    the ephemeral copy `modal run` creates, so it tests what clients use. The checks are
    deploy/smoke.py's (readiness, constraint canary, one request per registered schema);
    any failure exits non-zero.
    """
    from smoke import SmokeError, run_smoke  # local only: the containers do not carry it

    key = os.environ.get("IRGW_SMOKE_KEY")
    if not key:
        raise SystemExit("set IRGW_SMOKE_KEY to a gateway key (ir-gateway keys create ...)")
    base_url = url or modal.Function.from_name(APP_NAME, "gateway_api").get_web_url()
    if not base_url:
        raise SystemExit(f"no deployed gateway_api in app {APP_NAME!r}: run `modal deploy` first")
    print(f"profile {PROFILE.name} (this shell's {profiles.PROFILE_ENV}): {MODEL} on {GPU}")
    try:
        run_smoke(base_url, key, wait_s=wait_s)
    except SmokeError as error:
        raise SystemExit(f"smoke test FAILED: {error}") from None
    print("smoke test passed")
