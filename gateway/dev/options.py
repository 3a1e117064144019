"""What `ir-gateway dev` was asked for, and its defaults (stdlib only: the CLI imports it on
every start, the stack when the command runs)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORT = 8080
# SmolLM2 boots in about 1 min on an idle 2-core box (eager mode), several times that on a busy
# one, and a few minutes more without --enforce-eager (torch.compile on every boot).
DEFAULT_VLLM_TIMEOUT_S = 900.0


@dataclass
class DevOptions:
    model: str | None = None
    tiny: bool = False
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    vllm_port: int | None = None
    served_model_name: str | None = None
    vllm_timeout_s: float = DEFAULT_VLLM_TIMEOUT_S
    max_model_len: int | None = None
    # Appended to `vllm_flags.server_args(...)`; an escape hatch (e.g. `--enforce-eager`),
    # not a second flag definition.
    vllm_args: tuple[str, ...] = ()


@dataclass
class ModelChoice:
    model: str  # a local directory or a hub id, passed to vLLM as is
    served_name: str
    description: str
    from_hub: bool = False
