"""API keys: format, policy, and the JSON file that stores them.

A key reads `irgw-<id>-<secret>`. The id is public (it names the key in logs, limits and
the CLI); only `sha256(secret)` is stored, so the keys file is not itself a credential.
The secret is ~238 bits from a CSPRNG, which is why a plain, unsalted hash is enough.

One process writes (the CLI) while others read (every gateway instance), so writes are
atomic replacements under a lock file, and readers notice a replaced file by `os.stat`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

logger = logging.getLogger(__name__)

KEY_PREFIX = "irgw"
ID_LENGTH = 12
SECRET_LENGTH = 40
# Base62 only: `-` separates the parts, and `_` would make keys awkward to double-click.
_ALPHABET = string.ascii_letters + string.digits
_KEY_RE = re.compile(rf"{KEY_PREFIX}-([A-Za-z0-9]{{{ID_LENGTH}}})-([A-Za-z0-9]{{32,128}})")
_FILE_VERSION = 1
# Compared against when the id is unknown, so an unknown id costs the same as a wrong secret.
_DUMMY_SHA256 = hashlib.sha256(b"irgw-no-such-key").hexdigest()


class KeyStoreError(Exception):
    """The keys file is missing, unreadable, corrupt, or cannot be written."""


class KeyNotFoundError(KeyStoreError):
    pass


class KeyPolicy(BaseModel):
    """What a key may do. `None` limits mean unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schemas: list[str] | Literal["*"] = "*"
    allow_adhoc: bool = False
    # May choose the output policy per request (x-irgw-output-policy): a re-ask spends
    # more of the key's tokens than the operator's policy would.
    allow_policy_override: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)

    @field_validator("schemas")
    @classmethod
    def _names_not_blank(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and any(not name.strip() for name in value):
            raise ValueError("schema names must not be blank")
        return value

    @classmethod
    def unlimited(cls) -> KeyPolicy:
        return cls(schemas="*", allow_adhoc=True, allow_policy_override=True)

    @property
    def has_rate_limits(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.concurrency is not None

    def allows_schema(self, name: str) -> bool:
        return self.schemas == "*" or name in self.schemas


class KeyRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=rf"^[A-Za-z0-9]{{{ID_LENGTH}}}$")
    name: str
    secret_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    policy: KeyPolicy = Field(default_factory=KeyPolicy)
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = _FILE_VERSION
    keys: list[KeyRecord] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key_id: str
    secret: str

    def __repr__(self) -> str:  # never let a traceback or log line print the secret
        return f"ParsedKey(key_id={self.key_id!r}, secret=<hidden>)"


def _random_token(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def generate_key() -> tuple[str, str, str]:
    """Return `(key_id, secret, plaintext_key)`."""
    key_id = _random_token(ID_LENGTH)
    secret = _random_token(SECRET_LENGTH)
    return key_id, secret, f"{KEY_PREFIX}-{key_id}-{secret}"


def parse_key(plaintext: object) -> ParsedKey | None:
    """Split a presented key, or None if it is not shaped like one. Never raises."""
    if not isinstance(plaintext, str) or len(plaintext) > 256:
        return None
    match = _KEY_RE.fullmatch(plaintext)
    if match is None:
        return None
    return ParsedKey(key_id=match.group(1), secret=match.group(2))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


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
        """The key's record if it is well formed, known, correct and not revoked."""
        parsed = parse_key(plaintext)
        if parsed is None:
            return None
        self._maybe_reload()
        record = self._records.get(parsed.key_id)
        expected = record.secret_sha256 if record is not None else _DUMMY_SHA256
        matches = hmac.compare_digest(
            hash_secret(parsed.secret).encode("ascii"), expected.encode("ascii")
        )
        if record is None or not matches or record.revoked:
            return None
        return record

    # -- writing (the CLI)

    def create(self, name: str, policy: KeyPolicy | None = None) -> tuple[KeyRecord, str]:
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
                created_at=_now(),
            )
            current.keys.append(record)
            self._write(current)
        self._refresh_now()
        return record, plaintext

    def revoke(self, key_id: str) -> KeyRecord:
        """Mark a key revoked. Revoking twice keeps the first revocation time."""
        with self._locked():
            current = self._read_file()
            index = next((i for i, r in enumerate(current.keys) if r.id == key_id), None)
            if index is None:
                raise KeyNotFoundError(f"no key with id {key_id!r} in {self.path}")
            record = current.keys[index]
            if not record.revoked:
                record = record.model_copy(update={"revoked_at": _now()})
                current.keys[index] = record
                self._write(current)
        self._refresh_now()
        return record

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
        data = json.dumps(content.model_dump(mode="json"), indent=2).encode() + b"\n"
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


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
