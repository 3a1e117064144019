"""The gateway's server protocol (gateway/server/protocol.py): coalesced writes,
disconnect signal."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from gateway.server import protocol as server
from gateway.server.asgi import (
    DISCONNECT_EXTENSION,
    ClientDisconnectedError,
    DisconnectSignal,
    JSONResponse,
    until_disconnect,
)
from gateway.server.protocol import CoalescingTransport
from gateway.settings import Settings
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream, Reply, Slow, SlowStream
from tests.gateway_server import running_gateway, serve_process, serving
from tests.ir_samples import VALID


class RecordingTransport:
    """Stands in for a socket transport: records each write, as a syscall would happen."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


async def test_writes_in_one_loop_turn_leave_in_one_write() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert real.writes == []
    assert transport.get_write_buffer_size() == 40
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]

    transport.write(b"{")  # a response that completes is sent at once, not a turn later
    transport.write(b"}")
    transport.flush()
    assert real.writes[1:] == [b"{}"]
    await asyncio.sleep(0)  # the flush scheduled by the first write finds nothing left
    assert len(real.writes) == 2
    del real.writes[1:]

    transport.write(b"data: 1\n\n")  # a later event goes out in its own turn
    await asyncio.sleep(0)
    transport.writelines([b"data: 2", b"\n\n"])  # held in order with the writes
    transport.write(b"data: 3\n\n")
    transport.close()  # close() sends what was written before it
    assert real.writes[1:] == [b"data: 1\n\n", b"data: 2\n\ndata: 3\n\n"]
    assert real.closed
    assert transport.get_extra_info("peername") == ("127.0.0.1", 5)


async def test_until_disconnect_is_cancelled_by_the_signal_alone() -> None:
    signal = DisconnectSignal()
    scope = {"type": "http", "extensions": {DISCONNECT_EXTENSION: signal}}

    async def receive_nothing() -> Any:  # the fallback's watcher would wait forever here
        await asyncio.Event().wait()

    request = Request(scope, receive_nothing)  # type: ignore[arg-type]
    started = asyncio.Event()

    async def work() -> str:
        started.set()
        await asyncio.sleep(30)
        return "finished"

    task = asyncio.create_task(until_disconnect(request, work()))
    await started.wait()
    signal.fire()
    with pytest.raises(ClientDisconnectedError):
        await asyncio.wait_for(task, 2)

    # A connection already lost: the work is not started at all.
    never_started = work()
    with pytest.raises(ClientDisconnectedError):
        await until_disconnect(request, never_started)
    assert never_started.cr_frame is None  # closed, not left un-awaited

    # Work that finishes first leaves no callback behind on the connection.
    alive = DisconnectSignal()
    request = Request({"type": "http", "extensions": {DISCONNECT_EXTENSION: alive}},
                      receive_nothing)  # type: ignore[arg-type]

    async def quick() -> str:
        return "done"

    assert await until_disconnect(request, quick()) == "done"
    alive.fire()  # were the callback still there, it would cancel this test's own task
    await asyncio.sleep(0)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_served_requests_carry_the_connection_signal() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(scope.get("extensions", {}).get(DISCONNECT_EXTENSION))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serving(app, Settings(auth_enabled=False), lifespan="off") as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        for _ in range(2):  # two requests on one kept-alive connection
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert b"\r\nserver:" not in head.lower()  # nothing to tell a scanner
            assert await reader.readexactly(2) == b"ok"
        writer.close()
        await writer.wait_closed()
        for _ in range(100):
            if seen[0].lost:
                break
            await asyncio.sleep(0.01)
    assert len(seen) == 2 and seen[0] is seen[1]  # one signal per connection
    assert isinstance(seen[0], DisconnectSignal) and seen[0].lost


async def test_a_responses_after_send_runs_even_when_the_client_is_gone() -> None:
    ran: list[str] = []

    async def after_send() -> None:
        ran.append("bookkeeping")

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            raise OSError("the connection was lost")

    response = JSONResponse({"ok": True}, after_send=after_send)
    with pytest.raises(OSError):
        await response({"type": "http"}, receive, send)
    assert ran == ["bookkeeping"]


async def _stream_until_signalled(url: str, process: subprocess.Popen[bytes],
                                  signalled: asyncio.Event) -> tuple[str, bool]:
    """A chat stream that receives SIGTERM after its first event; what it read, and whether
    the stream ended cleanly."""
    body = {"model": "qwen-coder", "messages": [{"role": "user", "content": "add"}],
            "stream": True}
    received = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    received.append(line)
                    if line.startswith("data:") and not signalled.is_set():
                        process.send_signal(signal.SIGTERM)
                        signalled.set()
            return "\n".join(received), True
        except httpx.TransportError:
            return "\n".join(received), False


@pytest.mark.parametrize("grace_s,chunk_delay_s,finishes", [
    (10.0, 0.05, True),  # the stream ends within the grace period: it is served whole
    (0.5, 1.0, False),  # it would not: cut at the deadline, vLLM's call cancelled
])
async def test_shutdown_lets_streams_finish_within_the_grace_period(
        fake: FakeUpstream, grace_s: float, chunk_delay_s: float, finishes: bool) -> None:
    settings = unit_settings(fake.url, shutdown_grace_s=grace_s)
    fake.script(SlowStream(chunk_delay_s, Reply("just some prose", chunk_size=3)))
    async with serve_process(settings) as (url, process):
        signalled = asyncio.Event()
        started = time.monotonic()
        text, clean = await _stream_until_signalled(url, process, signalled)
        assert signalled.is_set()
        for _ in range(200):  # the process exits by itself once its requests are done
            if process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        # uvicorn re-raises the signal once it has shut down: the status says "terminated".
        assert process.returncode == -signal.SIGTERM
    if finishes:
        assert clean and text.rstrip().endswith("data: [DONE]")
        assert assembled_prose(text) == "just some prose"
    else:
        assert not clean and "[DONE]" not in text
        assert took < grace_s + 5  # not the 6 s the stream would have taken
        await fake.wait_cancelled()


def assembled_prose(text: str) -> str:
    events = [json.loads(line[len("data: "):]) for line in text.splitlines()
              if line.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in events if e["choices"])


async def test_a_stream_whose_client_is_gone_ends_quietly_and_cleans_up() -> None:
    """Under a server whose `send` raises once the client is gone (not uvicorn's, which
    drops the write), the stream stops without an error and still gives its slot back."""
    from gateway.server.asgi import SSEResponse

    closed: list[bool] = []

    async def events() -> Any:
        for n in range(5):
            yield b"data: %d\n\n" % n

    async def on_close() -> None:
        closed.append(True)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if len(sent) == 2:
            raise ConnectionResetError("the client went away")
        sent.append(message)

    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    response = SSEResponse(events(), headers={}, on_close=on_close)
    await response({"type": "http"}, receive, send)
    assert closed == [True] and len(sent) == 2


async def test_what_is_not_http_gets_an_openai_shaped_400() -> None:
    async with running_gateway(unit_settings("http://127.0.0.1:9")) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /\xff\x00 HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head
    assert json.loads(body)["error"]["type"] == "invalid_request_error"



async def _exchange(url: str, *parts: tuple[float, bytes]) -> tuple[bytes, float]:
    """On one connection, send each part after its pause, then read until the gateway
    closes the connection: what came back, and how long after the last part."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    for pause, data in parts:
        await asyncio.sleep(pause)
        writer.write(data)
        await writer.drain()
    sent = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), 5)  # complete once the gateway closes
    writer.close()
    return answer, time.monotonic() - sent


def _chat_request(extra_headers: bytes = b"", *, stream: bool = False) -> tuple[bytes, bytes]:
    body = json.dumps({"model": "schema/function_ir", "stream": stream,
                       "messages": [{"role": "user", "content": "add two ints"}]}).encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
            b"application/json\r\ncontent-length: %d\r\n%s\r\n" % (len(body), extra_headers))
    return head, body


async def test_a_request_that_stalls_gets_a_408(fake: FakeUpstream) -> None:
    fake.default = Reply(content=VALID)
    settings = unit_settings(fake.url, request_read_timeout_s=0.3)
    head, body = _chat_request()
    async with running_gateway(settings) as gw:
        # A slowloris: half a head, then nothing; then a whole head and part of the body.
        for stalled in (head[:30], head + body[:10]):
            answer, waited = await _exchange(gw.url, (0, stalled))
            status, _, error_body = answer.partition(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 408") and b"x-request-id: req_" in status
            error = json.loads(error_body)["error"]
            assert error["code"] == "request_timeout" and "0.3 s" in error["message"]
            assert 0.2 < waited < 2
        await asyncio.sleep(0.05)
        assert gw.app.services.metrics.inflight == 0  # the stalled request's task ended
        assert fake.requests == []  # and nothing of it reached vLLM

        # Slow but never stalled, for twice the timeout in all: answered as usual.
        head, body = _chat_request(b"connection: close\r\n")
        pieces = [head[:40], head[40:], *(body[i:i + 20] for i in range(0, len(body), 20))]
        pause = 0.6 / len(pieces)
        answer, _ = await _exchange(gw.url, *((pause, piece) for piece in pieces))
        assert answer.startswith(b"HTTP/1.1 200") and len(fake.requests) == 1


async def _trickle(total: int, piece: int, pause_s: float) -> AsyncIterator[bytes]:
    for start in range(0, total, piece):
        await asyncio.sleep(pause_s)
        yield b" " * min(piece, total - start)


async def test_an_upload_answered_early_still_gets_its_answer_and_is_not_drained(
        fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "LINGER_S", 0.5)
    settings = unit_settings(fake.url, request_read_timeout_s=0.3, max_request_bytes=1024)
    async with running_gateway(settings) as gw:
        # Refused on its declared length at once. httpx (as the openai client) writes the
        # whole body before reading: closing on unread input would reset the connection
        # and lose the 413 (and the openai client would send it all again).
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            refused = await client.post(
                "/v1/chat/completions", content=_trickle(100_000, 2_000, 0.002),
                headers={"content-type": "application/json", "content-length": "100000"})
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "body_too_large"

        # A client that goes on sending is not read on for long: the gateway closes.
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\ncontent-length: 1000000000\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 2)  # the answer, then the end of it
        assert answer.startswith(b"HTTP/1.1 413") and answer.count(b"HTTP/1.1") == 1
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            while time.monotonic() - started < 5:
                writer.write(b" " * 10_000)
                await writer.drain()
                await asyncio.sleep(0.01)
        assert time.monotonic() - started < 2
        writer.close()


async def test_an_early_answer_reaches_a_client_that_asked_to_close(
        fake: FakeUpstream) -> None:
    # `connection: close` (urllib always sends it; HTTP/1.0 implies it) made uvicorn close
    # right after the 413, on unread input: a reset, and the 413 lost.
    settings = unit_settings(fake.url, max_request_bytes=1024)
    async with running_gateway(settings) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                     b"content-type: application/json\r\ncontent-length: 400000\r\n\r\n")
        for _ in range(100):  # writes the whole body first, as urllib and httpx do
            writer.write(b" " * 4_000)
            await writer.drain()
            await asyncio.sleep(0.002)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"body_too_large" in answer


async def test_garbage_pipelined_behind_a_request_waits_for_its_answer(
        fake: FakeUpstream) -> None:
    # The 400 for bytes that are not HTTP went out at once, mid-way through the answer to the
    # request before them, and that answer's writes then failed after the end of the stream.
    fake.default = SlowStream(0.05, then=Reply(content=VALID))
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
    head, body = _chat_request(stream=True)
    async with running_gateway(unit_settings(fake.url)) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head + body + b"\x00\x01 NOT HTTP\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200", b"400"]
    first, _, second = answer.partition(b"HTTP/1.1 400")
    assert b"data: [DONE]" in first and b"invalid_http_request" in second
    assert loop_errors == []


async def test_a_pipelined_request_is_timed_from_its_turn(fake: FakeUpstream) -> None:
    # B, pipelined behind A, waits its turn (A's answer takes longer than the timeout), then
    # asks for 100 Continue and sends its body soon after: not a stalled client.
    fake.default = Slow(0.55, then=Reply(content=VALID))
    settings = unit_settings(fake.url, request_read_timeout_s=0.3)
    head_a, body_a = _chat_request()
    head_b, body_b = _chat_request(b"expect: 100-continue\r\nconnection: close\r\n")
    async with running_gateway(settings) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head_a + body_a + head_b)
        seen = b""
        while b"100 Continue\r\n\r\n" not in seen:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, seen
            seen += chunk
        await asyncio.sleep(0.1)
        writer.write(body_b)
        seen += await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", seen) == [b"200", b"100", b"200"]


async def test_the_read_timeout_leaves_idle_and_busy_connections_alone(
        fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, request_read_timeout_s=0.2)
    fake.default = Slow(0.5, then=Reply(content=VALID))  # vLLM takes longer than the read timeout
    async with running_gateway(settings) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head, body = _chat_request()
        for _ in range(2):  # one kept-alive connection, idle between its requests
            writer.write(head + body)
            status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert status.startswith(b"HTTP/1.1 200")
            length = int(status.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            await asyncio.sleep(0.4)
        writer.close()
