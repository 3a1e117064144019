"""Schemas the engine cannot compile, or only partly enforces, against the real vLLM 0.32.0
(CPU build, xgrammar 0.2.8): a typed answer every time, never a 5xx, every keyword named.

Shares the session's vLLM (`live`); the registered-schema gateway and the one without the
pattern splitting are extra gateways in front of that same vLLM.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.dev.vllm_process import vllm_python
from gateway.output import engine_regex
from tests.conftest import REPO
from tests.gateway_server import running_gateway
from tests.integration.conftest import REPORT, Live, live_settings
from tests.integration.test_vllm import TYPED_ERRORS, outcome_of
from tests.test_engine_lint import UNDER_ENFORCED

WIDE_PATTERN = "^[0-9a-zA-Z_-]{1,255}$"
WIDE = {"type": "object", "properties": {"slug": {"type": "string", "pattern": WIDE_PATTERN}},
        "required": ["slug"], "additionalProperties": False}
TYPED = {"passed", "repaired", *TYPED_ERRORS}


def body_for(schema: dict[str, Any] | None = None, name: str = "Wide") -> dict[str, Any]:
    body: dict[str, Any] = {"model": "tiny-qwen2", "max_tokens": 120, "messages": [
        {"role": "user", "content": "Make a slug for a blog post about parsers."}]}
    if schema is not None:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": name, "schema": schema}}
    return body


async def test_vllm_itself_still_fails_a_repeat_above_128(live: Live) -> None:
    # The premise: if a later vLLM/xgrammar compiles it, the splitting can go.
    async with httpx.AsyncClient(timeout=180) as client:
        direct = await client.post(f"{live.vllm.url}/v1/chat/completions", json={
            **body_for(), "response_format": {"type": "json_schema", "json_schema": {
                "name": "Wide", "schema": WIDE, "strict": True}}})
    assert direct.status_code == 500
    assert direct.json()["error"] == {"message": "Internal server error",
                                      "type": "InternalServerError", "param": None,
                                      "code": 500}


async def test_adhoc_wide_repeat_gets_a_checked_answer_and_a_warning(live: Live) -> None:
    outcomes: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=live.url, timeout=180) as client:
        for _ in range(3):
            response = await client.post("/v1/chat/completions", json=body_for(WIDE),
                                         headers=live.headers())
            assert response.status_code < 500, response.text
            outcomes[outcome_of(response, WIDE)] += 1
            # On a 200 and on a typed 422 alike.
            assert WIDE_PATTERN in response.headers["x-irgw-schema-warnings"]
    REPORT.append(f"ad-hoc pattern with {{1,255}} on the real vLLM: {dict(outcomes)}")
    assert set(outcomes) <= TYPED, outcomes


async def test_registered_wide_repeat_gets_a_checked_answer_and_a_warning(
    live: Live, tmp_path: Path,
) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(REPO / "schemas", schemas)
    (schemas / "slug.v1.json").write_text(json.dumps({
        "name": "slug", "version": 1, "description": "a URL slug", "schema": WIDE}))
    settings = live_settings(live.vllm.url, live.keys.path, schemas_dir=schemas)
    outcomes: Counter[str] = Counter()
    async with running_gateway(settings) as gateway, httpx.AsyncClient(
            base_url=gateway.url, timeout=180) as client:
        for _ in range(3):
            response = await client.post("/v1/chat/completions", json={
                **body_for(), "model": "schema/slug"}, headers=live.headers())
            assert response.status_code < 500, response.text
            outcomes[outcome_of(response, WIDE)] += 1
            assert response.headers["x-irgw-schema"] == "slug@1"
            assert WIDE_PATTERN in response.headers["x-irgw-schema-warnings"]
    REPORT.append(f"registered pattern with {{1,255}} on the real vLLM: {dict(outcomes)}")
    assert set(outcomes) <= TYPED, outcomes


async def test_a_grammar_vllm_fails_is_400_invalid_schema_not_5xx(
    live: Live, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without the splitting, vLLM really fails the grammar (a bare 500): the gateway's
    # answer is the 400 the openai client does not retry, counted and hashed.
    monkeypatch.setattr(engine_regex, "REPEAT_LIMIT", 10**9)
    settings = live_settings(live.vllm.url, live.keys.path)
    async with running_gateway(settings) as gateway, httpx.AsyncClient(
            base_url=gateway.url, timeout=180) as client:
        response = await client.post("/v1/chat/completions", json=body_for(WIDE),
                                     headers=live.headers())
        streamed = await client.post("/v1/chat/completions",
                                     json={**body_for(WIDE), "stream": True},
                                     headers=live.headers())
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_schema" and len(error["schema_sha256"]) == 64
    # A stream has its 200 before vLLM compiles: the error event carries the same code.
    assert streamed.status_code == 200
    assert '"code":"invalid_schema"' in streamed.text.replace(" ", "")
    assert 'irgw_grammar_failures_total{schema="(ad-hoc)"} 2.0' in metrics


# Point 2: each keyword the grammar does not get, or ignores, is named in the header; the
# answer is still checked against it.
KEYWORD_CASES = {
    "propertyNames beside properties": {
        "type": "object", "properties": {"a": {"type": "integer"}},
        "propertyNames": {"pattern": "^[a-z]+$"}, "required": ["a"],
        "additionalProperties": False},
    "propertyNames beside patternProperties": {
        "type": "object", "patternProperties": {"^[a-z]$": {"type": "integer"}},
        "propertyNames": {"maxLength": 1}, "additionalProperties": False, "maxProperties": 2},
    "patternProperties beside properties": {
        "type": "object", "properties": {"a": {"type": "integer"}},
        "patternProperties": {"^x_": {"type": "boolean"}}, "required": ["a"],
        "additionalProperties": False},
    "patternProperties with several patterns": {
        "type": "object", "patternProperties": {"^a": {"type": "integer"},
                                                "^b": {"type": "boolean"}},
        "additionalProperties": False, "maxProperties": 2},
    "dependencies": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "dependencies": {"a": ["b"]}, "required": ["a"], "additionalProperties": False},
}


@pytest.mark.parametrize("keyword", list(KEYWORD_CASES))
async def test_each_keyword_left_to_the_gateway_is_named(live: Live, keyword: str) -> None:
    schema = KEYWORD_CASES[keyword]
    async with httpx.AsyncClient(base_url=live.url, timeout=180) as client:
        direct = await client.post(f"{live.vllm.url}/v1/chat/completions", json={
            **body_for(), "response_format": {"type": "json_schema", "json_schema": {
                "name": "K", "schema": schema, "strict": True}}})
        response = await client.post("/v1/chat/completions", json=body_for(schema, "K"),
                                     headers=live.headers())
    outcome = outcome_of(response, schema)
    REPORT.append(f"{keyword}: vLLM alone {direct.status_code}, via the gateway {outcome}")
    assert outcome in TYPED, response.text
    assert f"/: {keyword}" in response.headers["x-irgw-schema-warnings"]


XGRAMMAR_PROBE = """
import json, sys
import xgrammar as xgr
vocab = [chr(c) for c in range(32, 127)] + ["<eos>"]
info = xgr.TokenizerInfo(encoded_vocab=vocab, stop_token_ids=[len(vocab) - 1])
compiler = xgr.GrammarCompiler(info, cache_enabled=True, max_threads=8)  # as vLLM 0.32
result = {}
for pattern in json.loads(sys.argv[1]):
    schema = json.dumps({"type": "string", "pattern": pattern})
    try:
        compiler.compile_json_schema(schema, any_whitespace=False, separators=(",", ":"))
        result[pattern] = "ok"
    except Exception as exc:
        result[pattern] = str(exc)[:200]
print(json.dumps(result))
"""


def test_the_repeat_limit_is_the_installed_xgrammars() -> None:
    # Each pattern straight through xgrammar 0.2.8 as vLLM compiles it: a pattern crashes
    # exactly when the gateway finds a repeat to split, and what it sends instead compiles.
    patterns = ["a{1,128}", "a{1,129}", "a{128}", "a{129}", "a{0,129}", "a{128,}", "a{129,}",
                "(ab|c){1,200}", "[a-z]{1,128}[0-9]{1,128}", "^[0-9a-zA-Z_-]{1,255}$",
                "(?:x\\d){300,}", "^a{1,512}$"]
    sent = {p: (engine_regex.split_large_repeats(p) or ("", []))[0] for p in patterns}
    probe = subprocess.run([str(vllm_python()), "-c", XGRAMMAR_PROBE,
                            json.dumps(patterns + list(sent.values()))],
                           capture_output=True, text=True, timeout=300, check=True)
    compiled = json.loads(probe.stdout.splitlines()[-1])
    for pattern in patterns:
        splits = sent[pattern] != pattern
        assert (compiled[pattern] != "ok") == splits, (pattern, compiled[pattern])
        if splits:
            assert "grammar_functor.cc" in compiled[pattern]
        assert compiled[sent[pattern]] == "ok", (sent[pattern], compiled[sent[pattern]])


# Issue 19, part 3: every converter rule, on the real vLLM: what vLLM alone does with the
# schema (refuses it, or takes it and under-enforces it), and through the gateway a typed
# answer with the rule named.
CONVERTER_CASES = {
    **UNDER_ENFORCED,
    "fractional bound on an integer": (
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1.5,
                                                "maximum": 9.5}},
         "required": ["n"], "additionalProperties": False},
        "/properties/n: minimum 1.5 (sent to vLLM as 2"),
}


@pytest.mark.parametrize("case", list(CONVERTER_CASES))
async def test_each_converter_rule_on_the_real_vllm(live: Live, case: str) -> None:
    schema, warning = CONVERTER_CASES[case]
    async with httpx.AsyncClient(base_url=live.url, timeout=180) as client:
        direct = await client.post(f"{live.vllm.url}/v1/chat/completions", json={
            **body_for(), "response_format": {"type": "json_schema", "json_schema": {
                "name": "C", "schema": schema, "strict": True}}})
        response = await client.post("/v1/chat/completions", json=body_for(schema, "C"),
                                     headers=live.headers())
    outcome = outcome_of(response, schema)
    REPORT.append(f"{case}: vLLM alone {direct.status_code}, via the gateway {outcome}")
    assert direct.status_code in (200, 400)  # never a crash: these are not the repeat rule
    assert outcome in TYPED, response.text
    assert warning in response.headers["x-irgw-schema-warnings"]


CONVERTER_PROBE = """
import json, sys
import xgrammar as xgr
vocab = [chr(c) for c in range(32, 127)] + ["<eos>"]
info = xgr.TokenizerInfo(encoded_vocab=vocab, stop_token_ids=[len(vocab) - 1])
compiler = xgr.GrammarCompiler(info, cache_enabled=True, max_threads=8)  # as vLLM 0.32
result = {}
for name, (schema, text) in json.loads(sys.argv[1]).items():
    try:
        ctx = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                           separators=(",", ":"))
    except Exception as exc:
        result[name] = "refused: " + str(exc)[:200]
        continue
    matcher = xgr.GrammarMatcher(ctx)
    ok = all(matcher.accept_token(vocab.index(c)) for c in text)
    result[name] = "accepts" if ok and matcher.accept_token(len(vocab) - 1) else "rejects"
print(json.dumps(result))
"""
# For each rule: an instance the schema forbids that xgrammar 0.2.8 lets through, or None
# where xgrammar refuses the schema itself.
VIOLATIONS: dict[str, Any] = {
    "length without a type": "abcdef", "pattern without a type": "bbb",
    "minimum without a type": 3, "keywords beside $ref": "abcdef", "overlapping oneOf": 1,
    "$ref to an $anchor": {"a": 1}, "minProperties above the property count": None,
    "minItems above prefixItems": None, "fractional bound on an integer": None,
}


def test_each_converter_rule_is_what_the_installed_xgrammar_does() -> None:
    from jsonschema import Draft202012Validator

    cases = {name: (CONVERTER_CASES[name][0], json.dumps(bad, separators=(",", ":")))
             for name, bad in VIOLATIONS.items()}
    cases["dependencies"] = (KEYWORD_CASES["dependencies"], '{"a":1}')
    probe = subprocess.run([str(vllm_python()), "-c", CONVERTER_PROBE, json.dumps(cases)],
                           capture_output=True, text=True, timeout=300, check=True)
    seen = json.loads(probe.stdout.splitlines()[-1])
    for name, (schema, text) in cases.items():
        if VIOLATIONS.get(name, "") is None:
            assert seen[name].startswith("refused"), (name, seen[name])
            continue
        # The schema forbids it (jsonschema-rs checks `dependencies`; Python's 2020-12
        # validator does not, so that one is checked by the gateway test above).
        if name != "dependencies":
            assert not Draft202012Validator(schema).is_valid(json.loads(text)), name
        assert seen[name] == "accepts", (name, seen[name])
