"""What the admin API and the CLI do to keys, once, on any key store.

Both show records as `KeyRecord.public()` (never a hash), plus `key` (the plaintext) in the
answer to a create or a rotate: the only time anyone sees it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field, field_validator

from gateway.access.records import (
    KeyNotFoundError,
    KeyPolicy,
    precise_now,
)
from gateway.access.store import KeyBackend

_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DURATION_S = 10 * 365 * 86400  # beyond it, a typo more likely than a plan


def parse_duration(text: str | int | float) -> float:
    """Seconds in `30d`, `12h`, `90m`, `45s`, `2w` (or a plain number of seconds)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.fullmatch(str(text))
        if match is None:
            raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 90m, 45s, 2w)")
        seconds = float(int(match.group(1)) * _UNIT_S[match.group(2)])
    if not 0 <= seconds <= MAX_DURATION_S:
        raise ValueError(f"a duration must be between 0 and {MAX_DURATION_S} seconds")
    return seconds


class KeyRequest(KeyPolicy):
    """A key to create: its name, policy, and optional lifetime."""

    name: str = Field(min_length=1, max_length=200)
    # Also "a,b" as one string, as the CLI's --schemas takes it.
    schemas: list[str] | str = "*"  # type: ignore[assignment]
    expires_in: str | int | None = Field(
        default=None, description="Lifetime: `30d`, `12h`, `90m` or seconds; none: never.")

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a key needs a non-blank name")
        return value

    @field_validator("expires_in")
    @classmethod
    def _duration(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_duration(value)
        return value

    def policy(self) -> KeyPolicy:
        schemas: list[str] | str = self.schemas
        if isinstance(schemas, str) and schemas != "*":
            schemas = [name.strip() for name in schemas.split(",") if name.strip()]
        fields = self.model_dump(exclude={"name", "expires_in", "schemas"})
        return KeyPolicy(schemas=schemas, **fields)  # type: ignore[arg-type]

    def expires_at(self, now: datetime) -> datetime | None:
        if self.expires_in is None:
            return None
        return now + timedelta(seconds=parse_duration(self.expires_in))


async def create_key(backend: KeyBackend, request: KeyRequest) -> dict[str, Any]:
    record, plaintext = await backend.create(
        request.name, request.policy(), expires_at=request.expires_at(precise_now()))
    return {**record.public(), "key": plaintext}


async def list_keys(backend: KeyBackend) -> list[dict[str, Any]]:
    return [record.public() for record in await backend.list()]


async def show_key(backend: KeyBackend, key_id: str) -> dict[str, Any]:
    record = await backend.fetch(key_id)
    if record is None:
        raise KeyNotFoundError(f"no key with id {key_id!r}")
    return record.public()


async def revoke_key(backend: KeyBackend, key_id: str) -> dict[str, Any]:
    return (await backend.revoke(key_id)).public()


async def rotate_key(backend: KeyBackend, key_id: str, grace: str | int) -> dict[str, Any]:
    record, plaintext = await backend.rotate(key_id, parse_duration(grace))
    return {**record.public(), "key": plaintext}
