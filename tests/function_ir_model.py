"""A Pydantic mirror of schemas/function_ir.v1.json, as client code would write it.

Pydantic only, so the LlamaIndex checks (run with their own venv as a plain script, this
directory on sys.path) share it with the tests. Every string and list is bounded: with an
unbounded field a weak model can ramble until max_tokens and the answer is truncated.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

IDENT = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


class Intent(BaseModel):
    summary: str = Field(min_length=1, max_length=200)
    rationale: str = Field(min_length=1, max_length=400)


class Parameter(BaseModel):
    name: str = Field(pattern=IDENT)
    type_hint: str = Field(min_length=1, max_length=80)


class Signature(BaseModel):
    name: str = Field(pattern=IDENT)
    parameters: list[Parameter] = Field(max_length=8)
    returns: str = Field(min_length=1, max_length=80)


class FunctionIR(BaseModel):
    """One function's intent and signature."""

    intent: Intent
    signature: Signature
