"""What the LLM-client wrappers and the tool decorator need from whatever records their calls.

:class:`~tallystick.sdk.client.Client` and :class:`~tallystick.sdk.client.AsyncClient` satisfy
these protocols; the wrappers depend only on them, so they can be tested and composed without a
particular client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from tallystick.verifier.logentry import CallBody

__all__ = ["AsyncRecorder", "DeferredRecorder", "Recorder"]


class Recorder(Protocol):
    """Records one call; returns its log index once durable, or None if it was spooled."""

    def record(self, call: CallBody) -> int | None: ...


class AsyncRecorder(Protocol):
    """The asyncio form of :class:`Recorder`."""

    async def record(self, call: CallBody) -> int | None: ...


@runtime_checkable
class DeferredRecorder(Protocol):
    """Takes a call's record unbuilt: ``build`` runs later, off the caller's path, in call order.

    ``build`` returns the record, or None when the call is not to be recorded. The wrappers
    hand a sync client's calls this way to a recorder that offers it (recount and hashing
    included), e.g. :class:`~tallystick.sdk.background.BackgroundRecorder`.
    """

    def record_later(self, build: Callable[[], CallBody | None]) -> None: ...
