"""How a structured-output constraint is spelt for each vLLM release.

| vLLM            | chat                          | completions          |
| 0.9.2 - 0.10.1  | response_format json_schema   | guided_json          |
| 0.10.2 - 0.11.x | response_format json_schema   | structured_outputs   |
| >= 0.12         | response_format json_schema   | structured_outputs   |

`guided_*` is never sent to vLLM >= 0.12: it is silently ignored there (a 200 with
unconstrained output). `guided_decoding_backend` is never sent per request (a mismatch
with the server's backend is a 400). `strict: true` is always sent: a pending vLLM change
makes `strict: false` mean "no grammar".
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.output.registry import RegisteredSchema

_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")
OLDEST_SUPPORTED = (0, 9, 2)


class UnsupportedVersionError(Exception):
    pass


def parse_version(text: str) -> tuple[int, int, int]:
    match = _VERSION_RE.match(text.strip())
    if match is None:
        raise UnsupportedVersionError(f"cannot read vLLM version {text!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


@dataclass(frozen=True)
class Dialect:
    name: str
    version: str
    completions_field: str  # "structured_outputs" or "guided_json"

    def chat_constraint(self, schema: RegisteredSchema) -> dict[str, Any]:
        """Fields to merge into a chat request body. The schema text is pre-serialised so
        the bytes vLLM sees (and caches its grammar by) are identical on every request."""
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": _safe_name(schema.name),
                    "schema": orjson.Fragment(schema.schema_json),
                    "strict": True,
                },
            }
        }

    def completions_constraint(self, schema: RegisteredSchema) -> dict[str, Any]:
        fragment = orjson.Fragment(schema.schema_json)
        if self.completions_field == "guided_json":
            return {"guided_json": fragment}
        return {"structured_outputs": {"json": fragment}}

    def completions_json_object(self) -> dict[str, Any]:
        if self.completions_field == "guided_json":
            return {"guided_json": {"type": "object"}}
        return {"structured_outputs": {"json_object": True}}


def dialect_for(version_text: str) -> Dialect:
    version = parse_version(version_text)
    if version < OLDEST_SUPPORTED:
        raise UnsupportedVersionError(
            f"vLLM {version_text} is older than {'.'.join(map(str, OLDEST_SUPPORTED))}, "
            "the oldest release whose structured-output API the gateway knows"
        )
    if version < (0, 10, 2):
        return Dialect("vllm-0.9", version_text, "guided_json")
    if version < (0, 12, 0):
        return Dialect("vllm-0.10", version_text, "structured_outputs")
    return Dialect("vllm-0.12+", version_text, "structured_outputs")


@functools.lru_cache(maxsize=1024)  # names come from the registry, or are ad-hoc
def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "schema"
