"""Who is calling, and what their key lets them do.

Error messages here never include the presented key, not even a prefix: logs and client
error reports are the usual way keys leak.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway import observe
from gateway.errors import AuthenticationError, PermissionDeniedError
from gateway.keys import KeyPolicy, KeyStore
from gateway.settings import Settings

logger = logging.getLogger(__name__)

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class AuthConfigError(Exception):
    """Auth is configured in a way the gateway refuses to start with."""


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str | None  # None when auth is off
    name: str
    policy: KeyPolicy


ANONYMOUS = Principal(key_id=None, name="anonymous", policy=KeyPolicy.unlimited())


class Authenticator:
    def __init__(self, store: KeyStore | None, enabled: bool) -> None:
        if enabled and store is None:
            raise AuthConfigError("auth is enabled but there is no key store")
        self._store = store
        self.enabled = enabled

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
        if scheme.lower() != "bearer":
            raise AuthenticationError(
                "Unsupported authorization scheme: send 'Authorization: Bearer <key>'.",
                headers=_CHALLENGE,
            )
        record = self._store.verify(credentials.strip())
        if record is None:
            # One message for malformed, unknown, wrong and revoked keys: telling them apart
            # would help someone probing for valid key ids.
            raise AuthenticationError("Invalid or revoked API key.", headers=_CHALLENGE)
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
    if settings.keys_file is None:
        raise AuthConfigError(
            "auth is enabled but no keys file is configured: set IRGW_KEYS_FILE (create keys "
            "with `ir-gateway keys create --keys-file PATH --name NAME`), or set "
            "IRGW_AUTH_ENABLED=false to run without keys"
        )
    store = KeyStore(settings.keys_file)  # KeyStoreError naming the file if missing/corrupt
    active = sum(not record.revoked for record in store.list())
    if active == 0:
        logger.warning("keys file %s has no active keys: every request will get 401", store.path)
    else:
        logger.info("auth enabled: %d active keys in %s", active, store.path)
    return Authenticator(store=store, enabled=True)
