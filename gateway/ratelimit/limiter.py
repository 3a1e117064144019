"""The one limiter: the guards and the in-flight gate around any quota store."""

from __future__ import annotations

from gateway.access.auth import Principal
from gateway.ratelimit.base import Admission, QuotaStore, check_fits, reads_only
from gateway.ratelimit.inflight import InflightGate


class Limiter:
    """Admits a request against its key's limits (`store`), then a slot to the upstream
    (`gate`). A backend is a `QuotaStore`; this class is the same for every one."""

    def __init__(self, store: QuotaStore, gate: InflightGate) -> None:
        self.store = store
        self.gate = gate

    async def admit(self, principal: Principal, estimated_tokens: int) -> Admission:
        """See `AdmissionControl.admit` (ratelimit/base.py): 400, 429 or 503, or admitted."""
        admission = await self._quotas(principal, estimated_tokens)
        return await self.gate.enter(admission)

    async def admit_read(self, principal: Principal) -> dict[str, str]:
        """One request against the key's RPM only; its `x-ratelimit-*` headers."""
        reader = reads_only(principal)
        return {} if reader is None else (await self._quotas(reader, 0)).headers

    async def _quotas(self, principal: Principal, estimated_tokens: int) -> Admission:
        if not principal.policy.has_rate_limits:
            return Admission({})  # nothing to enforce, so no reason to touch the store
        check_fits(principal, estimated_tokens)
        return await self.store.admit(principal, estimated_tokens)

    async def aclose(self) -> None:
        await self.store.aclose()
