"""The ``anthropic`` package: ``messages.create``, sync and async, streams included.

Usage is read with :func:`tallystick.verifier.usage.from_anthropic` (cache reads and writes
are siblings of ``input_tokens``). A stream's ``message_start`` carries the input side and a
small output count; each ``message_delta`` carries CUMULATIVE counts: the last value wins,
never a sum. No visible text is offered for a recount: Claude's tokenizer is not available
offline, and summarized thinking under-represents the billed output (usage_accounting.md §2).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Final

from tallystick.verifier.usage import from_anthropic

from . import CallSite, Observation, PreparedRequest

__all__ = ["ANTHROPIC", "AnthropicAdapter"]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _observation(message: Mapping[str, Any], usage: Any) -> Observation:
    tier = usage.get("service_tier") if isinstance(usage, Mapping) else None
    return Observation(
        model=_str(message.get("model")),
        request_id=_str(message.get("id")),
        usage=None if usage is None else from_anthropic(usage),
        service_tier=_str(tier),
        visible_text=None,
    )


def _read_message(body: Mapping[str, Any]) -> Observation:
    return _observation(body, body.get("usage"))


class _MessageStreamReader:
    def __init__(self, request: PreparedRequest) -> None:
        self._message: Mapping[str, Any] = {}
        self._usage: dict[str, Any] | None = None

    def feed(self, event: Mapping[str, Any]) -> bool:
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), Mapping):
            self._message = event["message"]
            usage = self._message.get("usage")
            self._usage = dict(usage) if isinstance(usage, Mapping) else None
        elif kind == "message_delta" and isinstance(event.get("usage"), Mapping):
            # Cumulative: later non-null counts replace earlier ones.
            latest = {key: value for key, value in event["usage"].items() if value is not None}
            self._usage = {**(self._usage or {}), **latest}
        return True

    def result(self) -> Observation:
        return _observation(self._message, self._usage)


class AnthropicAdapter:
    """:class:`~tallystick.sdk.adapters.Adapter` for ``anthropic.Anthropic`` and
    ``anthropic.AsyncAnthropic``."""

    provider: str = "anthropic"
    call_sites: tuple[CallSite, ...] = (
        CallSite(
            ("messages",),
            "create",
            "chat",
            lambda kwargs: PreparedRequest(dict(kwargs)),
            _read_message,
            _MessageStreamReader,
        ),
    )

    def detect(self, client: object) -> bool | None:
        module = sys.modules.get("anthropic")
        if module is None:
            return None
        if isinstance(client, module.AsyncAnthropic):
            return True
        if isinstance(client, module.Anthropic):
            return False
        return None


ANTHROPIC: Final = AnthropicAdapter()
