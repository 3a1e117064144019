"""A real vLLM (CPU build) on the project's tiny model, and the gateway in front of it.

Session-scoped: vLLM boots once (about 30-60 s) and both are torn down even when tests fail.
The gateway runs with auth on, exactly as deployed: tests get a key through `live.api_key`
or make their own with `live.new_key(...)`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.access.keys import KeyPolicy, KeyStore
from gateway.dev.vllm_process import VllmServer, build_dev_model
from gateway.errors import AuthenticationError
from gateway.settings import Settings
from tests.conftest import REPO, REPORT  # noqa: F401  (REPORT re-exported for tests)
from tests.gateway_server import RunningGateway, running_gateway

SERVED_MODEL = "tiny-qwen2"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@dataclass
class Live:
    gateway: RunningGateway
    vllm: VllmServer
    keys: KeyStore
    api_key: str

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def model(self) -> str:
        return SERVED_MODEL

    def new_key(self, **policy: Any) -> str:
        """A new key, returned once the running gateway accepts it (it re-reads the key
        file at most every 250 ms)."""
        _, plaintext = self.keys.create(f"test-{len(self.keys.list())}", KeyPolicy(**policy))
        authenticator = self.gateway.app.services.authenticator
        deadline = time.monotonic() + 5
        while True:
            try:
                authenticator.authenticate(f"Bearer {plaintext}")
                return plaintext
            except AuthenticationError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {key or self.api_key}"}


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_dev_model(trained=True)


def start_vllm(model: Path, log_path: Path, port: int | None = None) -> VllmServer:
    server = VllmServer(model, served_model_name=SERVED_MODEL, log_path=log_path, port=port)
    server.start()
    try:
        took = server.wait_ready(timeout_s=400)
    except BaseException:
        server.stop()
        raise
    print(f"\nvLLM ({model.name}) ready in {took:.0f}s at {server.url}")
    return server


@pytest.fixture(scope="session")
def vllm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[VllmServer]:
    server = start_vllm(tiny_model, tmp_path_factory.mktemp("vllm") / "vllm.log")
    try:
        yield server
    finally:
        server.stop()


def live_settings(upstream_url: str, keys_file: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "upstream_url": upstream_url,
        "upstream_model": SERVED_MODEL,
        "keys_file": keys_file,
        "schemas_dir": REPO / "schemas",
        "connect_deadline_s": 5.0,
        "upstream_timeout_s": 120.0,
        "max_inflight": 32,
        "queue_size": 64,
        "queue_timeout_s": 60.0,
        "default_max_tokens": 400,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
async def live(vllm_server: VllmServer, tmp_path_factory: pytest.TempPathFactory
               ) -> AsyncIterator[Live]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    store = KeyStore(keys_file, create=True)
    _, api_key = store.create("integration", KeyPolicy(schemas="*", allow_adhoc=True))
    async with running_gateway(live_settings(vllm_server.url, keys_file)) as gateway:
        yield Live(gateway=gateway, vllm=vllm_server, keys=store, api_key=api_key)
