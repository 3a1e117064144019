"""`python -m gateway.openapi_doc`: write, print or check the checked-in document.

Kept apart from `document` (which the app imports to serve `/openapi.json`) because it
builds an app itself: the app's module and this one import each other otherwise.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.app import create_app
from gateway.openapi_doc.document import JSON, _quiet_auth_warning
from gateway.openapi_doc.headers import DOCUMENT_PATH, REPO
from gateway.settings import Settings


def build_document() -> JSON:
    # Auth off so no keys file is needed; the document still declares bearer auth,
    # which is how the gateway is deployed. Only the route table is read from the app.
    with _quiet_auth_warning():
        app = create_app(Settings(auth_enabled=False, schemas_dir=REPO / "schemas"))
    return app.openapi()


def render(doc: JSON) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def check(path: Path = DOCUMENT_PATH) -> list[str]:
    """Differences between the generated document and `path`, as unified-diff lines."""
    expected = render(build_document())
    try:
        actual = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [f"{path} does not exist"]
    if actual == expected:
        return []
    return list(difflib.unified_diff(actual.splitlines(), expected.splitlines(),
                                     fromfile=f"{path} (checked in)", tofile="generated",
                                     lineterm="", n=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.openapi_doc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"write {DOCUMENT_PATH}")
    action.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    action.add_argument("--print", action="store_true", help="print the document")
    parser.add_argument("--path", type=Path, default=DOCUMENT_PATH)
    args = parser.parse_args(argv)
    if args.print:
        sys.stdout.write(render(build_document()))
        return 0
    if args.write:
        args.path.parent.mkdir(parents=True, exist_ok=True)
        args.path.write_text(render(build_document()), encoding="utf-8")
        print(f"wrote {args.path}")
        return 0
    if not args.path.is_file():
        print(f"{args.path} does not exist; run `python -m gateway.openapi_doc --write` "
              "(or `make openapi`)", file=sys.stderr)
        return 1
    diff = check(args.path)
    if not diff:
        print(f"{args.path} is up to date")
        return 0
    changed = sum(1 for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---"))
    print(f"{args.path} is stale ({changed} changed lines); run "
          "`python -m gateway.openapi_doc --write` (or `make openapi`). First differences:",
          file=sys.stderr)
    for line in diff[:60]:
        print(line, file=sys.stderr)
    return 1
