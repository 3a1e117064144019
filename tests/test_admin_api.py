"""`/admin/v1/`: only an admin-scoped key gets in; keys are managed through it on either store,
the CLI drives it with `--url`, and two replicas sharing Redis see its changes within 1 s."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.access.keys import KeyStore
from gateway.access.records import KeyPolicy
from gateway.access.redis_keys import RedisKeyStore
from gateway.cli import main
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import gateway_process, running_gateway
from tests.ir_samples import VALID
from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

BODY = {"model": "schema/function_ir", "messages": [{"role": "user", "content": "add"}],
        "max_tokens": 50}
ADMIN_ROUTES = [("GET", "/admin/v1/keys"), ("POST", "/admin/v1/keys"),
                ("GET", "/admin/v1/keys/abcdefghijkl"),
                ("POST", "/admin/v1/keys/abcdefghijkl/revoke"),
                ("POST", "/admin/v1/keys/abcdefghijkl/rotate")]


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_only_an_admin_key_gets_in(fake: FakeUpstream, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json", create=True)
    _, user = store.create("user", KeyPolicy(allow_adhoc=True))
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=tmp_path / "keys.json")
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        for method, path in ADMIN_ROUTES:
            response = await client.request(method, path, json={"name": "x"},
                                             headers=_bearer(user))
            assert response.status_code == 403, (method, path)
            assert response.json()["error"]["code"] == "admin_scope_required"
            assert (await client.request(method, path)).status_code == 401
        models = (await client.get("/v1/models", headers=_bearer(user))).json()["data"]
        assert not any("admin" in model["id"] for model in models)
    # With auth off there is no key with the scope: nobody gets in.
    async with running_gateway(unit_settings(fake.url)) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.get("/admin/v1/keys")).status_code == 403


async def test_an_admin_manages_keys_over_http(fake: FakeUpstream, tmp_path: Path) -> None:
    fake.default = Reply(VALID)
    store = KeyStore(tmp_path / "keys.json", create=True)
    _, admin = store.create("ops", KeyPolicy(scopes=["admin"]))
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=tmp_path / "keys.json")
    async with running_gateway(settings) as gw, \
            httpx.AsyncClient(base_url=gw.url, headers=_bearer(admin)) as client:
        created = await client.post("/admin/v1/keys", json={
            "name": "team-a", "rpm": 60, "schemas": ["function_ir"], "expires_in": "30d",
            "budget_tokens": 100000, "budget_period": "month"})
        assert created.status_code == 201, created.text
        view = created.json()
        key, key_id = view["key"], view["id"]
        assert view["policy"]["budget_period"] == "month" and view["expires_at"] is not None
        assert "secret_sha256" not in view and created.headers["cache-control"] == "no-store"
        chat = await client.post("/v1/chat/completions", json=BODY, headers=_bearer(key))
        assert chat.status_code == 200

        listed = await client.get("/admin/v1/keys")
        text = listed.text
        assert key_id in text and key.rsplit("-", 1)[1] not in text and "sha256" not in text
        assert {k["name"] for k in listed.json()["data"]} == {"ops", "team-a"}
        assert (await client.get(f"/admin/v1/keys/{key_id}")).json()["name"] == "team-a"

        rotated = (await client.post(f"/admin/v1/keys/{key_id}/rotate",
                                     json={"grace": "1h"})).json()
        assert rotated["key"] != key and rotated["previous_valid_until"] is not None
        for secret in (key, rotated["key"]):  # the old one is in its grace period
            chat = await client.post("/v1/chat/completions", json=BODY, headers=_bearer(secret))
            assert chat.status_code == 200
        revoked = await client.post(f"/admin/v1/keys/{key_id}/revoke")
        assert revoked.json()["revoked_at"] is not None
        chat = await client.post("/v1/chat/completions", json=BODY,
                                 headers=_bearer(rotated["key"]))
        assert chat.status_code == 401 and "revoked" in chat.json()["error"]["message"]
        again = await client.post(f"/admin/v1/keys/{key_id}/rotate")
        assert again.status_code == 400 and again.json()["error"]["code"] == "key_revoked"

        for path, body, status in [
            ("/admin/v1/keys/nosuchkey123", None, 404), ("/admin/v1/keys/../../etc", None, 404),
            ("/admin/v1/keys", {"name": " "}, 400),
            ("/admin/v1/keys", {"name": "x", "rpm": 0}, 400),
            ("/admin/v1/keys", {"name": "x", "expires_in": "soon"}, 400),
            ("/admin/v1/keys", {"name": "x", "scopes": ["root"]}, 400),
            ("/admin/v1/keys", {"name": "x", "secret_sha256": "0" * 64}, 400),
            ("/admin/v1/keys", [1], 400),
        ]:
            response = await (client.post(path, json=body) if body is not None
                              else client.get(path))
            assert response.status_code == status, (path, body, response.text)
            assert set(response.json()["error"]) >= {"message", "type", "param", "code"}


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


async def test_the_cli_drives_a_running_gateway(fake: FakeUpstream, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(tmp_path / "keys.json", create=True)
    _, admin = store.create("ops", KeyPolicy(scopes=["admin"]))
    _, user = store.create("user")
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=tmp_path / "keys.json")
    async with running_gateway(settings) as gw:
        monkeypatch.delenv("IRGW_ADMIN_KEY", raising=False)
        code, _, err = await asyncio.to_thread(_cli, ["keys", "list", "--url", gw.url], capsys)
        assert code == 2 and "IRGW_ADMIN_KEY" in err
        monkeypatch.setenv("IRGW_ADMIN_KEY", user)
        code, _, err = await asyncio.to_thread(_cli, ["keys", "list", "--url", gw.url], capsys)
        assert code == 1 and "403" in err and user not in err
        monkeypatch.setenv("IRGW_ADMIN_KEY", admin)
        code, out, err = await asyncio.to_thread(
            _cli, ["keys", "create", "--url", gw.url, "--name", "cli-made", "--rpm", "5",
                   "--expires-in", "2h"], capsys)
        assert code == 0 and out.startswith("irgw-") and "not be shown again" in err
        new_id = out.split("-")[1]
        code, out, _ = await asyncio.to_thread(
            _cli, ["keys", "list", "--url", gw.url, "--json"], capsys)
        assert code == 0 and {json.loads(line)["name"] for line in out.splitlines()} == \
            {"ops", "user", "cli-made"}
        code, out, _ = await asyncio.to_thread(
            _cli, ["keys", "rotate", "--url", gw.url, new_id, "--grace", "10m"], capsys)
        assert code == 0 and out.startswith(f"irgw-{new_id}-")
        code, out, _ = await asyncio.to_thread(
            _cli, ["keys", "revoke", "--url", gw.url, new_id], capsys)
        assert code == 0 and new_id in out
    assert store.get(new_id) is not None and store.get(new_id).revoked  # type: ignore[union-attr]


async def test_a_key_revoked_through_one_replica_is_refused_by_the_other_within_1s(
        fake: FakeUpstream, redis_url: str) -> None:  # noqa: F811
    fake.default = Reply(VALID)
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    seed = RedisKeyStore.from_url(redis_url, prefix=prefix)
    try:
        _, admin = await seed.create("ops", KeyPolicy(scopes=["admin"]))
    finally:
        await seed.aclose()
    settings: Any = unit_settings(fake.url, auth_enabled=True, keys_backend="redis",
                                  redis_url=redis_url, keys_redis_prefix=prefix)
    async with gateway_process(settings) as one, gateway_process(settings) as two, \
            httpx.AsyncClient(timeout=10) as client:
        created = await client.post(f"{one}/admin/v1/keys", json={"name": "team"},
                                    headers=_bearer(admin))
        key, key_id = created.json()["key"], created.json()["id"]
        started = time.monotonic()
        while (await client.post(f"{two}/v1/chat/completions", json=BODY,
                                 headers=_bearer(key))).status_code != 200:
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.05)
        revoked = await client.post(f"{one}/admin/v1/keys/{key_id}/revoke",
                                    headers=_bearer(admin))
        assert revoked.status_code == 200
        revoked_at = time.monotonic()
        while (response := await client.post(f"{two}/v1/chat/completions", json=BODY,
                                             headers=_bearer(key))).status_code != 401:
            assert time.monotonic() - revoked_at < 1.0
            await asyncio.sleep(0.05)
        assert "revoked" in response.json()["error"]["message"]
        shown = await client.get(f"{two}/admin/v1/keys/{key_id}", headers=_bearer(admin))
        assert shown.json()["revoked_at"] is not None
