"""What a request held is freed when it ends, by reference counting alone: the serving
process runs its collector rarely (gateway/server/runtime.py), so anything a request leaves in a
reference cycle, or tied to something long-lived, stays. The soak's RSS went from 88 to
165 MiB that way (bench/README.md). Each test runs with the collector off, as serving mostly
is, and looks for the request's data among the live objects."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import running_gateway


@contextmanager
def _collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _live(found: Callable[[Any], bool]) -> int:
    return sum(1 for o in gc.get_objects() if found(o))


def _parsed_body(marker: int) -> Callable[[Any], bool]:
    """A list of the request body, as the gateway parsed it (no test code holds it)."""
    return lambda o: type(o) is list and len(o) == 1000 and o[0] == marker and o[1] == marker + 1


async def _until_none_live(found: Callable[[Any], bool]) -> int:
    # Bounded: the request's task finishes after its answer is sent.
    for _ in range(50):
        if not (count := _live(found)):
            return 0
        await asyncio.sleep(0.02)
    return count


def _chat(marker: int, model: str = "qwen-coder") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                       "metadata": {"pad": list(range(marker, marker + 1000))}}).encode()


async def test_a_connection_opened_during_a_request_does_not_keep_its_body(
        fake: FakeUpstream) -> None:
    """A connection opened during a request (to vLLM here; to Redis alike) keeps a copy of
    the request's context, which holds the request's Observation, which held its plan and
    parsed body: for as long as the connection stayed open."""
    fake.default = Reply(content="ok")
    async with running_gateway(unit_settings(fake.url)) as gw, httpx.AsyncClient(
            base_url=gw.url, timeout=10) as client:
        with _collector_off():
            pool = gw.app.services.upstream.pool
            assert pool.open_connections == 0
            answered = await client.post("/v1/chat/completions", content=_chat(7_919_000))
            assert answered.status_code == 200, answered.text
            assert pool.open_connections == 1  # opened by the request, kept for the next
            fake.reset()  # the fake's own parsed copy of what it was sent
            assert await _until_none_live(_parsed_body(7_919_000)) == 0


async def test_an_error_answer_does_not_keep_the_requests_body(fake: FakeUpstream) -> None:
    """An error's traceback holds the frame of `_respond`, which holds the request's
    Observation, which held the error: a cycle, and with it every frame of the request,
    and so its body, parsed and not."""
    async with running_gateway(unit_settings(fake.url)) as gw, httpx.AsyncClient(
            base_url=gw.url, timeout=10) as client:
        with _collector_off():
            refused = await client.post("/v1/chat/completions",
                                        content=_chat(8_123_000, model="schema/no_such_schema"))
            assert refused.status_code == 404, refused.text
            assert await _until_none_live(_parsed_body(8_123_000)) == 0


async def test_what_arrived_of_a_refused_body_is_not_held_after_its_connection(
        fake: FakeUpstream) -> None:
    """A request answered before its body was read (a 413 on the declared length) leaves
    what arrived in uvicorn's request cycle, which is in a reference cycle with its
    connection: it stayed until the collector ran."""
    settings = unit_settings(fake.url, max_request_bytes=100_000)
    async with running_gateway(settings) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        with _collector_off():
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                         b"content-type: application/json\r\ncontent-length: 200000\r\n\r\n"
                         + b" " * 60_000)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 413"), head
            writer.close()  # the server notices, and closes its side
            await writer.wait_closed()

            def unread_body(o: Any) -> bool:
                return isinstance(o, RequestResponseCycle) and len(o.body) > 0

            assert await _until_none_live(unread_body) == 0
