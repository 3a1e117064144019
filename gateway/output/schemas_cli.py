"""`ir-gateway schemas lint PATH...`: what vLLM 0.32's xgrammar backend does with a schema.

Each PATH is a schema file (a registry file `{"name", "version", "schema", ...}` or a bare
JSON Schema) or a directory of `*.json` files. Per schema: errors, for what vLLM would refuse
(a 400 for every request) or fail to compile (a 500) if sent as written; warnings, for
keywords xgrammar would not enforce while decoding. Exit 1 when any schema has an error, 0
otherwise (warnings listed), 2 when a PATH does not exist. The rules are
`gateway.output.engine_rules`, the same the registry applies at startup and the gateway at request
time for ad-hoc schemas.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.errors import InvalidSchemaError
from gateway.output.engine_rules import analyse
from gateway.output.engine_vllm import vllm_refuses
from gateway.output.registry import check_json_schema


def add_schemas_command(subparsers: argparse._SubParsersAction) -> None:
    schemas = subparsers.add_parser("schemas", help="check schema files")
    actions = schemas.add_subparsers(dest="schemas_command", required=True)
    lint = actions.add_parser(
        "lint", help="what vLLM's xgrammar backend would refuse or not enforce")
    lint.add_argument("paths", nargs="+", metavar="PATH", help="schema files or directories")
    lint.add_argument("--json", action="store_true", help="one JSON document on stdout")
    schemas.set_defaults(run=run_schemas_command)


def lint_schema(schema: Any) -> dict[str, Any]:
    """Errors and warnings for one JSON Schema."""
    try:
        check_json_schema(schema, what="the schema")
    except InvalidSchemaError as exc:
        return {"errors": [exc.message], "warnings": [], "registry_loads": False}
    view = analyse(schema)
    errors = list(view.refused)
    if vllm_refuses(schema):
        errors.append("vLLM 0.32 refuses it as written (has_xgrammar_unsupported_json_"
                      "features: a 400 for every request); the keywords are listed below")
    errors.extend(f"{error} (as written)" for error in view.compile_errors)
    return {"errors": errors, "warnings": view.warnings,
            "registry_loads": not (view.unenforced or view.refused)}


def lint_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"path": str(path), "errors": [f"cannot read JSON: {exc}"], "warnings": [],
                "registry_loads": False}
    is_registry_file = isinstance(data, dict) and "schema" in data and "name" in data
    result = lint_schema(data["schema"] if is_registry_file else data)
    return {"path": str(path), **result}


def _files(paths: list[str]) -> list[Path] | str:
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found.extend(sorted(path.glob("*.json")))
        elif path.is_file():
            found.append(path)
        else:
            return f"no such file or directory: {name}"
    return found


def run_schemas_command(args: argparse.Namespace) -> int:
    files = _files(args.paths)
    if isinstance(files, str):
        print(f"ir-gateway schemas lint: {files}", file=sys.stderr)
        return 2
    results = [lint_file(path) for path in files]
    if args.json:
        print(json.dumps({"schemas": results}, indent=2))
    else:
        for result in results:
            for error in result["errors"]:
                print(f"{result['path']}: error: {error}")
            for warning in result["warnings"]:
                print(f"{result['path']}: warning: {warning}")
            if not result["errors"] and not result["warnings"]:
                print(f"{result['path']}: ok")
            elif not result["registry_loads"]:
                print(f"{result['path']}: note: the gateway's registry refuses it at startup "
                      "(ad hoc, it runs with the warnings above)")
        failed = sum(bool(r["errors"]) for r in results)
        print(f"{len(results)} schema(s), {failed} with errors", file=sys.stderr)
    return 1 if any(r["errors"] for r in results) else 0
