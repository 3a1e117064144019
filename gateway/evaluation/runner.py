"""Send a prompt set to a running gateway under each output policy and classify the answers."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import orjson

# What a request can end as: the gateway's own outcome header on a 200, its error code on a
# 422, anything else (a 5xx, a timeout, a refused key) is an `error` of the run itself.
ACCEPTED = ("passed", "repaired", "retried", "reasked")
OUTCOMES = (*ACCEPTED, "failed", "truncated", "error")
MAX_PROMPT_CHARS = 4000  # a prompt set is read from a file: one absurd line is refused
SYSTEM_TURN = ("You turn a request into IR for the '{name}' schema ({description}) "
               "Answer with the JSON document only.")


class PromptSetError(ValueError):
    pass


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


@dataclass(frozen=True)
class Result:
    schema: str
    policy: str
    prompt_id: str
    outcome: str
    attempts: int
    tokens: int | None  # the response's usage.total_tokens (an answer only)
    latency_s: float
    status: int
    detail: str  # the failing constraint, or the error's message (short)


def read_prompt_set(path: Path, limit: int | None = None) -> list[Prompt]:
    """`{"id", "prompt"}` per line; blank lines skipped; the first `limit` prompts."""
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise PromptSetError(f"{path}:{number}: not JSON: {exc}") from None
        if not (isinstance(row, dict) and isinstance(row.get("id"), str)
                and isinstance(row.get("prompt"), str) and row["prompt"].strip()):
            raise PromptSetError(f"{path}:{number}: want {{\"id\": str, \"prompt\": str}}")
        if row["id"] in seen or len(row["prompt"]) > MAX_PROMPT_CHARS:
            raise PromptSetError(f"{path}:{number}: duplicate id or a prompt over "
                                 f"{MAX_PROMPT_CHARS} characters")
        seen.add(row["id"])
        prompts.append(Prompt(row["id"], row["prompt"]))
    if not prompts:
        raise PromptSetError(f"{path}: no prompts")
    return prompts[:limit] if limit else prompts


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line every 10% else."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.done, self.width = total, 0, width
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_tenth = -1

    def advance(self, label: str) -> None:
        self.done += 1
        filled = self.width * self.done // max(1, self.total)
        elapsed = time.monotonic() - self.started
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"{elapsed:5.0f}s  {label}")
        tenth = 10 * self.done // max(1, self.total)
        if self.tty:
            self.stream.write(f"\r{line[:120]:<120}")
            if self.done == self.total:
                self.stream.write("\n")
        elif tenth != self._last_tenth or self.done == self.total:
            self.stream.write(line + "\n")
        self._last_tenth = tenth
        self.stream.flush()


def classify(response: httpx.Response) -> tuple[str, int, int | None, str]:
    """(outcome, attempts, tokens, detail) of one gateway response."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200 and isinstance(body, dict):
        outcome = response.headers.get("x-irgw-output", "")
        usage = body.get("usage") or {}
        tokens = usage.get("total_tokens") if isinstance(usage, dict) else None
        attempts = int(response.headers.get("x-irgw-attempts") or 1)
        if outcome in ACCEPTED:
            return outcome, attempts, tokens, ""
        return "error", attempts, tokens, f"200 with x-irgw-output {outcome!r}"
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    attempts = error.get("attempts") if isinstance(error.get("attempts"), int) else 1
    code = error.get("code")
    if response.status_code == 422 and code in ("output_validation_failed", "output_truncated"):
        outcome = "truncated" if code == "output_truncated" else "failed"
        return outcome, attempts, None, str(error.get("constraint") or "")[:120]
    message = str(error.get("message") or response.text)[:200]
    return "error", attempts, None, f"{response.status_code} {code}: {message}"


@dataclass(frozen=True)
class EvalConfig:
    url: str
    schemas: dict[str, list[Prompt]]  # schema name -> its prompts
    policies: Sequence[str]
    concurrency: int = 2
    max_tokens: int | None = 512
    timeout_s: float = 600.0
    api_key: str | None = None
    route: str = "chat"  # "chat" or "completions"


async def _describe(client: httpx.AsyncClient, name: str) -> str:
    response = await client.get(f"/v1/schemas/{name}")
    if response.status_code != 200:
        raise PromptSetError(f"the gateway does not serve schema {name!r}: "
                             f"{response.status_code} {response.text[:200]}")
    return str(response.json().get("description") or "")


def _body(config: EvalConfig, schema: str, description: str, prompt: Prompt) -> dict[str, Any]:
    system = SYSTEM_TURN.format(name=schema, description=description.rstrip("."))
    body: dict[str, Any] = {"model": f"schema/{schema}"}
    if config.route == "completions":
        body["prompt"] = f"{system}\n\nRequest: {prompt.text}\n\nJSON:\n"
    else:
        body["messages"] = [{"role": "system", "content": system},
                            {"role": "user", "content": prompt.text}]
    if config.max_tokens:
        body["max_tokens"] = config.max_tokens
    return body


async def run_eval(config: EvalConfig, progress: Progress | None = None) -> list[Result]:
    """Every prompt of every schema under every policy, at most `concurrency` at a time.
    Prompt-major order, so the policies meet the same load."""
    headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    limits = httpx.Limits(max_connections=config.concurrency)
    path = "/v1/completions" if config.route == "completions" else "/v1/chat/completions"
    async with httpx.AsyncClient(base_url=config.url, headers=headers, limits=limits,
                                 timeout=config.timeout_s) as client:
        descriptions = {name: await _describe(client, name) for name in config.schemas}
        jobs = [(schema, policy, prompt)
                for schema, prompts in config.schemas.items()
                for prompt in prompts for policy in config.policies]
        progress = progress or Progress(len(jobs))
        gate = asyncio.Semaphore(config.concurrency)

        async def one(schema: str, policy: str, prompt: Prompt) -> Result:
            async with gate:
                started = time.perf_counter()
                try:
                    response = await client.post(
                        path, json=_body(config, schema, descriptions[schema], prompt),
                        headers={"x-irgw-output-policy": policy})
                    outcome, attempts, tokens, detail = classify(response)
                    status = response.status_code
                except httpx.HTTPError as exc:
                    outcome, attempts, tokens, status = "error", 1, None, 0
                    detail = f"{type(exc).__name__}: {exc}"[:200]
                latency = time.perf_counter() - started
            progress.advance(f"{schema} {policy} {prompt.id}: {outcome}")
            return Result(schema, policy, prompt.id, outcome, attempts, tokens, latency,
                          status, detail)

        return list(await asyncio.gather(*(one(*job) for job in jobs)))


def write_results(results: Sequence[Result], path: Path) -> None:
    path.write_bytes(b"".join(orjson.dumps(asdict(r)) + b"\n" for r in results))
