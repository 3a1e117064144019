"""Tiny models built locally for tests and the dev stack (the Hugging Face Hub is unreachable).

Builders here run inside the vLLM environment (`.venv-vllm`, which has torch, transformers,
tokenizers and safetensors), never in the gateway's own environment, so this package must not
import anything from the rest of `gateway` at module level.
"""
