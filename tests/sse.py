"""Reading an SSE response the way a client does."""

from __future__ import annotations

import json
from typing import Any

import httpx


async def read_events(response: httpx.Response) -> tuple[list[Any], list[str]]:
    """(parsed `data:` payloads, `[DONE]` included as the string; SSE comment lines)."""
    events: list[Any] = []
    comments: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            payload = line[5:].strip()
            events.append(payload if payload == "[DONE]" else json.loads(payload))
        elif line.startswith(":"):
            comments.append(line[1:].strip())
    return events, comments


def assembled_content(events: list[Any]) -> str:
    parts = []
    for event in events:
        if isinstance(event, dict):
            for choice in event.get("choices", []):
                parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)
