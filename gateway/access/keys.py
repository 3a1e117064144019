"""API keys in a JSON file: the `file` key store.

Records, their format and the check of a presented key live in `gateway.access.records`
(re-exported here); `gateway.access.redis_keys` is the store every replica shares.

One process writes (the CLI) while others read (every gateway instance), so writes are
atomic replacements under a lock file, and readers notice a replaced file by `os.stat`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac  # the constant-time comparison keys are checked with (re-exported)
import json
import logging
import os
import secrets  # the CSPRNG the keys come from (gateway.access.records draws on it)
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.access.records import (
    ID_LENGTH,
    KEY_PREFIX,
    SECRET_LENGTH,
    KeyNotFoundError,
    KeyPolicy,
    KeyRecord,
    KeyState,
    KeyStoreError,
    ParsedKey,
    check_key,
    generate_key,
    hash_secret,
    parse_key,
    precise_now,
    revoke_record,
    rotate_record,
    utc_now,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ID_LENGTH",
    "KEY_PREFIX",
    "SECRET_LENGTH",
    "KeyNotFoundError",
    "KeyPolicy",
    "KeyRecord",
    "KeyState",
    "KeyStore",
    "KeyStoreError",
    "ParsedKey",
    "check_key",
    "generate_key",
    "hash_secret",
    "hmac",
    "parse_key",
    "secrets",
]

_FILE_VERSION = 1
# Fields a record or policy gained after the first file format: written only when set, so a
# file without expiry, rotation, budgets or scopes reads as it always did.
_NEW_RECORD_FIELDS = ("expires_at", "previous_sha256", "previous_valid_until", "rotated_at")
_NEW_POLICY_DEFAULTS: dict[str, Any] = {"allow_policy_override": False,
                                        "budget_tokens": None, "budget_period": "day",
                                        "scopes": [], "cache": False, "cache_seeded": False}


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = _FILE_VERSION
    keys: list[KeyRecord] = Field(default_factory=list)


def _dump(content: _KeyFile) -> dict[str, Any]:
    data = content.model_dump(mode="json")
    for record in data["keys"]:
        for name in _NEW_RECORD_FIELDS:
            if record.get(name) is None:
                record.pop(name, None)
        policy = record["policy"]
        for name, default in _NEW_POLICY_DEFAULTS.items():
            if policy.get(name) == default:
                policy.pop(name, None)
    return data


class KeyStore:
    """Keys in one JSON file, re-read by readers when the file is replaced.

    `create=True` (the CLI's `keys create`) makes an empty file when there is none;
    otherwise a missing or corrupt file is a `KeyStoreError` naming it, so a server never
    starts with no keys by accident.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = False,
        reload_interval_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._reload_interval_s = reload_interval_s
        self._clock = clock
        self._records: dict[str, KeyRecord] = {}
        self._signature: tuple[int, ...] | None = None
        self._next_check = 0.0
        self._last_problem: str | None = None
        if create and not self.path.exists():
            with self._locked():
                if not self.path.exists():
                    self._write(_KeyFile())
        self._records, self._signature = self._read()
        self._next_check = clock() + reload_interval_s

    # -- reading

    def get(self, key_id: str) -> KeyRecord | None:
        self._maybe_reload()
        return self._records.get(key_id)

    def list(self) -> list[KeyRecord]:
        self._maybe_reload()
        return sorted(self._records.values(), key=lambda r: (r.created_at, r.id))

    def verify(self, plaintext: str | None) -> KeyRecord | None:
        """The key's record if it is well formed, known, correct, not revoked or expired."""
        parsed = parse_key(plaintext)
        if parsed is None:
            return None
        record = self.get(parsed.key_id)
        return record if check_key(record, parsed, precise_now()) is KeyState.VALID else None

    # -- writing (the CLI)

    def create(self, name: str, policy: KeyPolicy | None = None, *,
               expires_at: datetime | None = None) -> tuple[KeyRecord, str]:
        """Add a key; the plaintext is returned here and never again."""
        if not name.strip():
            raise ValueError("a key needs a non-blank name")
        with self._locked():
            current = self._read_file()
            taken = {record.id for record in current.keys}
            while True:
                key_id, secret, plaintext = generate_key()
                if key_id not in taken:
                    break
            record = KeyRecord(
                id=key_id,
                name=name,
                secret_sha256=hash_secret(secret),
                policy=policy or KeyPolicy(),
                created_at=utc_now(),
                expires_at=expires_at,
            )
            current.keys.append(record)
            self._write(current)
        self._refresh_now()
        return record, plaintext

    def revoke(self, key_id: str) -> KeyRecord:
        """Mark a key revoked. Revoking twice keeps the first revocation time."""
        return self._update(key_id, revoke_record)[0]

    def rotate(self, key_id: str, grace_s: float) -> tuple[KeyRecord, str]:
        """A new secret for the key; the current one stays valid for `grace_s` seconds."""
        return self._update(key_id, lambda record: rotate_record(record, grace_s))

    def _update(self, key_id: str,
                change: Callable[[KeyRecord], tuple[KeyRecord, str]]) -> tuple[KeyRecord, str]:
        with self._locked():
            current = self._read_file()
            index = next((i for i, r in enumerate(current.keys) if r.id == key_id), None)
            if index is None:
                raise KeyNotFoundError(f"no key with id {key_id!r} in {self.path}")
            record, plaintext = change(current.keys[index])
            if record != current.keys[index]:
                current.keys[index] = record
                self._write(current)
        self._refresh_now()
        return record, plaintext

    # -- internals

    def _maybe_reload(self) -> None:
        # Called on every request: one clock read, and at most one stat per interval.
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self._reload_interval_s
        try:
            signature = _signature(os.stat(self.path))
        except OSError as exc:
            self._report(f"keys file {self.path}: {exc.strerror or exc}")
            return
        if signature == self._signature:
            return
        try:
            self._records, self._signature = self._read()
        except KeyStoreError as exc:
            # Keep serving the last good set rather than lock everyone out on a bad edit;
            # remember the signature so the bad file is not re-parsed every interval.
            self._signature = signature
            self._report(str(exc))
            return
        self._last_problem = None
        logger.info("keys file %s reloaded: %d keys", self.path, len(self._records))

    def _report(self, problem: str) -> None:
        if problem != self._last_problem:  # once per distinct problem, not every interval
            self._last_problem = problem
            logger.error("%s; still using the %d keys loaded before", problem, len(self._records))

    def _refresh_now(self) -> None:
        self._records, self._signature = self._read()

    def _read(self) -> tuple[dict[str, KeyRecord], tuple[int, ...]]:
        try:
            with open(self.path, "rb") as fh:
                signature = _signature(os.fstat(fh.fileno()))
                raw = fh.read()
        except FileNotFoundError:
            raise KeyStoreError(
                f"keys file {self.path} does not exist (create it with `ir-gateway keys create`)"
            ) from None
        except OSError as exc:
            raise KeyStoreError(f"keys file {self.path} cannot be read: {exc}") from None
        parsed = self._parse(raw)
        records: dict[str, KeyRecord] = {}
        for record in parsed.keys:
            if record.id in records:
                raise KeyStoreError(f"keys file {self.path} lists key id {record.id!r} twice")
            records[record.id] = record
        return records, signature

    def _read_file(self) -> _KeyFile:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise KeyStoreError(f"keys file {self.path} cannot be read: {exc}") from None
        return self._parse(raw)

    def _parse(self, raw: bytes) -> _KeyFile:
        try:
            return _KeyFile.model_validate_json(raw)
        except ValidationError as exc:
            # Only the first problem, without the input: the file holds hashes, not secrets,
            # but a hand-edited file might hold anything.
            first = exc.errors(include_input=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise KeyStoreError(
                f"keys file {self.path} is not a valid keys file: {where}: {first['msg']}"
            ) from None

    def _target(self) -> Path:
        # Through a symlink to the file it names: replacing the link itself would leave the
        # file the gateways read unchanged, and a revocation would silently do nothing.
        return Path(os.path.realpath(self.path))

    def _write(self, content: _KeyFile) -> None:
        data = json.dumps(_dump(content), indent=2).encode() + b"\n"
        target = self._target()
        directory = target.parent
        try:
            # The replacement keeps the file's mode and owner: a gateway running as another
            # user that could read the old file must be able to read the new one.
            st: os.stat_result | None = os.stat(target)
        except FileNotFoundError:
            st = None
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as exc:
            raise KeyStoreError(f"cannot write keys file {self.path}: {exc}") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), stat.S_IMODE(st.st_mode) if st is not None else 0o600)
                if st is not None:
                    with contextlib.suppress(OSError):  # only root may give files away
                        os.fchown(fh.fileno(), st.st_uid, st.st_gid)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # The rename itself must reach the disk, or a crash could bring the old file back.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # A separate lock file: the data file's inode changes on every replace, so a lock
        # held on it would not exclude a writer that opened the new one.
        target = self._target()
        lock_path = target.parent / f".{target.name}.lock"
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeyStoreError(f"cannot lock keys file {self.path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock


def _signature(st: os.stat_result) -> tuple[int, ...]:
    # The inode changes on every atomic replace; mtime/ctime/size catch in-place edits.
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
