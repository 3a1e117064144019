"""The response cache: only deterministic, checked, opted-in requests; a hit costs no tokens
and reaches no vLLM; shared through Redis by two gateway processes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from gateway.access.keys import KeyPolicy, KeyStore
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import gateway_process, running_gateway
from tests.ir_samples import BAD_NAME, VALID
from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

BODY = {"model": "schema/function_ir", "messages": [{"role": "user", "content": "add"}],
        "max_tokens": 50, "temperature": 0}
USED = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def _settings(fake: FakeUpstream, tmp_path: Path, **overrides: Any) -> Any:
    return unit_settings(fake.url, auth_enabled=True, keys_file=tmp_path / "keys.json",
                         cache_backend="memory", usage_backend="sqlite",
                         usage_file=tmp_path / "usage.db", **overrides)


async def test_a_deterministic_checked_answer_is_served_from_the_cache(
        fake: FakeUpstream, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json", create=True)
    user, key = store.create("team", KeyPolicy(cache=True, tpm=10_000, rpm=100))
    _, plain = store.create("plain", KeyPolicy(tpm=10_000))
    _, narrow = store.create("narrow", KeyPolicy(cache=True, schemas=["module_ir"]))
    _, admin = store.create("ops", KeyPolicy(scopes=["admin"]))
    fake.default = Reply(VALID, usage=USED)
    async with running_gateway(_settings(fake, tmp_path)) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        async def ask(secret: str, **changes: Any) -> httpx.Response:
            body = {k: v for k, v in {**BODY, **changes}.items() if v is not None}
            return await client.post("/v1/chat/completions", json=body,
                                     headers={"authorization": f"Bearer {secret}"})

        first = await ask(key)
        assert first.headers["x-irgw-cache"] == "miss" and len(fake.requests) == 1
        second = await ask(key)
        assert second.status_code == 200 and second.headers["x-irgw-cache"] == "hit"
        assert len(fake.requests) == 1  # vLLM never saw it
        assert second.json()["choices"] == first.json()["choices"]
        assert second.json()["id"] != first.json()["id"]
        assert second.headers["x-irgw-output"] == "passed"
        # No tokens taken for the hit: the bucket is where the first request left it.
        assert int(second.headers["x-ratelimit-remaining-requests"]) == 98
        assert "x-ratelimit-remaining-tokens" not in second.headers

        # Not cached: another prompt, sampling, a stream, a key that did not opt in.
        assert (await ask(key, temperature=0.7)).headers.get("x-irgw-cache") is None
        assert (await ask(key, seed=7, temperature=None)).headers.get("x-irgw-cache") is None
        assert (await ask(key, messages=[{"role": "user", "content": "sub"}])
                ).headers["x-irgw-cache"] == "miss"
        assert (await ask(plain)).headers.get("x-irgw-cache") is None
        streamed = await ask(key, stream=True)
        assert streamed.status_code == 200 and "x-irgw-cache" not in streamed.headers
        # A cached answer is no way around the key's schema scope.
        assert (await ask(narrow)).status_code == 403
        calls = len(fake.requests)

        # A failed answer is never stored.
        fake.default = Reply(BAD_NAME, usage=USED)
        assert (await ask(key, max_tokens=60)).status_code == 422
        fake.default = Reply(VALID, usage=USED)
        assert (await ask(key, max_tokens=60)).headers["x-irgw-cache"] == "miss"
        assert len(fake.requests) == calls + 2

        usage = await client.get("/admin/v1/usage", params={"key": user.id},
                                 headers={"authorization": f"Bearer {admin}"})
    (row,) = usage.json()["data"]
    assert row["outcomes"]["cached"] == 1


async def test_seeded_requests_are_cached_only_where_the_key_allows(
        fake: FakeUpstream, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json", create=True)
    _, key = store.create("seeded", KeyPolicy(cache=True, cache_seeded=True))
    fake.default = Reply(VALID)
    body = {**BODY, "seed": 42}
    del body["temperature"]
    async with running_gateway(_settings(fake, tmp_path)) as gw, \
            httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {key}"}
                              ) as client:
        await client.post("/v1/chat/completions", json=body)
        again = await client.post("/v1/chat/completions", json=body)
        assert again.headers["x-irgw-cache"] == "hit" and len(fake.requests) == 1


async def test_a_schema_can_opt_in_for_every_key_and_a_hit_crosses_replicas(
        fake: FakeUpstream, tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    store = KeyStore(tmp_path / "keys.json", create=True)
    _, key = store.create("team")  # no cache of its own: the schema opts in
    fake.default = Reply(VALID)
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=tmp_path / "keys.json",
                             cache_backend="redis", redis_url=redis_url,
                             cache_schemas=["function_ir"],
                             cache_redis_prefix=f"test:{uuid.uuid4().hex[:8]}:")
    async with gateway_process(settings) as one, gateway_process(settings) as two, \
            httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}) as client:
        missed = await client.post(f"{one}/v1/chat/completions", json=BODY)
        assert missed.headers["x-irgw-cache"] == "miss"
        hit = await client.post(f"{two}/v1/chat/completions", json=BODY)
        assert hit.headers["x-irgw-cache"] == "hit"
        assert hit.json()["choices"] == missed.json()["choices"]
    assert len(fake.requests) == 1
