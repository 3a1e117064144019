"""Who is calling, and what their key lets them do.

Error messages here never include the presented key, not even a prefix: logs and client
error reports are the usual way keys leak.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway import observe
from gateway.access.records import (
    KeyPolicy,
    KeyRecord,
    KeyState,
    check_key,
    log_active_keys,
    parse_key,
    precise_now,
)
from gateway.access.store import KeyBackend, KeyLookup, as_backend, build_key_backend
from gateway.errors import AuthenticationError, PermissionDeniedError
from gateway.settings import Settings

logger = logging.getLogger(__name__)

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
# One message for malformed, unknown and wrong keys: telling them apart would help someone
# probing for valid key ids. Revoked and expired are said only to whoever holds the secret.
_REFUSALS = {
    KeyState.INVALID: "Invalid API key.",
    KeyState.REVOKED: "This API key has been revoked.",
    KeyState.EXPIRED: "This API key has expired (or it is the secret a rotation replaced, "
    "past its grace period).",
}


class AuthConfigError(Exception):
    """Auth is configured in a way the gateway refuses to start with."""


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str | None  # None when auth is off
    name: str
    policy: KeyPolicy


ANONYMOUS = Principal(key_id=None, name="anonymous", policy=KeyPolicy.unlimited())


class Authenticator:
    def __init__(self, store: KeyLookup | None, enabled: bool) -> None:
        if enabled and store is None:
            raise AuthConfigError("auth is enabled but there is no key store")
        self._store = store
        self.enabled = enabled
        # The same store with its writes, for the admin API (None when auth is off).
        self.keys: KeyBackend | None = as_backend(store) if store is not None else None

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an `Authorization` header value, or `AuthenticationError`."""
        if not self.enabled:
            return ANONYMOUS
        assert self._store is not None
        if not authorization or not authorization.strip():
            raise AuthenticationError(
                "Missing API key. Send it as 'Authorization: Bearer <key>'.", headers=_CHALLENGE
            )
        scheme, _, credentials = authorization.strip().partition(" ")
        if "," in credentials:  # two Authorization headers, joined (gateway.server.reading)
            raise AuthenticationError(
                "More than one API key: send one 'Authorization: Bearer <key>' header.",
                headers=_CHALLENGE)
        if scheme.lower() != "bearer":
            raise AuthenticationError(
                "Unsupported authorization scheme: send 'Authorization: Bearer <key>'.",
                headers=_CHALLENGE,
            )
        parsed = parse_key(credentials.strip())
        if parsed is None:
            raise AuthenticationError(_REFUSALS[KeyState.INVALID], headers=_CHALLENGE)
        record = self._store.get(parsed.key_id)
        state = check_key(record, parsed, precise_now())
        if state is not KeyState.VALID or record is None:
            raise AuthenticationError(_REFUSALS[state], headers=_CHALLENGE)
        observe.identified(record.id)
        return Principal(key_id=record.id, name=record.name, policy=record.policy)

    def check_schema(self, principal: Principal, schema_name: str | None, adhoc: bool) -> None:
        """Refuse a schema the key may not use. Names are matched exactly."""
        policy = principal.policy
        if adhoc and not policy.allow_adhoc:
            raise PermissionDeniedError(
                "This API key may not use ad-hoc schemas; use a named schema instead.",
                param="response_format",
                code="adhoc_schema_not_allowed",
            )
        # An ad-hoc schema's name is the client's to choose: the allow-list cannot apply.
        if schema_name is not None and not adhoc and not policy.allows_schema(schema_name):
            raise schema_not_allowed(schema_name)


def schema_not_allowed(name: str) -> PermissionDeniedError:
    return PermissionDeniedError(f"This API key may not use the schema {name!r}.",
                                 code="schema_not_allowed")


def build_authenticator(settings: Settings) -> Authenticator:
    """The authenticator for these settings; refuses a configuration that would be unsafe."""
    if not settings.auth_enabled:
        logger.warning(
            "AUTH IS DISABLED (IRGW_AUTH_ENABLED=false): anyone who can reach this gateway "
            "can use it without a key and without rate limits. Do not expose it."
        )
        if settings.keys_file is not None:
            logger.warning("keys file %s is ignored because auth is disabled", settings.keys_file)
        return Authenticator(store=None, enabled=False)
    if settings.keys_backend == "file" and settings.keys_file is None:
        raise AuthConfigError(
            "auth is enabled but no keys file is configured: set IRGW_KEYS_FILE (create keys "
            "with `ir-gateway keys create --keys-file PATH --name NAME`), use the shared store "
            "(IRGW_KEYS_BACKEND=redis with IRGW_REDIS_URL), or set IRGW_AUTH_ENABLED=false to "
            "run without keys"
        )
    # KeyStoreError naming the file if missing/corrupt; the Redis store loads in start().
    backend = build_key_backend(settings)
    if settings.keys_backend == "file":
        log_active_keys(backend.describe, [r for r in backend_records(backend)])
    return Authenticator(store=backend, enabled=True)


def backend_records(backend: KeyBackend) -> list[KeyRecord]:
    store = getattr(backend, "store", None)
    return store.list() if store is not None else []
