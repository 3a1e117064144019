"""OpenAI's response shapes rebuilt from vLLM's (gateway/generation/shapes.py), without a
server: vLLM's own fields dropped, finish reasons in OpenAI's words, usage checked, and a
body that is not vLLM's shape refused as a 502 naming what was wrong. test_output_exactness.py
and test_malformed_bodies.py check the same through a running gateway."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import UpstreamError
from gateway.generation.shapes import (
    SSE_DONE,
    chat_chunk,
    chat_completion,
    choices_of,
    finish_reason,
    sse,
    usage_of,
)

# What vLLM 0.32 answers, with the fields of its own that OpenAI's spec does not have.
VLLM_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "Qwen/Qwen3-8B",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": '{"a": 1}', "refusal": None,
                    "reasoning_content": "thinking...", "tool_calls": [],
                    "annotations": None, "audio": None, "function_call": None},
        "logprobs": None,
        "finish_reason": "stop",
        "stop_reason": None,
        "token_ids": [1, 2, 3],
    }],
    "service_tier": None,
    "system_fingerprint": None,
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
              "prompt_tokens_details": None},
    "prompt_logprobs": None,
    "prompt_token_ids": None,
    "kv_transfer_params": None,
}


def answer(**choice: Any) -> dict[str, Any]:
    """VLLM_ANSWER with its one choice changed."""
    return {**VLLM_ANSWER, "choices": [{**VLLM_ANSWER["choices"][0], **choice}]}


def upstream_error(call: Any, *args: Any, **kwargs: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        call(*args, **kwargs)
    assert info.value.status_code == 502 and info.value.code == "upstream_error"
    return info.value


# -- a whole answer

def test_only_openais_fields_reach_the_client() -> None:
    shaped = chat_completion(VLLM_ANSWER, "schema/function_ir")
    assert set(shaped) == {"id", "object", "created", "model", "choices", "usage"}
    assert shaped["object"] == "chat.completion" and shaped["id"] == "chatcmpl-abc"
    assert shaped["created"] == VLLM_ANSWER["created"]
    # the model the client named, not the one vLLM served it with
    assert shaped["model"] == "schema/function_ir"
    (choice,) = shaped["choices"]
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
    assert choice["message"] == {"role": "assistant", "content": '{"a": 1}', "refusal": None}
    assert shaped["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    orjson.dumps(shaped)  # plain JSON values only


def test_an_answer_without_id_created_or_usage_is_still_openais_shape() -> None:
    bare = {"choices": [{"message": {"content": "hi"}}]}
    shaped = chat_completion(bare, "m")
    assert shaped["id"] and isinstance(shaped["id"], str)
    assert isinstance(shaped["created"], int) and shaped["created"] > 1_600_000_000
    assert "usage" not in shaped
    (choice,) = shaped["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "hi", "refusal": None}
    assert chat_completion({"choices": None}, "m")["choices"] == []
    assert chat_completion({}, "m")["choices"] == []


def test_each_choice_keeps_its_index() -> None:
    data = {"choices": [{"index": 1, "message": {"content": "b"}},
                        {"index": 0, "message": {"content": "a"}}]}
    assert [c["index"] for c in chat_completion(data, "m")["choices"]] == [1, 0]
    data = {"choices": [{"message": {"content": "a"}}, {"message": {"content": "b"}}]}
    assert [c["index"] for c in chat_completion(data, "m")["choices"]] == [0, 1]


def test_logprobs_take_openais_shape() -> None:
    content = [{"token": "{", "logprob": -0.1, "bytes": [123], "top_logprobs": []}]
    shaped = chat_completion(answer(logprobs={"content": content}), "m")
    assert shaped["choices"][0]["logprobs"] == {"content": content, "refusal": None}
    assert chat_completion(answer(logprobs=None), "m")["choices"][0]["logprobs"] is None


def test_tool_calls_keep_only_openais_fields() -> None:
    call = {"id": "call_1", "type": "function", "index": 0, "extra": True,
            "function": {"name": "get_time", "arguments": "{}", "strict": None}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    shaped = chat_completion(answer(message=message, finish_reason="tool_calls"), "m")
    choice = shaped["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [{
        "id": "call_1", "type": "function",
        "function": {"name": "get_time", "arguments": "{}"}}]
    # vLLM's empty list is no tool call at all
    assert "tool_calls" not in chat_completion(VLLM_ANSWER, "m")["choices"][0]["message"]


# -- finish reasons

@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls", "content_filter",
                                    "function_call"])
def test_openais_finish_reasons_pass_as_they_are(reason: str) -> None:
    assert finish_reason(reason) == reason
    assert chat_completion(answer(finish_reason=reason), "m")["choices"][0][
        "finish_reason"] == reason


def test_vllms_own_finish_reasons_in_openais_words() -> None:
    assert finish_reason("repetition") == "length"  # cut short, as by the cap
    assert finish_reason("eos") == "stop"  # a reason vLLM adds later: taken for a stop
    assert finish_reason(None) is None  # a chunk that has not finished
    # a whole answer always has one
    assert chat_completion(answer(finish_reason=None), "m")["choices"][0][
        "finish_reason"] == "stop"


@pytest.mark.parametrize("reason", ["abort", "error"])
def test_a_failed_generation_is_an_upstream_error_not_an_answer(reason: str) -> None:
    for call, args in ((finish_reason, (reason,)),
                       (chat_completion, (answer(finish_reason=reason), "m"))):
        assert reason in upstream_error(call, *args).message


# -- what is refused

@pytest.mark.parametrize(("data", "named"), [
    ({"choices": {"0": {}}}, "'choices'"),
    ({"choices": "none"}, "'choices'"),
    ({"choices": ["text"]}, "each choice"),
    ({"choices": [None]}, "each choice"),
    ({"choices": [{"index": "0"}]}, "'index'"),
    ({"choices": [{"index": 1.0}]}, "'index'"),
    ({"choices": [{"index": True}]}, "'index'"),
    ({"choices": [{"message": "hi"}]}, "'message'"),
    ({"choices": [{"message": {"content": 5}}]}, "'content'"),
    ({"choices": [{"message": {"content": {"a": 1}}}]}, "'content'"),
    ({"choices": [{"message": {"content": "x", "refusal": False}}]}, "'refusal'"),
    ({"choices": [{"message": {"tool_calls": {"id": "c"}}}]}, "'tool_calls'"),
    ({"choices": [{"message": {"tool_calls": ["call"]}}]}, "'tool_calls'"),
    ({"choices": [{"message": {"tool_calls": [{"function": "f"}]}}]}, "'function'"),
    ({"choices": [{"message": {}, "finish_reason": 1}]}, "'finish_reason'"),
    ({"choices": [], "usage": [12, 5]}, "'usage'"),
    ({"choices": [], "usage": {"prompt_tokens": -1}}, "'usage.prompt_tokens'"),
    ({"choices": [], "usage": {"completion_tokens": "5"}}, "'usage.completion_tokens'"),
    ({"choices": [], "usage": {"total_tokens": 1.5}}, "'usage.total_tokens'"),
    ({"choices": [], "usage": {"prompt_tokens": True}}, "'usage.prompt_tokens'"),
])
def test_a_malformed_answer_is_a_502_naming_the_cause(data: dict[str, Any], named: str
                                                     ) -> None:
    error = upstream_error(chat_completion, data, "m")
    assert "malformed" in error.message and named in error.message


def test_a_malformed_chunk_is_a_502_naming_the_cause() -> None:
    for data, named in (({"choices": [{"delta": []}]}, "'delta'"),
                        ({"choices": [{"delta": {"content": 1}}]}, "'content'"),
                        ({"choices": [{"delta": {"tool_calls": "x"}}]}, "'tool_calls'"),
                        ({"choices": 1}, "'choices'")):
        assert named in upstream_error(chat_chunk, data, "m", include_usage=False).message
    error = upstream_error(chat_chunk, {"choices": [], "usage": "many"}, "m", include_usage=True)
    assert "'usage'" in error.message


def test_the_error_quotes_a_long_value_only_in_part() -> None:
    # a client reads the message; vLLM's whole answer must not land in it
    error = upstream_error(choices_of, {"choices": "x" * 10_000})
    assert "xxxx" in error.message and len(error.message) < 300


# -- usage

def test_usage_is_the_three_counts_with_a_total() -> None:
    assert usage_of({"choices": []}) is None
    assert usage_of({"usage": None}) is None
    assert usage_of("not an answer") is None
    assert usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}) == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 4,
                               "total_tokens": 9}})["total_tokens"] == 9  # type: ignore[index]
    assert usage_of({"usage": {}}) == {"prompt_tokens": 0, "completion_tokens": 0,
                                       "total_tokens": 0}


# -- a streamed chunk

def test_a_chunk_keeps_only_openais_delta_fields() -> None:
    data = {"id": "chatcmpl-x", "created": 1_700_000_000, "model": "Qwen/Qwen3-8B",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "{",
                                               "reasoning_content": "hm", "extra": 1},
                         "logprobs": None, "finish_reason": None, "stop_reason": None}],
            "prompt_token_ids": None}
    chunk = chat_chunk(data, "schema/function_ir", include_usage=False)
    assert set(chunk) == {"id", "object", "created", "model", "choices"}
    assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "schema/function_ir"
    (choice,) = chunk["choices"]
    assert choice == {"index": 0, "delta": {"role": "assistant", "content": "{"},
                      "logprobs": None, "finish_reason": None}


def test_a_chunk_carries_usage_only_when_the_client_asked() -> None:
    final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "repetition"}],
             "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    assert "usage" not in chat_chunk(final, "m", include_usage=False)
    asked = chat_chunk(final, "m", include_usage=True)
    assert asked["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert asked["choices"][0]["finish_reason"] == "length"
    # OpenAI sends `usage: null` on every chunk but the last when it was asked for
    middle = chat_chunk({"choices": [{"delta": {"content": "a"}}]}, "m", include_usage=True)
    assert "usage" in middle and middle["usage"] is None


def test_a_chunks_empty_text_and_tool_calls_pass() -> None:
    call = [{"index": 0, "function": {"arguments": "{"}}]
    data = {"choices": [{"delta": {"content": "", "tool_calls": call, "refusal": None}}]}
    delta = chat_chunk(data, "m", include_usage=False)["choices"][0]["delta"]
    assert delta == {"content": "", "tool_calls": call}


def test_a_chunk_of_a_failed_generation_is_an_upstream_error() -> None:
    data = {"choices": [{"delta": {}, "finish_reason": "abort"}]}
    upstream_error(chat_chunk, data, "m", include_usage=False)


# -- server-sent events

def test_an_event_is_one_data_line() -> None:
    event = sse({"a": "b\nc"})
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert event.count(b"\n") == 2 and orjson.loads(event[6:]) == {"a": "b\nc"}
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_an_event_that_cannot_be_written_is_an_upstream_error() -> None:
    nested: Any = "x"
    for _ in range(300):  # past orjson's 255 levels
        nested = [nested]
    assert "written back" in upstream_error(sse, {"choices": nested}).message
