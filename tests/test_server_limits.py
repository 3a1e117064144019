"""The front door's limits (gateway/server/protocol.py, gateway/server/serving.py): the request
head's size,
header count and deadline, idle connections, the connection cap, clients that stop reading,
and the uvicorn series the protocol runs on."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import tomllib
from typing import Any

import pytest
import uvicorn

from gateway.server import protocol as server
from gateway.server import serving
from gateway.server.asgi import DISCONNECT_EXTENSION
from gateway.settings import Settings
from tests.conftest import REPO, unit_settings
from tests.fake_upstream import FakeUpstream, Reply, SlowStream
from tests.gateway_server import running_gateway
from tests.gateway_server import serving as serving_app

HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    # A bound against a hang, not a timing check: the limits under test are a fraction of it.
    return await asyncio.wait_for(reader.read(), 10)


async def _response(reader: asyncio.StreamReader) -> bytes:
    """One answer with a content-length: its head and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


def _error(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


async def test_a_head_past_its_size_or_header_count_gets_a_431(fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, max_request_head_bytes=2048, max_request_headers=8)
    async with running_gateway(settings) as gw:
        # One huge header in one write, and the same dripped over many reads.
        huge = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n"
        for pieces in ([huge], [huge[i:i + 500] for i in range(0, 3000, 500)]):
            reader, writer = await _connect(gw.url)
            for piece in pieces:
                writer.write(piece)
            answer = await _until_closed(reader)
            writer.close()
            status, error = _error(answer)
            assert status == 431 and error["code"] == "request_header_fields_too_large"
            assert "IRGW_MAX_REQUEST_HEAD_BYTES" in error["message"]
            assert error["type"] == "invalid_request_error"

        many = b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + b"x-a: 1\r\n" * 8 + b"\r\n"
        reader, writer = await _connect(gw.url)
        writer.write(many)
        answer = await _until_closed(reader)
        writer.close()
        status, error = _error(answer)
        assert status == 431 and "IRGW_MAX_REQUEST_HEADERS" in error["message"]

        # What follows a head within the limit in the same read is not counted as head: a
        # body larger than the limit, and three requests pipelined in one write.
        body = json.dumps({"model": "m", "messages": [{"role": "user",
                                                        "content": "x" * 5000}]}).encode()
        post = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                b"application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        reader, writer = await _connect(gw.url)
        writer.write(post + HEALTHZ * 2 + HEALTHZ.replace(b"\r\n\r\n",
                                                          b"\r\nconnection: close\r\n\r\n"))
        answer = await _until_closed(reader)
        writer.close()
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200"] * 4
        assert len(fake.requests) == 1


async def test_idle_connections_are_closed_and_a_dripped_head_gets_a_408(
        fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, request_head_timeout_s=0.3, request_read_timeout_s=5,
                             keepalive_timeout_s=1)
    async with running_gateway(settings) as gw:
        # A connection that never sends a byte is closed, without an answer.
        reader, writer = await _connect(gw.url)
        assert await _until_closed(reader) == b""
        writer.close()

        # A head dripped a byte at a time never stalls for the read timeout; it still has
        # to arrive whole within the head timeout.
        reader, writer = await _connect(gw.url)
        for byte in HEALTHZ:
            if reader.at_eof() or writer.is_closing():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
        answer = await _until_closed(reader)
        writer.close()
        status, error = _error(answer)
        assert status == 408 and error["code"] == "request_timeout"
        assert "IRGW_REQUEST_HEAD_TIMEOUT_S" in error["message"]

        # Kept alive after an answer, the connection has no head deadline; uvicorn's own
        # keep-alive timeout closes it once idle.
        reader, writer = await _connect(gw.url)
        for _ in range(2):
            writer.write(HEALTHZ)
            assert (await _response(reader)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.5)  # longer than the head timeout: still open
        assert await _until_closed(reader) == b""  # then closed by the keep-alive timeout
        writer.close()


async def test_connections_past_the_cap_are_refused_and_logged(
        fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(server, "REFUSALS", server._RefusalLog())
    settings = unit_settings(fake.url, max_connections=3)
    async with running_gateway(settings) as gw:
        held = [await _connect(gw.url) for _ in range(3)]
        for reader, writer in held:  # each is open and served
            writer.write(HEALTHZ)
            assert (await _response(reader)).startswith(b"HTTP/1.1 200")
        with caplog.at_level(logging.WARNING, logger="gateway.server.protocol"):
            for _ in range(3):
                reader, writer = await _connect(gw.url)
                answer = await _until_closed(reader)
                writer.close()
                status, error = _error(answer)
                assert status == 503 and error["code"] == "too_many_connections"
                assert b"retry-after: 1\r\n" in answer
        refusals = [r.getMessage() for r in caplog.records if "IRGW_MAX_CONNECTIONS" in
                    r.getMessage()]
        assert len(refusals) == 1 and refusals[0].startswith("refused 1 connection(s)")
        assert server.REFUSALS.refused == 3

        _, writer = held.pop()
        writer.close()
        await writer.wait_closed()
        for _ in range(200):  # the server sees the close on its next loop turns
            reader, writer = await _connect(gw.url)
            writer.write(HEALTHZ)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.close()
            if head.startswith(b"HTTP/1.1 200"):
                break
            await asyncio.sleep(0.02)
        assert head.startswith(b"HTTP/1.1 200")
        for _, writer in held:
            writer.close()


def _non_reading_socket(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.connect((host, int(port)))
    return sock


async def test_a_client_that_stops_reading_is_dropped() -> None:
    dropped = asyncio.Event()
    sent = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal sent
        if scope["type"] != "http":
            return
        signal = scope["extensions"][DISCONNECT_EXTENSION]
        signal.add(dropped.set)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"x" * 65536
        while not signal.lost and sent < 200_000_000:  # bounded: it never gets that far
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)

    settings = Settings(auth_enabled=False, write_timeout_s=0.3)
    async with serving_app(app, settings, lifespan="off") as url:
        sock = _non_reading_socket(url)
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        try:
            await asyncio.wait_for(dropped.wait(), 10)
        finally:
            sock.close()
    assert sent < 200_000_000


async def test_an_unread_stream_gives_its_slot_back(fake: FakeUpstream) -> None:
    # Two unread streams used to hold IRGW_MAX_INFLIGHT=2 for as long as their clients
    # stayed connected; every other request got a 503.
    # Longer than what the socket buffers on the way hold, and still streaming when the
    # client is dropped.
    fake.script(SlowStream(0.005, Reply(content="x" * 16_000_000, chunk_size=16_384)))
    settings = unit_settings(fake.url, max_inflight=1, queue_size=0, write_timeout_s=0.3)

    def request(stream: bool, extra: bytes = b"") -> bytes:
        body = json.dumps({"model": "qwen-coder", "stream": stream,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                b"application/json\r\ncontent-length: %d\r\n%s\r\n%s"
                % (len(body), extra, body))

    async with running_gateway(settings) as gw:
        sock = _non_reading_socket(gw.url)
        sock.sendall(request(True))
        try:
            for _ in range(500):  # until the gateway has dropped it (or the bound)
                await asyncio.sleep(0.02)
                if gw.app.services.metrics.inflight == 0 and fake.requests:
                    break
            reader, writer = await _connect(gw.url)
            writer.write(request(False, b"connection: close\r\n"))
            answer = await _until_closed(reader)
            writer.close()
        finally:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert fake.cancelled >= 1  # the dropped client's vLLM call was cancelled


def test_the_protocol_runs_only_on_the_tested_uvicorn(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    low, high = serving.TESTED_UVICORN
    pin = f"uvicorn[standard]>={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "dependencies"]
    assert pin in dependencies
    settings = Settings(auth_enabled=False, max_connections=7)
    protocol = serving.uvicorn_options(settings)["http"]
    assert isinstance(protocol, type) and issubclass(protocol, server.GatewayHttpProtocol)
    assert protocol.max_connections == 7

    for version in ("0.55.0", "1.0", "0.53.9", "nonsense"):
        monkeypatch.setattr(uvicorn, "__version__", version)
        with caplog.at_level(logging.WARNING, logger="gateway.server.protocol"):
            options = serving.uvicorn_options(settings)
        assert options["http"] == "httptools"
        assert options["limit_concurrency"] == 7  # the stock protocol's only cap
        assert f"uvicorn {version} is not the series" in caplog.records[-1].getMessage()


async def test_the_fallback_protocol_serves(monkeypatch: pytest.MonkeyPatch,
                                            fake: FakeUpstream) -> None:
    monkeypatch.setattr(uvicorn, "__version__", "0.99.0")
    async with running_gateway(unit_settings(fake.url)) as gw:
        reader, writer = await _connect(gw.url)
        writer.write(HEALTHZ)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
    assert head.startswith(b"HTTP/1.1 200")


async def test_an_upgrade_request_is_answered_as_http_with_its_body(fake: FakeUpstream) -> None:
    # `curl --http2 -d ...` on http:// asks for h2c with its POST; a WebSocket client asks
    # for an upgrade too. The gateway upgrades to neither: each is answered as the HTTP/1.1
    # request it also is, body included (it was lost: "the request body is empty"), in the
    # OpenAI error shape (a WebSocket upgrade got uvicorn's bare text/plain 403).
    async with running_gateway(unit_settings(fake.url)) as gw:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        for upgrade in (b"h2c", b"websocket"):
            reader, writer = await _connect(gw.url)
            head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, "
                    b"HTTP2-Settings\r\nupgrade: " + upgrade + b"\r\nhttp2-settings: AAMA\r\n"
                    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
            writer.write(head + body[:10].encode())  # the body in two reads
            await asyncio.sleep(0.05)
            writer.write(body[10:].encode())
            answer = await _until_closed(reader)  # the last request on its connection
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            assert fake.requests[-1].json["messages"] == [{"role": "user", "content": "hi"}]

        reader, writer = await _connect(gw.url)
        writer.write(b"GET /nope HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket"
                     b"\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"sec-websocket-version: 13\r\n\r\n")
        status, error = _error(await _until_closed(reader))
        writer.close()
        assert status == 404 and error["type"] == "invalid_request_error"

        reader, writer = await _connect(gw.url)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
                     b"upgrade: h2c\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        status, error = _error(await _until_closed(reader))
        writer.close()
        assert status == 400 and "Upgrade" in error["message"]


async def test_an_upgrade_requests_body_is_held_to_the_body_limit(fake: FakeUpstream) -> None:
    # Its body is read apart from the parser (gateway.server.protocol): still refused past
    # IRGW_MAX_REQUEST_BYTES, declared or not, before it reaches vLLM.
    async with running_gateway(unit_settings(fake.url, max_request_bytes=4096)) as gw:
        reader, writer = await _connect(gw.url)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
                     b"upgrade: h2c\r\ncontent-type: application/json\r\n"
                     b"content-length: 100000\r\n\r\n" + b"x" * 8192)
        status, error = _error(await _until_closed(reader))
        writer.close()
        assert status == 413 and error["code"] == "body_too_large"
        assert not fake.requests
