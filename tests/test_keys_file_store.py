"""The keys file as an operator meets it: a file an older gateway still reads, indented for
hand edits, errors and logs that name the file and what is wrong with it, reloads seen
within one interval (and no sooner), expiry and rotation kept across a re-read."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.access import keys as keys_module
from gateway.access.keys import KeyPolicy, KeyStore, KeyStoreError, parse_key


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "gateway.access.keys" and r.levelno >= logging.ERROR]


def _infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "gateway.access.keys" and r.levelno == logging.INFO]


def test_a_key_without_new_features_is_written_in_the_first_format(keys_file: Path) -> None:
    store = KeyStore(keys_file, create=True)
    store.create("plain", KeyPolicy(rpm=5))
    [written] = json.loads(keys_file.read_text())["keys"]
    assert set(written) == {"id", "name", "secret_sha256", "policy", "created_at", "revoked_at"}
    assert not set(written["policy"]) & set(keys_module._NEW_POLICY_DEFAULTS)


def test_new_features_survive_a_write_and_a_fresh_read(keys_file: Path) -> None:
    store = KeyStore(keys_file, create=True)
    expires = datetime(2100, 1, 1, tzinfo=UTC)
    policy = KeyPolicy(budget_tokens=1000, budget_period="month", scopes=["admin"], cache=True)
    record, _ = store.create("featured", policy, expires_at=expires)
    assert record.expires_at == expires
    store.create("plain")  # a second write, re-dumping the first record
    again = KeyStore(keys_file).get(record.id)
    assert again == record and again is not None and again.expires_at == expires
    assert again.policy.budget_tokens == 1000 and again.policy.scopes == ["admin"]


def test_the_file_is_indented_for_hand_edits(keys_file: Path) -> None:
    KeyStore(keys_file, create=True).create("alice")
    text = keys_file.read_text()
    assert text.startswith('{\n  "version": 1,\n  "keys": [\n    {\n      "id": ')
    assert text.endswith("\n")


def test_a_blank_name_is_refused_saying_so(keys_file: Path) -> None:
    store = KeyStore(keys_file, create=True)
    with pytest.raises(ValueError) as info:
        store.create("  ")
    assert str(info.value) == "a key needs a non-blank name"
    assert store.list() == []


def test_an_expired_key_does_not_verify(keys_file: Path) -> None:
    store = KeyStore(keys_file, create=True)
    now = datetime.now(UTC)
    _, stale = store.create("old", expires_at=now - timedelta(seconds=1))
    record, live = store.create("new", expires_at=now + timedelta(hours=1))
    assert store.verify(stale) is None
    assert store.verify(live) == record


def test_rotation_keeps_the_old_secret_for_its_grace_in_the_file(keys_file: Path) -> None:
    store = KeyStore(keys_file, create=True)
    record, old = store.create("alice")
    rotated, new = store.rotate(record.id, 3600)
    assert new != old and parse_key(new).key_id == record.id  # type: ignore[union-attr]
    fresh = KeyStore(keys_file)
    assert fresh.get(record.id) == rotated and rotated.previous_sha256 == record.secret_sha256
    assert fresh.verify(new) == rotated and fresh.verify(old) == rotated
    ended, newest = store.rotate(record.id, 0)
    fresh = KeyStore(keys_file)
    assert fresh.verify(newest) == ended
    assert fresh.verify(new) is None and fresh.verify(old) is None


def test_unreadable_files_are_errors_naming_the_file(tmp_path: Path, keys_file: Path) -> None:
    keys_file.write_bytes(b'{"version": 1, "keys": [], "note": "\xff\xfe"}')
    with pytest.raises(KeyStoreError) as bad:
        KeyStore(keys_file)
    assert str(bad.value).startswith(f"keys file {keys_file} is not a valid keys file")
    directory = tmp_path / "adir"
    directory.mkdir()
    with pytest.raises(KeyStoreError) as info:
        KeyStore(directory)
    assert str(info.value).startswith(f"keys file {directory} cannot be read: ")


def test_a_bad_field_is_named_by_its_place_in_the_file(keys_file: Path) -> None:
    store = KeyStore(keys_file, create=True)
    store.create("alice")
    store.create("bob")
    data = json.loads(keys_file.read_text())
    data["keys"][1]["secret_sha256"] = "not a hash"
    keys_file.write_text(json.dumps(data))
    with pytest.raises(KeyStoreError) as info:
        KeyStore(keys_file)
    message = str(info.value)
    assert message.startswith(f"keys file {keys_file} is not a valid keys file: "
                              "keys.1.secret_sha256: ")
    assert "not a hash" not in message  # the input is not echoed


def test_a_key_id_listed_twice_is_named(keys_file: Path) -> None:
    store = KeyStore(keys_file, create=True)
    record, _ = store.create("alice")
    data = json.loads(keys_file.read_text())
    data["keys"].append(dict(data["keys"][0], name="copy"))
    keys_file.write_text(json.dumps(data))
    with pytest.raises(KeyStoreError) as info:
        KeyStore(keys_file)
    assert str(info.value) == f"keys file {keys_file} lists key id {record.id!r} twice"


def test_a_write_to_a_vanished_file_names_it(keys_file: Path) -> None:
    store = KeyStore(keys_file, create=True)
    keys_file.unlink()
    with pytest.raises(KeyStoreError) as info:
        store.create("alice")
    assert str(info.value).startswith(f"keys file {keys_file} cannot be read: ")


def test_a_write_that_cannot_start_names_the_file(
        keys_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(keys_file, create=True)

    def no_space(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_space)
    with pytest.raises(KeyStoreError) as info:
        store.create("alice")
    assert str(info.value).startswith(f"cannot write keys file {keys_file}: ")
    assert "No space left" in str(info.value)


def test_the_temporary_file_is_hidden_and_named_after_the_keys_file(
        keys_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(keys_file, create=True)
    replaced: list[Path] = []
    real = os.replace

    def spy(src: str, dst: str) -> None:
        replaced.append(Path(src))
        real(src, dst)

    monkeypatch.setattr(keys_module.os, "replace", spy)
    store.create("alice")
    [tmp] = replaced
    assert tmp.parent == keys_file.parent
    assert tmp.name.startswith(".keys.json.") and tmp.name.endswith(".tmp")


def test_a_write_by_a_user_who_cannot_give_files_away_succeeds(
        keys_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(keys_file, create=True)

    def not_allowed(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(keys_module.os, "fchown", not_allowed)
    record, plaintext = store.create("alice")
    assert KeyStore(keys_file).verify(plaintext) == record


def test_a_failed_replace_reports_its_own_error_even_if_cleanup_fails(
        keys_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(keys_file, create=True)

    def fail(*args: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(keys_module.os, "replace", fail)
    monkeypatch.setattr(keys_module.os, "unlink", fail)
    with pytest.raises(OSError, match="Input/output error"):
        store.create("alice")


def test_a_change_is_seen_once_the_interval_has_passed_and_not_before(
        keys_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    cli = KeyStore(keys_file, create=True)
    record, plaintext = cli.create("alice")
    server = KeyStore(keys_file, clock=lambda: now[0])  # next look at 0.25
    cli.create("bob")
    cli.revoke(record.id)
    now[0] = 0.25
    with caplog.at_level(logging.INFO, logger="gateway.access.keys"):
        assert server.verify(plaintext) is None  # looked at: revoked
        assert _infos(caplog) == [f"keys file {keys_file} reloaded: 2 keys"]
        _, carol = cli.create("carol")
        now[0] = 0.4  # within the interval after that look
        assert server.verify(carol) is None
        now[0] = 0.5
        assert server.verify(carol) is not None
        now[0] = 1.0  # nothing changed since: no reload, no log line
        assert server.verify(carol) is not None
    assert len(_infos(caplog)) == 2


def test_a_vanished_file_is_logged_once_naming_it(
        keys_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    _, plaintext = KeyStore(keys_file, create=True).create("alice")
    server = KeyStore(keys_file, clock=lambda: now[0])
    keys_file.unlink()
    with caplog.at_level(logging.ERROR, logger="gateway.access.keys"):
        for _ in range(3):
            now[0] += 1
            assert server.verify(plaintext) is not None  # the keys loaded before
    assert _errors(caplog) == [f"keys file {keys_file}: No such file or directory; "
                               "still using the 1 keys loaded before"]


def test_a_bad_edit_is_parsed_once_not_every_interval(
        keys_file: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    _, plaintext = KeyStore(keys_file, create=True).create("alice")
    server = KeyStore(keys_file, clock=lambda: now[0])
    parsed: list[bytes] = []
    real = KeyStore._parse

    def spy(self: KeyStore, raw: bytes) -> object:
        parsed.append(raw)
        return real(self, raw)

    monkeypatch.setattr(KeyStore, "_parse", spy)
    keys_file.write_text("{ not json")
    with caplog.at_level(logging.ERROR, logger="gateway.access.keys"):
        for _ in range(3):
            now[0] += 1
            assert server.verify(plaintext) is not None
    assert len(parsed) == 1
    [error] = _errors(caplog)
    assert error.startswith(f"keys file {keys_file} is not a valid keys file")
    assert error.endswith("; still using the 1 keys loaded before")
