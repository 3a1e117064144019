"""The deployment definitions: Modal app shape, and the vLLM command lines checked by vLLM itself.

Nothing here contacts Modal or starts vLLM. The command lines the Modal app, the self-hosted
script and the CPU stack would run are parsed by the real argument parser of the pinned vLLM
release (from `.venv-vllm`, in one subprocess: importing vLLM takes a while), so a misspelt or
removed flag fails here rather than in a GPU container.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from gateway.access.keys import KeyStore
from gateway.dev import vllm_flags
from gateway.settings import Settings
from tests.deploy_samples import ANSWERS_BY_SCHEMA
from tests.fake_upstream import FakeUpstream, FollowSchema, Reply
from tests.gateway_server import free_port, serving_process

REPO = Path(__file__).resolve().parent.parent
MODAL_APP = REPO / "deploy" / "modal_app.py"
SELFHOST = REPO / "deploy" / "selfhost.py"
# Where scripts/setup-vllm-env.sh put it (gateway.dev.vllm_process.vllm_python's lookup, which
# raises when it is missing; here a missing one is a clear test failure instead).
VLLM_PYTHON = Path(
    os.environ.get("IRGW_VLLM_PYTHON")
    or Path(os.environ.get("VLLM_VENV") or REPO / ".venv-vllm") / "bin" / "python"
)


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Under the name deploy/modal_app.py imports it by, so both see one module.
profiles = _load(REPO / "deploy" / "profiles.py", "profiles")
smoke = _load(REPO / "deploy" / "smoke.py", "ir_gateway_smoke")


@pytest.fixture(scope="module")
def modal_app() -> ModuleType:
    return _load(MODAL_APP, "ir_gateway_modal_app")


@pytest.fixture(scope="module")
def selfhost() -> ModuleType:
    return _load(SELFHOST, "ir_gateway_selfhost")


# --------------------------------------------------------------------------- 1. the Modal app

# Runs in a fresh interpreter: every way to open a connection or resolve a name raises and is
# recorded, then the module is imported and its Modal objects are described as JSON.
_NO_NETWORK_IMPORT = r"""
import importlib.util, json, socket, sys

attempts = []

def refuse(what):
    def blocked(*args, **kwargs):
        attempts.append(what)
        raise OSError(f"network access during import: {what}")
    return blocked

socket.socket.connect = refuse("socket.connect")
socket.socket.connect_ex = refuse("socket.connect_ex")
socket.create_connection = refuse("socket.create_connection")
socket.getaddrinfo = refuse("socket.getaddrinfo")
socket.gethostbyname = refuse("socket.gethostbyname")

spec = importlib.util.spec_from_file_location("modal_app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["modal_app"] = module
spec.loader.exec_module(module)

import modal
from modal._utils.async_utils import synchronizer

def web_endpoint(value):
    if isinstance(value, modal.Function):
        return value, synchronizer._translate_in(value)._webhook_config, {}
    # A class: its methods run in one service function; the web server is one method.
    partials = {n: synchronizer._translate_in(p)
                for n, p in value._get_partial_functions().items()}
    webhook = next(p.params.webhook_config for p in partials.values()
                   if p.params.webhook_config is not None)
    flags = {n: p.flags for n, p in partials.items()}
    return value._get_class_service_function(), webhook, flags

functions = {}
for name, value in vars(module).items():
    if not isinstance(value, (modal.Function, modal.Cls)):
        continue
    value, webhook, method_flags = web_endpoint(value)
    info = value.info()  # local for a function defined here: no hydration
    functions[name] = {
        "gpus": info.gpus,
        "secrets": info.secrets,
        "volumes": {path: mount.name for path, mount in info.volumes.items()},
        # A class's web method is not in its service function's info until deployed.
        "web": None if webhook is None or not webhook.type else {
            "unauthenticated": None if info.web_info is None else info.web_info.unauthenticated,
            "type": type(webhook).DESCRIPTOR.fields_by_name["type"].enum_type
                .values_by_number[webhook.type].name,
            "port": webhook.web_server_port,
            "startup_timeout": webhook.web_server_startup_timeout,
            "requires_proxy_auth": webhook.requires_proxy_auth,
        },
        "timeout": info.timeout,
        "startup_timeout": info.startup_timeout,
        "max_inputs": info.concurrency_info.max_inputs if info.concurrency_info else None,
        "method_flags": method_flags,
    }
entrypoints = sorted(n for n, v in vars(module).items()
                     if type(v).__name__ == "LocalEntrypoint")
print(json.dumps({"attempts": attempts, "functions": functions, "entrypoints": entrypoints,
                  "app_name": module.app.name}))
"""


def describe_modal_app(**deploy_env: str) -> dict[str, Any]:
    """The app as `modal deploy` would build it from a shell with `deploy_env` set."""
    # No Modal credentials or deploy-time knobs from the caller's shell.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MODAL_", "IRGW_DEPLOY_", profiles.PROFILE_ENV))}
    result = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK_IMPORT, str(MODAL_APP)],
        capture_output=True, text=True, timeout=120, env={**env, **deploy_env}, check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    shape: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return shape


@pytest.fixture(scope="module")
def modal_shape() -> dict[str, Any]:
    return describe_modal_app()


def test_importing_the_modal_app_makes_no_network_call(modal_shape: dict[str, Any]) -> None:
    assert modal_shape["attempts"] == []
    assert modal_shape["app_name"] == "ir-gateway"
    assert set(modal_shape["functions"]) == {"vllm_server", "gateway_api"}
    assert modal_shape["entrypoints"] == ["smoke"]


def test_vllm_function_is_an_a10_web_server_behind_proxy_auth(
        modal_shape: dict[str, Any], modal_app: ModuleType) -> None:
    vllm = modal_shape["functions"]["vllm_server"]
    # Modal's GPU list names the card `A10` (it was `A10G`); the client passes the name on.
    assert modal_app.GPU == "A10"
    assert vllm["gpus"] == [["A10", 1]]
    assert vllm["secrets"] == [
        "modal.Secret.from_name('ir-gateway-vllm')",
        # The deploy-time choice, so the container rebuilds the same objects on import.
        "Secret.from_dict([IRGW_MODAL_PROFILE, IRGW_DEPLOY_GPU_SNAPSHOT])",
    ]
    assert vllm["volumes"] == {"/root/.cache/huggingface": "ir-gateway-hf-cache",
                               "/root/.cache/vllm": "ir-gateway-vllm-cache"}
    assert vllm["web"] == {
        "unauthenticated": False, "type": "WEBHOOK_TYPE_WEB_SERVER", "port": 8000,
        "startup_timeout": modal_app.VLLM_STARTUP_TIMEOUT_S, "requires_proxy_auth": True,
    }
    # Long enough for a cold start that loads 15 GB of weights and compiles.
    assert modal_app.VLLM_STARTUP_TIMEOUT_S >= 600
    assert vllm["max_inputs"] == modal_app.VLLM_MAX_INPUTS
    assert modal_app.VLLM_MAX_CONTAINERS == 1


def test_gateway_function_is_a_public_web_server_with_its_secrets(
        modal_shape: dict[str, Any], modal_app: ModuleType) -> None:
    gateway = modal_shape["functions"]["gateway_api"]
    assert gateway["gpus"] == []
    assert gateway["secrets"][:3] == [
        "modal.Secret.from_name('ir-gateway')",
        "modal.Secret.from_name('ir-gateway-vllm')",
        "modal.Secret.from_name('ir-gateway-proxy-auth')",
    ]
    # `ir-gateway serve` behind Modal's proxy, the server the tests and benchmarks run.
    assert gateway["web"] == {
        "unauthenticated": True,  # the gateway checks its own keys
        "type": "WEBHOOK_TYPE_WEB_SERVER", "port": modal_app.GATEWAY_PORT,
        "startup_timeout": modal_app.GATEWAY_STARTUP_TIMEOUT_S, "requires_proxy_auth": False,
    }
    assert modal_app.gateway_command("/usr/bin/python3", port=8000) == [
        "/usr/bin/python3", "-m", "gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]
    # Default deploy: one container, in-process limits.
    assert modal_app.GATEWAY_MAX_CONTAINERS == 1
    assert modal_app.GATEWAY_CONNECT_DEADLINE_S >= 120


def test_smoke_entrypoint_takes_cli_options(modal_app: ModuleType) -> None:
    # What `modal run deploy/modal_app.py::smoke --url ... --wait-s ...` parses.
    from modal.cli.run import _get_cli_runnable_signature, safe_get_type_hints

    raw = modal_app.smoke.info.raw_f
    signature = _get_cli_runnable_signature(inspect.signature(raw), safe_get_type_hints(raw))
    assert set(signature.parameters) == {"url", "wait_s"}


def test_modal_vllm_command_uses_the_shared_flag_definition(modal_app: ModuleType) -> None:
    assert modal_app.VLLM_ARGS == vllm_flags.server_args(
        model="Qwen/Qwen2.5-Coder-7B-Instruct", served_model_name="qwen2.5-coder-7b",
        port=8000, host="0.0.0.0", target="a10g", revision=modal_app.MODEL_REVISION)
    command = modal_app.vllm_command("/usr/bin/python3")
    assert command[:3] == ["/usr/bin/python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert f"vllm=={vllm_flags.VLLM_VERSION}" in modal_app.VLLM_REQUIREMENTS
    # The key goes through the environment, never argv.
    assert not any("api-key" in arg or "API_KEY" in arg for arg in command)


def test_gateway_image_installs_what_pyproject_declares(modal_app: ModuleType) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert list(modal_app.GATEWAY_REQUIREMENTS) == project["dependencies"]


def test_selfhost_pins_match_the_modal_app(modal_app: ModuleType, selfhost: ModuleType) -> None:
    for name in ("MODEL", "MODEL_REVISION", "SERVED_MODEL_NAME", "FLASHINFER_VERSION"):
        assert getattr(selfhost, name) == getattr(modal_app, name), name
    assert selfhost.VLLM_GPU_REQUIREMENTS == modal_app.VLLM_REQUIREMENTS


# --------------------------------------------------------------------------- 2./3. vLLM's parser

_PARSE = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import vllm
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.entrypoints.launchers.launcher import validate_api_server_args
from vllm.model_executor.layers.quantization import get_quantization_config
from vllm.utils.argparse_utils import FlexibleArgumentParser

def parse(args):
    parser = make_arg_parser(FlexibleArgumentParser(description="vLLM OpenAI-Compatible server"))
    # argparse accepts unambiguous prefixes: a truncated flag would pass parse_args unnoticed.
    inexact = [a for a in args if a.startswith("--")
               and a.split("=", 1)[0] not in parser._option_string_actions]
    try:
        ns = parser.parse_args(args)
    except SystemExit as exit:
        return {"exit_code": exit.code}
    validate_parsed_serve_args(ns)
    validate_api_server_args(ns)  # e.g. that the tool-call parser is registered
    engine = AsyncEngineArgs.from_cli_args(ns)
    so = engine.structured_outputs_config
    kernel = None
    if engine.quantization is not None:
        config = get_quantization_config(engine.quantization)
        kernel = {"min_capability": config.get_min_capability(),
                  "act_dtypes": [str(t).removeprefix("torch.")
                                 for t in config.get_supported_act_dtypes()]}
    return {
        "exit_code": 0,
        "inexact_flags": inexact,
        "model": engine.model,
        "revision": engine.revision,
        "served_model_name": engine.served_model_name,
        "dtype": engine.dtype,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "max_model_len": engine.max_model_len,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "generation_config": engine.generation_config,
        "structured_outputs": {"backend": so.backend,
                               "disable_any_whitespace": so.disable_any_whitespace},
        "host": ns.host,
        "port": ns.port,
        "api_key": ns.api_key,
        "enable_auto_tool_choice": ns.enable_auto_tool_choice,
        "tool_call_parser": ns.tool_call_parser,
        "tool_strict_level": getattr(ns, "tool_strict_level", None),
        "disable_fastapi_docs": ns.disable_fastapi_docs,
        "quantization": engine.quantization,
        "quantization_kernel": kernel,
        "enable_sleep_mode": engine.enable_sleep_mode,
    }

cases = json.loads(sys.stdin.read())
print("PARSED " + json.dumps({"vllm_version": vllm.__version__,
                              "cases": {name: parse(args) for name, args in cases.items()}}))
"""

CPU_KW: dict[str, Any] = {"model": "/models/tiny", "served_model_name": "tiny", "port": 8123}


def _parse_env() -> dict[str, str]:
    # Not HF_HUB_OFFLINE: with it, EngineArgs resolves a hub id to a local snapshot and fails
    # for a model this machine never downloaded. Parsing alone never contacts the Hub.
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update({"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_LOGGING_LEVEL": "WARNING"})
    return env


@pytest.fixture(scope="module")
def parsed(modal_app: ModuleType, selfhost: ModuleType) -> dict[str, Any]:
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON} (make setup-vllm)")
    dry = subprocess.run([sys.executable, str(SELFHOST), "--dry-run"], capture_output=True,
                         text=True, check=True, cwd=REPO)
    selfhost_vllm = json.loads(dry.stdout)["vllm"]
    a10g = vllm_flags.server_args(target="a10g", **CPU_KW)
    cases = {
        "modal": modal_app.VLLM_ARGS,
        "selfhost": selfhost_vllm[3:],  # after `python -m vllm.entrypoints.openai.api_server`
        "a10g": a10g,
        "cpu": vllm_flags.server_args(target="cpu", **CPU_KW),
        "misspelt": [*a10g, "--enable-prefix-cacheing"],
        **{f"profile:{p.name}": p.vllm_args(port=8000, host="0.0.0.0")
           for p in profiles.PROFILES.values()},
        **{f"profile:{p.name}:sleep": p.vllm_args(port=8000, host="0.0.0.0", sleep_mode=True)
           for p in profiles.PROFILES.values()},
    }
    result = subprocess.run(
        [str(VLLM_PYTHON), "-c", _PARSE], input=json.dumps(cases), capture_output=True,
        text=True, timeout=600, check=False, env=_parse_env(),
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PARSED ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    out: dict[str, Any] = json.loads(lines[-1].removeprefix("PARSED "))
    out["cases"]["selfhost_argv"] = selfhost_vllm
    return out


def test_parser_is_the_pinned_vllm_release(parsed: dict[str, Any]) -> None:
    assert parsed["vllm_version"] == vllm_flags.VLLM_VERSION


def test_modal_command_line_gives_the_intended_engine(
        parsed: dict[str, Any], modal_app: ModuleType) -> None:
    engine = dict(parsed["cases"]["modal"])
    # Whatever the shared definition asks for here, vLLM must have understood it.
    assert engine.pop("tool_strict_level") == _flag_values(modal_app.VLLM_ARGS).get(
        "--tool-strict-level")
    # bf16 weights, vLLM started normally (no sleep mode without the snapshot option).
    assert (engine.pop("quantization"), engine.pop("quantization_kernel"),
            engine.pop("enable_sleep_mode")) == (None, None, False)
    assert engine == {
        "exit_code": 0,
        "inexact_flags": [],
        "model": "Qwen/Qwen2.5-Coder-7B-Instruct",
        "revision": modal_app.MODEL_REVISION,
        "served_model_name": ["qwen2.5-coder-7b"],
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.9,
        "max_model_len": vllm_flags.DEFAULT_MAX_MODEL_LEN,
        "enable_prefix_caching": True,
        "generation_config": "vllm",
        "structured_outputs": {"backend": "xgrammar", "disable_any_whitespace": True},
        "host": "0.0.0.0",
        "port": 8000,
        "api_key": None,  # from VLLM_API_KEY in the environment, not argv
        "enable_auto_tool_choice": True,
        "tool_call_parser": "hermes",
        "disable_fastapi_docs": True,
    }


def test_selfhost_runs_the_same_engine_bound_to_loopback(parsed: dict[str, Any]) -> None:
    cases = parsed["cases"]
    selfhost = dict(cases["selfhost"])
    modal = dict(cases["modal"])
    # Loopback only: the gateway is the one network path to vLLM.
    assert selfhost.pop("host") == "127.0.0.1"
    modal.pop("host")
    assert selfhost == modal
    assert cases["selfhost_argv"][1:3] == ["-m", "vllm.entrypoints.openai.api_server"]


def test_a_misspelt_flag_is_rejected_by_vllm(parsed: dict[str, Any]) -> None:
    assert parsed["cases"]["a10g"]["exit_code"] == 0
    assert parsed["cases"]["misspelt"]["exit_code"] == 2


def _flag_values(args: list[str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            values[arg] = nxt if nxt is not None and not nxt.startswith("--") else None
    return values


def test_cpu_flags_differ_from_a10g_only_in_cpu_adjustments(parsed: dict[str, Any]) -> None:
    a10g = _flag_values(vllm_flags.server_args(target="a10g", **CPU_KW))
    cpu = _flag_values(vllm_flags.server_args(target="cpu", **CPU_KW))
    changed = (a10g.keys() ^ cpu.keys()) | {
        flag for flag in a10g.keys() & cpu.keys() if a10g[flag] != cpu[flag]}
    assert changed == {"--dtype", "--gpu-memory-utilization", "--max-model-len",
                       "--enforce-eager"}
    assert cpu["--dtype"] == "float32" and "--gpu-memory-utilization" not in cpu

    a10g_engine, cpu_engine = parsed["cases"]["a10g"], parsed["cases"]["cpu"]
    assert cpu_engine["exit_code"] == 0 and cpu_engine["inexact_flags"] == []
    differing = {key for key in a10g_engine if a10g_engine[key] != cpu_engine[key]}
    assert differing == {"dtype", "gpu_memory_utilization", "max_model_len"}
    assert cpu_engine["max_model_len"] == vllm_flags.CPU_DEFAULT_MAX_MODEL_LEN
    # What matters for structured output is identical on both.
    for key in ("structured_outputs", "enable_prefix_caching", "generation_config",
                "tool_call_parser", "enable_auto_tool_choice", "tool_strict_level"):
        assert cpu_engine[key] == a10g_engine[key], key


# The cards' CUDA compute capability (NVIDIA's tables): what a quantisation kernel needs.
GPU_CAPABILITY = {"A10": 86, "L40S": 89}


@pytest.mark.parametrize("name", sorted(profiles.PROFILES))
def test_every_profile_command_line_gives_the_intended_engine(
        parsed: dict[str, Any], name: str) -> None:
    profile = profiles.PROFILES[name]
    engine = parsed["cases"][f"profile:{name}"]
    assert engine["exit_code"] == 0 and engine["inexact_flags"] == []
    assert {key: engine[key] for key in (
        "model", "revision", "served_model_name", "dtype", "gpu_memory_utilization",
        "max_model_len", "quantization", "tool_call_parser", "enable_sleep_mode")} == {
        "model": profile.model, "revision": profile.revision,
        "served_model_name": [profile.served_model_name], "dtype": profile.dtype,
        "gpu_memory_utilization": profile.gpu_memory_utilization,
        "max_model_len": profile.max_model_len, "quantization": profile.quantization,
        "tool_call_parser": profile.tool_call_parser, "enable_sleep_mode": False,
    }
    # Structured output is configured the same whatever the model.
    modal = parsed["cases"]["modal"]
    for key in ("structured_outputs", "enable_prefix_caching", "generation_config",
                "enable_auto_tool_choice", "tool_strict_level", "disable_fastapi_docs"):
        assert engine[key] == modal[key], key
    # A quantised profile names a kernel that runs on its card with its activation dtype.
    kernel = engine["quantization_kernel"]
    if profile.quantization is None:
        assert kernel is None
    else:
        assert kernel["min_capability"] <= GPU_CAPABILITY[profile.gpu]
        assert profile.dtype in kernel["act_dtypes"]
    # The snapshot option changes exactly one thing.
    asleep = dict(parsed["cases"][f"profile:{name}:sleep"])
    assert asleep.pop("enable_sleep_mode") is True
    assert asleep == {k: v for k, v in engine.items() if k != "enable_sleep_mode"}


# --------------------------------------------------------------------------- gateway container


@pytest.fixture
def modal_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    for name in list(os.environ):
        if name.startswith("IRGW_") or name in ("VLLM_API_KEY", "PROXY_AUTH_TOKEN_ID",
                                                "PROXY_AUTH_TOKEN_SECRET"):
            monkeypatch.delenv(name)
    store = KeyStore(tmp_path / "made-by-cli.json", create=True)
    _, key = store.create("smoke")
    values = {
        "IRGW_KEYS_JSON": (tmp_path / "made-by-cli.json").read_text(),
        "VLLM_API_KEY": "vllm-secret-key",
        "PROXY_AUTH_TOKEN_ID": "wk-test",
        "PROXY_AUTH_TOKEN_SECRET": "ws-test",
        "IRGW_SCHEMAS_DIR": str(REPO / "schemas"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    yield {**values, "key": key}


def served_settings(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings `ir-gateway serve` starts with when its environment is `environment`."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_gateway_settings_from_the_secrets(modal_app: ModuleType, modal_env: dict[str, str],
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    environment = modal_app.gateway_environment(
        os.environ, upstream_url=lambda: "https://vllm.example", keys_dir=tmp_path / "keys")
    assert environment["VLLM_API_KEY"] == "vllm-secret-key"  # the Secrets pass through
    settings = served_settings(environment, monkeypatch)
    assert settings.keys_file == tmp_path / "keys" / "keys.json"
    assert settings.keys_file.read_text() == modal_env["IRGW_KEYS_JSON"]
    assert settings.keys_file.stat().st_mode & 0o777 == 0o600
    assert settings.upstream_api_key.get_secret_value() == "vllm-secret-key"
    assert settings.upstream_url == "https://vllm.example"
    assert settings.upstream_model == "qwen2.5-coder-7b"
    assert settings.connect_deadline_s == modal_app.GATEWAY_CONNECT_DEADLINE_S
    assert settings.ready_probe == "with_key"  # an anonymous /readyz must not wake the A10G
    # /metrics on a loopback port of its own, which Modal does not expose.
    assert settings.metrics_port == modal_app.GATEWAY_METRICS_PORT != modal_app.GATEWAY_PORT
    assert settings.metrics_host == "127.0.0.1"
    assert settings.ratelimit_backend == "memory"
    assert {k: v.get_secret_value() for k, v in settings.upstream_headers.items()} == {
        "Modal-Key": "wk-test", "Modal-Secret": "ws-test"}


def test_gateway_settings_honour_operator_overrides(
        modal_app: ModuleType, modal_env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRGW_UPSTREAM_URL", "https://elsewhere.example")
    monkeypatch.setenv("IRGW_CONNECT_DEADLINE_S", "30")
    monkeypatch.setenv("IRGW_REDIS_URL", "redis://redis.example:6379/0")
    monkeypatch.setenv(modal_app.MAX_CONTAINERS_ENV, "4")

    def never() -> str:
        raise AssertionError("the function's URL must not be looked up when one is set")

    environment = modal_app.gateway_environment(os.environ, upstream_url=never,
                                                keys_dir=tmp_path)
    settings = served_settings(environment, monkeypatch)
    assert settings.upstream_url == "https://elsewhere.example"
    assert settings.connect_deadline_s == 30
    assert settings.ratelimit_backend == "redis"


@pytest.mark.parametrize(("change", "message"), [
    ({"IRGW_KEYS_JSON": None}, "IRGW_KEYS_JSON"),
    ({"IRGW_KEYS_JSON": "{not json"}, "not JSON"),
    ({"VLLM_API_KEY": None}, "VLLM_API_KEY"),
    ({"IRGW_DEPLOY_GATEWAY_MAX_CONTAINERS": "3"}, "IRGW_REDIS_URL"),
])
def test_gateway_refuses_to_start_misconfigured(
        modal_app: ModuleType, modal_env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, change: dict[str, str | None], message: str) -> None:
    for name, value in change.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(modal_app.DeploymentConfigError, match=message) as caught:
        modal_app.gateway_environment(os.environ, upstream_url=lambda: "https://v.example",
                                      keys_dir=tmp_path)
    assert "{not json" not in str(caught.value)


def test_proxy_auth_headers_must_be_a_proxy_token(
        modal_app: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_AUTH_TOKEN_ID", "ak-an-api-token")
    monkeypatch.setenv("PROXY_AUTH_TOKEN_SECRET", "as-an-api-secret")
    with pytest.raises(modal_app.DeploymentConfigError, match="proxy-tokens"):
        modal_app.upstream_proxy_headers(os.environ)


async def test_smoke_through_the_modal_gateway_container(
        modal_app: ModuleType, modal_env: dict[str, str], tmp_path: Path) -> None:
    """What `gateway_api` starts, against a fake vLLM: its command with its environment, in
    a process of its own; keys from the Secret, vLLM's bearer key and the proxy-auth headers
    on every upstream call, and deploy/smoke.py's `run_smoke` end to end (one request per
    registered schema)."""
    async with FakeUpstream(api_key="vllm-secret-key", model="qwen2.5-coder-7b") as fake:
        # The keyed /readyz runs the canary first (chat, then completions), as on Modal.
        fake.script(FollowSchema(), FollowSchema(),
                    *(Reply(answer) for answer in ANSWERS_BY_SCHEMA.values()))
        environment = modal_app.gateway_environment(os.environ, upstream_url=lambda: fake.url,
                                                    keys_dir=tmp_path / "keys")
        port = free_port()
        command = modal_app.gateway_command(sys.executable, host="127.0.0.1", port=port)
        url = f"http://127.0.0.1:{port}"
        # The container's metrics port, moved to a free one: this machine is shared.
        assert environment["IRGW_METRICS_PORT"] == str(modal_app.GATEWAY_METRICS_PORT)
        environment["IRGW_METRICS_PORT"] = str(metrics_port := free_port())
        async with serving_process(command, environment, url), httpx.AsyncClient() as client:
            public = await client.get(f"{url}/metrics")
            private = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
            lines: list[str] = []
            results = await asyncio.to_thread(smoke.run_smoke, url, modal_env["key"],
                                              wait_s=30, say=lines.append)
            with pytest.raises(smoke.SmokeError, match="HTTP 401"):
                await asyncio.to_thread(smoke.run_smoke, url, "irgw-not-a-key",
                                        wait_s=30, say=lines.append)
    assert public.status_code == 404 and private.status_code == 200
    assert "irgw_requests_total" in private.text
    assert [(r.schema, r.status, r.output) for r in results] == [
        (name, 200, "passed") for name in ANSWERS_BY_SCHEMA]
    assert any("tok/s" in line for line in lines)
    request = fake.requests[0]
    assert request.json["model"] == "qwen2.5-coder-7b"
    assert request.headers["authorization"] == "Bearer vllm-secret-key"
    assert request.headers["modal-key"] == "wk-test"
    assert request.headers["modal-secret"] == "ws-test"
    assert [r.path for r in fake.requests] == [
        "/v1/chat/completions", "/v1/completions",
        *["/v1/chat/completions"] * len(ANSWERS_BY_SCHEMA)]


# --------------------------------------------------------------------------- self-hosted


def test_selfhost_refuses_a_missing_or_cpu_vllm(selfhost: ModuleType, tmp_path: Path) -> None:
    assert "no vLLM environment" in selfhost.check_vllm_environment(tmp_path / "python")
    if VLLM_PYTHON.exists():  # the CPU build the tests use: not what a GPU box should run
        assert "CPU build" in selfhost.check_vllm_environment(VLLM_PYTHON)


def test_selfhost_passes_the_key_by_environment_only(selfhost: ModuleType) -> None:
    args = selfhost.parse_args(["--keys-file", "/etc/irgw/keys.json", "--host", "127.0.0.1",
                                "--port", "8080"])
    vllm_env, gateway_env = selfhost.environments(args, {"PATH": "/usr/bin"}, "k" * 64)
    assert vllm_env["VLLM_API_KEY"] == "k" * 64
    assert gateway_env["IRGW_UPSTREAM_API_KEY"] == "k" * 64
    assert gateway_env["IRGW_KEYS_FILE"] == "/etc/irgw/keys.json"
    assert gateway_env["IRGW_UPSTREAM_MODEL"] == selfhost.SERVED_MODEL_NAME
    assert "k" * 64 not in " ".join(selfhost.vllm_command(args) + selfhost.gateway_command(args))
    assert selfhost.gateway_command(args)[-6:] == [
        "--upstream", "http://127.0.0.1:8000", "--host", "127.0.0.1", "--port", "8080"]


def test_selfhost_hands_the_gateway_an_absolute_keys_file(selfhost: ModuleType,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The gateway runs from the repository: a path relative to the caller's directory would
    # point somewhere else there.
    monkeypatch.chdir(tmp_path)
    args = selfhost.parse_args(["--keys-file", "keys.json"])
    _, gateway_env = selfhost.environments(args, {}, "k")
    assert gateway_env["IRGW_KEYS_FILE"] == str(tmp_path / "keys.json")


def test_with_redis_and_no_keys_file_keys_and_usage_live_in_redis(
        modal_app: ModuleType, modal_env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IRGW_KEYS_JSON")
    monkeypatch.setenv("IRGW_REDIS_URL", "redis://redis.example:6379/0")
    monkeypatch.setenv(modal_app.MAX_CONTAINERS_ENV, "3")
    environment = modal_app.gateway_environment(os.environ, upstream_url=lambda: "https://v",
                                                keys_dir=tmp_path / "keys")
    settings = served_settings(environment, monkeypatch)
    assert (settings.keys_backend, settings.usage_backend, settings.ratelimit_backend) == \
        ("redis", "redis", "redis")
    assert settings.keys_file is None and not (tmp_path / "keys").exists()


def test_a_keys_file_in_the_secret_still_wins_over_redis(
        modal_app: ModuleType, modal_env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRGW_REDIS_URL", "redis://redis.example:6379/0")
    environment = modal_app.gateway_environment(os.environ, upstream_url=lambda: "https://v",
                                                keys_dir=tmp_path / "keys")
    settings = served_settings(environment, monkeypatch)
    assert settings.keys_backend == "file" and settings.keys_file is not None
    assert settings.usage_backend == "redis"
