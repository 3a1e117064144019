"""The canary (gateway/upstream/canary.py) against fakes: an engine that ignores the
constraint fails
readiness naming the cause, with a log line and a metric; one that follows it is ready; the
time before vLLM accepts connections is "not ready", never "not constraining"; an anonymous
probe under IRGW_READY_PROBE=with_key sends vLLM nothing. The real vLLM passing the canary is
in tests/integration/test_vllm.py."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.access.keys import KeyPolicy, KeyStore
from tests.conftest import unit_settings
from tests.fake_upstream import FREE_TEXT, ErrorReply, FakeUpstream, FollowSchema
from tests.gateway_server import running_gateway
from tests.test_routes import sample

GAUGE = "irgw_canary_constraining"


def canary_settings(fake: FakeUpstream, **overrides: Any) -> Any:
    return unit_settings(fake.url, canary=True, **overrides)


async def test_an_engine_that_ignores_the_constraint_fails_readiness(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.upstream.canary")
    async with FakeUpstream(default=FREE_TEXT) as fake, \
            running_gateway(canary_settings(fake)) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        ready = await client.get("/readyz")
        metrics = (await client.get("/metrics")).text
        # What vLLM was sent: the gateway's own spelling of a schema, on both routes.
        sent = {request.path: request.json for request in fake.requests}
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["status"] == "unavailable"
    assert "does not enforce structured-output constraints" in body["reason"]
    assert "/v1/chat/completions answered text that ignores the schema" in body["reason"]
    assert "Hello! I am" in body["reason"]  # what it answered instead
    assert body["canary"]["verdict"] == "not_constraining"
    assert sample(metrics, GAUGE) == 0
    assert sample(metrics, 'irgw_canary_checks_total{verdict="not_constraining"}') >= 1
    assert any(r.levelno == logging.ERROR and "CANARY FAILED" in r.getMessage()
               for r in caplog.records)
    chat = sent["/v1/chat/completions"]
    assert chat["response_format"]["json_schema"]["strict"] is True
    assert chat["response_format"]["json_schema"]["schema"]["properties"]["v"]["enum"]
    assert chat["max_tokens"] == 32


async def test_an_engine_that_follows_the_constraint_is_ready_and_the_verdict_is_cached() -> None:
    async with FakeUpstream(default=FollowSchema()) as fake, \
            running_gateway(canary_settings(fake)) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        first = await client.get("/readyz")
        sent = len(fake.requests)
        again = await client.get("/readyz")
        metrics = (await client.get("/metrics")).text
        assert len(fake.requests) == sent == 2  # chat and completions, once
    assert first.status_code == 200 and again.status_code == 200
    assert first.json()["canary"]["verdict"] == "constraining"
    assert sample(metrics, GAUGE) == 1
    # completions on vLLM >= 0.12 is constrained through structured_outputs
    assert [r.path for r in fake.requests] == ["/v1/chat/completions", "/v1/completions"]
    assert fake.requests[1].json["structured_outputs"]["json"]["required"] == ["v"]


async def test_a_completions_route_that_drops_the_constraint_is_found() -> None:
    # Chat constrains; completions answers free text (a renamed completions field).
    async with FakeUpstream(default=FollowSchema()) as fake:
        fake.script(FollowSchema(), FREE_TEXT)
        async with running_gateway(canary_settings(fake, ready_probe="with_key",
                                                   auth_enabled=False)) as gw, \
                httpx.AsyncClient(base_url=gw.url) as client:
            ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert "/v1/completions answered text that ignores the schema" in ready.json()["reason"]


async def test_before_vllm_accepts_connections_it_is_loading_not_unconstrained() -> None:
    async with FakeUpstream(default=FollowSchema()) as fake:
        await fake.stop()  # vLLM loading its model: connections refused
        async with running_gateway(canary_settings(fake)) as gw, \
                httpx.AsyncClient(base_url=gw.url) as client:
            down = await client.get("/readyz")
            metrics = (await client.get("/metrics")).text
            await fake.start()
            up = await client.get("/readyz")
    assert down.status_code == 503
    assert "not accepting connections" in down.json()["reason"]
    assert "canary" not in down.json() and "enforce" not in down.json()["reason"]
    assert sample(metrics, GAUGE) == -1
    assert up.status_code == 200 and up.json()["canary"]["verdict"] == "constraining"


async def test_a_refused_constrained_request_fails_readiness_and_an_error_does_not() -> None:
    async with FakeUpstream(default=FollowSchema()) as fake, \
            running_gateway(canary_settings(fake, ready_probe="with_key",
                                            auth_enabled=False)) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        # A 5xx is no verdict: readiness stays, the canary says why it has none.
        fake.script(ErrorReply.new_shape(500, "engine hiccup", "InternalServerError"))
        hiccup = await client.get("/readyz")
        gw.app.services.canary._result = None  # the next probe asks again
        fake.script(ErrorReply.new_shape(400, "The provided JSON schema contains features not "
                                         "supported by xgrammar."))
        refused = await client.get("/readyz")
    assert hiccup.status_code == 200
    assert hiccup.json()["canary"]["verdict"] == "inconclusive"
    assert "engine hiccup" in hiccup.json()["canary"]["reason"]
    assert refused.status_code == 503
    assert "refused the canary's constrained request (400" in refused.json()["reason"]


async def test_another_vllm_release_is_checked_again() -> None:
    async with FakeUpstream(default=FollowSchema()) as fake, \
            running_gateway(canary_settings(fake, ready_probe="with_key",
                                            auth_enabled=False)) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.get("/readyz")).status_code == 200
        fake.version, fake.default = "0.33.0", FREE_TEXT  # upgraded, constraint now dropped
        upgraded = await client.get("/readyz")
    assert upgraded.status_code == 503 and upgraded.json()["upstream_version"] == "0.33.0"


async def test_an_anonymous_probe_under_with_key_sends_vllm_nothing(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json", create=True)
    _, key = store.create("ops", KeyPolicy())
    async with FakeUpstream(default=FREE_TEXT) as fake:
        settings = canary_settings(fake, auth_enabled=True, keys_file=tmp_path / "keys.json",
                                   ready_probe="with_key")
        async with running_gateway(settings) as gw, \
                httpx.AsyncClient(base_url=gw.url) as client:
            anonymous = await client.get("/readyz")
            assert anonymous.status_code == 200 and "not probed" in anonymous.json()["reason"]
            assert sum(fake.hits.values()) == 0  # no startup canary either
            probed = await client.get("/readyz", headers={"authorization": f"Bearer {key}"})
    assert probed.status_code == 503 and probed.json()["canary"]["verdict"] == "not_constraining"


async def test_the_canary_can_be_turned_off_for_upstreams_that_are_not_vllm() -> None:
    async with FakeUpstream(default=FREE_TEXT) as fake, \
            running_gateway(unit_settings(fake.url, canary=False)) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 200 and "canary" not in ready.json()
    assert fake.requests == []


@pytest.mark.parametrize(("probe", "renewed"), [("always", False), ("with_key", True)])
async def test_a_stale_verdict_is_renewed_by_the_loop_or_by_the_probe(probe: str,
                                                                      renewed: bool) -> None:
    # With the background loop a probe never waits for a run (readiness probes are often
    # given a second); without it, the probe that finds the verdict stale makes it again.
    async with FakeUpstream(default=FollowSchema()) as fake, \
            running_gateway(canary_settings(fake, ready_probe=probe)) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.get("/readyz")).status_code == 200
        canary = gw.app.services.canary
        assert canary.last is not None
        canary._result = dataclasses.replace(canary.last,
                                             checked_at=canary.last.checked_at - 10_000)
        sent = len(fake.requests)
        assert (await client.get("/readyz")).status_code == 200
        assert len(fake.requests) == sent + (2 if renewed else 0)
