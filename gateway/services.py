"""Everything a request handler needs, built once from Settings and kept on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.access.auth import Authenticator, build_authenticator
from gateway.access.budgets import with_budgets
from gateway.access.cache import ResponseCache, build_cache
from gateway.access.usage import UsageRecorder
from gateway.access.usage_sinks import build_usage
from gateway.errors import UpstreamError
from gateway.observe.observer import Observer
from gateway.observe.prometheus import Metrics, MetricsListener
from gateway.output.adhoc import AdhocSchemas
from gateway.output.registry import SchemaRegistry
from gateway.ratelimit import build_limiter
from gateway.ratelimit.base import AdmissionControl
from gateway.server.body_budget import BodyBudget
from gateway.settings import Settings
from gateway.upstream.canary import Canary
from gateway.upstream.client import UpstreamClient


@dataclass
class Services:
    settings: Settings
    registry: SchemaRegistry
    upstream: UpstreamClient
    authenticator: Authenticator
    limiter: AdmissionControl
    metrics: Metrics
    body_budget: BodyBudget
    adhoc: AdhocSchemas
    observer: Observer
    canary: Canary
    usage: UsageRecorder | None = None  # None: usage accounting is off
    cache: ResponseCache | None = None  # None: no response cache

    @classmethod
    def build(cls, settings: Settings) -> Services:
        # Order matters for operators: a broken schema file or a missing key store
        # stops the server before anything starts listening.
        registry = SchemaRegistry.load(settings.schemas_dir)
        authenticator = build_authenticator(settings)
        upstream, metrics = UpstreamClient(settings), Metrics()
        limiter = with_budgets(build_limiter(settings), settings)
        return cls(
            settings=settings,
            registry=registry,
            upstream=upstream,
            authenticator=authenticator,
            limiter=limiter,
            metrics=metrics,
            body_budget=BodyBudget(settings.max_body_bytes_in_flight),
            adhoc=AdhocSchemas.from_settings(settings),
            observer=Observer(settings, metrics.registry, limiter),
            canary=Canary(settings, upstream, metrics),
            usage=build_usage(settings),
            cache=build_cache(settings),
        )

    metrics_listener: MetricsListener | None = None

    async def start(self) -> None:
        keys = self.authenticator.keys
        if keys is not None:
            await keys.start()  # the Redis store loads every key: refuses to start without
        await self.upstream.start()
        if self.usage is not None:
            await self.usage.start()
        if self.settings.metrics_port is not None:
            self.metrics_listener = MetricsListener(self.metrics, self.settings.metrics_host,
                                                    self.settings.metrics_port)
        self.canary.start()

    async def aclose(self) -> None:
        await self.canary.aclose()
        if self.metrics_listener is not None:
            await self.metrics_listener.aclose()
        await self.upstream.aclose()
        await self.limiter.aclose()
        await self.observer.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        if self.usage is not None:
            await self.usage.aclose()  # flushes what is pending: a clean stop loses nothing
        if self.authenticator.keys is not None:
            await self.authenticator.keys.aclose()

    async def default_model(self) -> str:
        if self.settings.upstream_model:
            return self.settings.upstream_model
        models = await self.upstream.model_ids()
        if not models:
            raise UpstreamError("the upstream serves no model")
        return models[0]
