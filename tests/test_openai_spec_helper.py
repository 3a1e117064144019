"""Sanity checks for the OpenAI-spec validation helper (tests/openai_spec.py).

If these fail, every test that validates gateway responses against OpenAI's spec is meaningless.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.openai_spec import _convert, component_names, errors, validate


def chat_completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1_741_570_283,
        "model": "qwen-coder",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": '{"name": "f", "args": []}',
                    "refusal": None,
                    "tool_calls": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40},
    }


def chunk(**choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1_741_570_283,
        "model": "qwen-coder",
        "choices": [{"index": 0, "logprobs": None, **choice}],
    }


USAGE = {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}


def test_components_we_use_exist() -> None:
    names = set(component_names())
    for name in (
        "CreateChatCompletionResponse",
        "CreateChatCompletionStreamResponse",
        "ListModelsResponse",
        "Model",
        "ErrorResponse",
        "CreateCompletionResponse",
    ):
        assert name in names


def test_realistic_chat_completion_passes() -> None:
    validate("CreateChatCompletionResponse", chat_completion())


def test_bogus_finish_reason_fails_with_pointer() -> None:
    body = chat_completion()
    body["choices"][0]["finish_reason"] = "bogus"
    found = errors("CreateChatCompletionResponse", body)
    assert len(found) == 1
    assert found[0].startswith("/choices/0/finish_reason: 'bogus' is not one of")


def test_missing_created_fails() -> None:
    body = chat_completion()
    del body["created"]
    with pytest.raises(AssertionError, match="'created' is a required property"):
        validate("CreateChatCompletionResponse", body)


def test_all_errors_are_listed() -> None:
    body = chat_completion()
    del body["created"]
    body["choices"][0]["finish_reason"] = "bogus"
    body["choices"][0]["message"]["refusal"] = 3
    with pytest.raises(AssertionError) as info:
        validate("CreateChatCompletionResponse", body)
    text = str(info.value)
    assert "(3 error(s))" in text
    assert "/choices/0/message/refusal" in text
    assert "/choices/0/finish_reason" in text
    assert "'created' is a required property" in text


def test_missing_logprobs_fails() -> None:
    # The SDK and the spec both need choices[].logprobs present, even when null.
    body = chat_completion()
    del body["choices"][0]["logprobs"]
    assert errors("CreateChatCompletionResponse", body) == [
        "/choices/0: 'logprobs' is a required property"
    ]


def test_usage_only_chunk_passes() -> None:
    body = chunk()
    body["choices"] = []
    body["usage"] = USAGE
    validate("CreateChatCompletionStreamResponse", body)


def test_stream_chunks_pass_with_nullable_finish_reason() -> None:
    # finish_reason/logprobs are "nullable: true" in the spec: these pass only if the
    # nullable rewrite works.
    validate(
        "CreateChatCompletionStreamResponse",
        chunk(delta={"role": "assistant", "content": ""}, finish_reason=None),
    )
    validate(
        "CreateChatCompletionStreamResponse", chunk(delta={"content": "{"}, finish_reason=None)
    )
    validate("CreateChatCompletionStreamResponse", chunk(delta={}, finish_reason="stop"))


def test_stream_chunk_bad_finish_reason_fails() -> None:
    found = errors("CreateChatCompletionStreamResponse", chunk(delta={}, finish_reason="abort"))
    assert [e.split(":")[0] for e in found] == ["/choices/0/finish_reason"]


def test_stream_chunk_wrong_object_fails() -> None:
    body = chunk(delta={}, finish_reason=None)
    body["object"] = "chat.completion"
    assert [e.split(":")[0] for e in errors("CreateChatCompletionStreamResponse", body)] == [
        "/object"
    ]


def test_error_response_new_shape_passes() -> None:
    validate("ErrorResponse", {"error": {"message": "x", "type": "y", "param": None, "code": "z"}})


def test_error_response_vllm_shapes_fail() -> None:
    # What vLLM sends is not OpenAI's shape: the gateway must translate, and the helper must say so.
    old = {"object": "error", "message": "x", "type": "BadRequestError", "param": None, "code": 400}
    assert errors("ErrorResponse", old) == ["(root): 'error' is a required property"]
    int_code = {"error": {"message": "x", "type": "BadRequestError", "param": None, "code": 400}}
    (problem,) = errors("ErrorResponse", int_code)
    assert problem.startswith("/error/code:")
    assert "closest" in problem  # the anyOf failure names the branch that nearly matched
    assert errors("ErrorResponse", {"error": "Unauthorized"}) != []


def test_models_and_completions() -> None:
    model = {"id": "qwen-coder", "object": "model", "created": 1_700_000_000, "owned_by": "vllm"}
    validate("Model", model)
    validate("ListModelsResponse", {"object": "list", "data": [model]})
    assert errors("ListModelsResponse", {"object": "list", "data": [{"id": "m"}]}) != []
    validate(
        "CreateCompletionResponse",
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1_700_000_000,
            "model": "qwen-coder",
            "choices": [{"index": 0, "text": "{}", "logprobs": None, "finish_reason": "length"}],
            "usage": USAGE,
        },
    )


def test_null_system_fingerprint_is_rejected() -> None:
    # vLLM serialises system_fingerprint as null; OpenAI's spec wants a string or no key.
    body = chat_completion()
    body["system_fingerprint"] = None
    assert errors("CreateChatCompletionResponse", body) == [
        "/system_fingerprint: None is not of type 'string'"
    ]


def test_unknown_component_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown OpenAI component schema 'ChatCompletion'"):
        errors("ChatCompletion", {})


@pytest.mark.parametrize(
    ("openapi", "expected"),
    [
        ({"type": "string", "nullable": True}, {"type": ["string", "null"]}),
        (
            {"type": "string", "enum": ["a"], "nullable": True},
            {"type": ["string", "null"], "enum": ["a", None]},
        ),
        (
            {"description": "d", "$ref": "#/x", "nullable": True},
            {"description": "d", "anyOf": [{"$ref": "#/x"}, {"type": "null"}]},
        ),
        (
            {"allOf": [{"$ref": "#/x"}], "nullable": True},
            {"anyOf": [{"allOf": [{"$ref": "#/x"}]}, {"type": "null"}]},
        ),
        ({"type": "string", "nullable": False}, {"type": "string"}),
        (
            {"oneOf": [{"type": "string"}], "discriminator": {"propertyName": "t"}, "x-a": 1},
            {"oneOf": [{"type": "string"}]},
        ),
        # Property *names* that look like keywords stay untouched; their schemas are rewritten.
        (
            {"properties": {"nullable": {"type": "boolean", "nullable": True}, "example": {}}},
            {"properties": {"nullable": {"type": ["boolean", "null"]}, "example": {}}},
        ),
        (
            {"items": {"type": "integer", "nullable": True, "example": 3}},
            {"items": {"type": ["integer", "null"]}},
        ),
    ],
)
def test_openapi_rewrite(openapi: dict[str, Any], expected: dict[str, Any]) -> None:
    original = copy.deepcopy(openapi)
    assert _convert(openapi) == expected
    assert openapi == original  # the cached spec must never be mutated in place
