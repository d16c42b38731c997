"""What the LLM-client wrappers and the tool decorator need from whatever records their calls.

:class:`~tallystick.sdk.client.Client` and :class:`~tallystick.sdk.client.AsyncClient` satisfy
these protocols; the wrappers depend only on them, so they can be tested and composed without a
particular client.
"""

from __future__ import annotations

from typing import Protocol

from tallystick.verifier.logentry import CallBody

__all__ = ["AsyncRecorder", "Recorder"]


class Recorder(Protocol):
    """Records one call; returns its log index once durable, or None if it was spooled."""

    def record(self, call: CallBody) -> int | None: ...


class AsyncRecorder(Protocol):
    """The asyncio form of :class:`Recorder`."""

    async def record(self, call: CallBody) -> int | None: ...
