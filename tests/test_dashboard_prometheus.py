"""The Grafana dashboard (deploy/grafana/ir-gateway.json) against a real Prometheus server
(Debian's `prometheus`, installed by scripts/setup-prometheus.sh) scraping a real gateway:
after a few requests, every panel's query returns data."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx

from gateway.access.keys import KeyPolicy, KeyStore
from tests.conftest import REPO, unit_settings
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_server import free_port, running_gateway
from tests.ir_samples import VALID

DASHBOARD = REPO / "deploy" / "grafana" / "ir-gateway.json"
BODY = {"model": "schema/function_ir", "max_tokens": 50,
        "messages": [{"role": "user", "content": "a function that adds two integers"}]}


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            # What Grafana puts in for $__rate_interval: at least four scrape intervals.
            queries.append((panel["title"], target["expr"].replace("$__rate_interval", "30s")))
    return queries


def _start_prometheus(config: Path, data: Path, port: int, log: Any) -> subprocess.Popen[bytes]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed: run scripts/setup-prometheus.sh")
    return subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def has_data(result: dict[str, Any]) -> bool:
    series = result.get("data", {}).get("result", [])
    return any(not math.isnan(float(item["value"][1])) for item in series)


async def test_every_dashboard_query_returns_data(fake: FakeUpstream, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json", create=True)
    _, key = store.create("team-a", KeyPolicy())
    settings = unit_settings(fake.url, auth_enabled=True, keys_file=store.path,
                             metrics_key_labels=True, output_policy="error")
    fake.default = Reply(VALID)
    queries = dashboard_queries()
    assert len(queries) >= 10
    async with running_gateway(settings) as gateway:
        port = free_port()
        target = gateway.url.removeprefix("http://")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: ir-gateway\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        with (tmp_path / "prometheus.log").open("wb") as log:
            process = _start_prometheus(config, tmp_path / "data", port, log)
            try:
                missing = await _drive_until_all_answer(
                    gateway.url, f"http://127.0.0.1:{port}", key, fake, queries)
            finally:
                process.terminate()
                process.wait(timeout=20)
    assert missing == [], f"dashboard queries without data: {missing}"


class _NotReadyError(Exception):
    """Prometheus answered 503: it is up but its storage is still starting."""


async def _drive_until_all_answer(gateway_url: str, prometheus_url: str, key: str,
                                  fake: FakeUpstream, queries: list[tuple[str, str]]
                                  ) -> list[tuple[str, str]]:
    """Requests a few at a time, until Prometheus answers every query with data (or two
    minutes pass: then the queries still without data)."""
    headers = {"authorization": f"Bearer {key}"}
    missing = queries
    async with httpx.AsyncClient(timeout=20, headers=headers) as http:
        for _ in range(240):
            fake.script(Reply("not json"))  # a failed check, for the per-schema panels
            await http.post(f"{gateway_url}/v1/chat/completions", json=BODY)
            await http.post(f"{gateway_url}/v1/chat/completions", json=BODY)
            await http.post(f"{gateway_url}/v1/chat/completions", json={**BODY, "stream": True})
            try:
                still = []
                for title, expr in missing:
                    answer = await http.get(f"{prometheus_url}/api/v1/query",
                                            params={"query": expr})
                    if answer.status_code == 503:  # its storage not ready yet: ask again
                        raise _NotReadyError
                    assert answer.status_code == 200, (title, expr, answer.text)
                    if not has_data(answer.json()):
                        still.append((title, expr))
                missing = still
            except (httpx.TransportError, _NotReadyError):
                pass  # Prometheus still starting
            if not missing:
                break
            await asyncio.sleep(0.5)
    return missing

