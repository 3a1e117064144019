"""`ir-gateway keys create|list|revoke`: manage the keys file.

`create` prints the key alone on stdout (so `KEY=$(ir-gateway keys create ...)` works)
and everything meant for a human on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Literal

from pydantic import ValidationError

from gateway.keys import KeyPolicy, KeyStore, KeyStoreError

KEYS_FILE_ENV = "IRGW_KEYS_FILE"


def add_keys_commands(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="create, list and revoke API keys")
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    create = commands.add_parser("create", help="create a key and print it once")
    _add_keys_file(create)
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--rpm", type=_positive_int, help="requests per minute")
    create.add_argument("--tpm", type=_positive_int, help="tokens per minute")
    create.add_argument("--concurrency", type=_positive_int, help="requests in flight")
    create.add_argument(
        "--schemas",
        type=_schemas,
        default="*",
        help="comma-separated schema names the key may use, or * for all (default)",
    )
    create.add_argument(
        "--allow-adhoc", action="store_true", help="allow inline (ad-hoc) JSON schemas"
    )
    create.add_argument(
        "--allow-policy-override", action="store_true",
        help="allow choosing the output policy per request (x-irgw-output-policy)",
    )
    create.add_argument("--max-tokens", type=_positive_int, help="cap on max_tokens")

    listing = commands.add_parser("list", help="list keys (never their secrets)")
    _add_keys_file(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    revoke = commands.add_parser("revoke", help="revoke a key; gateways refuse it within 1s")
    _add_keys_file(revoke)
    revoke.add_argument("key_id", metavar="ID")


def run_keys_command(args: argparse.Namespace) -> int:
    keys_file = args.keys_file or os.environ.get(KEYS_FILE_ENV)
    if not keys_file:
        print(f"error: no keys file: pass --keys-file or set {KEYS_FILE_ENV}", file=sys.stderr)
        return 2
    try:
        if args.keys_command == "create":
            return _create(keys_file, args)
        if args.keys_command == "list":
            return _list(KeyStore(keys_file), as_json=args.json)
        if args.keys_command == "revoke":
            record = KeyStore(keys_file).revoke(args.key_id)
            print(f"revoked key {record.id} ({record.name}) at {_when(record.revoked_at)}")
            return 0
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a bad argument the parser could not see, e.g. a blank name
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"error: unknown keys command {args.keys_command!r}", file=sys.stderr)
    return 2


def _create(keys_file: str, args: argparse.Namespace) -> int:
    try:
        policy = KeyPolicy(
            schemas=args.schemas,
            allow_adhoc=args.allow_adhoc,
            allow_policy_override=args.allow_policy_override,
            max_tokens=args.max_tokens,
            rpm=args.rpm,
            tpm=args.tpm,
            concurrency=args.concurrency,
        )
    except ValidationError as exc:
        print(f"error: invalid policy: {exc.errors(include_url=False)}", file=sys.stderr)
        return 2
    record, plaintext = KeyStore(keys_file, create=True).create(args.name, policy)
    print(f"created key {record.id} ({record.name}): {_describe(record.policy)}", file=sys.stderr)
    print(plaintext)
    print("This key will not be shown again: store it now.", file=sys.stderr)
    return 0


def _list(store: KeyStore, *, as_json: bool) -> int:
    records = store.list()
    if as_json:
        for record in records:
            print(json.dumps(record.model_dump(mode="json", exclude={"secret_sha256"})))
        return 0
    if not records:
        print(f"no keys in {store.path}")
        return 0
    rows = [("ID", "NAME", "CREATED", "REVOKED", "POLICY")]
    rows += [
        (
            record.id,
            record.name,
            _when(record.created_at),
            _when(record.revoked_at),
            _describe(record.policy),
        )
        for record in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        print("  ".join([*cells, row[4]]))
    return 0


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}" if moment is not None else "-"


def _describe(policy: KeyPolicy) -> str:
    schemas = "*" if policy.schemas == "*" else ",".join(policy.schemas) or "(none)"
    parts = [f"schemas={schemas}", f"adhoc={'yes' if policy.allow_adhoc else 'no'}"]
    if policy.allow_policy_override:
        parts.append("policy_override=yes")
    for label, value in (
        ("rpm", policy.rpm),
        ("tpm", policy.tpm),
        ("concurrency", policy.concurrency),
        ("max_tokens", policy.max_tokens),
    ):
        parts.append(f"{label}={value if value is not None else 'unlimited'}")
    return " ".join(parts)


def _add_keys_file(parser: argparse.ArgumentParser) -> None:
    # Resolved when the command runs, not when the parser is built, so the env is read late.
    parser.add_argument(
        "--keys-file", metavar="PATH", default=None, help=f"keys file (default: ${KEYS_FILE_ENV})"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _schemas(text: str) -> list[str] | Literal["*"]:
    if text.strip() == "*":
        return "*"
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give schema names separated by commas, or *")
    return names

