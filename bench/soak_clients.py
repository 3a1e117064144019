"""What bench/soak.py's clients do, and the tally of what came back.

Each client loops until the load deadline: picks a behaviour by weight, runs it, thinks
for a moment. Behaviours that want an answer (`ANSWER_KINDS`) must get one: a hang-up or a
client-side timeout is counted as "no answer". The others (slow readers, hang-ups, idle
sockets) misbehave on purpose; what happened to them is tallied but owed nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.soak_http import Conn, NoAnswer, Reply, request_bytes

CHAT = "/v1/chat/completions"
SCHEMAS = ("function_ir", "module_ir", "test_plan_ir")
PROMPTS = (
    "Describe a function that parses an ISO date string into a date.",
    "IR for a function that adds two ints.",
    "A function that returns the n-th Fibonacci number, iteratively.",
    "A helper that slugifies a title for a URL.",
)
# Statuses after which the upstream may have spent tokens although no usage came back.
_MAY_HAVE_SPENT = {200, 422, 500, 502, 504}

# name: (weight, wants an answer)
KINDS: dict[str, tuple[int, bool]] = {
    "named": (34, True),            # chat, model "schema/<name>", sometimes no max_tokens
    "stream": (14, True),           # the same, streamed with include_usage
    "plain": (4, True),             # unchecked chat (the served model): n up to 3
    "completions": (5, True),       # /v1/completions: named schema, or 3 plain prompts
    "bad_key": (3, True),
    "malformed": (6, True),         # truncated / not JSON / invalid UTF-8 / nested 300 deep
    "oversized_body": (2, True),    # declares and sends more than IRGW_MAX_REQUEST_BYTES
    "big_body": (2, True),          # a few MB, under the body limit
    "oversized_head": (2, True),    # a header of --head-kb
    "healthz": (4, True),
    "slow_reader": (3, False),      # reads a stream's head, then stops reading
    "hangup_mid_body": (4, False),  # sends half the declared body, then hangs up
    "hangup_waiting": (5, False),   # sends the request, hangs up before the answer
    "hangup_mid_stream": (5, False),
    "idle_socket": (3, False),      # connects and never sends a byte
}


@dataclass
class Key:
    name: str
    secret: str
    weight: int
    rpm: int | None
    tpm: int | None
    concurrency: int | None
    schemas: str


@dataclass
class KeySpend:
    known: int = 0  # usage.total_tokens of answers that reported usage
    unknown_bound: int = 0  # what the requests without reported usage could have spent
    with_usage: int = 0
    without_usage: int = 0
    limit_headers: set[str] = field(default_factory=set)


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    answers: Counter[tuple[int, str]] = field(default_factory=Counter)
    by_kind: Counter[tuple[str, str]] = field(default_factory=Counter)
    no_answer: Counter[tuple[str, str]] = field(default_factory=Counter)
    deliberate: Counter[tuple[str, str]] = field(default_factory=Counter)
    spend: dict[str, KeySpend] = field(default_factory=dict)
    healthz_ms: list[float] = field(default_factory=list)
    last_answer: float = 0.0
    # (when it was answered, status, code) of every 5xx and in-stream error
    errors: list[tuple[float, int, str]] = field(default_factory=list)
    load_ends: float = 0.0  # clients start no request after this (monotonic; may move)


@dataclass
class Ctx:
    port: int
    keys: list[Key]
    tally: Tally
    request_timeout_s: float
    slow_hold_s: float
    idle_hold_s: float
    head_kb: int
    body_limit: int
    default_max_tokens: int
    max_retries: int
    max_model_len: int
    _oversized: bytes = b""

    def oversized(self) -> bytes:
        if not self._oversized:
            self._oversized = b'{"model":"schema/function_ir","pad":"' + b"x" * (
                self.body_limit + 1024) + b'"}'
        return self._oversized


def _usage_total(data: Any) -> int | None:
    if isinstance(data, dict) and isinstance(data.get("usage"), dict):
        total = data["usage"].get("total_tokens")
        return total if isinstance(total, int) else None
    return None


def read_answer(reply: Reply) -> tuple[str, int | None, bool]:
    """(error code or '-', usage.total_tokens if reported, whether it is a whole answer).
    A stream is whole when it ends with `[DONE]` or carries an error event (whose code then
    counts as the answer's)."""
    if reply.status == 200 and reply.headers.get("content-type", "").startswith(
            "text/event-stream"):
        code, usage, done = "-", None, False
        for event in reply.sse_events():
            if event == b"[DONE]":
                done = True
                continue
            try:
                data = orjson.loads(event)
            except orjson.JSONDecodeError:
                return "unparseable event", usage, False
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                error = data["error"]
                code = f"stream error: {error.get('code') or error.get('type')}"
            usage = _usage_total(data) if usage is None else usage
        return code, usage, done or code.startswith("stream error")
    usage = _usage_total(reply.json()) if reply.status == 200 else None
    return reply.error_code(), usage, True


def _spend(ctx: Ctx, key: Key | None, reply: Reply, usage: int | None, budget: int) -> None:
    """A key's tokens: the usage reported, else a bound if the upstream may have worked."""
    if key is None:
        return
    spend = ctx.tally.spend.setdefault(key.name, KeySpend())
    if "x-ratelimit-limit-tokens" in reply.headers:
        spend.limit_headers.add(reply.headers["x-ratelimit-limit-tokens"])
    if usage is not None:
        spend.known += usage
        spend.with_usage += 1
    elif budget and (reply.status in _MAY_HAVE_SPENT or not reply.head_done):
        spend.unknown_bound += budget
        spend.without_usage += 1


def _count(ctx: Ctx, kind: str, key: Key | None, reply: Reply, budget: int) -> None:
    """Tally a complete answer (status and error code) and its key's tokens."""
    tally = ctx.tally
    tally.last_answer = time.monotonic()
    code, usage, whole = read_answer(reply)
    _spend(ctx, key, reply, usage, budget)
    if not whole:
        tally.no_answer[(kind, f"stream without [DONE] or an error event ({code})")] += 1
        tally.by_kind[(kind, "no answer")] += 1
        return
    tally.answers[(reply.status, code)] += 1
    if reply.status >= 500 or code.startswith("stream error"):
        tally.errors.append((tally.last_answer, reply.status, code))
    tally.by_kind[(kind, str(reply.status))] += 1


def chat_body(ctx: Ctx, rng: random.Random, key: Key, *, stream: bool = False,
              plain: bool = False, max_tokens: int | None = None) -> tuple[bytes, int]:
    """A chat request and the most tokens it may spend (prompt bound + answers, retries)."""
    prompt = rng.choice(PROMPTS)
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}],
                            "temperature": 0.8}
    body["model"] = "tiny-qwen2" if plain else f"schema/{rng.choice(SCHEMAS)}"
    n = 1
    if plain:  # structured output takes n=1 only
        n = rng.choice((1, 2, 3))
        body["n"] = n
    if max_tokens is None and rng.random() < 0.75:
        max_tokens = rng.choice((60, 120) if plain else (150, 250, 400))
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    # A token is at least one character, plus the chat template's few tokens.
    if plain:  # unchecked: no retries, and without max_tokens up to the context length
        return orjson.dumps(body), n * (len(prompt) + 32 + (max_tokens or ctx.max_model_len))
    budget = n * (len(prompt) + 32 + (max_tokens or ctx.default_max_tokens))
    return orjson.dumps(body), budget * (1 + ctx.max_retries)


async def _exchange(ctx: Ctx, kind: str, key: Key | None, data: bytes, budget: int = 0,
                    **conn_args: Any) -> None:
    """Send one request that is owed an answer, and tally the answer or its absence."""
    ctx.tally.sent[kind] += 1
    conn: Conn | None = None
    started = time.monotonic()
    try:
        conn = await Conn.open(ctx.port, **conn_args)
        conn.send(data)
        reply = await conn.read(started + ctx.request_timeout_s)
        _count(ctx, kind, key, reply, budget)
    except NoAnswer as exc:
        ctx.tally.no_answer[(kind, exc.reason)] += 1
        ctx.tally.by_kind[(kind, "no answer")] += 1
        if conn is not None:
            _spend(ctx, key, conn.reply, None, budget)
    finally:
        if conn is not None:
            await conn.close()


async def named(ctx: Ctx, rng: random.Random, key: Key) -> None:
    body, budget = chat_body(ctx, rng, key)
    await _exchange(ctx, "named", key, request_bytes("POST", CHAT, ctx.port, key=key.secret,
                                                     body=body), budget)


async def stream(ctx: Ctx, rng: random.Random, key: Key) -> None:
    body, budget = chat_body(ctx, rng, key, stream=True)
    await _exchange(ctx, "stream", key, request_bytes("POST", CHAT, ctx.port, key=key.secret,
                                                      body=body), budget)


async def plain(ctx: Ctx, rng: random.Random, key: Key) -> None:
    body, budget = chat_body(ctx, rng, key, plain=True)
    await _exchange(ctx, "plain", key, request_bytes("POST", CHAT, ctx.port, key=key.secret,
                                                     body=body), budget)


async def completions(ctx: Ctx, rng: random.Random, key: Key) -> None:
    if rng.random() < 0.5:
        prompt: Any = rng.choice(PROMPTS)
        body = {"model": "schema/function_ir", "prompt": prompt, "max_tokens": 250}
        budget = (len(prompt) + 250) * (1 + ctx.max_retries)
    else:
        prompt = list(rng.sample(PROMPTS, 3))
        body = {"model": "tiny-qwen2", "prompt": prompt, "max_tokens": 40}
        budget = sum(len(p) + 40 for p in prompt)
    data = request_bytes("POST", "/v1/completions", ctx.port, key=key.secret,
                         body=orjson.dumps(body))
    await _exchange(ctx, "completions", key, data, budget)


async def bad_key(ctx: Ctx, rng: random.Random, key: Key) -> None:
    body, _ = chat_body(ctx, rng, key)
    fake = "irgw-" + "".join(rng.choices("abcdefghijkmnpqrstuvwxyz23456789", k=12)) + "-" + (
        "s" * 40)
    await _exchange(ctx, "bad_key", None, request_bytes("POST", CHAT, ctx.port, key=fake,
                                                        body=body))


async def malformed(ctx: Ctx, rng: random.Random, key: Key) -> None:
    valid = b'{"model":"schema/function_ir","messages":[{"role":"user","content":"hi"}]'
    variant = rng.choice(("truncated", "not json", "bad utf-8", "nested 300"))
    body = {
        "truncated": valid,
        "not json": b"model=schema/function_ir&messages=hi",
        "bad utf-8": valid[:-2] + b'\xff\xfe"}]}',
        "nested 300": valid + b',"metadata":{"x":' + b"[" * 300 + b"]" * 300 + b"}}",
    }[variant]
    await _exchange(ctx, f"malformed: {variant}", key,
                    request_bytes("POST", CHAT, ctx.port, key=key.secret, body=body))


async def oversized_body(ctx: Ctx, rng: random.Random, key: Key) -> None:
    await _exchange(ctx, "oversized_body", key, request_bytes(
        "POST", CHAT, ctx.port, key=key.secret, body=ctx.oversized()))


async def big_body(ctx: Ctx, rng: random.Random, key: Key) -> None:
    size = rng.randint(ctx.body_limit // 8, ctx.body_limit // 2)
    body = orjson.dumps({"model": "schema/function_ir", "max_tokens": 100, "messages": [
        {"role": "user", "content": "word " * (size // 5)}]})
    await _exchange(ctx, "big_body", key, request_bytes("POST", CHAT, ctx.port,
                                                        key=key.secret, body=body))


async def oversized_head(ctx: Ctx, rng: random.Random, key: Key) -> None:
    extra = b"x-filler: " + b"a" * (ctx.head_kb * 1024) + b"\r\n"
    await _exchange(ctx, "oversized_head", key, request_bytes(
        "GET", "/healthz", ctx.port, key=key.secret, extra=extra))


async def healthz(ctx: Ctx, rng: random.Random, key: Key) -> None:
    started = time.monotonic()
    await _exchange(ctx, "healthz", None, request_bytes("GET", "/healthz", ctx.port))
    ctx.tally.healthz_ms.append((time.monotonic() - started) * 1000)


async def _misbehave(ctx: Ctx, kind: str, key: Key, data: bytes, budget: int,
                     act: Callable[[Conn], Awaitable[str]], **conn_args: Any) -> None:
    """Open, send `data`, then `act` (which returns what happened); never owed an answer."""
    ctx.tally.sent[kind] += 1
    conn: Conn | None = None
    try:
        conn = await Conn.open(ctx.port, **conn_args)
        conn.send(data)
        outcome = await act(conn)
    except NoAnswer as exc:
        outcome = exc.reason
    finally:
        if conn is not None:
            conn.abort()
    ctx.tally.deliberate[(kind, outcome)] += 1
    if conn is not None:
        reply = conn.reply
        usage = read_answer(reply)[1] if reply.complete else None
        _spend(ctx, key, reply, usage, budget)


async def slow_reader(ctx: Ctx, rng: random.Random, key: Key) -> None:
    # Plain text, long: enough to fill the socket buffers a slow reader leaves full.
    body, budget = chat_body(ctx, rng, key, stream=True, plain=True, max_tokens=600)

    async def act(conn: Conn) -> str:
        reply = await conn.read(time.monotonic() + ctx.request_timeout_s,
                                enough=lambda r: r.head_done)
        if reply.status != 200:
            return f"answered {reply.status} before streaming"
        await asyncio.sleep(ctx.slow_hold_s)  # not reading: the server's writes back up
        try:
            await conn.read(time.monotonic() + 2.0)
            return "held, then the rest arrived"
        except NoAnswer as exc:
            return f"held, then: {exc.reason}"

    await _misbehave(ctx, "slow_reader", key, request_bytes(
        "POST", CHAT, ctx.port, key=key.secret, body=body), budget, act, rcvbuf=4096,
        limit=4096)


async def hangup_mid_body(ctx: Ctx, rng: random.Random, key: Key) -> None:
    body, _ = chat_body(ctx, rng, key)
    data = request_bytes("POST", CHAT, ctx.port, key=key.secret, body=body)
    cut = len(data) - len(body) // 2

    async def act(conn: Conn) -> str:
        await asyncio.sleep(rng.uniform(0.0, 2.0))
        return "hung up mid-body"

    await _misbehave(ctx, "hangup_mid_body", key, data[:cut], 0, act)


async def hangup_waiting(ctx: Ctx, rng: random.Random, key: Key) -> None:
    body, budget = chat_body(ctx, rng, key)

    async def act(conn: Conn) -> str:
        try:
            reply = await conn.read(time.monotonic() + rng.uniform(0.05, 3.0))
            return f"answered {reply.status} before the hang-up"
        except NoAnswer as exc:
            return "hung up waiting" if exc.reason == "client timeout" else exc.reason

    await _misbehave(ctx, "hangup_waiting", key, request_bytes(
        "POST", CHAT, ctx.port, key=key.secret, body=body), budget, act)


async def hangup_mid_stream(ctx: Ctx, rng: random.Random, key: Key) -> None:
    body, budget = chat_body(ctx, rng, key, stream=True)
    events = rng.randint(1, 5)

    async def act(conn: Conn) -> str:
        reply = await conn.read(time.monotonic() + ctx.request_timeout_s,
                                enough=lambda r: r.body.count(b"data:") >= events)
        if reply.complete:
            return f"answered {reply.status} before the hang-up"
        return "hung up mid-stream"

    await _misbehave(ctx, "hangup_mid_stream", key, request_bytes(
        "POST", CHAT, ctx.port, key=key.secret, body=body), budget, act)


async def idle_socket(ctx: Ctx, rng: random.Random, key: Key) -> None:
    async def act(conn: Conn) -> str:
        closed_after = await conn.wait_closed_by_server(ctx.idle_hold_s)
        if closed_after is None:
            return f"still open after {ctx.idle_hold_s:g} s"
        return f"closed by the server after {closed_after:.0f} s"

    await _misbehave(ctx, "idle_socket", key, b"", 0, act)


BEHAVIOURS: dict[str, Callable[[Ctx, random.Random, Key], Awaitable[None]]] = {
    "named": named, "stream": stream, "plain": plain, "completions": completions,
    "bad_key": bad_key,
    "malformed": malformed, "oversized_body": oversized_body, "big_body": big_body,
    "oversized_head": oversized_head, "healthz": healthz, "slow_reader": slow_reader,
    "hangup_mid_body": hangup_mid_body, "hangup_waiting": hangup_waiting,
    "hangup_mid_stream": hangup_mid_stream, "idle_socket": idle_socket,
}


async def client(ctx: Ctx, rng: random.Random, think_s: float) -> None:
    """One client: behaviours drawn by weight until `tally.load_ends`, then it stops."""
    names = list(KINDS)
    weights = [KINDS[name][0] for name in names]
    key_weights = [key.weight for key in ctx.keys]
    await asyncio.sleep(rng.uniform(0, think_s))  # stagger the start
    while time.monotonic() < ctx.tally.load_ends:
        kind = rng.choices(names, weights)[0]
        key = rng.choices(ctx.keys, key_weights)[0]
        await BEHAVIOURS[kind](ctx, rng, key)
        await asyncio.sleep(rng.uniform(0.5 * think_s, 1.5 * think_s))
