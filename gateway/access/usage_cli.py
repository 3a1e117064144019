"""`ir-gateway usage [--key ID] [--since DATE]`: usage per key, schema and UTC day.

Read from the usage store itself (`--backend sqlite --usage-file PATH`, or `--backend redis`)
or from a running gateway's admin API (`--url URL`, an admin key in $IRGW_ADMIN_KEY).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway.access.remote import ADMIN_KEY_ENV, AdminError, RemoteAdmin
from gateway.access.usage import parse_since, rows_of
from gateway.access.usage_sinks import RedisUsage, SqliteUsage

_COLUMNS = ("DAY", "KEY", "SCHEMA", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "OUTCOMES")


def add_usage_command(subparsers: argparse._SubParsersAction) -> None:
    usage = subparsers.add_parser("usage", help="usage per key, schema and day")
    usage.add_argument("--key", metavar="ID", help="one key only")
    usage.add_argument("--since", metavar="DATE", help="from this UTC day on (YYYY-MM-DD; "
                       "default: the last 30 days)")
    usage.add_argument("--json", action="store_true", help="one JSON object per line")
    usage.add_argument("--backend", choices=("sqlite", "redis"), default=None,
                       help="usage store (default: $IRGW_USAGE_BACKEND)")
    usage.add_argument("--usage-file", default=None, help="SQLite file ($IRGW_USAGE_FILE)")
    usage.add_argument("--redis-url", default=None, help="Redis ($IRGW_REDIS_URL)")
    usage.add_argument("--url", default=None, help=f"a running gateway: its admin API, with "
                       f"the key in ${ADMIN_KEY_ENV}")
    usage.set_defaults(run=run_usage_command)


def _open_sink(args: argparse.Namespace) -> SqliteUsage | RedisUsage | None:
    """The usage store the options name; None: ask the gateway at --url instead."""
    if args.url:
        return None
    backend = args.backend or os.environ.get("IRGW_USAGE_BACKEND")
    if backend == "redis":
        url = args.redis_url or os.environ.get("IRGW_REDIS_URL")
        if not url:
            raise ValueError("--backend redis needs --redis-url or $IRGW_REDIS_URL")
        from gateway.access.redisconn import redis_client

        return RedisUsage(redis_client(url), owns_client=True,
                          prefix=os.environ.get("IRGW_USAGE_REDIS_PREFIX", "irgw:usage:"))
    if backend == "sqlite":
        path = args.usage_file or os.environ.get("IRGW_USAGE_FILE")
        if not path or not Path(path).is_file():
            raise ValueError(f"no usage database at {path!r}: pass --usage-file or set "
                             "IRGW_USAGE_FILE")
        return SqliteUsage(Path(path))
    raise ValueError("say where usage is kept: --backend sqlite|redis (or "
                     "$IRGW_USAGE_BACKEND), or --url for a running gateway")


async def _rows(args: argparse.Namespace,
                sink: SqliteUsage | RedisUsage | None) -> list[dict[str, Any]]:
    since = parse_since(args.since)
    if sink is not None:
        try:
            return rows_of(await sink.read(args.key, since))
        finally:
            await sink.aclose()
    key = os.environ.get(ADMIN_KEY_ENV)
    if not key:
        raise ValueError(f"--url needs an admin-scoped key in ${ADMIN_KEY_ENV}")
    remote = RemoteAdmin(args.url, key)
    try:
        rows: list[dict[str, Any]] = (await remote.usage(args.key, since.isoformat()))["data"]
        return rows
    finally:
        await remote.aclose()


def run_usage_command(args: argparse.Namespace) -> int:
    try:
        rows = asyncio.run(_rows(args, _open_sink(args)))
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print("no usage in that period")
        return 0
    table = [_COLUMNS] + [
        (row["day"], row["key_id"], row["schema"], str(row["requests"]),
         str(row["prompt_tokens"]), str(row["completion_tokens"]), str(row["total_tokens"]),
         " ".join(f"{name}={count}" for name, count in row["outcomes"].items()))
        for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS) - 1)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)]
        print("  ".join([*cells, line[-1]]))
    return 0
