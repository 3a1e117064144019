"""From a client's chat request to what the gateway will ask vLLM and check afterwards.

A request names a schema in one of two ways:
- `response_format: {"type": "json_schema", "json_schema": {"name": "function_ir[@1]"}}`
  without a `schema` (a registered schema), or with one (an ad-hoc schema, as
  `client.chat.completions.parse(response_format=Model)` sends);
- `model: "schema/function_ir[@1]"`: the default upstream model with that schema.
Everything the gateway does not need to understand is passed to vLLM as it came.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from gateway.access.auth import schema_not_allowed
from gateway.errors import InvalidRequestError
from gateway.generation import contract
from gateway.generation.contract import ADHOC_NAME_RE as ADHOC_NAME_RE  # for tools.py
from gateway.generation.contract import SCHEMA_MODEL_PREFIX as SCHEMA_MODEL_PREFIX
from gateway.output.adhoc import AdhocSchemas, PendingAdhoc
from gateway.output.policies import DEFAULT_POLICY, Policy, policy_named
from gateway.output.registry import RegisteredSchema, SchemaRegistry
from gateway.settings import Settings
from gateway.upstream.dialects import Dialect

# Which registered schema names the caller may use (its key's scope); None: all.
Visible = Callable[[str], bool] | None


class Mode(StrEnum):
    SCHEMA = "schema"  # a registered or ad-hoc JSON Schema: parse + validate
    JSON_OBJECT = "json_object"  # any JSON object: parse only
    TOOL = "tool"  # one forced tool, served as a schema and answered as a tool call
    PASSTHROUGH = "passthrough"  # plain text, or tool choice left to vLLM


@dataclass
class ChatPlan:
    body: dict[str, Any]  # the client's body, untouched
    mode: Mode
    model_alias: str | None  # the `schema/...` model the client named, if any
    schema: RegisteredSchema | None = None
    # An ad-hoc schema, compiled into `schema` only once the key is authorized and admitted.
    pending: PendingAdhoc | None = None
    policy: Policy = DEFAULT_POLICY
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def checked(self) -> bool:
        return self.mode is not Mode.PASSTHROUGH

    @property
    def schema_ref(self) -> str | None:
        if self.pending is not None:
            return self.pending.ref
        return self.schema.ref if self.schema is not None else None

    async def compile_pending(self, adhoc: AdhocSchemas) -> None:
        """Compile the ad-hoc schema (after authorization and admission), off the event
        loop: 400 past a cap."""
        if self.pending is None:
            return
        self.schema = await adhoc.compile_off_loop(self.pending)
        self.pending = None
        self.warnings.extend(self.schema.unenforced)


def plan_chat(body: Any, registry: SchemaRegistry, settings: Settings,
              visible: Visible = None) -> ChatPlan:
    """A `/v1/chat/completions` body, a forced tool call included."""
    body = contract.BODY.validate(body)
    model: str = contract.MODEL.read(body)
    contract.MESSAGES.read(body)
    plan = _plan(body, model, registry, settings, visible)
    _plan_forced_tool(plan, registry, settings)
    return plan


def plan_completion(body: Any, registry: SchemaRegistry, settings: Settings,
                    visible: Visible = None) -> ChatPlan:
    """A `/v1/completions` body: the same schema naming, a `prompt` instead of messages."""
    body = contract.BODY.validate(body)
    model: str = contract.MODEL.read(body)
    contract.PROMPT.read(body)
    plan = _plan(body, model, registry, settings, visible)
    if plan.checked and _prompt_count(body["prompt"]) > 1:
        # vLLM answers each prompt of a list; a checked answer is one answer.
        raise InvalidRequestError("structured output takes one prompt per request (a string, "
                                  "or one list of token ids)", param="prompt")
    return plan


def _prompt_count(prompt: Any) -> int:
    if not isinstance(prompt, list) or all(type(p) is int for p in prompt):
        return 1  # a string, or the token ids of one prompt
    return len(prompt)


def _resolve(registry: SchemaRegistry, ref: str, param: str,
             visible: Visible) -> RegisteredSchema:
    """The key's scope first: a name outside it is a 403 whether or not it is registered
    (as `/v1/schemas/{name}` answers), and a 404 lists only names in it, so a scoped key
    learns no other schema's name."""
    name = ref.partition("@")[0]
    if visible is not None and not visible(name):
        raise schema_not_allowed(name)
    return registry.resolve(ref, param=param, visible=visible)


def _plan(body: dict[str, Any], model: str, registry: SchemaRegistry,
          settings: Settings, visible: Visible) -> ChatPlan:
    stream: bool = contract.STREAM.read(body) or False
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise contract.STREAM_OPTIONS_NEED_STREAM.error()
        contract.STREAM_OPTIONS.validate(stream_options)
    include_usage = bool(stream_options and stream_options.get("include_usage"))
    # max_tokens is not checked when max_completion_tokens is set: vLLM reads only one.
    max_tokens = (contract.MAX_COMPLETION_TOKENS.read(body)
                  or contract.MAX_TOKENS.read(body))

    alias_schema: RegisteredSchema | None = None
    model_alias: str | None = None
    if model.startswith(SCHEMA_MODEL_PREFIX):
        model_alias = model
        alias_schema = _resolve(registry, model[len(SCHEMA_MODEL_PREFIX):], "model", visible)

    plan = ChatPlan(body=body, mode=Mode.PASSTHROUGH, model_alias=model_alias, stream=stream,
                    include_usage=include_usage, max_tokens=max_tokens)
    response_format = contract.RESPONSE_FORMAT.read(body)
    if response_format is not None:
        _plan_response_format(plan, response_format, registry, visible)
    if alias_schema is not None:
        if plan.schema_ref is not None and plan.schema is not alias_schema:
            raise InvalidRequestError(
                f"model {model!r} names schema {alias_schema.ref} but response_format names "
                f"{plan.schema_ref}; name one", param="response_format",
            )
        if plan.mode is Mode.JSON_OBJECT and alias_schema.schema.get("type") != "object":
            raise InvalidRequestError(
                f"model {model!r} names a schema whose answers are not JSON objects; drop "
                "response_format json_object", param="response_format",
            )
        # json_object with an object schema (LangChain's json_mode on a `schema/` model):
        # the schema is the stricter of the two, and it is what is enforced.
        plan.mode, plan.schema = Mode.SCHEMA, alias_schema
    if plan.mode is Mode.SCHEMA and plan.pending is not None:
        plan.policy = policy_named(settings.output_policy or settings.adhoc_output_policy)
    elif plan.mode is Mode.SCHEMA and plan.schema is not None:
        plan.policy = policy_named(settings.output_policy or plan.schema.output_policy)
        plan.warnings.extend(plan.schema.unenforced)
    elif plan.mode is Mode.JSON_OBJECT:
        plan.policy = policy_named(settings.output_policy or DEFAULT_POLICY.name)
    if plan.checked:
        require_one_choice(body)
    return plan


def require_one_choice(body: dict[str, Any]) -> None:
    """A checked answer is one answer: `n` unset, null or 1 (not `true`, not `1.0`); and
    only the answer: vLLM's `echo` puts the prompt (or the last message) before it."""
    contract.ONE_CHOICE.read(body)
    if contract.ECHO.read(body):
        raise InvalidRequestError("echo puts the prompt before the answer, which is then no "
                                  "longer the JSON that was asked for; drop echo for "
                                  "structured output", param="echo")


def _plan_response_format(plan: ChatPlan, response_format: dict[str, Any],
                          registry: SchemaRegistry, visible: Visible) -> None:
    kind = contract.RESPONSE_FORMAT_TYPE.read(response_format)
    if kind == "text":
        return
    if kind == "json_object":
        plan.mode = Mode.JSON_OBJECT
        return
    spec = contract.JSON_SCHEMA.read(response_format)
    if "schema" in spec:
        name = contract.ADHOC_NAME.read(spec)
        plan.pending = PendingAdhoc(name or "adhoc", spec["schema"])
    else:
        name = contract.REGISTERED_NAME.read(spec)
        plan.schema = _resolve(registry, name, "response_format.json_schema.name", visible)
    plan.mode = Mode.SCHEMA


_EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


def _forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice in (None, "auto", "none"):
        return None
    functions = [t.get("function") for t in tools if isinstance(t, dict)]
    if not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in functions):
        raise InvalidRequestError("each tool needs a 'function' with a 'name'", param="tools")
    if choice == "required":
        return functions[0] if len(functions) == 1 else None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        for function in functions:
            if function["name"] == name:
                return function
        raise InvalidRequestError(f"tool_choice names {name!r}, which is not in 'tools'",
                                  param="tool_choice")
    raise InvalidRequestError(
        "tool_choice must be 'none', 'auto', 'required' or a named function",
        param="tool_choice",
    )


def _plan_forced_tool(plan: ChatPlan, registry: SchemaRegistry, settings: Settings) -> None:
    """Turn `plan` into a TOOL plan when the request forces exactly one tool: vLLM 0.32
    refuses a forced `tool_choice` without a tool-call parser, so the gateway serves one
    forced tool as a schema (the answer's shape: `gateway.generation.tools`)."""
    function = _forced_tool(plan.body)
    if function is None:
        return
    if plan.mode is not Mode.PASSTHROUGH:
        raise InvalidRequestError(
            "a forced tool call and a response_format/schema model cannot be combined; "
            "use one of them", param="tool_choice",
        )
    name: str = function["name"]
    if not ADHOC_NAME_RE.fullmatch(name):  # it becomes the x-irgw-schema header, too
        raise InvalidRequestError(
            "a function's name must be 1-64 characters of a-z, A-Z, 0-9, '_' and '-' (as "
            "OpenAI requires)", param="tools",
        )
    parameters = function.get("parameters")
    if not parameters and name in registry:
        plan.schema = registry.resolve(name)
        plan.policy = policy_named(settings.output_policy or plan.schema.output_policy)
        plan.warnings.extend(plan.schema.unenforced)
    else:  # compiled once the key is authorized and admitted (gateway.output.adhoc)
        index = next(i for i, tool in enumerate(plan.body["tools"])
                     if isinstance(tool, dict) and tool.get("function") is function)
        plan.pending = PendingAdhoc(name, parameters or _EMPTY_OBJECT,
                                    f"tools[{index}].function.parameters")
        plan.policy = policy_named(settings.output_policy or settings.adhoc_output_policy)
    plan.mode = Mode.TOOL
    plan.tool_name = name
    plan.tool_call_id = f"call_{uuid.uuid4().hex[:24]}"
    require_one_choice(plan.body)


def upstream_chat_body(plan: ChatPlan, dialect: Dialect, model: str,
                       max_tokens: int | None) -> dict[str, Any]:
    """The body vLLM gets: the client's, with the model, constraint and limits filled in."""
    body = dict(plan.body)
    body["model"] = model
    if plan.mode is Mode.TOOL:
        for key in ("tools", "tool_choice", "parallel_tool_calls"):
            body.pop(key, None)
    if plan.schema is not None and plan.mode in (Mode.SCHEMA, Mode.TOOL):
        body.pop("response_format", None)
        body.update(dialect.chat_constraint(plan.schema))
    if max_tokens is not None:
        body.pop("max_completion_tokens", None)
        body["max_tokens"] = max_tokens
    if plan.stream:
        ask_for_usage(body, plan)
    return body


def ask_for_usage(body: dict[str, Any], plan: ChatPlan) -> None:
    """Usage is always needed to settle token limits, whether the client asked or not."""
    body["stream_options"] = {**(plan.body.get("stream_options") or {}), "include_usage": True}


_PROMPT_EXTRAS = ("tools", "functions")  # the legacy name of `tools`


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A cheap over-estimate (about 3 bytes a token) for reserving TPM before the call;
    settlement corrects it with vLLM's real count."""
    prompt = body.get("messages") or body.get("prompt") or ""
    # Token ids are counted one each: `[1,2,3]` is 2 bytes an id, under the 3 above.
    ids = sum(len(p) if isinstance(p, list) else 1 for p in prompt
              if isinstance(p, int | list)) if isinstance(prompt, list) else 0
    # Tool definitions are rendered into the prompt by the chat template: a key's TPM must
    # see them (a 33 KB description cost 8,000 tokens while 20 were reserved).
    tools = [body[key] for key in _PROMPT_EXTRAS if body.get(key)]
    extra = len(orjson.dumps(tools)) // 3 if tools else 0
    return len(orjson.dumps(prompt)) // 3 + extra + ids + 8
