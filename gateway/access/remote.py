"""The CLI's two ways to reach the keys: the store itself, or a running gateway's admin API.

Both answer in the admin API's shapes (`gateway.access.admin_ops`), so the CLI prints the
same whichever it talks to.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from gateway.access import admin_ops
from gateway.access.admin_ops import KeyRequest
from gateway.access.records import KeyStoreError
from gateway.access.store import KeyBackend

ADMIN_KEY_ENV = "IRGW_ADMIN_KEY"


class AdminError(KeyStoreError):
    """The gateway refused an admin call; the message is its error message."""


class Admin(Protocol):
    describe: str

    async def create(self, request: KeyRequest) -> dict[str, Any]: ...

    async def list(self) -> list[dict[str, Any]]: ...

    async def show(self, key_id: str) -> dict[str, Any]: ...

    async def revoke(self, key_id: str) -> dict[str, Any]: ...

    async def rotate(self, key_id: str, grace: str) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class LocalAdmin:
    def __init__(self, backend: KeyBackend) -> None:
        self.backend = backend
        self.describe = backend.describe

    async def create(self, request: KeyRequest) -> dict[str, Any]:
        return await admin_ops.create_key(self.backend, request)

    async def list(self) -> list[dict[str, Any]]:
        return await admin_ops.list_keys(self.backend)

    async def show(self, key_id: str) -> dict[str, Any]:
        return await admin_ops.show_key(self.backend, key_id)

    async def revoke(self, key_id: str) -> dict[str, Any]:
        return await admin_ops.revoke_key(self.backend, key_id)

    async def rotate(self, key_id: str, grace: str) -> dict[str, Any]:
        return await admin_ops.rotate_key(self.backend, key_id, grace)

    async def aclose(self) -> None:
        await self.backend.aclose()


class RemoteAdmin:
    """`/admin/v1/` of a running gateway, with an admin-scoped key."""

    def __init__(self, url: str, key: str, *, timeout_s: float = 30.0) -> None:
        self.describe = f"the gateway at {url}"
        self._client = httpx.AsyncClient(base_url=url.rstrip("/") + "/admin/v1",
                                         headers={"authorization": f"Bearer {key}"},
                                         timeout=timeout_s)

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise AdminError(f"{self.describe}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            message = error.get("message") if isinstance(error, dict) else response.text[:200]
            raise AdminError(f"{self.describe} answered {response.status_code}: {message}")
        return body

    async def create(self, request: KeyRequest) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", "/keys", json=request.model_dump(exclude_none=True))
        return result

    async def list(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.call("GET", "/keys"))["data"]
        return result

    async def show(self, key_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("GET", f"/keys/{key_id}")
        return result

    async def revoke(self, key_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("POST", f"/keys/{key_id}/revoke")
        return result

    async def rotate(self, key_id: str, grace: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("POST", f"/keys/{key_id}/rotate",
                                                 json={"grace": grace})
        return result

    async def usage(self, key_id: str | None, since: str | None) -> dict[str, Any]:
        params = {k: v for k, v in (("key", key_id), ("since", since)) if v is not None}
        result: dict[str, Any] = await self.call("GET", "/usage", params=params)
        return result

    async def aclose(self) -> None:
        await self._client.aclose()
