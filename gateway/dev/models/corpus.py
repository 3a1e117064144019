"""The tiny model's training conversations: requests and compact JSON answers shaped like
the gateway's IR schemas (and sometimes a hermes tool call), generated from a seed."""

from __future__ import annotations

import json
import random
from typing import Any

from gateway.dev.models.chatml import DEFAULT_SYSTEM

VERBS = [
    ("parse", "dict[str, Any]"), ("validate", "bool"), ("load", "list[dict[str, Any]]"),
    ("normalize", "str"), ("count", "int"), ("merge", "dict[str, str]"), ("format", "str"),
    ("compute", "float"), ("save", "None"), ("fetch", "bytes"), ("filter", "list[str]"),
    ("summarize", "str"), ("hash", "str"), ("sort", "list[str]"), ("check", "bool"),
    ("group", "dict[str, list[str]]"), ("resolve", "Path"), ("encode", "bytes"),
    ("decode", "str"), ("split", "list[str]"),
]
NOUNS = [
    ("config file", "path", "Path"), ("user record", "user_id", "int"),
    ("order list", "orders", "list[Order]"), ("invoice", "invoice", "Invoice"),
    ("email address", "email", "str"), ("timestamp", "ts", "datetime"),
    ("price table", "prices", "dict[str, Decimal]"), ("log line", "line", "str"),
    ("csv file", "path", "Path"), ("url", "url", "str"), ("token", "token", "str"),
    ("payload", "payload", "bytes"), ("session", "session_id", "str"),
    ("score list", "scores", "list[float]"), ("header map", "headers", "dict[str, str]"),
    ("matrix", "rows", "list[list[float]]"), ("event stream", "events", "Iterable[Event]"),
    ("cache entry", "key", "str"), ("date range", "start", "date"), ("word list", "words",
    "list[str]"),
]
EXTRA_PARAMS = [
    ("strict", "bool"), ("limit", "int"), ("encoding", "str"), ("default", "str | None"),
    ("timeout", "float"), ("sep", "str"), ("now", "datetime | None"), ("retries", "int"),
]
IMPORTS = [
    ("json", ["loads", "dumps"]), ("pathlib", ["Path"]), ("typing", ["Any", "Iterable"]),
    ("datetime", ["datetime", "date"]), ("decimal", ["Decimal"]), ("re", ["compile"]),
    ("collections", ["Counter", "defaultdict"]), ("hashlib", ["sha256"]),
    ("csv", ["reader", "writer"]), ("urllib.parse", ["urlparse", "urlencode"]),
    ("itertools", ["chain", "groupby"]), ("dataclasses", ["dataclass", "field"]),
]
PACKAGES = ["app", "core", "utils", "billing", "io", "auth", "text", "reports"]
RATIONALES = [
    "Callers need a {ret} instead of raw input.",
    "Keeps the {verb} logic for each {noun} in one tested place.",
    "Downstream code expects a clean {noun}.",
    "Avoids repeating this step in every handler.",
    "The {noun} arrives from users and cannot be trusted as is.",
]
SAMPLE_VALUES = {
    "Path": ["'config.toml'", "'data/in.csv'", "'missing.txt'"],
    "int": ["0", "42", "-1"], "str": ["'alice@example.com'", "''", "'  Bob '"],
    "bool": ["True", "False"], "float": ["0.5", "1e9"], "bytes": ["b''", "b'abc'"],
}
SYSTEMS = [
    None, DEFAULT_SYSTEM, "You write compact JSON that matches the requested schema.",
    "Answer with JSON only.", "You design Python code as structured IR.",
]


def _fn_parts(rng: random.Random) -> tuple[str, str, list[dict[str, str]], str, str]:
    verb, ret = rng.choice(VERBS)
    noun, pname, ptype = rng.choice(NOUNS)
    params = [{"name": pname, "type_hint": ptype}]
    for extra, etype in rng.sample(EXTRA_PARAMS, rng.randint(0, 2)):
        params.append({"name": extra, "type_hint": etype})
    return verb, noun, params, ret, f"{verb}_{noun.replace(' ', '_')}"


def function_ir(rng: random.Random) -> tuple[str, dict[str, Any]]:
    verb, noun, params, ret, name = _fn_parts(rng)
    request = rng.choice([
        "Describe the function that will {v} the {n}.", "Write the function IR for: {v} a {n}.",
        "I need a function to {v} a {n}. Give its intent and signature.",
        "Function spec please: {v} {n}.",
    ]).format(v=verb, n=noun)
    return request, {
        "intent": {
            "summary": f"{verb.capitalize()} the given {noun}.",
            "rationale": rng.choice(RATIONALES).format(ret=ret, verb=verb, noun=noun),
        },
        "signature": {"name": name, "parameters": params, "returns": ret},
    }


def module_ir(rng: random.Random) -> tuple[str, dict[str, Any]]:
    noun = rng.choice(NOUNS)[0]
    functions = []
    for _ in range(rng.randint(1, 3)):
        verb, fnoun, params, ret, name = _fn_parts(rng)
        private = rng.random() < 0.25
        functions.append({
            "intent": f"{verb.capitalize()} the given {fnoun}.",
            "name": f"_{name}" if private else name, "parameters": params, "returns": ret,
            "visibility": "private" if private else "public",
        })
    imports = [{"module": m, "names": rng.sample(names, rng.randint(1, len(names)))}
               for m, names in rng.sample(IMPORTS, rng.randint(0, 3))]
    request = rng.choice(["Design a module for {n}s.", "Plan a Python module that handles {n}s.",
                          "Module IR for working with a {n}."]).format(n=noun)
    return request, {
        "purpose": f"Helpers for working with {noun}s.",
        "module_name": f"{rng.choice(PACKAGES)}.{noun.replace(' ', '_')}",
        "imports": imports, "functions": functions,
    }


def test_plan_ir(rng: random.Random) -> tuple[str, dict[str, Any]]:
    _, noun, params, ret, name = _fn_parts(rng)
    cases = []
    for kind in rng.sample(["typical", "edge", "error"], rng.randint(1, 3)):
        p = params[0]
        value = rng.choice(SAMPLE_VALUES.get(p["type_hint"], ["None", "[]", "{}"]))
        raises = kind == "error"
        cases.append({
            "rationale": f"{kind.capitalize()} {noun} input must be handled.",
            "name": f"test_{name}_{kind}", "kind": kind,
            "inputs": [{"name": p["name"], "value": value}],
            "expected": {"outcome": "raises" if raises else "returns",
                         "value": "ValueError" if raises else rng.choice(["None", "True", "0"])},
        })
    sig = ", ".join(f"{p['name']}: {p['type_hint']}" for p in params)
    request = rng.choice(["Plan tests for {f}.", "Write a test plan for {f}({s}) -> {r}."]).format(
        f=name, s=sig, r=ret)
    return request, {
        "function_name": name,
        "strategy": f"Cover a typical {noun}, an empty one and a malformed one.",
        "cases": cases,
    }


def misc_json(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """Small generic objects (numbers, booleans, null, arrays) so that ad-hoc test schemas
    outside the IR family also end quickly."""
    noun = rng.choice(NOUNS)[0]
    pool: list[tuple[str, Any]] = [
        ("name", noun), ("count", rng.randint(0, 99)), ("ok", rng.random() < 0.5),
        ("score", round(rng.random(), 2)), ("tags", rng.sample(["a", "b", "io", "new"], 2)),
        ("note", None), ("id", rng.randint(1, 9999)), ("answer", f"The {noun} is fine."),
    ]
    obj = dict(rng.sample(pool, rng.randint(1, 4)))
    return rng.choice(["Return a small JSON summary of the {n}.", "Give me JSON about a {n}.",
                       "Extract the fields for this {n}."]).format(n=noun), obj


Conversation = tuple[list[dict[str, str]], list[dict[str, Any]] | None, str]
TOOL_NAMES = {function_ir: "emit_function_ir", module_ir: "emit_module_ir",
              test_plan_ir: "emit_test_plan", misc_json: "emit_record"}


def conversations(n: int, seed: int) -> list[Conversation]:
    """(messages, tools, answer) triples. Answers are compact JSON with keys in schema order
    (= generation order) and separators as xgrammar emits them with disable_any_whitespace;
    about one in eight is a hermes tool call, so forced tool calls also close and stop."""
    rng = random.Random(seed)
    makers = [function_ir] * 4 + [module_ir] * 2 + [test_plan_ir] * 2 + [misc_json]
    out: list[Conversation] = []
    for _ in range(n):
        maker = rng.choice(makers)
        request, obj = maker(rng)
        system = rng.choice(SYSTEMS)
        messages = ([{"role": "system", "content": system}] if system else [])
        messages.append({"role": "user", "content": request})
        answer = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        tools = None
        if rng.random() < 0.125:
            # Short parameter schemas keep prompts cheap to train on; the envelope is what
            # the model has to learn, vLLM's structural tag constrains the arguments.
            name = TOOL_NAMES[maker]
            tools = [{"type": "function", "function": {
                "name": name, "description": f"Record the {name[5:].replace('_', ' ')}.",
                "parameters": {"type": "object", "properties": {
                    k: {"type": "object" if isinstance(v, dict) else "string"}
                    for k, v in obj.items()}}}}]
            answer = f'<tool_call>\n{{"name": "{name}", "arguments": {answer}}}\n</tool_call>'
        out.append((messages, tools, answer))
    return out

