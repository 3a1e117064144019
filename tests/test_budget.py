"""What a request reserves and the `max_tokens` vLLM is sent (gateway/generation/budget.py): every
answer vLLM may generate (n x prompts x max_tokens), a default when max_tokens is absent,
and the key's cap and TPM applied to the whole request."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.access.keys import KeyPolicy
from gateway.errors import InvalidRequestError
from gateway.generation.budget import Budget, token_budget
from gateway.generation.planning import ChatPlan, estimate_prompt_tokens, plan_chat, plan_completion
from gateway.output.registry import SchemaRegistry
from gateway.settings import Settings
from tests.conftest import REPO

SETTINGS = Settings(auth_enabled=False, schemas_dir=REPO / "schemas")
REGISTRY = SchemaRegistry.load(REPO / "schemas")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STRUCTURED = {**CHAT, "model": "schema/function_ir"}


def chat(**fields: Any) -> ChatPlan:
    return plan_chat({**CHAT, **fields}, REGISTRY, SETTINGS)


def budget(plan: ChatPlan, default: int = 1024, **policy: Any) -> Budget:
    return token_budget(plan, KeyPolicy(**policy), default)


def refused(plan: ChatPlan, **policy: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        budget(plan, **policy)
    assert info.value.status_code == 400 and info.value.param == "max_tokens"
    return info.value


def test_every_choice_and_prompt_is_reserved() -> None:
    prompt = estimate_prompt_tokens(CHAT)
    assert budget(chat(max_tokens=100, n=64)).reserved == prompt + 64 * 100
    prompts = {"model": "m", "prompt": ["a", "b", "c"], "max_tokens": 10, "n": 2}
    plan = plan_completion(prompts, REGISTRY, SETTINGS)
    assert budget(plan).reserved == estimate_prompt_tokens(prompts) + 3 * 2 * 10
    best_of = plan_completion({**prompts, "best_of": 5}, REGISTRY, SETTINGS)
    assert budget(best_of).sequences == 15


def test_token_id_prompts_are_counted_one_token_per_id() -> None:
    ids = {"model": "m", "prompt": [[1] * 3000]}
    assert estimate_prompt_tokens(ids) >= 3000


def test_no_max_tokens_gets_the_default_where_something_must_bound_it() -> None:
    assert budget(plan_chat(STRUCTURED, REGISTRY, SETTINGS), default=300).max_tokens == 300
    assert budget(chat(), default=300, tpm=100_000).max_tokens == 300
    assert budget(chat(n=4), default=300, max_tokens=100).max_tokens == 25
    # An unlimited key's plain request is left to vLLM, as before.
    assert budget(chat(), default=300).max_tokens is None


def test_the_default_is_clipped_to_what_the_keys_tpm_allows() -> None:
    small = budget(chat(), default=1024, tpm=500)
    assert small.max_tokens == 500 - estimate_prompt_tokens(CHAT) and small.reserved == 500
    split = budget(chat(n=3), default=1024, tpm=500)
    assert split.reserved <= 500 and split.max_tokens == (500 - split.prompt_tokens) // 3


def test_the_keys_cap_applies_to_the_whole_request() -> None:
    error = refused(chat(n=64, max_tokens=10), max_tokens=100)
    assert error.code == "max_tokens_above_key_limit"
    assert "64 answers" in error.message and "at most 1" in error.message
    assert budget(chat(n=10, max_tokens=10), max_tokens=100).reserved == \
        estimate_prompt_tokens(CHAT) + 100
    assert refused(chat(n=101), max_tokens=100).code == "max_tokens_above_key_limit"
    # What the key's cap always meant for one answer.
    assert budget(chat(max_tokens=100), max_tokens=100).max_tokens == 100
    assert refused(chat(max_tokens=101), max_tokens=100).code == "max_tokens_above_key_limit"
    assert budget(chat(max_tokens=99999)).max_tokens == 99999


def test_a_request_over_the_tpm_says_what_would_fit() -> None:
    error = refused(chat(max_tokens=600), tpm=500)
    assert error.code == "request_too_large"
    assert f"at most {500 - estimate_prompt_tokens(CHAT)}" in error.message
    many = {"model": "m", "prompt": ["x"] * 500}
    error = refused(plan_completion(many, REGISTRY, SETTINGS), tpm=1000)
    assert error.code == "request_too_large" and "fewer prompts" in error.message


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_n_must_be_a_positive_integer(n: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        budget(chat(n=n))
    assert info.value.param == "n"


def test_one_is_a_valid_count_and_an_error_says_which_field() -> None:
    assert budget(chat(n=1, best_of=1, max_tokens=10)).sequences == 1
    with pytest.raises(InvalidRequestError) as info:
        budget(chat(best_of=0))
    assert info.value.param == "best_of"
    assert isinstance(info.value.message, str) and info.value.message.strip()


def test_a_chat_bodys_stray_prompt_field_is_not_counted_as_prompts() -> None:
    assert budget(chat(prompt=["a"] * 5, max_tokens=10)).sequences == 1


def test_requests_exactly_at_the_keys_limits_are_admitted() -> None:
    # One token per answer for as many answers as the cap: within the cap, not over it.
    assert budget(chat(n=4), max_tokens=4).max_tokens == 1
    assert budget(chat(max_tokens=1), tpm=500).max_tokens == 1
    # vLLM is sent a whole number of tokens.
    assert type(budget(chat(n=3), max_tokens=100).max_tokens) is int


def figures(message: str) -> set[str]:
    return set(re.findall(r"\d+(?:\.\d+)?", message))


def test_a_refusal_gives_the_figures_a_client_needs_to_fit() -> None:
    # What was asked for, how many answers, the key's limit, and what would fit.
    capped = refused(chat(n=2, max_tokens=300), max_tokens=500)
    assert {"2", "300", "500", "250"} <= figures(capped.message)
    prompt = estimate_prompt_tokens(CHAT)
    over = refused(chat(max_tokens=600), tpm=500)
    assert {"600", "500", str(prompt), str(500 - prompt)} <= figures(over.message)


def test_a_request_the_keys_whole_budget_cannot_hold_is_a_400_not_a_429() -> None:
    # It was a 429 insufficient_quota saying to retry after the reset, where the same
    # request is refused again: a budget of 500 and the default of 1024 never fit.
    structured = plan_chat(STRUCTURED, REGISTRY, SETTINGS)
    prompt = estimate_prompt_tokens(STRUCTURED)
    fitted = budget(structured, default=1024, budget_tokens=500)
    assert fitted.max_tokens == 500 - prompt and fitted.reserved == 500
    error = refused(chat(max_tokens=600), budget_tokens=500, budget_period="month")
    assert error.code == "request_too_large"
    assert "budget of 500 tokens per month" in error.message
    assert f"at most {500 - estimate_prompt_tokens(CHAT)}" in error.message
    assert budget(chat(max_tokens=100), budget_tokens=500).max_tokens == 100
    # The tightest limit sets the default: here the TPM.
    assert budget(structured, default=1024, budget_tokens=500, tpm=200).reserved == 200


def test_a_budget_fits_answers_down_to_one_token_and_says_what_was_asked() -> None:
    prompt = estimate_prompt_tokens(CHAT)
    assert "up to 600 tokens" in refused(chat(max_tokens=600), budget_tokens=500).message
    fitted = budget(chat(n=3), default=1024, budget_tokens=500)
    assert type(fitted.max_tokens) is int and fitted.max_tokens == (500 - prompt) // 3
    one = budget(chat(), default=1024, budget_tokens=prompt + 1)
    assert one.max_tokens == 1 and one.reserved == prompt + 1
    none = refused(chat(), budget_tokens=prompt)
    assert none.code == "request_too_large" and "at least 1 token" in none.message
