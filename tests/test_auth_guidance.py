"""What a client reads in a 401 or 403, and what an operator reads at startup: each names
what is wrong and the way out (the header to send, the setting to change, the file in
question), as a whole sentence. Expired keys, and the admin API's access to the key store."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.access.auth import AuthConfigError, Authenticator, Principal, build_authenticator
from gateway.access.keys import KeyPolicy, KeyStore
from gateway.errors import AuthenticationError, GatewayError, PermissionDeniedError
from gateway.settings import Settings


def _message(error: GatewayError) -> str:
    message = error.body()["error"]["message"]
    assert isinstance(message, str)
    return message


def _sentence(message: str) -> None:
    """A whole sentence: begins with a capital letter of its first word, ends with a stop."""
    assert message[:1].isupper() and message[1:2].islower() and message.endswith("."), message


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys.json", create=True)


def _refusal(auth: Authenticator, header: str | None) -> str:
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(header)
    assert info.value.status_code == 401
    return _message(info.value)


def test_a_401_tells_the_client_how_to_send_the_key(store: KeyStore) -> None:
    auth = Authenticator(store, enabled=True)
    missing = _refusal(auth, None)
    assert missing.startswith("Missing API key") and "'Authorization: Bearer <key>'" in missing
    scheme = _refusal(auth, "Basic abc")
    assert scheme.startswith("Unsupported authorization scheme")
    assert "'Authorization: Bearer <key>'" in scheme
    malformed = _refusal(auth, "Bearer irgw-nope")
    unknown = _refusal(auth, "Bearer irgw-abcdefghijkl-" + "A" * 43)
    # Malformed and unknown keys get the same words: they must not help a prober.
    assert malformed == unknown and "Invalid API key" in malformed
    for message in (missing, scheme, malformed):
        _sentence(message)


def test_an_expired_key_is_told_so_and_a_live_one_opens(store: KeyStore) -> None:
    now = datetime.now(UTC)
    _, stale = store.create("old", expires_at=now - timedelta(seconds=1))
    record, live = store.create("new", expires_at=now + timedelta(hours=1))
    auth = Authenticator(store, enabled=True)
    message = _refusal(auth, f"Bearer {stale}")
    assert "expired" in message
    assert auth.authenticate(f"Bearer {live}").key_id == record.id


def test_a_403_names_the_schema_or_the_way_to_an_allowed_one() -> None:
    auth = Authenticator(None, enabled=False)
    narrow = Principal("k1", "n", KeyPolicy(schemas=["invoice"]))
    with pytest.raises(PermissionDeniedError) as adhoc:
        auth.check_schema(narrow, None, adhoc=True)
    message = _message(adhoc.value)
    assert "ad-hoc" in message and "named schema" in message
    _sentence(message)
    with pytest.raises(PermissionDeniedError) as named:
        auth.check_schema(narrow, "receipt", adhoc=False)
    assert "'receipt'" in _message(named.value)
    _sentence(_message(named.value))


def test_enabled_auth_without_a_store_is_refused_with_a_reason() -> None:
    with pytest.raises(AuthConfigError) as info:
        Authenticator(None, enabled=True)
    assert "no key store" in str(info.value)
    assert str(info.value).startswith("auth is enabled")


def test_auth_on_without_keys_names_every_way_out() -> None:
    with pytest.raises(AuthConfigError) as info:
        build_authenticator(Settings(auth_enabled=True, keys_file=None))
    message = str(info.value)
    assert message.startswith("auth is enabled but no keys file is configured")
    for way_out in ("set IRGW_KEYS_FILE (create keys with "
                    "`ir-gateway keys create --keys-file PATH --name NAME`)",
                    "use the shared store (IRGW_KEYS_BACKEND=redis with IRGW_REDIS_URL)",
                    "or set IRGW_AUTH_ENABLED=false to run without keys"):
        assert way_out in message
    assert message.endswith("run without keys")


def _logs(caplog: pytest.LogCaptureFixture, settings: Settings) -> list[logging.LogRecord]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gateway.access.auth"):
        build_authenticator(settings)
    return [r for r in caplog.records if r.name == "gateway.access.auth"]


def test_auth_off_is_a_warning_that_says_what_it_exposes(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    KeyStore(keys_file, create=True)
    first, ignored = _logs(caplog, Settings(auth_enabled=False, keys_file=keys_file))
    assert first.levelno == ignored.levelno == logging.WARNING
    headline = first.getMessage()
    assert headline.startswith("AUTH IS DISABLED (IRGW_AUTH_ENABLED=false)")
    assert "without a key and without rate limits" in headline
    assert headline.endswith("Do not expose it.")
    assert ignored.getMessage() == f"keys file {keys_file} is ignored because auth is disabled"


def test_startup_says_how_many_keys_are_active_and_where(
        caplog: pytest.LogCaptureFixture, store: KeyStore) -> None:
    settings = Settings(auth_enabled=True, keys_file=store.path)
    now = datetime.now(UTC)
    store.create("live")
    store.create("later", expires_at=now + timedelta(hours=1))
    store.create("gone", expires_at=now - timedelta(seconds=1))
    revoked, _ = store.create("revoked")
    store.revoke(revoked.id)
    [line] = _logs(caplog, settings)
    assert line.levelno == logging.INFO
    assert line.getMessage() == f"auth enabled: 2 active keys in keys file {store.path}"


def test_a_keys_file_of_expired_keys_is_warned_of(
        caplog: pytest.LogCaptureFixture, store: KeyStore) -> None:
    store.create("gone", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    [line] = _logs(caplog, Settings(auth_enabled=True, keys_file=store.path))
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (f"keys file {store.path} has no active keys: "
                                 "every request will get 401")


def test_the_admin_api_reaches_the_store_only_when_auth_is_on(store: KeyStore) -> None:
    record, _ = store.create("alice", KeyPolicy(scopes=["admin"]))
    keys = Authenticator(store, enabled=True).keys
    assert keys is not None
    assert [r.id for r in asyncio.run(keys.list())] == [record.id]
    assert Authenticator(None, enabled=False).keys is None


def test_two_keys_in_one_request_get_the_401_with_its_challenge(store: KeyStore) -> None:
    # Two Authorization headers arrive joined (RFC 9110 5.3): refused, not read as one key.
    _, key = store.create("alice")
    auth = Authenticator(store, enabled=True)
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(f"Bearer {key}, Bearer {key}")
    assert info.value.status_code == 401
    assert info.value.headers == {"WWW-Authenticate": "Bearer"}
    message = _message(info.value)
    assert message.startswith("More than one API key")
    _sentence(message)
    assert auth.authenticate(f"Bearer {key}").name == "alice"
