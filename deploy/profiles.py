"""Model profiles for the Modal deployment: the model, its GPU and its vLLM settings, by name.

    IRGW_MODAL_PROFILE=qwen2.5-coder-7b-awq modal deploy deploy/modal_app.py

One setting chooses one profile (`PROFILE_ENV`; default `DEFAULT_PROFILE`, today's model).
Everything that must change together when the model changes lives in one `Profile`, so a
GPU and a model that do not fit each other cannot be deployed by editing one constant.
`tests/test_deploy.py` has the pinned vLLM's own argument parser read every profile's flags.

Stdlib only besides `gateway.dev.vllm_flags`: deploy/modal_app.py imports it locally and in both
containers (the images carry it as /root/profiles.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.dev import vllm_flags

PROFILE_ENV = "IRGW_MODAL_PROFILE"
DEFAULT_PROFILE = "qwen2.5-coder-7b"


class UnknownProfileError(ValueError):
    pass


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    # A Hub commit, never "main": a re-pushed tokenizer or config would otherwise change what
    # the schemas are tested against without a deploy. Bump deliberately, with a smoke run.
    revision: str
    # What the gateway asks vLLM for (IRGW_UPSTREAM_MODEL); clients ask for `schema/...`.
    served_model_name: str
    # Modal's name for the card (modal.com/docs/guide/gpu lists T4, L4, A10, L40S, A100, ...).
    gpu: str
    dtype: str
    gpu_memory_utilization: float
    max_model_len: int
    quantization: str | None
    tool_call_parser: str

    def vllm_args(self, *, port: int, host: str, sleep_mode: bool = False) -> list[str]:
        """The flags after `python -m vllm.entrypoints.openai.api_server` for this profile."""
        return vllm_flags.server_args(
            model=self.model,
            served_model_name=self.served_model_name,
            port=port,
            host=host,
            target="a10g",  # the GPU flag set; dtype and memory come from the profile
            revision=self.revision,
            max_model_len=self.max_model_len,
            dtype=self.dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
            quantization=self.quantization,
            tool_call_parser=self.tool_call_parser,
            sleep_mode=sleep_mode,
        )


PROFILES: dict[str, Profile] = {p.name: p for p in (
    # The seed's model, unchanged: bf16 on a 24 GB A10 (Modal's list calls the card `A10`;
    # it was `A10G`). 0.90 leaves room for CUDA graphs and xgrammar's bitmasks.
    Profile(
        name="qwen2.5-coder-7b",
        model="Qwen/Qwen2.5-Coder-7B-Instruct",
        revision="c03e6d358207e414f1eca0bb1891e29f1db0e242",
        served_model_name="qwen2.5-coder-7b",
        gpu="A10",
        dtype="bfloat16",
        gpu_memory_utilization=0.90,
        max_model_len=vllm_flags.DEFAULT_MAX_MODEL_LEN,
        quantization=None,
        tool_call_parser="hermes",
    ),
    # The same model's official 4-bit AWQ release on the same card: ~5.6 GB of weights
    # instead of 15.2, so more tokens per second when decoding is memory-bound and ~13 GiB
    # of KV cache instead of ~4, which pays for the longer context. awq_marlin is vLLM's
    # fast AWQ kernel on Ampere (plain "awq" is slower); float16 is the checkpoint's dtype.
    # Revision: a commit of that repository seen in public Hugging Face cache paths, not
    # read from the Hub here (no access from this machine): check it before relying on it.
    Profile(
        name="qwen2.5-coder-7b-awq",
        model="Qwen/Qwen2.5-Coder-7B-Instruct-AWQ",
        revision="8e8ed243bbe6f9a5aff549a0924562fc719b2b8a",
        served_model_name="qwen2.5-coder-7b-awq",
        gpu="A10",
        dtype="float16",
        gpu_memory_utilization=0.90,
        max_model_len=32768,
        quantization="awq_marlin",
        tool_call_parser="hermes",
    ),
    # A larger coder: Qwen3-Coder-30B-A3B (a mixture of experts, ~3.3B parameters active per
    # token) in Qwen's own FP8 release, ~31 GB, on a 48 GB L40S (Ada: native FP8). Its tool
    # calls are XML-style and need the qwen3_coder parser, which ignores a forced
    # tool_choice (vllm#54808): a single forced tool is served by the gateway as a
    # json_schema request anyway; `tool_choice: "required"` over several tools is not
    # enforced by vLLM with this profile. Revision e8ab3f2 is the repository's commit
    # "Update chat_template and tool_parser (#8)", from its public history, not read here.
    Profile(
        name="qwen3-coder-30b-a3b",
        model="Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8",
        revision="e8ab3f2db9e388999a004eea5a31c16a8b517bc0",
        served_model_name="qwen3-coder-30b-a3b",
        gpu="L40S",
        dtype="bfloat16",
        gpu_memory_utilization=0.92,
        max_model_len=32768,
        quantization="fp8",
        tool_call_parser="qwen3_coder",
    ),
)}


def select(env: Mapping[str, str]) -> Profile:
    """The profile `env` names (`PROFILE_ENV`), or the default; an unknown name is an error
    that lists the known ones (a typo must not deploy the default model instead)."""
    name = env.get(PROFILE_ENV, "").strip() or DEFAULT_PROFILE
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfileError(
            f"{PROFILE_ENV}={name!r} is not a profile; choose one of {sorted(PROFILES)}"
        ) from None
