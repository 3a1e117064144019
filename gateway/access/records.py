"""API keys as records: their format, their policy, and whether a presented secret opens one.

A key reads `irgw-<id>-<secret>`. The id is public (it names the key in logs, limits and
the CLI); only `sha256(secret)` is stored, so no key store is itself a credential. The
secret is ~238 bits from a CSPRNG, which is why a plain, unsalted hash is enough.

Both stores (the JSON file, Redis) hold these records; `check_key` is the one place that
decides whether a presented key opens one, for both.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

KEY_PREFIX = "irgw"
ID_LENGTH = 12
SECRET_LENGTH = 40
# Base62 only: `-` separates the parts, and `_` would make keys awkward to double-click.
_ALPHABET = string.ascii_letters + string.digits
_KEY_RE = re.compile(rf"{KEY_PREFIX}-([A-Za-z0-9]{{{ID_LENGTH}}})-([A-Za-z0-9]{{32,128}})")
# Compared against when the id is unknown, so an unknown id costs the same as a wrong secret.
_DUMMY_SHA256 = hashlib.sha256(b"irgw-no-such-key").hexdigest()

Scope = Literal["admin"]
BudgetPeriod = Literal["day", "month"]


class KeyStoreError(Exception):
    """A key store is missing, unreadable, corrupt, unreachable, or cannot be written."""


class KeyNotFoundError(KeyStoreError):
    pass


class KeyRevokedError(KeyStoreError):
    """A change that a revoked key cannot take (a rotation)."""


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
    # Tokens (prompt + generated) per UTC day or calendar month; past it, 429 insufficient_quota.
    budget_tokens: int | None = Field(default=None, ge=1)
    budget_period: BudgetPeriod = "day"
    scopes: list[Scope] = Field(default_factory=list)
    # The response cache (gateway/access/cache.py): deterministic requests of this key are
    # answered from it; `cache_seeded` counts a fixed `seed` as deterministic too.
    cache: bool = False
    cache_seeded: bool = False

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

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

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
    expires_at: datetime | None = None
    # After `keys rotate`: the secret it replaced, valid until `previous_valid_until`.
    previous_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    previous_valid_until: datetime | None = None
    rotated_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def public(self) -> dict[str, object]:
        """What the CLI and the admin API show: everything but the hashes."""
        return self.model_dump(mode="json", exclude={"secret_sha256", "previous_sha256"})


class KeyState(Enum):
    VALID = "valid"
    INVALID = "invalid"  # malformed, unknown id, or wrong secret: not told apart
    REVOKED = "revoked"
    EXPIRED = "expired"


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


def new_secret(key_id: str) -> tuple[str, str]:
    """A fresh secret for an existing id (rotation): `(secret, plaintext_key)`."""
    secret = _random_token(SECRET_LENGTH)
    return secret, f"{KEY_PREFIX}-{key_id}-{secret}"


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


def _same(digest: str, expected: str) -> bool:
    return hmac.compare_digest(digest.encode("ascii"), expected.encode("ascii"))


def check_key(record: KeyRecord | None, parsed: ParsedKey, now: datetime) -> KeyState:
    """Whether `parsed` opens `record`. Revoked and expired are told only to a caller who
    holds the right secret (the current one, or the one a rotation replaced), so they help
    nobody probing for ids. The comparisons are constant-time, and as many for any secret
    presented for an id (two while a rotation's old secret lives, else one)."""
    digest = hash_secret(parsed.secret)
    current = _same(digest, record.secret_sha256 if record is not None else _DUMMY_SHA256)
    previous = (record is not None and record.previous_sha256 is not None
                and _same(digest, record.previous_sha256))
    if record is None or not (current or previous):
        return KeyState.INVALID
    if record.revoked:
        return KeyState.REVOKED
    if record.expired(now):
        return KeyState.EXPIRED
    if not current:  # the replaced secret: only during its grace period
        until = record.previous_valid_until
        return KeyState.VALID if until is not None and now < until else KeyState.EXPIRED
    return KeyState.VALID


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def precise_now() -> datetime:
    return datetime.now(UTC)


def revoke_record(record: KeyRecord) -> tuple[KeyRecord, str]:
    """`record` revoked now (unchanged if it already was); no secret to show."""
    if record.revoked:
        return record, ""
    return record.model_copy(update={"revoked_at": utc_now()}), ""


def rotate_record(record: KeyRecord, grace_s: float) -> tuple[KeyRecord, str]:
    """`record` with a new secret, the current one kept for `grace_s`; and the new key.
    A rotation within an earlier one's grace ends that grace: only one old secret lives."""
    if record.revoked:
        raise KeyRevokedError(f"key {record.id} is revoked: create a new key instead")
    if grace_s < 0:
        raise ValueError("the grace period must not be negative")
    secret, plaintext = new_secret(record.id)
    now = precise_now()
    rotated = record.model_copy(update={
        "secret_sha256": hash_secret(secret),
        "previous_sha256": record.secret_sha256 if grace_s > 0 else None,
        "previous_valid_until": now + timedelta(seconds=grace_s) if grace_s > 0 else None,
        "rotated_at": now,
    })
    return rotated, plaintext

# The key store's own logger name, as before the function moved here.
logger = logging.getLogger("gateway.access.auth")


def log_active_keys(where: str, records: list[KeyRecord]) -> None:
    now = precise_now()
    active = sum(not record.revoked and not record.expired(now) for record in records)
    if active == 0:
        logger.warning("%s has no active keys: every request will get 401", where)
    else:
        logger.info("auth enabled: %d active keys in %s", active, where)
