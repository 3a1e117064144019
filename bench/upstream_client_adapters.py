"""The HTTP clients bench/upstream_client.py compares, behind one small interface: httpx
(and httpx2), aiohttp plain and tuned, and the gateway's own upstream transport."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

CONCURRENCY = 32  # the pool size, and the concurrent workers of the c32 phase
REQUEST_TIMEOUT_S = 30.0
JSON_HEADERS = {"content-type": "application/json"}


class Adapter(ABC):
    """One pooled client; ``post`` returns the body size, ``stream`` the data-line count."""

    name: str

    @abstractmethod
    async def post(self, body: bytes) -> int: ...

    @abstractmethod
    async def stream(self, body: bytes) -> int: ...

    @abstractmethod
    async def aclose(self) -> None: ...


class HttpxAdapter(Adapter):
    """httpx (or the API-compatible httpx2) AsyncClient, HTTP/1.1, pool sized to 32."""

    def __init__(self, module_name: str, url: str) -> None:
        mod: Any = importlib.import_module(module_name)
        self.name = f"{module_name}.AsyncClient"
        self.url = url
        limits = mod.Limits(
            max_connections=CONCURRENCY,
            max_keepalive_connections=CONCURRENCY,
            keepalive_expiry=60.0,
        )
        self.client: Any = mod.AsyncClient(
            http1=True,
            http2=False,
            limits=limits,
            timeout=mod.Timeout(REQUEST_TIMEOUT_S),
            trust_env=False,
            headers=JSON_HEADERS,
        )

    async def post(self, body: bytes) -> int:
        resp = await self.client.post(self.url, content=body)
        if resp.status_code != 200:
            raise RuntimeError(f"status {resp.status_code}")
        return len(resp.content)

    async def stream(self, body: bytes) -> int:
        n = 0
        async with self.client.stream("POST", self.url, content=body) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"status {resp.status_code}")
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    n += 1
        return n

    async def aclose(self) -> None:
        await self.client.aclose()


class AiohttpAdapter(Adapter):
    """aiohttp ClientSession over a pooled TCPConnector; ``tuned`` trims per-request work."""

    def __init__(self, url: str, tuned: bool) -> None:
        import aiohttp
        import yarl

        self.url: str | yarl.URL
        if tuned:
            self.name = "aiohttp (tuned)"
            connector = aiohttp.TCPConnector(
                limit=CONCURRENCY,
                limit_per_host=CONCURRENCY,
                keepalive_timeout=60.0,
                use_dns_cache=True,
                ttl_dns_cache=None,
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                headers=JSON_HEADERS,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
            self.url = yarl.URL(url)  # parsed once instead of per request
        else:
            self.name = "aiohttp.ClientSession"
            connector = aiohttp.TCPConnector(
                limit=CONCURRENCY, limit_per_host=CONCURRENCY, keepalive_timeout=60.0
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                headers=JSON_HEADERS,
            )
            self.url = url

    async def post(self, body: bytes) -> int:
        async with self.session.post(self.url, data=body) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            return len(data)

    async def stream(self, body: bytes) -> int:
        n = 0
        async with self.session.post(self.url, data=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            async for line in resp.content:
                if line.startswith(b"data:"):
                    n += 1
        return n

    async def aclose(self) -> None:
        await self.session.close()


class GatewayTransportAdapter(Adapter):
    """The gateway's own keep-alive pool over httptools (gateway/upstream/transport.py)."""

    name = "ir-gateway transport"

    def __init__(self, url: str) -> None:
        from urllib.parse import urlsplit

        from gateway.upstream.transport import Pool

        parts = urlsplit(url)
        self.path = parts.path
        self.pool = Pool(f"{parts.scheme}://{parts.netloc}", size=CONCURRENCY, keepalive_s=60.0,
                         connect_timeout_s=5.0, read_timeout_s=REQUEST_TIMEOUT_S,
                         headers=list(JSON_HEADERS.items()))

    async def post(self, body: bytes) -> int:
        resp = await self.pool.request("POST", self.path, body)
        data = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}")
        return len(data)

    async def stream(self, body: bytes) -> int:
        from gateway.upstream.client import _sse_data  # the gateway's own SSE reader

        resp = await self.pool.request("POST", self.path, body)
        try:
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            return sum([1 async for _ in _sse_data(resp)])
        finally:
            resp.release()

    async def aclose(self) -> None:
        await self.pool.aclose()


def adapter_factories(url: str) -> list[tuple[str, Callable[[], Adapter]]]:
    factories: list[tuple[str, Callable[[], Adapter]]] = [
        ("httpx.AsyncClient", lambda: HttpxAdapter("httpx", url)),
        ("aiohttp.ClientSession", lambda: AiohttpAdapter(url, tuned=False)),
        ("aiohttp (tuned)", lambda: AiohttpAdapter(url, tuned=True)),
        ("ir-gateway transport", lambda: GatewayTransportAdapter(url)),
    ]
    try:
        importlib.import_module("httpx2")
    except ImportError:
        pass
    else:  # present as a dependency of the openai SDK; cheap to include
        factories.append(("httpx2.AsyncClient", lambda: HttpxAdapter("httpx2", url)))
    return factories

