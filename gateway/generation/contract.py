"""The request contract: each field of a chat or completions body, written once.

A row names a field, the constraint the gateway enforces (a JSON Schema fragment), the 400
it answers when a value breaks it, and what the document adds (descriptions, and the shapes
vLLM checks itself). `planning.py` and `budget.py` check bodies with these rows, and
`openapi_doc/requests.py` builds the request schemas of the OpenAPI document from them, so
the two cannot drift (`tests/test_contract.py`). The checks are plain Python derived from
the fragment, not a pydantic/msgspec model: one that could also write the document costs
measurably more per body (bench/results/request_contract.md; docs/architecture.md says why).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import InvalidRequestError

JSON = dict[str, Any]
Accepts = Callable[[Any], bool]

# Types as the client wrote them: `true` is not an integer and `1.0` is not one either
# (JSON Schema would call 1.0 an integer; the gateway reads the client's text).
_TYPES: dict[str, type] = {
    "boolean": bool, "integer": int, "string": str, "array": list, "object": dict,
}
_ANNOTATIONS = frozenset({"description", "examples", "default", "title", "deprecated"})


def accepts(schema: JSON) -> Accepts:
    """The fragment as one Python test: the few keywords the contract uses, at most one
    besides `type`, each check a single call (they run on every request)."""
    kind = _TYPES[schema["type"]] if "type" in schema else None
    bounds = [(k, v) for k, v in schema.items() if k != "type" and k not in _ANNOTATIONS]
    if len(bounds) > 1:
        raise ValueError(f"the contract checks one keyword besides `type`: {schema}")
    if not bounds:
        return (lambda v: True) if kind is None else (lambda v: type(v) is kind)
    keyword, limit = bounds[0]
    if keyword == "enum":
        return lambda v: v in limit and (kind is None or type(v) is kind)
    if kind is None:
        raise ValueError(f"{keyword!r} needs a `type` beside it: {schema}")
    if keyword == "minimum":
        return lambda v: type(v) is kind and v >= limit
    if keyword in ("minLength", "minItems"):
        return lambda v: type(v) is kind and len(v) >= limit
    if keyword == "const":
        return lambda v: type(v) is kind and v == limit
    if keyword == "pattern":
        # Only anchored patterns: Python's fullmatch then agrees with ECMA-262's search
        # (and refuses "name\n", which `re.match` with `$` would let through).
        if not (limit.startswith("^") and limit.endswith("$")):
            raise ValueError(f"contract patterns are anchored: {limit!r}")
        match = re.compile(limit).fullmatch
        return lambda v: type(v) is kind and match(v) is not None
    raise ValueError(f"the contract does not check {keyword!r}; add it to `accepts`")


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a request body (or of an object in it, then `param` is its path)."""

    name: str
    enforced: JSON  # what the gateway refuses with a 400 otherwise; {}: vLLM checks it
    message: str = ""  # that 400's message
    documented: JSON = field(default_factory=dict)  # what the document adds
    required: bool = False
    null_is_unset: bool = True  # `null` reads as absent (else it must pass `enforced`)
    param: str = ""  # the error's `param`; the name when empty
    check: Accepts = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.enforced and not self.message:
            raise ValueError(f"{self.name}: an enforced field needs its error message")
        clash = self.enforced.keys() & self.documented.keys()
        if clash:  # the document may only add to what is enforced, never restate it
            raise ValueError(f"{self.name}: {sorted(clash)} both enforced and documented")
        object.__setattr__(self, "check", accepts(self.enforced))
        if not self.param:
            object.__setattr__(self, "param", self.name)

    def error(self) -> InvalidRequestError:
        return InvalidRequestError(self.message, param=self.param)

    def read(self, container: dict[str, Any]) -> Any:
        """The field's value (None when unset), or the 400 if it breaks the contract."""
        value = container.get(self.name)
        if value is None and (self.null_is_unset or self.name not in container):
            if self.required:
                raise self.error()
            return None
        if not self.check(value):
            raise self.error()
        return value

    def validate(self, value: Any) -> Any:
        """`value`, checked (for a value not read from a body, such as the body itself)."""
        if not self.check(value):
            raise self.error()
        return value

    def schema(self) -> JSON:
        """The field's schema in the document: enforced + documented, null allowed when
        the gateway reads it as unset."""
        merged = {**self.enforced, **self.documented}
        if not self.enforced or not self.null_is_unset or self.required:
            return merged  # (what vLLM alone checks is documented as OpenAI has it)
        notes = {k: v for k, v in merged.items() if k in _ANNOTATIONS}
        shape = {k: v for k, v in merged.items() if k not in _ANNOTATIONS}
        return {**notes, "anyOf": [shape, {"type": "null"}]}


@dataclass(frozen=True)
class Rule:
    """A constraint across fields, with its 400; `schema` is how the document says it (on
    the request object)."""

    message: str
    param: str
    schema: JSON

    def error(self) -> InvalidRequestError:
        return InvalidRequestError(self.message, param=self.param)


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


# OpenAI's rule for json_schema.name; it also keeps the name safe in a response header.
ADHOC_NAME_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
ADHOC_NAME_RE = re.compile(ADHOC_NAME_PATTERN)
SCHEMA_MODEL_PREFIX = "schema/"

BODY = Field("body", {"type": "object"}, "'body' must be an object")
MODEL = Field(
    "model", {"type": "string", "minLength": 1}, "'model' is required and must be a string",
    required=True, documented={
        "description": "An upstream model id (see `GET /v1/models`), or "
        "`schema/<name>[@<version>]`: the default upstream model with that registered schema "
        "as the output constraint (newest version when `@<version>` is left out).",
        "examples": ["tiny-qwen2", "schema/function_ir", "schema/function_ir@1"]},
)
MESSAGES = Field("messages", {"type": "array", "minItems": 1},
                 "'messages' must be a non-empty array", required=True,
                 documented={"items": _ref("ChatMessage")})
PROMPT = Field("prompt", {}, "'prompt' is required", required=True, null_is_unset=False,
               documented={"anyOf": [{"type": "string"},
                                     {"type": "array", "items": {"type": "string"}}]})
STREAM = Field("stream", {"type": "boolean"}, "'stream' must be a boolean", null_is_unset=False,
               documented={"default": False})  # each route describes what it streams
STREAM_OPTIONS = Field("stream_options", {"type": "object"}, "'stream_options' must be an object",
                       documented={"$ref": "#/components/schemas/StreamOptions"})
# vLLM and OpenAI refuse `stream_options` on a request that does not stream; so does the
# gateway, and the document says so, so that a client generated from it agrees.
STREAM_OPTIONS_NEED_STREAM = Rule(
    "'stream_options' is only allowed when 'stream' is true", "stream_options",
    {"if": {"not": {"properties": {"stream": {"const": True}}, "required": ["stream"]}},
     "then": {"properties": {"stream_options": {"type": "null"}}}},
)
INCLUDE_USAGE = Field("include_usage", {}, documented={
    "type": "boolean", "description": "Send a last chunk with `choices: []` and the usage."})
_MAX_TOKENS_NOTE = (
    "Per answer. Defaults to the gateway's `default_max_tokens` for structured requests and "
    "for keys with a token limit (clipped to what the key's limits allow). `n` x prompts x "
    "max_tokens above the key's `max_tokens` cap is a 400 `max_tokens_above_key_limit`; with "
    "the prompt, above its TPM a 400 `request_too_large`.")
_POSITIVE: JSON = {"type": "integer", "minimum": 1}
MAX_TOKENS = Field("max_tokens", _POSITIVE, "'max_tokens' must be a positive integer",
                   documented={"description": _MAX_TOKENS_NOTE})
MAX_COMPLETION_TOKENS = Field(
    "max_completion_tokens", _POSITIVE, "'max_completion_tokens' must be a positive integer",
    documented={"description": "Preferred over `max_tokens` when both are set."})
# Counted into what a request reserves (`budget.py`); a checked answer is one answer.
N = Field("n", _POSITIVE, "'n' must be a positive integer", documented={
    "default": 1, "description": "Must be 1 for structured output."})
ONE_CHOICE = Field("n", {"type": "integer", "const": 1},
                   "'n' must be 1 for structured output")
# vLLM's: the prompt (or, in chat, the last message) written before the answer.
ECHO = Field("echo", {}, documented={
    "type": "boolean", "description": "vLLM's: the prompt before the answer. Refused with "
    "structured output, whose answer is the JSON alone."})
BEST_OF = Field("best_of", _POSITIVE, "'best_of' must be a positive integer", documented={
    "description": "vLLM's: answers generated per prompt, the best returned; counted into "
                   "what the request reserves."})
RESPONSE_FORMAT = Field("response_format", {"type": "object"},
                        "'response_format' must be an object",
                        documented={"$ref": "#/components/schemas/ResponseFormat"})
RESPONSE_FORMAT_TYPE = Field(
    "type", {"enum": ["text", "json_object", "json_schema"]},
    "response_format.type must be one of 'text', 'json_object', 'json_schema'",
    required=True, param="response_format.type",
)
JSON_SCHEMA = Field("json_schema", {"type": "object"},
                    "'response_format.json_schema' must be an object", required=True,
                    param="response_format.json_schema")
# `name` is read two ways: with `schema` a label for the ad-hoc schema, without one the
# registered schema it names.
ADHOC_NAME = Field(
    "name", {"type": "string", "pattern": ADHOC_NAME_PATTERN},
    "response_format.json_schema.name must be 1-64 characters of a-z, A-Z, 0-9, '_' and '-' "
    "(as OpenAI requires)", param="response_format.json_schema.name",
)
REGISTERED_NAME = Field(
    "name", {"type": "string", "minLength": 1},
    "response_format.json_schema needs a 'name' of a registered schema, or a 'schema'",
    required=True, param="response_format.json_schema.name",
)
JSON_SCHEMA_FIELDS: tuple[Field, ...] = (
    Field("name", {}, documented={
        "type": "string", "description": "A registered schema (`name` or `name@version`) when "
        "`schema` is absent; otherwise a label for the ad-hoc schema: 1-64 characters of a-z, "
        "A-Z, 0-9, `_` and `-`, as OpenAI requires.",
        "examples": ["function_ir", "function_ir@1"]}),
    Field("schema", {}, documented={
        "type": "object", "description": "An ad-hoc JSON Schema (Draft 2020-12); invalid ones "
        "are a 400 `invalid_schema`."}),
    Field("strict", {}, documented={
        "type": "boolean", "description": "Accepted; the gateway always constrains and "
        "validates."}),
    Field("description", {}, documented={"type": "string"}),
)

# Passed to vLLM as they are (it checks them); listed so that the document shows them.
TOOLS = Field("tools", {}, documented={"type": "array", "items": _ref("Tool")})
TOOL_CHOICE = Field("tool_choice", {}, documented=_ref("ToolChoice"))
PARALLEL_TOOL_CALLS = Field("parallel_tool_calls", {}, documented={"type": "boolean"})
SAMPLING: tuple[Field, ...] = (
    Field("temperature", {}, documented={"type": "number", "minimum": 0, "maximum": 2}),
    Field("top_p", {}, documented={"type": "number", "minimum": 0, "maximum": 1}),
    Field("seed", {}, documented={"type": "integer"}),
    Field("stop", {}, documented={"anyOf": [{"type": "string"},
                                            {"type": "array", "items": {"type": "string"}},
                                            {"type": "null"}]}),
    Field("user", {}, documented={"type": "string"}),
)
