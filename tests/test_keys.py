"""Keys: format, hash-only storage, atomic writes, reload on change, the CLI, and auth."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import stat
import string
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway.access import keys as keys_module
from gateway.access.auth import (
    ANONYMOUS,
    AuthConfigError,
    Authenticator,
    Principal,
    build_authenticator,
)
from gateway.access.keys import (
    KeyPolicy,
    KeyStore,
    KeyStoreError,
    generate_key,
    hash_secret,
    parse_key,
)
from gateway.access.keys_cli import add_keys_commands, run_keys_command
from gateway.errors import AuthenticationError, PermissionDeniedError
from gateway.settings import Settings

REPO = Path(__file__).resolve().parent.parent
KEY_RE = re.compile(r"irgw-([A-Za-z0-9]{12})-([A-Za-z0-9]{32,})")


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


@pytest.fixture
def store(keys_file: Path) -> KeyStore:
    return KeyStore(keys_file, create=True)


def _secret_of(plaintext: str) -> str:
    parsed = parse_key(plaintext)
    assert parsed is not None
    return parsed.secret


# -- format


def test_key_format_and_entropy() -> None:
    secrets_seen = set()
    for _ in range(2000):
        key_id, secret, plaintext = generate_key()
        assert KEY_RE.fullmatch(plaintext)
        assert plaintext == f"irgw-{key_id}-{secret}"
        secrets_seen.add(secret)
    assert len(secrets_seen) == 2000
    assert len(next(iter(secrets_seen))) * math.log2(62) >= 128
    # Roughly uniform over all of base62: expected ~1290 of each character.
    counts = Counter("".join(secrets_seen))
    assert set(counts) == set(string.ascii_letters + string.digits)
    assert 1000 < min(counts.values()) and max(counts.values()) < 1600


def test_key_comes_from_the_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_choice = keys_module.secrets.choice

    def spy(seq: str) -> str:
        calls.append(seq)
        return real_choice(seq)

    monkeypatch.setattr(keys_module.secrets, "choice", spy)
    generate_key()
    assert len(calls) == keys_module.ID_LENGTH + keys_module.SECRET_LENGTH


@pytest.mark.parametrize(
    "candidate",
    [
        None,
        "",
        "irgw",
        "irgw--",
        12345,
        b"irgw-abcdefghijkl-" + b"a" * 40,
        "IRGW-abcdefghijkl-" + "a" * 40,
        "sk-abcdefghijkl-" + "a" * 40,
        "irgw-abcdefghijk-" + "a" * 40,  # id one short
        "irgw-abcdefghijkl-" + "a" * 31,  # secret too short
        "irgw-abcdefghijkl-" + "a" * 40 + "!",
        " irgw-abcdefghijkl-" + "a" * 40,
        "irgw-abcdefghijkl-" + "a" * 40 + "\n",
        "irgw-abcdefghijkl-" + "a" * 20 + "-" + "a" * 20,
        "irgw-abcdéfghijkl-" + "a" * 40,
        "irgw-abcdefghijkl-" + "a" * 1000,
    ],
)
def test_parse_rejects_malformed_keys_without_raising(candidate: object) -> None:
    assert parse_key(candidate) is None


def test_parsed_key_never_shows_its_secret() -> None:
    _, secret, plaintext = generate_key()
    parsed = parse_key(plaintext)
    assert parsed is not None and parsed.secret == secret
    assert secret not in repr(parsed) and secret not in str(parsed)


# -- storage


def test_file_stores_only_the_hash(store: KeyStore, keys_file: Path) -> None:
    record, plaintext = store.create("alice", KeyPolicy(rpm=5))
    secret = _secret_of(plaintext)
    text = keys_file.read_text()
    assert plaintext not in text and secret not in text
    assert hash_secret(secret) in text and record.secret_sha256 == hash_secret(secret)
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert json.loads(text)["keys"][0]["policy"]["rpm"] == 5


def test_verify(store: KeyStore) -> None:
    record, plaintext = store.create("alice")
    other, _ = store.create("bob")
    assert store.verify(plaintext) == record
    assert store.verify(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert store.verify(f"irgw-{other.id}-{_secret_of(plaintext)}") is None  # other key's id
    assert store.verify("irgw-zzzzzzzzzzzz-" + "a" * 40) is None  # unknown id
    assert store.verify(None) is None and store.verify("garbage") is None
    store.revoke(record.id)
    assert store.verify(plaintext) is None
    assert store.get(record.id) is not None and store.get(record.id).revoked  # type: ignore[union-attr]


def test_verify_compares_in_constant_time_on_every_path(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, plaintext = store.create("alice")
    compared = []
    real = keys_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    assert store.verify(plaintext) is not None
    assert store.verify(plaintext[:-4] + "0000") is None  # wrong secret
    assert store.verify("irgw-zzzzzzzzzzzz-" + _secret_of(plaintext)) is None  # unknown id
    store.revoke(record.id)
    assert store.verify(plaintext) is None  # revoked
    assert len(compared) == 4
    assert all(len(a) == len(b) == 64 for a, b in compared)


def test_missing_or_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(KeyStoreError, match=re.escape(str(missing))):
        KeyStore(missing)
    corrupt = tmp_path / "corrupt.json"
    bad_hash = {"id": "a" * 12, "name": "x", "secret_sha256": "é" * 64,
                "created_at": "2024-01-01T00:00:00Z"}
    for content in ("{", '{"version": 1, "keys": [{"id": 1}]}', '{"version": 7}',
                    json.dumps({"version": 1, "keys": [bad_hash]})):
        corrupt.write_text(content)
        with pytest.raises(KeyStoreError, match=re.escape(str(corrupt))):
            KeyStore(corrupt)


def test_failed_write_leaves_the_old_file(
    store: KeyStore, keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create("alice")
    before = keys_file.read_bytes()
    replaced = []
    real_replace = os.replace

    def spy_replace(src: str, dst: object) -> None:
        replaced.append((Path(src), Path(str(dst))))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(keys_module.os, "replace", spy_replace)
    store.create("bob")
    (src, dst), = replaced
    assert src.parent == dst.parent == keys_file.parent and dst == keys_file
    assert not src.exists()

    def failing_replace(src: str, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(keys_module.os, "replace", failing_replace)
    after_bob = keys_file.read_bytes()
    with pytest.raises(OSError, match="disk on fire"):
        store.create("carol")
    assert keys_file.read_bytes() == after_bob != before
    assert [p.name for p in keys_file.parent.iterdir() if p.name.endswith(".tmp")] == []


_WRITER = """
import sys
from gateway.access.keys import KeyStore
store = KeyStore(sys.argv[1], create=True)
if sys.argv[4] == "wait":
    print("ready", flush=True)
    sys.stdin.readline()
for i in range(int(sys.argv[3])):
    record, plaintext = store.create(f"{sys.argv[2]}-{i}")
    print(plaintext, flush=True)
"""


def _writer(keys_file: Path, tag: str, count: int, wait: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(keys_file), tag, str(count), "wait" if wait else "go"],
        cwd=REPO,
        stdin=subprocess.PIPE if wait else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_concurrent_writers_lose_nothing(keys_file: Path) -> None:
    writers = [_writer(keys_file, f"p{n}", 10, wait=True) for n in range(4)]
    for writer in writers:  # all started and imported: release them together
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    plaintexts = []
    for writer in writers:
        out, _ = writer.communicate(timeout=60)
        assert writer.returncode == 0
        plaintexts += out.split()
    store = KeyStore(keys_file)
    assert len(plaintexts) == 40 and len(store.list()) == 40
    assert all(store.verify(p) is not None for p in plaintexts)


def test_killed_writer_never_leaves_a_broken_file(keys_file: Path) -> None:
    KeyStore(keys_file, create=True)
    for delay in (0.0, 0.01, 0.03, 0.07):
        writer = _writer(keys_file, "k", 100_000)
        assert writer.stdout is not None
        writer.stdout.readline()  # it is writing now
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        json.loads(keys_file.read_text())  # always a whole file, old or new
        assert len(KeyStore(keys_file).list()) >= 1


# -- reload on change


def test_server_sees_revocation_within_a_second(keys_file: Path) -> None:
    cli = KeyStore(keys_file, create=True)
    server = KeyStore(keys_file)
    record, plaintext = cli.create("alice")
    deadline = time.monotonic() + 1.0
    while server.verify(plaintext) is None:
        assert time.monotonic() < deadline, "new key not picked up within 1s"
        time.sleep(0.02)
    cli.revoke(record.id)
    revoked_at = time.monotonic()
    while server.verify(plaintext) is not None:
        assert time.monotonic() - revoked_at < 1.0, "revoked key still accepted after 1s"
        time.sleep(0.02)


def test_reload_checks_at_most_once_per_interval(keys_file: Path) -> None:
    now = [0.0]
    cli = KeyStore(keys_file, create=True)
    record, plaintext = cli.create("alice")
    server = KeyStore(keys_file, clock=lambda: now[0])
    cli.revoke(record.id)
    assert server.verify(plaintext) is not None  # not looked at yet
    now[0] += 0.3
    assert server.verify(plaintext) is None


def test_in_place_edit_and_bad_edit(keys_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    cli = KeyStore(keys_file, create=True)
    _, plaintext = cli.create("alice")
    server = KeyStore(keys_file, clock=lambda: now[0])
    good = keys_file.read_text()

    keys_file.write_text("{ not json")  # a bad hand edit, in place
    now[0] += 1
    with caplog.at_level(logging.ERROR, logger="gateway.access.keys"):
        assert server.verify(plaintext) is not None  # last good set stays
    assert str(keys_file) in caplog.text

    data = json.loads(good)
    data["keys"][0]["revoked_at"] = "2024-01-01T00:00:00Z"
    keys_file.write_text(json.dumps(data))
    now[0] += 1
    assert server.verify(plaintext) is None


# -- CLI


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="ir-gateway")
    add_keys_commands(parser.add_subparsers(dest="command", required=True))
    code = run_keys_command(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_create_list_revoke(keys_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(
        ["keys", "create", "--keys-file", str(keys_file), "--name", "team-a", "--rpm", "50",
         "--tpm", "10000", "--concurrency", "4", "--schemas", "invoice, receipt",
         "--allow-adhoc", "--max-tokens", "512"],
        capsys,
    )
    assert code == 0
    plaintext = out.strip()
    assert KEY_RE.fullmatch(plaintext) and out.count(plaintext) == 1
    assert plaintext not in err and "not be shown again" in err
    record = KeyStore(keys_file).verify(plaintext)
    assert record is not None and record.name == "team-a"
    assert record.policy == KeyPolicy(
        schemas=["invoice", "receipt"], allow_adhoc=True, max_tokens=512,
        rpm=50, tpm=10000, concurrency=4,
    )

    for argv in (["keys", "list"], ["keys", "list", "--json"]):
        code, out, err = _cli([*argv, "--keys-file", str(keys_file)], capsys)
        assert code == 0 and record.id in out and "team-a" in out
        assert _secret_of(plaintext) not in out + err
        assert record.secret_sha256 not in out + err
    assert "rpm=50" in _cli(["keys", "list", "--keys-file", str(keys_file)], capsys)[1]

    code, out, _ = _cli(["keys", "revoke", "--keys-file", str(keys_file), record.id], capsys)
    assert code == 0 and record.id in out
    assert KeyStore(keys_file).verify(plaintext) is None
    code, out, _ = _cli(["keys", "list", "--json", "--keys-file", str(keys_file)], capsys)
    assert json.loads(out)["revoked_at"] is not None


def test_cli_keys_file_from_env_and_errors(
    keys_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IRGW_KEYS_FILE", raising=False)
    code, _, err = _cli(["keys", "list"], capsys)
    assert code == 2 and "IRGW_KEYS_FILE" in err
    monkeypatch.setenv("IRGW_KEYS_FILE", str(keys_file))
    code, _, err = _cli(["keys", "list"], capsys)
    assert code == 1 and str(keys_file) in err  # missing file named
    code, out, _ = _cli(["keys", "create", "--name", "x"], capsys)
    assert code == 0 and KEY_RE.fullmatch(out.strip())
    code, _, err = _cli(["keys", "revoke", "nosuchkey123"], capsys)
    assert code == 1 and "nosuchkey123" in err
    code, _, err = _cli(["keys", "create", "--name", "  "], capsys)
    assert code == 2 and "name" in err
    with pytest.raises(SystemExit):
        _cli(["keys", "create", "--name", "x", "--rpm", "0"], capsys)


# -- auth


def _auth(store: KeyStore) -> Authenticator:
    return Authenticator(store, enabled=True)


def test_authenticate(store: KeyStore) -> None:
    record, plaintext = store.create("alice", KeyPolicy(rpm=5))
    auth = _auth(store)
    for header in (f"Bearer {plaintext}", f"bearer {plaintext}", f"  BEARER   {plaintext} "):
        principal = auth.authenticate(header)
        assert principal == Principal(key_id=record.id, name="alice", policy=record.policy)

    secret = _secret_of(plaintext)
    wrong = plaintext[:-4] + "0000"
    for header in (None, "", "Bearer", f"Basic {plaintext}", f"Bearer {wrong}",
                   f"Bearer {plaintext}x", "Bearer irgw-nope", plaintext):
        with pytest.raises(AuthenticationError) as info:
            auth.authenticate(header)
        error = info.value
        assert error.status_code == 401 and error.code == "invalid_api_key"
        body = json.dumps(error.body())
        assert secret not in body and record.id not in body and wrong[-10:] not in body
        assert error.headers.get("WWW-Authenticate") == "Bearer"

    store.revoke(record.id)
    with pytest.raises(AuthenticationError):
        auth.authenticate(f"Bearer {plaintext}")


def test_auth_disabled_is_anonymous_and_unlimited() -> None:
    principal = Authenticator(None, enabled=False).authenticate(None)
    assert principal is ANONYMOUS and principal.key_id is None
    assert not principal.policy.has_rate_limits and principal.policy.allow_adhoc


def test_check_schema() -> None:
    auth = Authenticator(None, enabled=False)
    narrow = Principal("k1", "n", KeyPolicy(schemas=["invoice"]))
    auth.check_schema(narrow, "invoice", adhoc=False)
    auth.check_schema(narrow, None, adhoc=False)
    with pytest.raises(PermissionDeniedError, match="'receipt'") as info:
        auth.check_schema(narrow, "receipt", adhoc=False)
    assert info.value.status_code == 403
    with pytest.raises(PermissionDeniedError, match="ad-hoc schemas"):
        auth.check_schema(narrow, None, adhoc=True)
    wide = Principal("k2", "n", KeyPolicy(allow_adhoc=True))
    auth.check_schema(wide, "anything", adhoc=False)
    auth.check_schema(wide, None, adhoc=True)
    # An ad-hoc schema's name is the client's choice: the allow-list does not apply to it.
    scoped = Principal("k3", "n", KeyPolicy(schemas=["invoice"], allow_adhoc=True))
    auth.check_schema(scoped, "FunctionIR", adhoc=True)
    with pytest.raises(PermissionDeniedError):
        auth.check_schema(scoped, "receipt", adhoc=False)


def test_writing_through_a_symlink_changes_the_file_it_names(tmp_path: Path) -> None:
    real = tmp_path / "real" / "keys.json"
    real.parent.mkdir()
    KeyStore(real, create=True).create("alice", KeyPolicy())
    link = tmp_path / "keys.json"
    link.symlink_to(real)
    _, bob = KeyStore(link).create("bob", KeyPolicy())
    KeyStore(link).revoke(parse_key(bob).key_id)  # type: ignore[union-attr]
    assert link.is_symlink()  # not replaced by a file of its own
    assert KeyStore(real).verify(bob) is None  # the gateways' file has the revocation


def test_a_write_keeps_the_files_mode(keys_file: Path) -> None:
    # A gateway running as another user reads the file through its group or other bits.
    store = KeyStore(keys_file, create=True)
    keys_file.chmod(0o644)
    store.create("alice", KeyPolicy())
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o644
    fresh = keys_file.with_name("fresh.json")
    KeyStore(fresh, create=True).create("bob", KeyPolicy())
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600  # a new file is private


def test_settings_refuse_what_would_serve_somewhere_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRGW_HOST", "")  # unset, not "every interface"
    assert Settings().host == "127.0.0.1"
    with pytest.raises(ValueError, match="less than or equal to 65535"):
        Settings(port=70000)
    for url in ("http://127.0.0.1:abc", "http://127.0.0.1:99999"):
        with pytest.raises(ValueError, match=r"[Pp]ort"):
            Settings(upstream_url=url)


def test_build_authenticator(
    tmp_path: Path, store: KeyStore, keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(AuthConfigError, match="IRGW_KEYS_FILE"):
        build_authenticator(Settings(auth_enabled=True, keys_file=None))
    with pytest.raises(KeyStoreError, match=r"missing\.json"):
        build_authenticator(Settings(auth_enabled=True, keys_file=tmp_path / "missing.json"))
    _, plaintext = store.create("alice")
    auth = build_authenticator(Settings(auth_enabled=True, keys_file=keys_file))
    assert auth.authenticate(f"Bearer {plaintext}").name == "alice"
    with caplog.at_level(logging.WARNING, logger="gateway.access.auth"):
        auth = build_authenticator(Settings(auth_enabled=False))
    assert "AUTH IS DISABLED" in caplog.text
    assert auth.authenticate(None) is ANONYMOUS
