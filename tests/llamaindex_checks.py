"""LlamaIndex's `OpenAILike.structured_predict` against a running gateway.

Run with the LlamaIndex venv's python (LlamaIndex pins openai<3, the gateway's venv has 3.x):

    .venv-llamaindex/bin/python tests/llamaindex_checks.py \
        --base-url http://127.0.0.1:8080 --api-key irgw-... --model tiny-qwen2

Standalone on purpose: it imports nothing from the gateway, only the pydantic-only
`function_ir_model.py` beside it. It prints ONE JSON
line: per mode, every attempt's outcome plus what LlamaIndex put on the wire (recorded by an
httpx event hook), and exits 1 if a mode never succeeded or an attempt failed in a way that
is neither a success nor the gateway's typed output error (422). Modes:

- `function_calling`: `is_function_calling_model=True` -> one tool named after the output
  class, `tool_choice: "required"`, `parallel_tool_calls: false`;
- `structured_outputs`: `should_use_structured_outputs=True` (OpenAILike's knob in
  llama-index-llms-openai-like 0.8.x) -> a strict `json_schema` response_format.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from importlib.metadata import version
from typing import Any

import httpx
import openai
from function_ir_model import IDENT, FunctionIR  # a sibling file: pydantic only
from llama_index.core.prompts import PromptTemplate
from llama_index.llms.openai_like import OpenAILike

OUTPUT_ERROR_CODES = {"output_validation_failed", "output_truncated"}
PROMPT = PromptTemplate("Describe, as the function's IR, a function that {task}.")
TASKS = ["adds two integers", "reverses a string", "parses an ISO 8601 date",
         "returns the median of a list of floats", "counts the words in a text"]


class Wire:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def on_request(self, request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else {}
        self.sent.append({"path": request.url.path, "body": body})

    def on_response(self, response: httpx.Response) -> None:
        if self.sent and "status" not in self.sent[-1]:
            self.sent[-1]["status"] = response.status_code
            self.sent[-1]["x-irgw-schema"] = response.headers.get("x-irgw-schema")

    def client(self) -> httpx.Client:
        return httpx.Client(timeout=120, event_hooks={"request": [self.on_request],
                                                      "response": [self.on_response]})


def summary_of(body: dict[str, Any]) -> dict[str, Any]:
    """The parts of a request body that show how LlamaIndex asked for structure."""
    response_format = body.get("response_format") or {}
    spec = response_format.get("json_schema") or {}
    return {
        "model": body.get("model"),
        "tools": [t.get("function", {}).get("name") for t in body.get("tools") or []],
        "tool_strict": [t.get("function", {}).get("strict") for t in body.get("tools") or []],
        "tool_choice": body.get("tool_choice"),
        "parallel_tool_calls": body.get("parallel_tool_calls"),
        "response_format_type": response_format.get("type"),
        "response_format_name": spec.get("name"),
        "response_format_strict": spec.get("strict"),
        "response_format_has_schema": "schema" in spec,
        "max_tokens": body.get("max_tokens"),
    }


def make_llm(args: argparse.Namespace, wire: Wire, mode: str) -> OpenAILike:
    return OpenAILike(
        model=args.model,
        api_base=args.base_url.rstrip("/") + "/v1",
        api_key=args.api_key,
        is_chat_model=True,
        is_function_calling_model=True,
        should_use_structured_outputs=mode == "structured_outputs",
        temperature=0,
        max_tokens=args.max_tokens,
        max_retries=0,
        timeout=120,
        http_client=wire.client(),
    )


def attempt(llm: OpenAILike, task: str) -> dict[str, Any]:
    started = time.monotonic()
    try:
        result = llm.structured_predict(FunctionIR, PROMPT, task=task)
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        typed = exc.status_code == 422 and body.get("code") in OUTPUT_ERROR_CODES
        return {"outcome": "gateway_output_error" if typed else "unexpected_error",
                "status": exc.status_code, "code": body.get("code"),
                "error": str(exc)[:300], "seconds": round(time.monotonic() - started, 2)}
    except Exception as exc:  # anything else is a failure of the check, reported in full
        return {"outcome": "unexpected_error", "error": f"{type(exc).__name__}: {exc}"[:500],
                "seconds": round(time.monotonic() - started, 2)}
    if not isinstance(result, FunctionIR):
        return {"outcome": "unexpected_error", "error": f"returned {type(result).__name__}"}
    ok_name = re.match(IDENT, result.signature.name) is not None
    return {"outcome": "parsed" if ok_name else "unexpected_error",
            "parsed": result.model_dump(), "seconds": round(time.monotonic() - started, 2)}


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    wire = Wire()
    llm = make_llm(args, wire, mode)
    attempts: list[dict[str, Any]] = []
    for task in TASKS[: args.attempts]:
        before = len(wire.sent)
        outcome = attempt(llm, task)
        outcome["requests"] = [{"path": s["path"], "status": s.get("status"),
                                "x-irgw-schema": s.get("x-irgw-schema"),
                                **summary_of(s["body"])} for s in wire.sent[before:]]
        attempts.append(outcome)
        if outcome["outcome"] == "parsed":
            break
    outcomes = [a["outcome"] for a in attempts]
    return {"ok": "parsed" in outcomes and "unexpected_error" not in outcomes,
            "attempts": attempts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True, help="gateway base URL, without /v1")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-tokens", type=int, default=350)
    parser.add_argument("--attempts", type=int, default=len(TASKS),
                        help="prompts to try per mode until one succeeds")
    parser.add_argument("--modes", default="function_calling,structured_outputs")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "versions": {"llama-index-llms-openai-like": version("llama-index-llms-openai-like"),
                     "llama-index-core": version("llama-index-core"),
                     "openai": openai.__version__},
    }
    for mode in args.modes.split(","):
        results[mode] = run_mode(args, mode)
    ok = all(results[mode]["ok"] for mode in args.modes.split(","))
    results["ok"] = ok
    print(json.dumps(results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
