"""`ir-gateway eval`: the command (argument parsing; the work is in `runner` and `report`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_POLICIES = "error,repair,retry,reask"
MAX_CONCURRENCY = 64


def _concurrency(value: str) -> int:
    number = int(value)
    if not 1 <= number <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_CONCURRENCY}")
    return number


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def add_eval_command(commands: Any) -> None:
    ev = commands.add_parser(
        "eval", help="measure valid-answer rates of a running gateway per schema and policy",
        description="Send a prompt set (<schema>.jsonl files of {\"id\", \"prompt\"}) to a "
        "running gateway under each output policy (chosen per request with "
        "x-irgw-output-policy: the key needs --allow-policy-override, or auth off as under "
        "`ir-gateway dev`), then write report.md, outcomes.png and results.jsonl.")
    ev.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's base URL")
    ev.add_argument("--api-key", default=None,
                    help="gateway key (default: $IRGW_EVAL_API_KEY; none with auth off)")
    ev.add_argument("--prompts", type=Path, default=Path("bench/prompts"),
                    help="directory of <schema>.jsonl prompt sets (default bench/prompts)")
    ev.add_argument("--schemas", default=None,
                    help="comma-separated schema names (default: every <schema>.jsonl there)")
    ev.add_argument("--policies", default=DEFAULT_POLICIES,
                    help=f"comma-separated output policies (default {DEFAULT_POLICIES})")
    ev.add_argument("--limit", type=_positive, default=None,
                    help="the first N prompts of each set (default: all)")
    ev.add_argument("--concurrency", type=_concurrency, default=2,
                    help=f"requests in flight at most (1-{MAX_CONCURRENCY}, default 2)")
    ev.add_argument("--max-tokens", type=_positive, default=512,
                    help="max_tokens of each request (default 512)")
    ev.add_argument("--timeout", type=float, default=600.0,
                    help="seconds per request, retries included (default 600)")
    ev.add_argument("--route", choices=("chat", "completions"), default="chat")
    ev.add_argument("--out", type=Path, default=Path("bench/results/eval"),
                    help="report directory (default bench/results/eval)")
    ev.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    ev.set_defaults(run=_run)


def _command(args: argparse.Namespace, schemas: list[str], policies: list[str]) -> str:
    """The command as it can be run again (never the key)."""
    parts = ["ir-gateway", "eval", "--url", args.url, "--prompts", str(args.prompts),
             "--schemas", ",".join(schemas), "--policies", ",".join(policies),
             "--concurrency", str(args.concurrency), "--max-tokens", str(args.max_tokens),
             "--route", args.route, "--out", str(args.out)]
    if args.limit:
        parts += ["--limit", str(args.limit)]
    return shlex.join(parts)


def _run(args: argparse.Namespace) -> int:
    import httpx

    from gateway.evaluation.report import markdown, plot, summarise
    from gateway.evaluation.runner import (
        EvalConfig,
        PromptSetError,
        read_prompt_set,
        run_eval,
        write_results,
    )
    from gateway.output.policies import POLICIES

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        print(f"ir-gateway eval: unknown policies {unknown}; choose from {list(POLICIES)}",
              file=sys.stderr)
        return 2
    if args.schemas:
        schemas = [s.strip() for s in args.schemas.split(",") if s.strip()]
    else:
        schemas = sorted(p.stem for p in args.prompts.glob("*.jsonl"))
    try:
        sets = {name: read_prompt_set(args.prompts / f"{name}.jsonl", args.limit)
                for name in schemas}
        if not sets:
            raise PromptSetError(f"no <schema>.jsonl prompt sets in {args.prompts}")
        config = EvalConfig(args.url, sets, policies, args.concurrency, args.max_tokens,
                            args.timeout, args.api_key or os.environ.get("IRGW_EVAL_API_KEY"),
                            args.route)
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        clock = time.monotonic()
        results = asyncio.run(run_eval(config))
    except (PromptSetError, OSError) as exc:
        print(f"ir-gateway eval: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:  # the gateway unreachable before the run began
        print(f"ir-gateway eval: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(results, args.out / "results.jsonl")
    cells = summarise(results)
    plot_name = None
    if not args.no_plot:
        plot(cells, args.out / "outcomes.png")
        plot_name = "outcomes.png"
    header = [f"started {started}, {time.monotonic() - clock:.0f} s, {len(results)} requests "
              f"against {args.url} (route {args.route}, max_tokens {args.max_tokens}, "
              f"concurrency {args.concurrency})",
              f"prompt sets: {', '.join(f'{n} ({len(p)} prompts)' for n, p in sets.items())}",
              f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}"]
    (args.out / "report.md").write_text(markdown(
        cells, command=_command(args, schemas, policies), header=header, plot_name=plot_name))
    for cell in cells:
        print(f"{cell.schema:14} {cell.policy:7} valid {cell.valid_rate:4.0%} "
              + " ".join(f"{o}={cell.counts[o]}" for o in cell.counts))
    print(f"wrote {args.out / 'report.md'}")
    return 0
