"""The one pooled HTTP client for vLLM, on the lean keep-alive transport in `transport.py`.

Refused connections are retried with backoff up to `connect_deadline_s`: vLLM does not
accept connections while it loads a model, and a Modal cold start looks the same from
outside. Only connection failures are retried, since then the request never reached vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamRequestFailedError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.settings import Settings
from gateway.upstream.dialects import Dialect, UnsupportedVersionError, dialect_for
from gateway.upstream.transport import (
    ConnectFailed,
    ConnectionBroken,
    Pool,
    ReadTimeout,
    Response,
    StaleConnection,
)

log = logging.getLogger("gateway.upstream")

_RETRY_AFTER_S = 5
_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 2.0
# Modal's result URL redirects again every 150 s; 20 is what browsers follow (50 minutes).
_MAX_RESULT_REDIRECTS = 20
# vLLM's server closes idle keep-alive connections after 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE);
# dropping ours sooner keeps requests off connections the server is about to close.
_KEEPALIVE_S = 4.0
_CONNECT_TIMEOUT_S = 5.0
# vLLM's GenerationError (vllm/exceptions.py), raised when the engine finishes one request
# with finish_reason "error": a grammar that failed to compile or rejected a token (the
# scheduler's grammar_compile_error_reqs), a KV or encoder-cache load that failed. Its text
# never says which; the engine is alive. A dead engine says "EngineCore encountered...".
_GENERATION_ERROR = ("InternalServerError", "Internal server error")
_NAMES_GRAMMAR = re.compile(r"grammar", re.IGNORECASE)  # also "xgrammar", "Grammar"


def normalise_error(status: int, body: bytes) -> GatewayError:
    """vLLM's two error shapes (and the `--api-key` string) → one OpenAI-shaped error."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    message, error_type, param, code = None, None, None, None
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict):  # vLLM >= 0.10.1
            data = inner
        elif isinstance(inner, str):  # `--api-key` rejection
            data = {"message": inner}
        message = data.get("message") if isinstance(data.get("message"), str) else None
        error_type = data.get("type") if isinstance(data.get("type"), str) else None
        param = data.get("param") if isinstance(data.get("param"), str) else None
        raw_code = data.get("code")
        code = str(raw_code) if isinstance(raw_code, str | int) else None
    if status in (401, 403):
        # The client's key was already accepted by the gateway: vLLM refusing the
        # gateway's own credential is a deployment fault, not the caller's.
        return UpstreamError("the upstream refused the gateway's credentials", code="upstream_auth")
    if message is None:
        snippet = body[:200].decode("utf-8", "replace")
        return UpstreamError(f"upstream answered {status} with an unreadable body: {snippet!r}")
    if status >= 500:
        text = f"upstream error ({status}): {message}"
        names_grammar = _NAMES_GRAMMAR.search(message) is not None
        if names_grammar or (status == 500 and (error_type, message) == _GENERATION_ERROR):
            return UpstreamRequestFailedError(text, names_grammar=names_grammar)
        return UpstreamError(text)
    return UpstreamStatusError(status, message, error_type=error_type, param=param,
                               code=code if code and not code.isdigit() else None)


class UpstreamClient:
    def __init__(self, settings: Settings) -> None:
        self.base_url = settings.upstream_url
        self.connect_deadline_s = settings.connect_deadline_s
        self._read_timeout_s = settings.upstream_timeout_s
        headers = {"content-type": "application/json"}
        headers.update({name.lower(): value.get_secret_value()
                        for name, value in settings.upstream_headers.items()})
        if settings.upstream_api_key is not None:
            headers["authorization"] = f"Bearer {settings.upstream_api_key.get_secret_value()}"
        self._headers = list(headers.items())
        self._pool_size = settings.upstream_pool_size
        self._pool: Pool | None = None
        self._dialect: Dialect | None = None
        self._models: list[str] | None = None
        self._models_at = 0.0
        self._models_lock = asyncio.Lock()

    async def start(self) -> None:
        self._pool = Pool(self.base_url, size=self._pool_size, keepalive_s=_KEEPALIVE_S,
                          connect_timeout_s=_CONNECT_TIMEOUT_S,
                          read_timeout_s=self._read_timeout_s, headers=self._headers)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        return self._pool

    # -- discovery

    async def dialect(self) -> Dialect:
        """The dialect for the upstream's release, read from `GET /version` once."""
        if self._dialect is None:
            data = await self.get_json("/version")
            version = data.get("version") if isinstance(data, dict) else None
            if not isinstance(version, str):
                raise UpstreamError("upstream /version did not return a version string")
            try:
                self._dialect = dialect_for(version)
            except UnsupportedVersionError as exc:  # a deployment fault, not the gateway's
                raise UpstreamError(str(exc)) from exc
            log.info("upstream vLLM %s: dialect %s", version, self._dialect.name)
        return self._dialect

    async def model_ids(self, *, max_age_s: float | None = None) -> list[str]:
        """vLLM's model ids, asked again once older than `max_age_s` (None: kept until
        `forget`). Callers that need it asked again while vLLM is asked wait for that one
        answer; a caller the cached list suits takes it at once, without waiting for the
        lock (a refresh may wait on vLLM through a restart)."""
        if self._models is not None and not self._stale(max_age_s):
            return self._models
        async with self._models_lock:
            if self._models is None or self._stale(max_age_s):
                data = await self.get_json("/v1/models")
                items = data.get("data") if isinstance(data, dict) else None
                if not isinstance(items, list):
                    raise UpstreamError("upstream /v1/models did not return a model list")
                self._models = [m["id"] for m in items if isinstance(m, dict) and "id" in m]
                self._models_at = time.monotonic()
            return self._models

    def _stale(self, max_age_s: float | None) -> bool:
        return max_age_s is not None and time.monotonic() - self._models_at >= max_age_s

    def forget(self) -> None:
        """After the upstream went away it may come back as another release."""
        self._dialect = None
        self._models = None

    # -- requests

    async def get_json(self, path: str, *, deadline_s: float | None = None) -> Any:
        response = await self._send("GET", path, None, {}, deadline_s)
        return _decode(await _read(response))

    async def post_json(self, path: str, body: Mapping[str, Any],
                        headers: Mapping[str, str]) -> Any:
        response = await self._send("POST", path, orjson.dumps(body), headers, None)
        return _decode(await _read(response))

    @asynccontextmanager
    async def stream(self, path: str, body: Mapping[str, Any],
                     headers: Mapping[str, str]) -> AsyncIterator[AsyncIterator[bytes]]:
        """Yields an iterator over SSE `data:` payloads (bytes), as they arrive."""
        response = await self._send("POST", path, orjson.dumps(body), headers, None)
        try:
            yield _sse_data(response)
        finally:
            # Closes a connection abandoned mid-answer (client gone, error), which is what
            # makes vLLM abort the generation and free its GPU slot.
            response.release()

    async def _send(self, method: str, path: str, data: bytes | None,
                    headers: Mapping[str, str], deadline_s: float | None) -> Response:
        """The answer's head, status 2xx; the caller reads the body and releases it.

        Modal's web endpoints answer a request that runs past 150 s with a 303 to a result
        URL on the same host, which blocks until the answer is ready (again up to 150 s, then
        another 303): followed, so a long generation is not a 502 that the openai client
        then runs twice more. Any other redirect is an upstream error."""
        response = await self._request(method, path, data, headers, deadline_s)
        for _ in range(_MAX_RESULT_REDIRECTS):
            if response.status != 303:
                break
            target = self._same_upstream(response.headers.get("location", ""))
            if target is None:
                break
            await _read(response)
            response = await self._request("GET", target, None, headers, deadline_s)
        if response.status >= 400:
            raise normalise_error(response.status, await _read(response))
        if response.status >= 300:
            location = response.headers.get("location", "")
            await _read(response)
            raise UpstreamError(f"the upstream answered {response.status} (to "
                                f"{location[:200]!r}); the gateway follows only Modal's "
                                "303 to a result URL on the upstream itself")
        return response

    def _same_upstream(self, location: str) -> str | None:
        """`location` as a path under the upstream URL, or None if it points elsewhere."""
        target, base = urlsplit(location), urlsplit(self.base_url)
        if target.scheme and (target.scheme, target.hostname, target.port) != (
                base.scheme, base.hostname, base.port):
            return None
        prefix = base.path.rstrip("/")
        if not target.path.startswith(prefix + "/"):
            return None
        return target.path[len(prefix):] + (f"?{target.query}" if target.query else "")

    async def _request(self, method: str, path: str, data: bytes | None,
                       headers: Mapping[str, str], deadline_s: float | None) -> Response:
        """One request, its refused connects retried up to the deadline; any status."""
        deadline = time.monotonic() + (
            self.connect_deadline_s if deadline_s is None else deadline_s
        )
        backoff = _FIRST_BACKOFF_S
        stale_retry = True
        while True:
            try:
                response = await self.pool.request(method, path, data, headers.items(),
                                                   fresh=not stale_retry)
                break
            except ConnectFailed as exc:
                # Refused: vLLM is booting or down. Retried up to the connect deadline.
                self.forget()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UpstreamUnavailableError(
                        f"the upstream model server at {self.base_url} is not accepting "
                        "connections (starting up or down); try again shortly",
                        headers={"retry-after": str(_RETRY_AFTER_S)},
                    ) from exc
                await asyncio.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
            except StaleConnection as exc:
                # A pooled connection the server closed just as we reused it (a clean close,
                # or a reset when it closed with our request unread: a keep-alive timer that
                # fired late on a busy vLLM). Only a close within about a round trip of our
                # write counts, so the request almost surely never reached vLLM and one retry
                # is safe. A server that read the request and dropped it at once looks the
                # same and gets it twice: accepted, as telling them apart is not possible.
                # The retry takes a new connection, as the other idle ones may be stale too;
                # twice in a row is not a stale connection.
                if not stale_retry:
                    raise UpstreamError("the upstream closed the connection") from exc
                stale_retry = False
            except ReadTimeout as exc:
                raise UpstreamTimeoutError("the upstream did not answer in time") from exc
            except ConnectionBroken as exc:
                raise UpstreamError(f"upstream connection failed: {exc}") from exc
        return response


async def _read(response: Response) -> bytes:
    try:
        return await response.read()
    except ReadTimeout as exc:
        raise UpstreamTimeoutError("the upstream stopped answering in time") from exc
    except ConnectionBroken as exc:
        raise UpstreamError("the upstream connection broke mid-answer") from exc
    finally:
        response.release()  # back to the pool when read to the end; closed otherwise


def _decode(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError(
            f"the upstream answered with a body that is not JSON: {body[:200]!r}"
        ) from None


async def _sse_data(response: Response) -> AsyncIterator[bytes]:
    """The payload of each event: its `data:` lines joined by "\n", at the blank line."""
    pending = b""
    data: list[bytes] = []  # the data lines of the event being read
    try:
        async for chunk in response.iter_chunks():
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if line.startswith(b"data:"):
                    data.append(line[5:].strip())
                elif data and line in (b"", b"\r"):
                    yield data[0] if len(data) == 1 else b"\n".join(data)
                    data = []
        if pending.startswith(b"data:"):
            data.append(pending[5:].strip())
        if data:  # an event cut short by the end of the stream: lenient, as vLLM ends cleanly
            yield data[0] if len(data) == 1 else b"\n".join(data)
    except ReadTimeout as exc:
        raise UpstreamTimeoutError("the upstream stopped streaming in time") from exc
    except ConnectionBroken as exc:
        raise UpstreamError("the upstream connection broke mid-stream") from exc
