from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from tests.fake_upstream import FakeUpstream
from tests.gateway_server import RunningGateway, running_gateway

pytest_plugins = ["tests.hang_report"]

REPO = Path(__file__).resolve().parent.parent
# Figures tests want in CI's output even when they pass (pytest -q hides their prints).
REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("figures reported by the tests")
        for line in REPORT:
            terminalreporter.write_line(line)


def unit_settings(upstream_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "upstream_url": upstream_url,
        "auth_enabled": False,
        "connect_deadline_s": 0.5,
        "upstream_timeout_s": 10,
        "schemas_dir": REPO / "schemas",
        # The fake upstream is not vLLM: its scripted answers ignore constraints, and a
        # canary would take them. tests/test_canary.py turns it on.
        "canary": False,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def gateway(fake: FakeUpstream) -> AsyncIterator[RunningGateway]:
    async with running_gateway(unit_settings(fake.url)) as running:
        yield running


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        yield http
