"""The checked-in OpenAPI document: current with the code, structurally valid, truthful.

`openapi-spec-validator` is not a dependency, so validity is checked here with jsonschema:
a minimal OpenAPI 3.1 meta-schema for the parts the document uses, every `$ref` resolving,
every component schema a valid Draft 2020-12 schema (OpenAPI 3.1's dialect), and real
responses from a gateway (in front of the fake upstream) validating against the document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway import errors as gateway_errors
from gateway.openapi_doc.cli import build_document, check, main, render
from gateway.openapi_doc.headers import DOCUMENT_PATH
from tests.fake_upstream import FakeUpstream, Reply
from tests.ir_samples import BAD_NAME, VALID

DOC_URI = "urn:ir-gateway:openapi"
ROUTES = {
    ("/v1/chat/completions", "post"), ("/v1/completions", "post"), ("/v1/models", "get"),
    ("/v1/models/{model_id}", "get"), ("/v1/schemas", "get"), ("/v1/schemas/{ref}", "get"),
    ("/healthz", "get"), ("/readyz", "get"),
} | {  # what answers GET answers HEAD
    ("/v1/models", "head"), ("/v1/models/{model_id}", "head"), ("/v1/schemas", "head"),
    ("/v1/schemas/{ref}", "head"), ("/healthz", "head"), ("/readyz", "head"),
}
RATELIMIT_HEADERS = {
    f"x-ratelimit-{what}-{kind}"
    for what in ("limit", "remaining", "reset") for kind in ("requests", "tokens")
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# The parts of OpenAPI 3.1's own schema that this document uses; enough to catch a misplaced
# key, a response without a description, a header or parameter without a schema.
_REF = {"type": "object", "properties": {"$ref": {"type": "string"}}, "required": ["$ref"]}
_MEDIA = {"type": "object", "properties": {"schema": {"type": ["object", "boolean"]}},
          "required": ["schema"], "additionalProperties": False}
_CONTENT = {"type": "object", "minProperties": 1, "additionalProperties": _MEDIA}
_HEADER = {"type": "object", "properties": {"description": {"type": "string"},
                                            "schema": {"type": "object"}},
           "required": ["schema"], "additionalProperties": False}
_RESPONSE = {"type": "object", "properties": {
    "description": {"type": "string"},
    "headers": {"type": "object", "additionalProperties": {"anyOf": [_REF, _HEADER]}},
    "content": _CONTENT,
}, "required": ["description"], "additionalProperties": False}
_OPERATION = {"type": "object", "properties": {
    "summary": {"type": "string"}, "description": {"type": "string"},
    "operationId": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
    "security": {"type": "array"},
    "parameters": {"type": "array", "items": {
        "type": "object",
        "properties": {"name": {"type": "string"},
                       "in": {"enum": ["path", "query", "header", "cookie"]},
                       "required": {"type": "boolean"}, "description": {"type": "string"},
                       "schema": {"type": "object"}},
        "required": ["name", "in", "schema"], "additionalProperties": False}},
    "requestBody": {"type": "object", "properties": {
        "description": {"type": "string"}, "required": {"type": "boolean"}, "content": _CONTENT},
        "required": ["content"], "additionalProperties": False},
    "responses": {"type": "object", "minProperties": 1,
                  "propertyNames": {"pattern": "^([1-5][0-9]{2}|default)$"},
                  "additionalProperties": {"anyOf": [_REF, _RESPONSE]}},
}, "required": ["operationId", "responses"], "additionalProperties": False}
OPENAPI_31_SUBSET = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "openapi": {"type": "string", "pattern": r"^3\.1\.\d+$"},
        "info": {"type": "object", "required": ["title", "version"]},
        "security": {"type": "array", "items": {"type": "object"}},
        "tags": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "paths": {"type": "object", "propertyNames": {"pattern": "^/"},
                  "additionalProperties": {"type": "object",
                                           "propertyNames": {"enum": sorted(HTTP_METHODS)},
                                           "additionalProperties": _OPERATION}},
        "components": {"type": "object", "properties": {
            "schemas": {"type": "object", "additionalProperties": {"type": "object"}},
            "responses": {"type": "object", "additionalProperties": _RESPONSE},
            "headers": {"type": "object", "additionalProperties": _HEADER},
            "securitySchemes": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["type"]}},
        }, "additionalProperties": False},
    },
    "required": ["openapi", "info", "paths"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def registry(doc: dict[str, Any]) -> Registry:
    return Registry().with_resource(DOC_URI, Resource.from_contents(doc, DRAFT202012))


def schema_errors(registry: Registry, component: str, instance: Any) -> list[str]:
    validator = Draft202012Validator({"$ref": f"{DOC_URI}#/components/schemas/{component}"},
                                     registry=registry)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(instance)]


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"non-local $ref {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def deref(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = resolve(doc, node["$ref"])
    return node


# ------------------------------------------------------------------------------ drift


def test_checked_in_document_matches_the_code(doc: dict[str, Any]) -> None:
    diff = check(DOCUMENT_PATH)
    assert not diff, (
        "openapi/openapi.json is stale: run `python -m gateway.openapi_doc --write` "
        "(make openapi). First differences:\n" + "\n".join(diff[:40])
    )
    assert doc == build_document()


async def test_the_gateway_serves_the_checked_in_document(client: httpx.AsyncClient) -> None:
    served = await client.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == json.loads(DOCUMENT_PATH.read_text())


def test_head_operations_describe_no_body(doc: dict[str, Any]) -> None:
    heads = [(path, op) for path, method, op in operations(doc) if method == "head"]
    assert {path for path, _ in heads} == {path for path, method, _ in operations(doc)
                                           if method == "get"}
    for path, operation in heads:
        get = doc["paths"][path]["get"]
        assert operation["responses"].keys() == get["responses"].keys(), path
        for response in operation["responses"].values():
            assert "content" not in deref(doc, response), path
        assert operation["operationId"] != get["operationId"]


def test_generation_is_deterministic() -> None:
    assert render(build_document()) == render(build_document())


def test_cli_check_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "openapi.json"
    assert main(["--write", "--path", str(target)]) == 0
    assert main(["--check", "--path", str(target)]) == 0
    stale = json.loads(target.read_text())
    stale["info"]["version"] = "0.0.0-stale"
    target.write_text(json.dumps(stale, indent=2) + "\n")
    capsys.readouterr()
    assert main(["--check", "--path", str(target)]) == 1
    err = capsys.readouterr().err
    assert "is stale" in err and "0.0.0-stale" in err
    assert main(["--check", "--path", str(tmp_path / "missing.json")]) == 1
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------ structure


def test_every_route_is_documented(doc: dict[str, Any]) -> None:
    documented = {(path, method) for path, method, _ in operations(doc)}
    assert documented >= ROUTES
    assert {"/v1/models/{model_id}", "/v1/schemas/{ref}"} <= set(doc["paths"])


def test_document_is_structurally_valid_openapi_31(doc: dict[str, Any]) -> None:
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in Draft202012Validator(OPENAPI_31_SUBSET).iter_errors(doc)]
    assert not problems, "\n".join(problems[:20])
    for ref in set(refs(doc)):
        resolve(doc, ref)
    for name, schema in doc["components"]["schemas"].items():
        try:
            Draft202012Validator.check_schema(schema)
        except Exception as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"components/schemas/{name} is not a valid 2020-12 schema: {exc}")
    ids = [operation["operationId"] for _, _, operation in operations(doc)]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for path, method, operation in operations(doc):
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{([^}]+)}", path)), f"{method} {path} parameters"
        for param in operation.get("parameters", []):
            if param["in"] == "path":
                assert param["required"] is True
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearerAuth": []}]


def test_operations_need_a_key_except_probes(doc: dict[str, Any]) -> None:
    for path, method, operation in operations(doc):
        if path in ("/healthz", "/readyz", "/metrics"):
            assert operation["security"] == [], path
        else:
            assert "security" not in operation, f"{method} {path} must inherit bearer auth"
            assert "401" in operation["responses"], f"{method} {path} documents no 401"


def test_errors_use_the_openai_error_shape(doc: dict[str, Any]) -> None:
    for path, method, operation in operations(doc):
        for status, response in operation["responses"].items():
            if int(status) < 400 or path == "/readyz" or method == "head":
                continue
            schema = deref(doc, response)["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "403", "404", "422", "429", "502", "503", "504"} <= set(chat)
    error = doc["components"]["schemas"]["ErrorResponse"]["properties"]["error"]
    assert error["required"] == ["message", "type", "param", "code"]
    assert {"pointer", "constraint", "raw_output", "attempts"} <= set(error["properties"])


def test_every_gateway_error_status_is_documented_on_chat(doc: dict[str, Any]) -> None:
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    statuses = {
        cls.status_code for cls in vars(gateway_errors).values()
        if isinstance(cls, type) and issubclass(cls, gateway_errors.GatewayError)
    }
    # 405 only happens for a wrong method, which has no operation to document it on.
    missing = {str(s) for s in statuses - {405}} - set(chat)
    assert not missing, f"gateway errors with undocumented statuses: {missing}"


def test_rate_limit_and_gateway_headers(doc: dict[str, Any]) -> None:
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    too_many = deref(doc, chat["429"])
    assert set(too_many["headers"]) >= RATELIMIT_HEADERS | {"retry-after", "retry-after-ms"}
    ok = chat["200"]["headers"]
    assert set(ok) >= RATELIMIT_HEADERS | {"x-request-id", "x-irgw-schema", "x-irgw-output",
                                           "x-irgw-attempts"}
    assert "www-authenticate" in deref(doc, chat["401"])["headers"]
    for header in doc["components"]["headers"].values():
        assert header["description"] and header["schema"]


def test_request_schema_covers_what_the_gateway_reads(doc: dict[str, Any]) -> None:
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert {"model", "messages", "response_format", "stream", "stream_options", "max_tokens",
            "max_completion_tokens", "tools", "tool_choice", "n"} <= set(chat)
    assert "schema/function_ir" in chat["model"]["examples"]
    formats = doc["components"]["schemas"]["ResponseFormat"]["oneOf"]
    assert [f["title"] for f in formats] == ["text", "json_object", "json_schema"]


def test_request_examples_validate(registry: Registry) -> None:
    # Bodies the clients really send (see tests/integration/*): all must fit the document.
    bodies: list[dict[str, Any]] = [
        {"model": "schema/function_ir", "messages": [{"role": "user", "content": "add"}]},
        {"model": "tiny-qwen2", "messages": [{"role": "user", "content": "x"}],
         "response_format": {"type": "json_schema", "json_schema": {"name": "function_ir@1"}},
         "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 300},
        {"model": "tiny-qwen2", "messages": [{"role": "user", "content": "x"}],
         "response_format": {"type": "json_schema", "json_schema": {
             "name": "FunctionIR", "strict": True,
             "schema": {"type": "object", "properties": {}, "additionalProperties": False}}}},
        {"model": "tiny-qwen2", "messages": [{"role": "user", "content": "x"}],
         "tools": [{"type": "function", "function": {"name": "function_ir", "parameters": {}}}],
         "tool_choice": {"type": "function", "function": {"name": "function_ir"}},
         "parallel_tool_calls": False},
    ]
    for body in bodies:
        assert schema_errors(registry, "ChatCompletionRequest", body) == [], body
    assert schema_errors(registry, "CompletionRequest",
                         {"model": "schema/function_ir", "prompt": "add", "max_tokens": 300}) == []
    assert schema_errors(registry, "ChatCompletionRequest", {"model": "m", "messages": []})


# ------------------------------------------------------------------------------ truthful


def gateway_headers(response: httpx.Response) -> set[str]:
    return {name for name in response.headers
            if name.startswith(("x-irgw-", "x-request-id", "x-ratelimit-"))}


async def test_real_responses_match_the_document(
    doc: dict[str, Any], registry: Registry, fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    chat_body = {"model": "schema/function_ir", "messages": [{"role": "user", "content": "add"}]}
    fake.script(Reply(VALID))
    ok = await client.post("/v1/chat/completions", json=chat_body)
    assert ok.status_code == 200
    assert schema_errors(registry, "ChatCompletion", ok.json()) == []
    documented = set(doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["headers"])
    sent = gateway_headers(ok)
    assert sent <= documented, f"undocumented headers: {sent - documented}"

    fake.script(Reply(VALID))
    tool = await client.post("/v1/chat/completions", json={
        **chat_body, "model": fake.model,
        "tools": [{"type": "function", "function": {"name": "function_ir"}}],
        "tool_choice": "required"})
    assert schema_errors(registry, "ChatCompletion", tool.json()) == []

    fake.script(Reply(BAD_NAME))
    failed = await client.post("/v1/chat/completions", json=chat_body)
    assert failed.status_code == 422
    assert schema_errors(registry, "ErrorResponse", failed.json()) == []
    assert {"pointer", "constraint", "raw_output", "attempts"} <= set(failed.json()["error"])

    fake.script(Reply(VALID))
    completion = await client.post("/v1/completions", json={"model": "schema/function_ir",
                                                             "prompt": "add"})
    assert schema_errors(registry, "Completion", completion.json()) == []
    documented = set(doc["paths"]["/v1/completions"]["post"]["responses"]["200"]["headers"])
    sent = gateway_headers(completion)
    assert {"x-irgw-output", "x-irgw-attempts"} <= sent <= documented, sent - documented

    checks = [
        ("/v1/models", "ModelList", 200), ("/v1/models/schema/function_ir", "Model", 200),
        ("/v1/schemas", "SchemaList", 200), ("/v1/schemas/function_ir", "SchemaDetail", 200),
        ("/v1/schemas/function_ir@1", "SchemaVersion", 200), ("/healthz", "Health", 200),
        ("/readyz", "Readiness", 200), ("/v1/schemas/nope", "ErrorResponse", 404),
        ("/v1/models/nope", "ErrorResponse", 404),
    ]
    for path, component, status in checks:
        response = await client.get(path)
        assert response.status_code == status, (path, response.text)
        assert schema_errors(registry, component, response.json()) == [], path
        # HEAD: the same status and headers, and no body (the document says so too).
        head = await client.head(path)
        assert head.status_code == status and head.content == b"", path
        assert head.headers["content-type"] == response.headers["content-type"]
        assert head.headers["content-length"] == response.headers["content-length"], path

    bad = await client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert bad.status_code == 400
    assert schema_errors(registry, "ErrorResponse", bad.json()) == []


async def test_document_and_gateway_agree_on_stream_options(
    registry: Registry, fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    # Found by schemathesis: the document allowed stream_options without streaming (the
    # gateway refuses it, as vLLM and OpenAI do) and refused an explicit null (accepted).
    base = {"model": "schema/function_ir", "messages": [{"role": "user", "content": "add"}]}
    for route, component, body in (
        ("/v1/chat/completions", "ChatCompletionRequest", base),
        ("/v1/completions", "CompletionRequest", {"model": "schema/function_ir",
                                                 "prompt": "add"}),
    ):
        refused = {**body, "stream": False, "stream_options": {"include_usage": True}}
        assert schema_errors(registry, component, refused)
        response = await client.post(route, json=refused)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "stream_options"

        unset = {**body, "stream_options": None}
        assert schema_errors(registry, component, unset) == []
        fake.script(Reply(VALID))
        assert (await client.post(route, json=unset)).status_code == 200

        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        assert schema_errors(registry, component, streamed) == []


async def test_document_and_gateway_agree_on_adhoc_schema_names(
    registry: Registry, fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}

    def body(name: str, with_schema: bool = True) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": name, "schema": schema} if with_schema else {"name": name}
        return {"model": "m", "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": spec}}

    for name in ("Lien\u00e9", "has space", "x" * 65, "", "Point\n"):
        # (Python's `re` lets `$` match before a final newline, ECMA-262 does not: the
        # document's pattern refuses "Point\n", this test's validator cannot tell.)
        if name != "Point\n":
            assert schema_errors(registry, "ChatCompletionRequest", body(name)), name
        response = await client.post("/v1/chat/completions", json=body(name))
        assert response.status_code == 400, name
        assert response.json()["error"]["param"] == "response_format.json_schema.name"
    fake.script(Reply('{"city": "Paris"}'))
    assert schema_errors(registry, "ChatCompletionRequest", body("City_v-2")) == []
    assert (await client.post("/v1/chat/completions", json=body("City_v-2"))).status_code == 200
    # A registered schema's name (no `schema`) keeps its `@version`.
    assert schema_errors(registry, "ChatCompletionRequest",
                         body("function_ir@1", with_schema=False)) == []


async def test_streamed_events_match_the_document(
    registry: Registry, fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    chat_body = {"model": "schema/function_ir", "messages": [{"role": "user", "content": "add"}],
                 "stream": True}
    cases = [("/v1/chat/completions", chat_body, Reply(VALID)),
             ("/v1/chat/completions", chat_body, Reply(BAD_NAME)),  # ends with an error event
             ("/v1/completions", {"model": fake.model, "prompt": "add", "stream": True},
              Reply(VALID))]
    for path, body, reply in cases:
        pointer = "/".join(part.replace("~", "~0").replace("/", "~1") for part in (
            "paths", path, "post", "responses", "200", "content", "text/event-stream", "schema"))
        validator = Draft202012Validator({"$ref": f"{DOC_URI}#/{pointer}"}, registry=registry)
        payload_validator = Draft202012Validator(
            {"$ref": f"{DOC_URI}#/{pointer}/properties/data/anyOf/1/contentSchema"},
            registry=registry)
        fake.script(reply)
        response = await client.post(path, json=body)
        assert response.headers["content-type"].startswith("text/event-stream")
        datas = [line[5:].strip() for line in response.text.splitlines()
                 if line.startswith("data:")]
        assert datas[-1] == "[DONE]" and len(datas) > 2
        for data in datas:  # what an SSE parser hands over, event by event
            assert list(validator.iter_errors({"data": data, "event": "message"})) == []
        for data in datas[:-1]:
            errors = list(payload_validator.iter_errors(json.loads(data)))
            assert errors == [], (path, data, [e.message for e in errors])
        assert ("error" in json.loads(datas[-2])) == (reply.content == BAD_NAME)
