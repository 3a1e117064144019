"""The hand-written prompt sets under bench/prompts/: one per registered schema, 30 or more
distinct prompts with unique ids, readable as JSON Lines."""

from __future__ import annotations

import json

import pytest

from gateway.output.registry import SchemaRegistry
from tests.conftest import REPO

PROMPTS = REPO / "bench" / "prompts"


@pytest.mark.parametrize("name", SchemaRegistry.load(REPO / "schemas").names())
def test_every_schema_has_a_prompt_set(name: str) -> None:
    lines = (PROMPTS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert all(set(row) == {"id", "prompt"} for row in rows)
    assert all(isinstance(row["prompt"], str) and len(row["prompt"]) >= 20 for row in rows)
    assert len({row["id"] for row in rows}) == len(rows)
    assert len({row["prompt"] for row in rows}) == len(rows) >= 30
