"""Valid answers for every shipped schema, for the deploy smoke run against the fake upstream."""

from __future__ import annotations

import json

from tests.ir_samples import VALID as FUNCTION_IR_ANSWER

MODULE_IR = {
    "purpose": "Fibonacci numbers.",
    "module_name": "fib",
    "imports": [],
    "functions": [{"intent": "Return the n-th Fibonacci number.", "name": "fib",
                   "parameters": [{"name": "n", "type_hint": "int"}], "returns": "int",
                   "visibility": "public"}],
}
TEST_PLAN_IR = {
    "function_name": "fib",
    "strategy": "Small values, then the error path.",
    "cases": [{"rationale": "The first value.", "name": "test_zero", "kind": "edge",
               "inputs": [{"name": "n", "value": "0"}],
               "expected": {"outcome": "returns", "value": "0"}}],
}
# In the order GET /v1/schemas lists them (sorted by name), which is the smoke's order.
ANSWERS_BY_SCHEMA = {
    "function_ir": FUNCTION_IR_ANSWER,
    "module_ir": json.dumps(MODULE_IR, separators=(",", ":")),
    "test_plan_ir": json.dumps(TEST_PLAN_IR, separators=(",", ":")),
}
