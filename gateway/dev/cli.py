"""`ir-gateway dev` (placeholder until the stack lands)."""

from __future__ import annotations

import argparse
from typing import Any


def add_dev_command(commands: Any) -> None:
    dev = commands.add_parser("dev", help="start a local vLLM (CPU) and the gateway")
    dev.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    raise SystemExit("ir-gateway dev: not available yet")
