"""Shared pieces for helper B's SDK tests: the local LLM server and a list recorder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tallystick.verifier.logentry import CallBody

from demo.llm_server import LLMServer, Trace, load_traces

__all__ = [
    "TRACES",
    "AsyncListRecorder",
    "LLMServer",
    "ListRecorder",
    "llm_server_fixture",
    "load_traces",
    "serve",
]

#: 12 traces are plenty for these tests and load in a fraction of the full file's time.
TRACES: tuple[Trace, ...] = load_traces(limit=12)


class ListRecorder:
    """A :class:`~tallystick.sdk.recorder.Recorder` keeping the calls in a list."""

    def __init__(self) -> None:
        self.calls: list[CallBody] = []

    def record(self, call: CallBody) -> int:
        self.calls.append(call)
        return len(self.calls) - 1


class AsyncListRecorder(ListRecorder):
    """The asyncio form: an :class:`~tallystick.sdk.recorder.AsyncRecorder`."""

    async def record(self, call: CallBody) -> int:  # type: ignore[override]
        return ListRecorder.record(self, call)


def serve() -> Iterator[LLMServer]:
    """The server on TRACES; test modules make it a fixture with :data:`llm_server_fixture`."""
    with LLMServer(TRACES, clock=lambda: 1_748_779_200.0) as server:  # 2025-06-01T12:00:00Z
        yield server


#: ``from ._llm import llm_server_fixture`` gives a module a module-scoped ``llm_server``.
llm_server_fixture = pytest.fixture(scope="module", name="llm_server")(serve)
