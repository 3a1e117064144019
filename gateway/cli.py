"""`ir-gateway`: serve, the local dev stack, keys, schema lint, usage reports, evaluation."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.access.auth import AuthConfigError
    from gateway.access.keys import KeyStoreError
    from gateway.app import create_app
    from gateway.observe.logs import configure_logging, uvicorn_logging
    from gateway.output.registry import SchemaFileError
    from gateway.server.runtime import (
        keep_heap_growth_off_huge_pages,
        restart_on_huge_pages,
        tune_gc_for_serving,
    )
    from gateway.server.serving import uvicorn_options
    from gateway.settings import Settings

    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "upstream_url": args.upstream,
            "host": args.host,
            "port": args.port,
            "config_file": args.config,
        }.items()
        if value is not None
    }
    try:
        settings = Settings(**overrides)
        if settings.huge_pages:
            restart_on_huge_pages()
        configure_logging(settings)
        app = create_app(settings)
    except (SchemaFileError, AuthConfigError, KeyStoreError, ValidationError,
            FileNotFoundError, ValueError) as exc:
        print(f"ir-gateway: cannot start: {exc}", file=sys.stderr)
        return 2
    tune_gc_for_serving()
    if settings.huge_pages:
        keep_heap_growth_off_huge_pages()
    uvicorn.run(app, **uvicorn_options(settings), **uvicorn_logging(settings))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ir-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway in front of a vLLM server")
    serve.add_argument("--upstream", help="vLLM base URL (IRGW_UPSTREAM_URL)")
    serve.add_argument("--host", help="listen address (IRGW_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (IRGW_PORT, default 8080)")
    serve.add_argument("--config", help="TOML settings file (IRGW_CONFIG_FILE)")
    serve.set_defaults(run=_serve)

    from gateway.access.keys_cli import add_keys_commands, run_keys_command
    from gateway.access.usage_cli import add_usage_command
    from gateway.dev.cli import add_dev_command
    from gateway.evaluation.cli import add_eval_command
    from gateway.output.schemas_cli import add_schemas_command

    add_dev_command(commands)
    add_eval_command(commands)
    add_keys_commands(commands)
    add_schemas_command(commands)
    add_usage_command(commands)
    for name, sub in commands.choices.items():
        if name == "keys":
            sub.set_defaults(run=run_keys_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
