"""What a key may see (issue 17, finding 13): listings show only the schemas a key may use,
`/v1/models` is cached and counted against the key's requests per minute, and `/metrics`
can live on a port of its own."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx

from gateway.generation.planning import SCHEMA_MODEL_PREFIX
from tests.conftest import unit_settings
from tests.fake_upstream import FakeUpstream
from tests.gateway_server import running_gateway
from tests.test_limits_e2e import keyed_settings, new_key


async def test_a_scoped_key_sees_only_its_schemas(fake: FakeUpstream, tmp_path: Path) -> None:
    _, _, key = new_key(tmp_path, schemas=["function_ir"])
    headers = {"authorization": f"Bearer {key}"}
    async with running_gateway(keyed_settings(fake, tmp_path / "keys.json")) as gw, \
            httpx.AsyncClient(base_url=gw.url, headers=headers) as client:
        listed = (await client.get("/v1/schemas")).json()["data"]
        assert [s["name"] for s in listed] == ["function_ir"]
        assert (await client.get("/v1/schemas/function_ir")).status_code == 200
        for ref in ("module_ir", "module_ir@1", "no_such_schema"):
            refused = await client.get(f"/v1/schemas/{ref}")
            assert refused.status_code == 403, ref
            assert refused.json()["error"]["code"] == "schema_not_allowed"
            assert "module_ir" not in (await client.get("/v1/schemas")).text

        models = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
        aliases = {m for m in models if m.startswith(SCHEMA_MODEL_PREFIX)}
        assert aliases == {"schema/function_ir", "schema/function_ir@1"}
        assert fake.model in models
        hidden = await client.get("/v1/models/schema/module_ir")
        assert hidden.status_code == 404
        assert (await client.get("/v1/models/schema/function_ir")).status_code == 200


async def test_models_listing_is_cached_and_counted(fake: FakeUpstream, tmp_path: Path) -> None:
    """Before: an rpm=1 key made 20 calls to vLLM's /v1/models, all answered."""
    _, _, key = new_key(tmp_path, rpm=1)
    headers = {"authorization": f"Bearer {key}"}
    settings = keyed_settings(fake, tmp_path / "keys.json", models_cache_s=600)
    async with running_gateway(settings) as gw, \
            httpx.AsyncClient(base_url=gw.url, headers=headers) as client:
        responses = [await client.get("/v1/models") for _ in range(20)]
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 429: 19}
    assert responses[0].headers["x-ratelimit-limit-requests"] == "1"
    assert responses[1].json()["error"]["code"] == "rate_limit_exceeded"
    assert fake.hits["/v1/models"] == 1


async def test_vllms_model_list_is_reused_for_models_cache_s(fake: FakeUpstream) -> None:
    async with running_gateway(unit_settings(fake.url, models_cache_s=600)) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        for _ in range(5):
            assert (await client.get("/v1/models")).status_code == 200
        assert fake.hits["/v1/models"] == 1
    async with running_gateway(unit_settings(fake.url, models_cache_s=0)) as gw, \
            httpx.AsyncClient(base_url=gw.url) as client:
        for _ in range(3):
            assert (await client.get("/v1/models")).status_code == 200
    assert fake.hits["/v1/models"] == 4


async def test_metrics_can_move_off_the_public_port(fake: FakeUpstream) -> None:
    settings = unit_settings(fake.url, metrics_port=0)  # 0: any free port, for the test
    async with running_gateway(settings) as gw, httpx.AsyncClient() as client:
        listener = gw.app.services.metrics_listener
        assert listener is not None
        await client.get(f"{gw.url}/healthz")
        public = await client.get(f"{gw.url}/metrics")
        private = await client.get(f"http://127.0.0.1:{listener.port}/metrics")
    assert public.status_code == 404 and public.json()["error"]["code"] == "unknown_route"
    assert private.status_code == 200
    assert 'irgw_requests_total{route="/healthz",status="200"} 1.0' in private.text
