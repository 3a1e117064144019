"""LlamaIndex (`OpenAILike.structured_predict`) against the gateway and a real vLLM.

LlamaIndex's OpenAI packages pin `openai<3`, so it lives in its own venv
(`scripts/setup-client-env.sh llamaindex` -> .venv-llamaindex) and runs as a subprocess:
tests/llamaindex_checks.py prints one JSON line with every attempt and what went on the wire.
The subprocess is awaited asynchronously: the gateway serves it from this test's event loop.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.integration.conftest import Live

LLAMAINDEX_PYTHON = REPO / ".venv-llamaindex" / "bin" / "python"
CHECKS = REPO / "tests" / "llamaindex_checks.py"
OUTPUT_ERROR_CODES = {"output_validation_failed", "output_truncated"}


def llamaindex_python() -> Path:
    if not LLAMAINDEX_PYTHON.exists():
        pytest.fail(f"{LLAMAINDEX_PYTHON} is missing: run scripts/setup-client-env.sh llamaindex "
                    "(LlamaIndex pins openai<3, so it has its own venv)")
    return LLAMAINDEX_PYTHON


async def run_checks(live: Live, *args: str, key: str | None = None
                     ) -> tuple[int, dict[str, Any], str]:
    process = await asyncio.create_subprocess_exec(
        str(llamaindex_python()), str(CHECKS), "--base-url", live.url,
        "--api-key", key or live.api_key, "--model", live.model, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=300)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    err = stderr.decode(errors="replace")
    lines = stdout.decode().strip().splitlines()
    assert lines, f"llamaindex_checks printed nothing (exit {process.returncode}):\n{err[-3000:]}"
    return process.returncode or 0, json.loads(lines[-1]), err


def check_attempts(mode: dict[str, Any]) -> list[dict[str, Any]]:
    attempts: list[dict[str, Any]] = mode["attempts"]
    for attempt in attempts:
        assert attempt["outcome"] in ("parsed", "gateway_output_error"), attempt
        if attempt["outcome"] == "gateway_output_error":
            assert attempt["status"] == 422 and attempt["code"] in OUTPUT_ERROR_CODES
    assert attempts[-1]["outcome"] == "parsed", attempts
    parsed = attempts[-1]["parsed"]
    assert set(parsed) == {"intent", "signature"} and parsed["signature"]["name"]
    return attempts


async def test_structured_predict_function_calling_and_structured_outputs(live: Live) -> None:
    code, result, err = await run_checks(live)
    assert code == 0 and result["ok"], json.dumps(result, indent=1)[:6000] + err[-2000:]
    assert result["versions"]["openai"].startswith("2."), result["versions"]

    calling = check_attempts(result["function_calling"])
    for attempt in calling:
        [request] = attempt["requests"]
        # What LlamaIndex sends for function calling: one tool named after the class,
        # tool_choice "required", no parallel calls; the gateway serves it as a schema.
        assert request["path"] == "/v1/chat/completions"
        assert request["tools"] == ["FunctionIR"] and request["tool_choice"] == "required"
        assert request["parallel_tool_calls"] is False
        assert request["response_format_type"] is None
        assert request["x-irgw-schema"] == "FunctionIR (ad-hoc)"

    structured = check_attempts(result["structured_outputs"])
    for attempt in structured:
        [request] = attempt["requests"]
        assert request["response_format_type"] == "json_schema"
        assert request["response_format_name"] == "FunctionIR"
        assert request["response_format_strict"] is True
        assert request["response_format_has_schema"] is True
        assert not request["tools"]
        assert request["x-irgw-schema"] == "FunctionIR (ad-hoc)"


async def test_checks_script_fails_loudly(live: Live) -> None:
    # The script is the test's only witness: a wrong key must make it exit non-zero with
    # an unexpected_error (the 401), never report "ok".
    code, result, _ = await run_checks(live, "--attempts", "1", "--modes", "function_calling",
                                       key="irgw-AAAAAAAAAAAA-" + "x" * 40)
    assert code == 1 and result["ok"] is False
    [attempt] = result["function_calling"]["attempts"]
    assert attempt["outcome"] == "unexpected_error" and attempt["status"] == 401
