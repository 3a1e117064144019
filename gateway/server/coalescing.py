"""Write coalescing for the server's transport (see gateway/server/protocol.py, change 1)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

# Held writes are sent at once past this size, so the real transport's buffer, and with it
# the server's flow control (pause_writing), sees a stream that never yields to the loop.
FLUSH_AT_BYTES = 64 * 1024


class CoalescingTransport:
    """A transport whose writes within one loop turn leave in one `write` of the real one."""

    __slots__ = ("_ended", "_held", "_loop", "_pending", "_transport", "close_hook")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._held = 0  # bytes in _pending
        self._ended = False  # our side is finished: later writes are dropped
        # Asked first by `close()`; True means it took over closing (see `_linger`).
        self.close_hook: Callable[[], bool] | None = None

    def write(self, data: bytes) -> None:
        if self._ended:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._held += len(data)
        if self._held >= FLUSH_AT_BYTES:
            self.flush()

    def writelines(self, chunks: Any) -> None:  # through `write`, so nothing is reordered
        self.write(b"".join(chunks))

    def write_eof(self) -> None:
        """Send what is held, then end our side where the transport can (not under TLS)."""
        self.flush()
        self._ended = True
        if self._transport.can_write_eof() and not self._transport.is_closing():
            self._transport.write_eof()

    def flush(self) -> None:
        """Send what is held now (also run at the end of the loop turn of the first write)."""
        pending, self._pending = self._pending, []
        self._held = 0
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        if self.close_hook is not None and self.close_hook():
            return
        self.flush()  # what was written before close() is still sent, as with any transport
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._held = 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._ended or self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held

    def __getattr__(self, name: str) -> Any:  # get_extra_info and the rarely used rest
        return getattr(self._transport, name)
