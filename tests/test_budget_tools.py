"""A chat request's tool definitions are part of its prompt (vLLM renders them into the
chat template): what a key reserves counts them, or a small message with large tools
spends far past the key's TPM in one request."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import running_gateway
from tests.test_limits_e2e import keyed_settings, new_key

TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "look it up " * 3000,  # ~33 KB: ~8,000 tokens
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]


async def test_tools_count_against_the_keys_tpm_before_vllm_sees_them(
        fake: FakeUpstream, tmp_path: Path) -> None:
    _, _, key = new_key(tmp_path, tpm=1000)
    fake.default = Reply("hi", usage={"prompt_tokens": 8000, "completion_tokens": 10,
                                      "total_tokens": 8010})
    body = {"model": "qwen-coder", "messages": [{"role": "user", "content": "hi"}],
            "tools": TOOLS, "max_tokens": 10}
    async with running_gateway(keyed_settings(fake, tmp_path / "keys.json")) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.post("/v1/chat/completions", json=body,
                                     headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert fake.requests == []
