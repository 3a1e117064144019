"""What a generation request may spend, worked out before it is admitted.

vLLM generates up to `max_tokens` for each of `n` choices (or `best_of`, if larger) of each
prompt, so that product, plus the prompt, is what is reserved against the key's TPM and
what the key's `max_tokens` cap applies to. A request without `max_tokens` gets a default
(and vLLM is sent it), clipped so that the request fits the key's limits: without a bound,
nothing could be reserved for the answer and a TPM would only be an average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.access.keys import KeyPolicy
from gateway.errors import InvalidRequestError
from gateway.generation import contract
from gateway.generation.planning import ChatPlan, _prompt_count, estimate_prompt_tokens


@dataclass(frozen=True, slots=True)
class Budget:
    max_tokens: int | None  # per choice and prompt, sent to vLLM; None: vLLM's own default
    prompt_tokens: int  # the over-estimate reserved for the prompt(s)
    sequences: int  # choices x prompts: how many answers vLLM generates

    @property
    def reserved(self) -> int:
        """What one call to vLLM may cost."""
        return self.prompt_tokens + self.sequences * (self.max_tokens or 0)


def sequences_of(body: dict[str, Any]) -> int:
    """How many answers vLLM generates for this body (never fewer than 1)."""
    choices = max(contract.N.read(body) or 1, contract.BEST_OF.read(body) or 1)
    prompts = _prompt_count(body["prompt"]) if "messages" not in body and "prompt" in body else 1
    return choices * max(1, prompts)


def token_budget(plan: ChatPlan, policy: KeyPolicy, default_max_tokens: int) -> Budget:
    """`max_tokens` to send and the tokens to reserve, or a 400 that says what would fit.

    The default applies where something must bound the answer: a checked request (the GPU
    is never held until the context is full) and any key with a token limit (`tpm` or a
    `max_tokens` cap). It is clipped to what the key's cap and TPM allow for this request."""
    sequences = sequences_of(plan.body)
    prompt = estimate_prompt_tokens(plan.body)
    cap, tpm, allowance = policy.max_tokens, policy.tpm, policy.budget_tokens
    room: list[int] = []  # per-answer ceilings from the key's limits
    if cap is not None:
        room.append(cap // sequences)
    if tpm is not None:
        room.append((tpm - prompt) // sequences)
    if allowance is not None:  # a whole period's budget: what it cannot hold never fits
        room.append((allowance - prompt) // sequences)
    max_tokens = plan.max_tokens
    if max_tokens is None and (plan.checked or room):
        max_tokens = min([default_max_tokens, *room])
    if cap is not None and ((max_tokens or 0) * sequences > cap or cap < sequences):
        raise InvalidRequestError(
            _too_much(max_tokens, sequences, f"this API key's limit of {cap} generated tokens "
                      "per request", cap // sequences),
            param="max_tokens", code="max_tokens_above_key_limit",
        )
    budget = Budget(max_tokens, prompt, sequences)
    if tpm is not None and (budget.reserved > tpm or (max_tokens or 0) < 1):
        raise InvalidRequestError(
            _too_much(max_tokens, sequences, f"this API key's limit of {tpm} tokens per "
                      f"minute with a prompt of about {prompt} tokens", min(room)),
            param="max_tokens", code="request_too_large",
        )
    if allowance is not None and (budget.reserved > allowance or (max_tokens or 0) < 1):
        # Not a 429 to retry after the reset: the same request would be refused again.
        raise InvalidRequestError(
            _too_much(max_tokens, sequences, f"this API key's budget of {allowance} tokens "
                      f"per {policy.budget_period} with a prompt of about {prompt} tokens",
                      min(room)),
            param="max_tokens", code="request_too_large",
        )
    return budget


def _too_much(max_tokens: int | None, sequences: int, limit: str, largest: int) -> str:
    each = f"up to {max_tokens} tokens" if max_tokens and max_tokens > 0 else "at least 1 token"
    spend = f"{sequences} answers (n x prompts) of {each}" if sequences > 1 else each
    fix = (f"Set max_tokens to at most {largest}" if largest >= 1
           else "Send fewer prompts, a lower n or a shorter prompt")
    return (f"This request may generate {spend}: more than {limit} allows. {fix}, or ask "
            "for a key with a higher limit.")
