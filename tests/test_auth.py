"""Who is calling (gateway/access/auth.py), without a server, over a real keys file: every
way a key is refused is a 401 with `WWW-Authenticate: Bearer` that never quotes the key;
revoked and expired are told only to whoever holds the secret; a key's schema scope is
matched exactly (403); auth off lets everyone in as one unlimited caller. The key store
itself (format, hashing, reloads, CLI) is test_keys.py; the same refusals through a running
gateway are test_key_guards.py and test_routes.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.access.auth import (
    ANONYMOUS,
    AuthConfigError,
    Authenticator,
    Principal,
    build_authenticator,
)
from gateway.access.keys import KeyStore
from gateway.access.records import KeyPolicy, KeyStoreError, parse_key
from gateway.access.store import build_key_backend
from gateway.errors import AuthenticationError, PermissionDeniedError
from gateway.settings import Settings


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


@pytest.fixture
def store(keys_file: Path) -> KeyStore:
    return KeyStore(keys_file, create=True)


@pytest.fixture
def auth(store: KeyStore) -> Authenticator:
    return Authenticator(store, enabled=True)


def refused(auth: Authenticator, header: str | None) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(header)
    error = info.value
    assert (error.status_code, error.code) == (401, "invalid_api_key")
    assert error.headers == {"WWW-Authenticate": "Bearer"}
    assert error.message.strip()
    return error


def shown(error: AuthenticationError) -> str:
    """All a client (or a log of the response) sees."""
    return json.dumps(error.body()) + json.dumps(error.headers)


# -- a key that opens

def test_a_valid_key_is_its_records_principal(store: KeyStore, auth: Authenticator) -> None:
    policy = KeyPolicy(schemas=["function_ir"], rpm=5, tpm=1000, allow_adhoc=True)
    record, key = store.create("alice", policy)
    for header in (f"Bearer {key}", f"bearer {key}", f"BEARER {key}", f"  Bearer   {key}  "):
        principal = auth.authenticate(header)
        assert principal == Principal(key_id=record.id, name="alice", policy=policy)
    other, other_key = store.create("bob")
    assert auth.authenticate(f"Bearer {other_key}").key_id == other.id != record.id


# -- every refusal is a 401 with the challenge

@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_key_is_a_401_saying_how_to_send_one(auth: Authenticator, header: str | None
                                                ) -> None:
    assert "Bearer" in refused(auth, header).message


def test_another_scheme_is_a_401(store: KeyStore, auth: Authenticator) -> None:
    _, key = store.create("alice")
    for header in (f"Basic {key}", f"Token {key}", key, f"Bearer:{key}"):
        error = refused(auth, header)
        assert key not in shown(error)


def test_malformed_unknown_and_wrong_keys_are_one_refusal(store: KeyStore,
                                                          auth: Authenticator) -> None:
    record, key = store.create("alice")
    parsed = parse_key(key)
    assert parsed is not None
    unknown_id = f"irgw-{'Z' * 12}-{parsed.secret}"
    wrong_secret = f"irgw-{record.id}-{'0' * 40}"
    presented = ["Bearer", "Bearer ", "Bearer not-a-key", f"Bearer {key}x",
                 f"Bearer {key[:-10]}", f"Bearer {unknown_id}", f"Bearer {wrong_secret}",
                 f"Bearer {key} {key}"]
    errors = [refused(auth, header) for header in presented]
    # one message for all: telling them apart would help whoever probes for key ids
    assert len({error.message for error in errors}) == 1
    for error in errors:
        assert parsed.secret not in shown(error) and record.id not in shown(error)


def test_revoked_is_said_only_to_whoever_holds_the_secret(store: KeyStore,
                                                          auth: Authenticator) -> None:
    record, key = store.create("alice")
    assert auth.authenticate(f"Bearer {key}").key_id == record.id
    store.revoke(record.id)
    revoked = refused(auth, f"Bearer {key}")  # from the next request on
    assert "revoked" in revoked.message
    wrong = refused(auth, f"Bearer irgw-{record.id}-{'0' * 40}")
    assert "revoked" not in wrong.message and wrong.message != revoked.message
    assert key not in shown(revoked)


def test_an_expired_key_is_refused_and_one_expiring_later_is_not(
        store: KeyStore, auth: Authenticator) -> None:
    now = datetime.now(UTC)
    past, old_key = store.create("old", expires_at=now - timedelta(seconds=1))
    error = refused(auth, f"Bearer {old_key}")
    assert "expired" in error.message
    assert "expired" not in refused(auth, f"Bearer irgw-{past.id}-{'0' * 40}").message
    _, key = store.create("new", expires_at=now + timedelta(days=1))
    assert auth.authenticate(f"Bearer {key}").name == "new"


def test_a_rotated_key_opens_with_both_secrets_during_its_grace(
        store: KeyStore, auth: Authenticator) -> None:
    record, old = store.create("alice")
    _, new = store.rotate(record.id, grace_s=3600)
    assert auth.authenticate(f"Bearer {old}").key_id == record.id
    assert auth.authenticate(f"Bearer {new}").key_id == record.id
    # without a grace period the replaced secret stops at once
    _, newest = store.rotate(record.id, grace_s=0)
    assert auth.authenticate(f"Bearer {newest}").key_id == record.id
    for stale in (old, new):
        refused(auth, f"Bearer {stale}")


def test_keys_written_by_another_process_take_effect_without_a_restart(
        keys_file: Path, store: KeyStore) -> None:
    # the CLI writes the file; the gateway's store reads it again (here: at every request)
    serving = Authenticator(KeyStore(keys_file, reload_interval_s=0), enabled=True)
    record, key = store.create("carol")
    assert serving.authenticate(f"Bearer {key}").key_id == record.id
    store.revoke(record.id)
    assert "revoked" in refused(serving, f"Bearer {key}").message


# -- what a key may use

def test_a_scope_names_schemas_exactly() -> None:
    auth = Authenticator(None, enabled=False)
    scoped = Principal("k1", "scoped", KeyPolicy(schemas=["function_ir", "module_ir"]))
    auth.check_schema(scoped, "function_ir", adhoc=False)
    auth.check_schema(scoped, "module_ir", adhoc=False)
    auth.check_schema(scoped, None, adhoc=False)  # no schema: plain text or json_object
    for name in ("Function_IR", "function_ir ", "function", "function_ir_v2", "test_plan_ir",
                 "*", ""):
        with pytest.raises(PermissionDeniedError) as info:
            auth.check_schema(scoped, name, adhoc=False)
        assert (info.value.status_code, info.value.code) == (403, "schema_not_allowed")
        assert repr(name) in info.value.message  # the client's own name, nothing else
    everything = Principal("k2", "all", KeyPolicy(schemas="*"))
    auth.check_schema(everything, "any_schema_at_all", adhoc=False)


def test_an_adhoc_schema_needs_the_keys_right_whatever_its_name() -> None:
    auth = Authenticator(None, enabled=False)
    for schemas in ("*", ["function_ir"]):
        without = Principal("k1", "n", KeyPolicy(schemas=schemas))
        for name in (None, "function_ir", "Person"):
            with pytest.raises(PermissionDeniedError) as info:
                auth.check_schema(without, name, adhoc=True)
            error = info.value
            assert (error.status_code, error.code, error.param) == (
                403, "adhoc_schema_not_allowed", "response_format")
    # with the right, the scope does not apply: an ad-hoc name is the client's to choose
    allowed = Principal("k2", "n", KeyPolicy(schemas=["function_ir"], allow_adhoc=True))
    for name in ("Person", "module_ir"):
        auth.check_schema(allowed, name, adhoc=True)
    with pytest.raises(PermissionDeniedError):
        auth.check_schema(allowed, "module_ir", adhoc=False)


# -- auth off

def test_auth_off_lets_everyone_in_as_one_unlimited_caller(store: KeyStore) -> None:
    record, key = store.create("alice", KeyPolicy(schemas=["function_ir"], rpm=1))
    store.revoke(record.id)
    auth = Authenticator(None, enabled=False)
    for header in (None, "", "Basic abc", "Bearer nonsense", f"Bearer {key}"):
        assert auth.authenticate(header) is ANONYMOUS
    assert ANONYMOUS.key_id is None
    assert not ANONYMOUS.policy.has_rate_limits and ANONYMOUS.policy.max_tokens is None
    auth.check_schema(ANONYMOUS, "any_schema", adhoc=False)
    auth.check_schema(ANONYMOUS, "Person", adhoc=True)
    assert auth.keys is None  # no admin API without keys


def test_auth_on_without_a_store_does_not_start() -> None:
    with pytest.raises(AuthConfigError):
        Authenticator(None, enabled=True)


# -- from settings

def test_the_authenticator_from_settings(keys_file: Path, store: KeyStore) -> None:
    record, key = store.create("alice")
    auth = build_authenticator(Settings(auth_enabled=True, keys_file=keys_file))
    assert auth.enabled and auth.authenticate(f"Bearer {key}").key_id == record.id
    assert auth.keys is not None and str(keys_file) in auth.keys.describe  # the admin API's
    off = build_authenticator(Settings(auth_enabled=False, keys_file=keys_file))
    assert not off.enabled and off.authenticate(None) is ANONYMOUS and off.keys is None


def test_settings_that_would_be_unsafe_do_not_start(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="IRGW_KEYS_FILE"):
        build_authenticator(Settings(auth_enabled=True, keys_backend="file", keys_file=None))
    missing = tmp_path / "missing.json"
    with pytest.raises(KeyStoreError, match=r"missing\.json"):
        build_authenticator(Settings(auth_enabled=True, keys_file=missing))
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"version": 1, "keys": [{"id": "short"}]}')
    with pytest.raises(KeyStoreError, match=r"corrupt\.json"):
        build_authenticator(Settings(auth_enabled=True, keys_file=corrupt))


async def test_the_keys_cli_may_start_a_keys_file_the_server_may_not(tmp_path: Path) -> None:
    # `keys create` on a fresh machine makes the file; a server never starts without one
    settings = Settings(auth_enabled=True, keys_file=tmp_path / "keys.json")
    with pytest.raises(KeyStoreError, match=r"keys\.json"):
        build_key_backend(settings)
    backend = build_key_backend(settings, create=True)
    record, key = await backend.create("first")
    assert [r.id for r in await backend.list()] == [record.id]
    assert build_authenticator(settings).authenticate(f"Bearer {key}").key_id == record.id


def test_the_redis_store_needs_its_url() -> None:
    settings = Settings(auth_enabled=True, keys_backend="redis", redis_url=None)
    with pytest.raises(KeyStoreError, match="IRGW_REDIS_URL"):
        build_authenticator(settings)


def test_an_authenticated_principal_carries_the_records_policy_unchanged(
        store: KeyStore, auth: Authenticator) -> None:
    policy = KeyPolicy(schemas="*", max_tokens=64, concurrency=2, budget_tokens=10_000,
                       scopes=["admin"], allow_policy_override=True)
    record, key = store.create("ops", policy)
    principal = auth.authenticate(f"Bearer {key}")
    assert principal.key_id == record.id
    assert principal.policy == policy and principal.policy.is_admin
