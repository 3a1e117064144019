"""Everything a request handler needs, built once from Settings and kept on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth import Authenticator, build_authenticator
from gateway.canary import Canary
from gateway.errors import UpstreamError
from gateway.metrics import Metrics
from gateway.ratelimit import build_limiter
from gateway.ratelimit.base import Limiter
from gateway.registry import SchemaRegistry
from gateway.settings import Settings
from gateway.upstream.client import UpstreamClient


@dataclass
class Services:
    settings: Settings
    registry: SchemaRegistry
    upstream: UpstreamClient
    authenticator: Authenticator
    limiter: Limiter
    metrics: Metrics
    canary: Canary

    @classmethod
    def build(cls, settings: Settings) -> Services:
        # Order matters for operators: a broken schema file or a missing key store
        # stops the server before anything starts listening.
        registry = SchemaRegistry.load(settings.schemas_dir)
        authenticator = build_authenticator(settings)
        upstream, metrics = UpstreamClient(settings), Metrics()
        return cls(
            settings=settings,
            registry=registry,
            upstream=upstream,
            authenticator=authenticator,
            limiter=build_limiter(settings),
            metrics=metrics,
            canary=Canary(settings, upstream, metrics),
        )

    async def start(self) -> None:
        await self.upstream.start()
        self.canary.start()

    async def aclose(self) -> None:
        await self.canary.aclose()
        await self.upstream.aclose()
        await self.limiter.aclose()

    async def default_model(self) -> str:
        if self.settings.upstream_model:
            return self.settings.upstream_model
        models = await self.upstream.model_ids()
        if not models:
            raise UpstreamError("the upstream serves no model")
        return models[0]
