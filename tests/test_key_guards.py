"""Keys through a real gateway: a schema scope is an exact name, and the keys file holds the
SHA-256 of each secret and nothing a caller could present instead of the key.

These check behaviour from outside (what a request gets, what an independently computed hash
opens), so a change that keeps test_keys.py's own helpers consistent with each other but
breaks the promise still fails here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import secrets
import shutil
import string
from pathlib import Path

import httpx
import pytest

from gateway.access.keys import KeyPolicy, KeyStore
from gateway.access.keys_cli import add_keys_commands, run_keys_command
from tests.conftest import REPO, unit_settings
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import running_gateway
from tests.ir_samples import VALID

BASE62 = string.ascii_letters + string.digits


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "add"}], "max_tokens": 50}


@pytest.fixture
def schemas_dir(tmp_path: Path) -> Path:
    """The shipped schemas plus `function_ir_admin`, a name that starts with `function_ir`."""
    directory = tmp_path / "schemas"
    shutil.copytree(REPO / "schemas", directory)
    admin = json.loads((directory / "function_ir.v1.json").read_text())
    admin["name"] = "function_ir_admin"
    (directory / "function_ir_admin.v1.json").write_text(json.dumps(admin))
    return directory


@pytest.mark.parametrize(("scope", "allowed", "refused"), [
    (["function_ir"], ["function_ir", "function_ir@1"], ["function_ir_admin", "module_ir"]),
    (["function_ir_admin"], ["function_ir_admin"], ["function_ir", "function_ir@1"]),
    (["module_ir", "function_ir"], ["function_ir", "module_ir"], ["function_ir_admin"]),
])
async def test_a_schema_scope_is_the_exact_name(
    fake: FakeUpstream, tmp_path: Path, schemas_dir: Path, scope: list[str],
    allowed: list[str], refused: list[str],
) -> None:
    store = KeyStore(tmp_path / "keys.json", create=True)
    _, key = store.create("scoped", KeyPolicy(schemas=scope))
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=store.path,
                             schemas_dir=schemas_dir)
    headers = {"authorization": f"Bearer {key}"}
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        for n, name in enumerate(allowed, start=1):
            fake.script(Reply(VALID))  # valid for function_ir only: a 422 says it was asked
            response = await client.post("/v1/chat/completions", json=chat(f"schema/{name}"),
                                         headers=headers)
            assert response.status_code in (200, 422), (name, response.text)
            assert len(fake.requests) == n
        asked = len(fake.requests)
        for name in refused:
            response = await client.post("/v1/chat/completions", json=chat(f"schema/{name}"),
                                         headers=headers)
            assert response.status_code == 403, name
            assert response.json()["error"]["code"] == "schema_not_allowed"
        assert len(fake.requests) == asked  # a refused request never reaches vLLM


def test_cli_keys_file_holds_the_sha256_of_the_secret_and_not_the_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    add_keys_commands(parser.add_subparsers(dest="command"))
    keys_file = tmp_path / "keys.json"
    args = parser.parse_args(["keys", "create", "--keys-file", str(keys_file), "--name", "ci"])
    assert run_keys_command(args) == 0
    plaintext = capsys.readouterr().out.strip()
    _, key_id, secret = plaintext.split("-")
    text = keys_file.read_bytes()
    record = json.loads(text)["keys"][0]
    # Computed here, not with the gateway's helper: SHA-256 of the secret, hex.
    assert record["id"] == key_id
    assert record["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    for leaked in (plaintext, secret, secret[:16], secret[-16:]):
        assert leaked.encode() not in text


async def test_a_hand_written_keys_file_opens_with_the_secret_never_with_its_hash(
    fake: FakeUpstream, tmp_path: Path,
) -> None:
    # An operator's own tooling that stores sha256(secret) works; whoever reads the file
    # learns the hash, which is not a key.
    key_id = "".join(secrets.choice(BASE62) for _ in range(12))
    secret = "".join(secrets.choice(BASE62) for _ in range(40))
    digest = hashlib.sha256(secret.encode()).hexdigest()
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"version": 1, "keys": [{
        "id": key_id, "name": "by-hand", "secret_sha256": digest,
        "created_at": "2026-01-01T00:00:00Z"}]}))
    keys_file.chmod(0o600)
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=keys_file)
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        fake.script(Reply(VALID))
        good = await client.post("/v1/chat/completions", json=chat("schema/function_ir"),
                                 headers={"authorization": f"Bearer irgw-{key_id}-{secret}"})
        assert good.status_code == 200, good.text
        for presented in (digest, digest.upper(), secret[:-1] + ("a" if secret[-1] != "a"
                                                                  else "b")):
            response = await client.post(
                "/v1/chat/completions", json=chat("schema/function_ir"),
                headers={"authorization": f"Bearer irgw-{key_id}-{presented}"})
            assert response.status_code == 401
    assert len(fake.requests) == 1


def test_auth_refusals_carry_openais_code_param_and_a_message(tmp_path: Path) -> None:
    # What a client branches on (code, param) and reads (a non-empty message), not wording.
    from gateway.access.auth import Authenticator, Principal
    from gateway.errors import (
        AuthenticationError,
        GatewayError,
        InvalidRequestError,
        PermissionDeniedError,
    )

    auth = Authenticator(None, enabled=False)
    narrow = Principal("k1", "n", KeyPolicy(schemas=["function_ir"], max_tokens=10))
    refusals: list[tuple[GatewayError, str | None, str | None]] = []
    with pytest.raises(PermissionDeniedError) as adhoc:
        auth.check_schema(narrow, None, adhoc=True)
    refusals.append((adhoc.value, "adhoc_schema_not_allowed", "response_format"))
    with pytest.raises(PermissionDeniedError) as named:
        auth.check_schema(narrow, "module_ir", adhoc=False)
    refusals.append((named.value, "schema_not_allowed", None))
    # The key's max_tokens cap is applied with its TPM, to the whole request (budget.py).
    from gateway.generation.budget import token_budget
    from gateway.generation.planning import ChatPlan, Mode

    over = ChatPlan(body={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                    mode=Mode.PASSTHROUGH, model_alias=None, max_tokens=11)
    with pytest.raises(InvalidRequestError) as capped:
        token_budget(over, narrow.policy, 1024)
    refusals.append((capped.value, "max_tokens_above_key_limit", "max_tokens"))
    keyed = Authenticator(KeyStore(tmp_path / "keys.json", create=True), enabled=True)
    for header in (None, "Basic abc"):
        with pytest.raises(AuthenticationError) as unauthenticated:
            keyed.authenticate(header)
        refusals.append((unauthenticated.value, None, None))
    for error, code, param in refusals:
        body = error.body()["error"]
        assert isinstance(body["message"], str) and body["message"].strip()
        if code is not None:
            assert (body["code"], body["param"]) == (code, param)


def test_an_operator_is_warned_of_a_keys_file_that_lets_nobody_in(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Startup logs are what an operator reads: a keys file with no active key (every request
    # a 401), or one set while auth is off (it protects nothing), is a WARNING naming it.
    from gateway.access.auth import build_authenticator
    from gateway.settings import Settings

    keys_file = tmp_path / "keys.json"
    store = KeyStore(keys_file, create=True)
    record, _ = store.create("alice", KeyPolicy())

    def warnings(settings: Settings) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gateway.access.auth"):
            build_authenticator(settings)
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    keyed = Settings(auth_enabled=True, keys_file=keys_file)
    assert warnings(keyed) == []  # one active key: nothing to warn of
    store.revoke(record.id)
    assert any(str(keys_file) in line for line in warnings(keyed))
    open_ = warnings(Settings(auth_enabled=False, keys_file=keys_file))
    assert len(open_) == 2 and str(keys_file) in open_[1]
    assert len(warnings(Settings(auth_enabled=False))) == 1


def test_a_verified_key_is_what_the_request_is_logged_under_and_a_bad_one_gets_401(
        tmp_path: Path) -> None:
    import types

    from gateway.access.auth import Authenticator
    from gateway.errors import AuthenticationError
    from gateway.observe.hooks import current

    store = KeyStore(tmp_path / "keys.json", create=True)
    record, secret = store.create("alice", KeyPolicy())
    auth = Authenticator(store, enabled=True)
    observation = types.SimpleNamespace(key_id=None)  # the request's log and metrics record
    token = current.set(observation)  # type: ignore[arg-type]
    try:
        assert auth.authenticate(f"Bearer {secret}").key_id == record.id
        assert observation.key_id == record.id
    finally:
        current.reset(token)
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(f"Bearer {secret}x")
    error = info.value.body()["error"]
    assert isinstance(error["message"], str) and error["message"].strip()
    assert info.value.status_code == 401 and info.value.headers["WWW-Authenticate"] == "Bearer"


async def test_two_authorization_headers_are_refused_whichever_comes_first(
    fake: FakeUpstream, tmp_path: Path,
) -> None:
    # The last one won: `[not-a-key, valid]` got in, and `[scoped, wide]` was not a 403,
    # while a proxy in front that reads the first header sees another caller.
    store = KeyStore(tmp_path / "keys.json", create=True)
    _, scoped = store.create("scoped", KeyPolicy(schemas=["module_ir"]))
    _, wide = store.create("wide")
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=store.path)
    async with running_gateway(settings) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        for first, second in (("irgw-nope", wide), (scoped, wide), (wide, scoped)):
            response = await client.post(
                "/v1/chat/completions", json=chat("schema/function_ir"),
                headers=[("authorization", f"Bearer {first}"),
                         ("authorization", f"Bearer {second}")])
            assert response.status_code == 401, response.text
            assert "one 'Authorization: Bearer <key>' header" in response.json()["error"]["message"]
        assert not fake.requests
        fake.script(Reply(VALID))
        one = await client.post("/v1/chat/completions", json=chat("schema/function_ir"),
                                headers={"authorization": f"Bearer {wide}", "x-request-id": "a"})
        assert one.status_code == 200
