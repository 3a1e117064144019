"""`ir-gateway keys create|list|show|revoke|rotate`: manage API keys.

Against the store itself (the keys file, or Redis with `--backend redis`) or against a
running gateway's admin API (`--url URL`, an admin-scoped key in $IRGW_ADMIN_KEY).
`create` and `rotate` print the key alone on stdout (so `KEY=$(ir-gateway keys create ...)`
works) and everything meant for a human on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from gateway.access.admin_ops import KeyRequest, parse_duration
from gateway.access.records import KeyStoreError
from gateway.access.remote import ADMIN_KEY_ENV, Admin, LocalAdmin, RemoteAdmin

KEYS_FILE_ENV = "IRGW_KEYS_FILE"
_LIMITS = ("rpm", "tpm", "concurrency", "max_tokens")


def add_keys_commands(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="create, list, show, revoke and rotate API keys")
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    create = commands.add_parser("create", help="create a key and print it once")
    add_store_options(create)
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--rpm", type=_positive_int, help="requests per minute")
    create.add_argument("--tpm", type=_positive_int, help="tokens per minute")
    create.add_argument("--concurrency", type=_positive_int, help="requests in flight")
    create.add_argument("--schemas", type=_schemas, default="*",
                        help="comma-separated schema names the key may use, or * for all "
                        "(default)")
    create.add_argument("--allow-adhoc", action="store_true",
                        help="allow inline (ad-hoc) JSON schemas")
    create.add_argument("--allow-policy-override", action="store_true",
                        help="allow choosing the output policy per request (x-irgw-output-policy)")
    create.add_argument("--max-tokens", type=_positive_int, help="cap on max_tokens")
    create.add_argument("--budget-tokens", type=_positive_int,
                        help="tokens (prompt + generated) per --budget-period; past it, 429")
    create.add_argument("--budget-period", choices=("day", "month"), default="day",
                        help="the budget's period, in UTC (default: day)")
    create.add_argument("--expires-in", type=_duration, metavar="DURATION",
                        help="refuse the key after this long: 30d, 12h, 90m, 45s")
    create.add_argument("--cache", action="store_true",
                        help="answer the key's deterministic requests (temperature 0) from the "
                        "response cache (IRGW_CACHE_BACKEND)")
    create.add_argument("--cache-seeded", action="store_true",
                        help="with --cache: a fixed seed counts as deterministic too")
    create.add_argument("--admin", action="store_true",
                        help="the admin scope: may manage keys and read usage (/admin/v1/)")

    listing = commands.add_parser("list", help="list keys (never their secrets)")
    add_store_options(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    show = commands.add_parser("show", help="one key, as JSON (never its secret)")
    add_store_options(show)
    show.add_argument("key_id", metavar="ID")

    revoke = commands.add_parser("revoke", help="revoke a key; gateways refuse it within 1s")
    add_store_options(revoke)
    revoke.add_argument("key_id", metavar="ID")

    rotate = commands.add_parser("rotate", help="a new secret; the old one lives for --grace")
    add_store_options(rotate)
    rotate.add_argument("key_id", metavar="ID")
    rotate.add_argument("--grace", type=_duration, default="0s", metavar="DURATION",
                        help="how long the old secret stays valid: 1h, 30m (default: 0s)")


def run_keys_command(args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        try:
            request = KeyRequest(
                name=args.name, schemas=args.schemas, allow_adhoc=args.allow_adhoc,
                allow_policy_override=args.allow_policy_override,
                max_tokens=args.max_tokens, rpm=args.rpm, tpm=args.tpm,
                concurrency=args.concurrency, budget_tokens=args.budget_tokens,
                budget_period=args.budget_period, expires_in=args.expires_in,
                scopes=["admin"] if args.admin else [], cache=args.cache,
                cache_seeded=args.cache_seeded)
            request.policy()
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            print(f"error: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
            return 2
        return run_admin(args, lambda admin: _create(admin, request))
    if args.keys_command == "list":
        return run_admin(args, lambda admin: _list(admin, as_json=args.json))
    if args.keys_command == "show":
        return run_admin(args, lambda admin: _show(admin, args.key_id))
    if args.keys_command == "revoke":
        return run_admin(args, lambda admin: _revoke(admin, args.key_id))
    if args.keys_command == "rotate":
        return run_admin(args, lambda admin: _rotate(admin, args.key_id, args.grace))
    print(f"error: unknown keys command {args.keys_command!r}", file=sys.stderr)
    return 2


def run_admin(args: argparse.Namespace, command: Callable[[Admin], Awaitable[int]]) -> int:
    """Open the store (or the gateway) the options name, run `command`, close it."""
    async def run() -> int:
        admin = open_admin(args)
        try:
            return await command(admin)
        finally:
            await admin.aclose()

    try:
        return asyncio.run(run())
    except (KeyStoreError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a missing setting, or a bad argument the parser could not see
        print(f"error: {exc}", file=sys.stderr)
        return 2


def open_admin(args: argparse.Namespace) -> Admin:
    if args.url:
        key = os.environ.get(ADMIN_KEY_ENV)
        if not key:
            raise ValueError(f"--url needs an admin-scoped key in ${ADMIN_KEY_ENV}")
        return RemoteAdmin(args.url, key)
    from gateway.access.store import build_key_backend
    from gateway.settings import Settings

    backend = args.backend or os.environ.get("IRGW_KEYS_BACKEND") or "file"
    keys_file = args.keys_file or os.environ.get(KEYS_FILE_ENV)
    redis_url = args.redis_url or os.environ.get("IRGW_REDIS_URL")
    if backend == "file" and not keys_file:
        raise ValueError(f"no keys file: pass --keys-file or set {KEYS_FILE_ENV} (or "
                            "--backend redis, or --url to use a running gateway)")
    settings = Settings.model_construct(
        keys_backend=backend, keys_file=keys_file, redis_url=redis_url,
        keys_redis_prefix=os.environ.get("IRGW_KEYS_REDIS_PREFIX", "irgw:keys:"),
        keys_refresh_s=0.25)
    create = getattr(args, "keys_command", None) == "create"
    return LocalAdmin(build_key_backend(settings, create=create))


async def _create(admin: Admin, request: KeyRequest) -> int:
    view = await admin.create(request)
    print(f"created key {view['id']} ({view['name']}): {describe(view)}", file=sys.stderr)
    print(view["key"])
    print("This key will not be shown again: store it now.", file=sys.stderr)
    return 0


async def _list(admin: Admin, *, as_json: bool) -> int:
    views = await admin.list()
    if as_json:
        for view in views:
            print(json.dumps(view))
        return 0
    if not views:
        print(f"no keys in {admin.describe}")
        return 0
    rows = [("ID", "NAME", "CREATED", "REVOKED", "EXPIRES", "POLICY")]
    rows += [(v["id"], v["name"], _when(v["created_at"]), _when(v["revoked_at"]),
              _when(v.get("expires_at")), describe(v)) for v in views]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)]
        print("  ".join([*cells, row[5]]))
    return 0


async def _show(admin: Admin, key_id: str) -> int:
    print(json.dumps(await admin.show(key_id), indent=2))
    return 0


async def _revoke(admin: Admin, key_id: str) -> int:
    view = await admin.revoke(key_id)
    print(f"revoked key {view['id']} ({view['name']}) at {_when(view['revoked_at'])}")
    return 0


async def _rotate(admin: Admin, key_id: str, grace: str) -> int:
    view = await admin.rotate(key_id, grace)
    old = (f"the old secret works until {_when(view['previous_valid_until'])}"
           if view.get("previous_valid_until") else "the old secret no longer works")
    print(f"rotated key {view['id']} ({view['name']}): {old}", file=sys.stderr)
    print(view["key"])
    print("This key will not be shown again: store it now.", file=sys.stderr)
    return 0


def _when(moment: str | None) -> str:
    # The API's ISO form, shortened to the second: 2026-12-06T05:21:47Z.
    return moment[:19] + "Z" if moment else "-"


def describe(view: dict[str, Any]) -> str:
    policy = view["policy"]
    schemas = policy["schemas"]
    schemas = "*" if schemas == "*" else ",".join(schemas) or "(none)"
    parts = [f"schemas={schemas}", f"adhoc={'yes' if policy['allow_adhoc'] else 'no'}"]
    if policy.get("allow_policy_override"):
        parts.append("policy_override=yes")
    for label in _LIMITS:
        value = policy.get(label)
        parts.append(f"{label}={value if value is not None else 'unlimited'}")
    if policy.get("budget_tokens") is not None:
        parts.append(f"budget={policy['budget_tokens']}/{policy['budget_period']}")
    if policy.get("cache"):
        parts.append("cache=" + ("seeded" if policy.get("cache_seeded") else "yes"))
    if policy.get("scopes"):
        parts.append(f"scopes={','.join(policy['scopes'])}")
    return " ".join(parts)


def add_store_options(parser: argparse.ArgumentParser) -> None:
    # Resolved when the command runs, not when the parser is built, so the env is read late.
    parser.add_argument("--keys-file", metavar="PATH", default=None,
                        help=f"keys file (default: ${KEYS_FILE_ENV})")
    parser.add_argument("--backend", choices=("file", "redis"), default=None,
                        help="key store (default: $IRGW_KEYS_BACKEND, else file)")
    parser.add_argument("--redis-url", default=None, help="Redis (default: $IRGW_REDIS_URL)")
    parser.add_argument("--url", default=None,
                        help=f"a running gateway's base URL: use its admin API with the key "
                        f"in ${ADMIN_KEY_ENV} instead of the store")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _duration(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _schemas(text: str) -> list[str] | str:
    if text.strip() == "*":
        return "*"
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give schema names separated by commas, or *")
    return names
