"""Keys shared through Redis (and the file store's new expiry and rotation), against a real
redis-server; two gateway processes share it as replicas of one deployment do."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from gateway.access.auth import Authenticator
from gateway.access.keys import KeyNotFoundError, KeyStore
from gateway.access.records import KeyPolicy, KeyState, check_key, parse_key, precise_now
from gateway.access.redis_keys import RedisKeyStore
from gateway.errors import AuthenticationError
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import gateway_process
from tests.ir_samples import VALID
from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

BODY = {"model": "schema/function_ir", "messages": [{"role": "user", "content": "add"}],
        "max_tokens": 50}


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisKeyStore]:  # noqa: F811
    keys = RedisKeyStore.from_url(redis_url, prefix=f"test:{uuid.uuid4().hex[:8]}:",
                                  refresh_s=0.05)
    await keys.start()
    try:
        yield keys
    finally:
        await keys.aclose()


def _parsed(plaintext: str) -> Any:
    parsed = parse_key(plaintext)
    assert parsed is not None
    return parsed


async def test_redis_store_holds_hashes_only_and_reads_from_memory(
        store: RedisKeyStore, redis_url: str) -> None:  # noqa: F811
    record, plaintext = await store.create("alice", KeyPolicy(rpm=5, budget_tokens=1000))
    secret = _parsed(plaintext).secret
    client = Redis.from_url(redis_url)
    try:
        stored = {k.decode(): v.decode()
                  for k, v in (await client.hgetall(store._hash)).items()}
    finally:
        await client.aclose()
    assert list(stored) == [record.id]
    assert secret not in stored[record.id] and plaintext not in stored[record.id]
    assert json.loads(stored[record.id])["secret_sha256"] == record.secret_sha256
    assert store.get(record.id) == record and await store.fetch(record.id) == record
    assert [r.id for r in await store.list()] == [record.id]
    assert "secret_sha256" not in record.public()
    with pytest.raises(KeyNotFoundError):
        await store.revoke("nosuchkey123")


async def test_a_change_made_elsewhere_is_followed(store: RedisKeyStore,
                                                   redis_url: str) -> None:  # noqa: F811
    other = RedisKeyStore.from_url(redis_url, prefix=store._hash.removesuffix("records"))
    try:
        record, _ = await other.create("bob")
        revoked = await other.revoke(record.id)
        assert revoked.revoked and (await other.revoke(record.id)).revoked_at == revoked.revoked_at
    finally:
        await other.aclose()
    for _ in range(100):  # the follower polls every 0.05 s here
        seen = store.get(record.id)
        if seen is not None and seen.revoked:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the revocation never reached the other store")


@pytest.mark.parametrize("backend", ["file", "redis"])
async def test_rotation_keeps_the_old_secret_for_its_grace_only(
        backend: str, store: RedisKeyStore, tmp_path: Path) -> None:
    keys: Any = store if backend == "redis" else KeyStore(tmp_path / "k.json", create=True)

    async def call(result: Any) -> Any:
        return await result if asyncio.iscoroutine(result) else result

    record, old = await call(keys.create("carol"))
    rotated, new = await call(keys.rotate(record.id, 60))
    assert new != old and rotated.previous_sha256 == record.secret_sha256
    now = precise_now()
    assert check_key(rotated, _parsed(new), now) is KeyState.VALID
    assert check_key(rotated, _parsed(old), now) is KeyState.VALID
    after = now + timedelta(seconds=61)
    assert check_key(rotated, _parsed(old), after) is KeyState.EXPIRED
    assert check_key(rotated, _parsed(new), after) is KeyState.VALID
    # A second rotation ends the first one's grace: only the secret it replaced lives on.
    again, newest = await call(keys.rotate(record.id, 0))
    assert check_key(again, _parsed(new), now) is KeyState.INVALID
    assert check_key(again, _parsed(old), now) is KeyState.INVALID
    assert check_key(again, _parsed(newest), now) is KeyState.VALID


def test_expired_and_revoked_say_which_without_echoing_the_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "k.json", create=True)
    auth = Authenticator(store, enabled=True)
    soon, soon_key = store.create("soon", expires_at=precise_now() + timedelta(seconds=60))
    gone, gone_key = store.create("gone")
    store.revoke(gone.id)
    assert auth.authenticate(f"Bearer {soon_key}").key_id == soon.id
    assert check_key(soon, _parsed(soon_key), precise_now() + timedelta(seconds=61)) \
        is KeyState.EXPIRED
    _, past_key = store.create("past", expires_at=precise_now() - timedelta(seconds=1))
    cases = [(past_key, "expired"), (gone_key, "revoked"),
             # The right id with a wrong secret learns nothing about the key's state.
             (gone_key[:-6] + "000000", "Invalid API key")]
    for key, said in cases:
        with pytest.raises(AuthenticationError) as info:
            auth.authenticate(f"Bearer {key}")
        body = json.dumps(info.value.body())
        assert said in body and info.value.status_code == 401
        assert _parsed(key).secret not in body and _parsed(key).key_id not in body


def test_a_file_without_new_fields_is_written_as_before(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "k.json", create=True)
    store.create("plain", KeyPolicy(rpm=5))
    written = json.loads((tmp_path / "k.json").read_text())["keys"][0]
    assert set(written) == {"id", "name", "secret_sha256", "policy", "created_at", "revoked_at"}
    assert set(written["policy"]) == {"schemas", "allow_adhoc", "max_tokens", "rpm", "tpm",
                                      "concurrency"}


def redis_settings(fake: FakeUpstream, redis_url: str, prefix: str,  # noqa: F811
                   **overrides: Any) -> Any:
    return unit_settings(fake.url, auth_enabled=True, keys_backend="redis",
                         redis_url=redis_url, keys_redis_prefix=prefix, **overrides)


async def _status(client: httpx.AsyncClient, url: str, key: str) -> httpx.Response:
    return await client.post(f"{url}/v1/chat/completions", json=BODY,
                             headers={"authorization": f"Bearer {key}"})


async def test_two_replicas_see_create_revoke_and_rotation(
        fake: FakeUpstream, redis_url: str) -> None:  # noqa: F811
    fake.default = Reply(VALID)
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    admin = RedisKeyStore.from_url(redis_url, prefix=prefix)
    settings = redis_settings(fake, redis_url, prefix)
    try:
        async with gateway_process(settings) as one, gateway_process(settings) as two, \
                httpx.AsyncClient(timeout=10) as client:
            # Created after both started: no restart, both accept it within a second.
            record, key = await admin.create("team-a")
            created_at = time.monotonic()
            for url in (one, two):
                while (await _status(client, url, key)).status_code != 200:
                    assert time.monotonic() - created_at < 1.0
                    await asyncio.sleep(0.05)

            _, new_key = await admin.rotate(record.id, 2)
            rotated_at = time.monotonic()
            for url in (one, two):
                while (await _status(client, url, new_key)).status_code != 200:
                    assert time.monotonic() - rotated_at < 1.0
                    await asyncio.sleep(0.05)
                assert (await _status(client, url, key)).status_code == 200  # in its grace
            await asyncio.sleep(max(0.0, rotated_at + 2.1 - time.monotonic()))
            for url in (one, two):
                refused = await _status(client, url, key)
                assert refused.status_code == 401 and "expired" in refused.text
                assert (await _status(client, url, new_key)).status_code == 200

            await admin.revoke(record.id)
            revoked_at = time.monotonic()
            for url in (two, one):
                while (response := await _status(client, url, new_key)).status_code != 401:
                    assert time.monotonic() - revoked_at < 1.0
                    await asyncio.sleep(0.05)
                assert "revoked" in response.json()["error"]["message"]
    finally:
        await admin.aclose()


async def test_a_replica_refuses_to_start_without_its_redis_key_store(
        fake: FakeUpstream) -> None:
    from gateway.app import create_app

    settings = unit_settings(fake.url, auth_enabled=True, keys_backend="redis",
                             redis_url="redis://127.0.0.1:1/0")
    app = create_app(settings)
    with pytest.raises(Exception, match="Redis unreachable"):
        async with app.router.lifespan_context(app):
            pass


def test_the_cli_manages_keys_in_redis(redis_url: str, capsys: pytest.CaptureFixture[str],  # noqa: F811
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import main

    monkeypatch.setenv("IRGW_KEYS_REDIS_PREFIX", f"test:{uuid.uuid4().hex[:8]}:")
    store = ["--backend", "redis", "--redis-url", redis_url]
    assert main(["keys", "create", *store, "--name", "ci", "--expires-in", "30d",
                 "--budget-tokens", "5000", "--budget-period", "month", "--cache"]) == 0
    key = capsys.readouterr().out.strip()
    key_id = _parsed(key).key_id
    assert main(["keys", "list", *store]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and "budget=5000/month" in listed and "cache=yes" in listed
    assert _parsed(key).secret not in listed
    assert main(["keys", "rotate", *store, key_id, "--grace", "1h"]) == 0
    rotated = capsys.readouterr()
    assert rotated.out.startswith(f"irgw-{key_id}-") and "old secret works until" in rotated.err
    assert main(["keys", "revoke", *store, key_id]) == 0
    capsys.readouterr()
    assert main(["keys", "show", *store, key_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["revoked_at"] is not None and "secret_sha256" not in shown
    assert main(["keys", "rotate", *store, key_id]) == 1  # a revoked key keeps no secret
    assert "revoked" in capsys.readouterr().err
    assert main(["keys", "show", *store, "nosuchkey123"]) == 1
