"""What `ir-gateway dev` prints once the stack is up: where it is, and a request to paste."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from gateway.dev.options import ModelChoice
from gateway.dev.vllm_process import VllmServer

# Auth is off, so the gateway never looks at it; clients (the openai SDK) still insist on one.
DEV_API_KEY = "dev-not-checked"
# The example request. A 135M model needs one worked example to fill the IR usefully: tried on
# SmolLM2-135M-Instruct, a bare request (or an instruction-only system prompt) loops on repeated
# parameters until max_tokens, while one example turn gives short, sensible IR. Temperature 0
# keeps the first impression reproducible.
EXAMPLE_SHOT_USER = "A function that turns a blog title into a URL slug."
EXAMPLE_SHOT_ANSWER = json.dumps({
    "intent": {"summary": "Turn a title into a URL slug.",
               "rationale": "Blog URLs need lowercase ASCII words joined by hyphens."},
    "signature": {"name": "slugify", "parameters": [{"name": "title", "type_hint": "str"}],
                  "returns": "str"},
}, separators=(",", ":"))
EXAMPLE_USER = "A function that parses an ISO 8601 date string and returns a datetime."
EXAMPLE_MESSAGES: list[dict[str, str]] = [
    {"role": "system", "content": "You describe Python functions as JSON."},
    {"role": "user", "content": EXAMPLE_SHOT_USER},
    {"role": "assistant", "content": EXAMPLE_SHOT_ANSWER},
    {"role": "user", "content": EXAMPLE_USER},
]

def example_request() -> dict[str, object]:
    return {"model": "schema/function_ir", "temperature": 0, "messages": EXAMPLE_MESSAGES}


def curl_command(base_url: str) -> str:
    """One line, so it pastes into any shell and a test can `shlex.split` it."""
    body = json.dumps(example_request(), separators=(",", ":"))
    return " ".join([
        "curl", "-sS", shlex.quote(f"{base_url}/chat/completions"),
        "-H", shlex.quote("Content-Type: application/json"),
        "-H", shlex.quote(f"Authorization: Bearer {DEV_API_KEY}"),
        "-d", shlex.quote(body),
    ])


def openai_snippet(base_url: str) -> str:
    # json.dumps of str-only dicts is also a valid Python literal.
    messages = [f"        {json.dumps(m)}," for m in EXAMPLE_MESSAGES]
    return "\n".join([
        "from openai import OpenAI",
        "",
        f'client = OpenAI(base_url="{base_url}", api_key="{DEV_API_KEY}")',
        "completion = client.chat.completions.create(",
        '    model="schema/function_ir",',
        "    temperature=0,",
        "    messages=[",
        *messages,
        "    ],",
        ")",
        "print(completion.choices[0].message.content)  # JSON valid for function_ir",
    ])


def banner(*, base_url: str, choice: ModelChoice, vllm: VllmServer, log_path: Path,
           schemas: list[str]) -> str:
    rule = "=" * 78
    return "\n".join([
        "",
        rule,
        "  ir-gateway dev stack is ready",
        rule,
        "  !!! AUTH IS OFF: API keys are NOT checked and there are no rate limits.",
        "  !!! Local development only; do not expose this port to a network.",
        "",
        f"  Base URL:  {base_url}",
        f"  API key:   {DEV_API_KEY}   (any key works: auth is off)",
        f"  Model:     {choice.served_name}  ({choice.description})",
        f"  Schemas:   {', '.join(f'schema/{name}' for name in schemas)}  "
        f"(GET {base_url}/schemas)",
        f"  vLLM:      {vllm.url}  (log: {log_path})",
        "",
        "  Try it (curl):",
        "",
        curl_command(base_url),
        "",
        "  Try it (Python, `pip install openai`):",
        "",
        openai_snippet(base_url),
        "",
        "  Ctrl-C stops the gateway and vLLM.",
        rule,
        "",
    ])
