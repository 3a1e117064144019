"""Answers a model might give, for the fake upstream to return."""

from __future__ import annotations

import json

FUNCTION_IR = {
    "intent": {"summary": "Add two integers.", "rationale": "Callers need a checked sum."},
    "signature": {
        "name": "add",
        "parameters": [{"name": "a", "type_hint": "int"}, {"name": "b", "type_hint": "int"}],
        "returns": "int",
    },
}
VALID = json.dumps(FUNCTION_IR, separators=(",", ":"))
# What xgrammar 0.2.8 lets through in maxLength-bounded strings: a raw newline and tab.
RAW_CONTROL = VALID.replace("Add two integers.", "Add two\nintegers.\t")
# Parses, but `signature.name` breaks its pattern.
BAD_NAME = VALID.replace('"name":"add"', '"name":"2add"')
TRUNCATED = VALID[: len(VALID) // 2]
