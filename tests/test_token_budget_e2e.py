"""A key's TPM and `max_tokens` cap are caps, not averages (issue 17, finding 8): through a
real gateway against the fake upstream, every request reserves what it can really spend
before vLLM sees it (n x prompts x max_tokens, a default when max_tokens is absent, each
retry before it runs)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx

from gateway.generation.planning import estimate_prompt_tokens
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import running_gateway
from tests.ir_samples import BAD_NAME
from tests.test_limits_e2e import BODY, keyed_settings, new_key

PLAIN = {"model": "qwen-coder", "messages": [{"role": "user", "content": "write a poem"}]}


async def test_requests_without_max_tokens_cannot_overrun_the_tpm(fake: FakeUpstream,
                                                                   tmp_path: Path) -> None:
    """Before: each reserved only its prompt (~20 tokens), so 20 parallel requests were all
    admitted and then used 80,000 tokens of a 1,000 TPM key."""
    _, _, key = new_key(tmp_path, tpm=1000)
    # vLLM uses all it may: nothing comes back at settlement while the burst runs.
    fake.default = Reply("verse", usage={"prompt_tokens": 20, "completion_tokens": 980,
                                         "total_tokens": 1000})
    async with running_gateway(keyed_settings(fake, tmp_path / "keys.json")) as gw, \
            httpx.AsyncClient(base_url=gw.url, timeout=30,
                              limits=httpx.Limits(max_connections=20)) as client:
        responses = await asyncio.gather(*(
            client.post("/v1/chat/completions", json=PLAIN,
                        headers={"authorization": f"Bearer {key}"}) for _ in range(20)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 429: 19}
    [sent] = fake.requests
    assert estimate_prompt_tokens(PLAIN) + sent.json["max_tokens"] == 1000


async def test_n_counts_against_the_keys_max_tokens_cap(fake: FakeUpstream,
                                                        tmp_path: Path) -> None:
    _, _, key = new_key(tmp_path, max_tokens=100)
    headers = {"authorization": f"Bearer {key}"}
    async with running_gateway(keyed_settings(fake, tmp_path / "keys.json")) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        over = await client.post("/v1/chat/completions",
                                 json={**PLAIN, "n": 64, "max_tokens": 10}, headers=headers)
        assert over.status_code == 400, over.text
        assert over.json()["error"]["code"] == "max_tokens_above_key_limit"
        assert fake.requests == []
        fitted = await client.post("/v1/chat/completions", json={**PLAIN, "n": 64},
                                   headers=headers)
    assert fitted.status_code == 200
    assert fake.requests[0].json["max_tokens"] == 1  # 64 answers of 1 token fit a cap of 100


async def test_a_completion_with_many_prompts_is_refused_before_vllm(fake: FakeUpstream,
                                                                     tmp_path: Path) -> None:
    """Before: 500 prompts reserved one prompt's worth, and the usage settled afterwards
    locked the key for 25 minutes."""
    _, _, key = new_key(tmp_path, tpm=1000)
    headers = {"authorization": f"Bearer {key}"}
    async with running_gateway(keyed_settings(fake, tmp_path / "keys.json")) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        many = await client.post("/v1/completions", headers=headers, json={
            "model": "qwen-coder", "prompt": ["x"] * 500, "max_tokens": 16})
        assert many.status_code == 400
        assert many.json()["error"]["code"] == "request_too_large"
        assert fake.requests == []
        few = {"model": "qwen-coder", "prompt": ["def f():"] * 4}
        fitted = await client.post("/v1/completions", headers=headers, json=few)
    assert fitted.status_code == 200
    assert estimate_prompt_tokens(few) + 4 * fake.requests[0].json["max_tokens"] <= 1000


async def test_a_retry_runs_only_if_its_tokens_are_reserved_first(fake: FakeUpstream,
                                                                  tmp_path: Path) -> None:
    _, _, key = new_key(tmp_path, tpm=1000)
    settings = keyed_settings(fake, tmp_path / "keys.json", output_policy="retry",
                              max_retries=2)
    body = {**BODY, "max_tokens": 400}  # one attempt reserves ~415: two fit, three do not
    fake.script(*[Reply(BAD_NAME)] * 3)
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.post("/v1/chat/completions", json=body,
                                     headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["attempts"] == 2 and "not retried" in error["message"]
    assert len(fake.requests) == 2
