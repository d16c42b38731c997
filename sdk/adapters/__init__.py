"""One small module per LLM client library, each implementing :class:`Adapter`.

An adapter says how to recognise a client, which methods to record (:class:`CallSite`: an
attribute path such as ``("chat", "completions")`` and a method name), how to adjust a
request before it is sent, how to read what was billed from a response or a stream, and, for
calls a provider's CoIn offer can come with, the prompt and answer its head binds
(:class:`CoinTexts`). It
reads the JSON bodies (``dict``), never the SDK's objects, so adapters stay pure and testable;
:mod:`tallystick.sdk.wrap` does the patching, timing, hashing, pricing and recording.

To support another library, write a module with an object satisfying :class:`Adapter` and add
it to :data:`ADAPTERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tallystick.verifier.logentry import Usage

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AnswerReader",
    "CallSite",
    "CoinTexts",
    "Observation",
    "PreparedRequest",
    "StreamReader",
    "adapter_for",
]


@dataclass(frozen=True, slots=True)
class Observation:
    """What one call's response says: the fields a record takes from the provider.

    ``usage`` is ``None`` when the response carried none (a stream cut short). ``visible_text``
    is the output text the caller sees, one string per choice, for the local recount; ``None``
    when the adapter must not offer it (Anthropic: summarized thinking, usage_accounting.md §2).
    """

    model: str | None
    request_id: str | None
    usage: Usage | None
    service_tier: str | None
    visible_text: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """The keyword arguments to send, and whether the stream's usage-only event is hidden.

    ``hide_usage_event`` is True when the wrapper asked for usage the caller did not ask for
    (OpenAI ``stream_options.include_usage``): that extra event must not reach the caller.
    """

    kwargs: dict[str, Any]
    hide_usage_event: bool = False


class StreamReader(Protocol):
    """Reads a stream's events (as JSON objects) in order, then says what they billed."""

    def feed(self, event: Mapping[str, Any]) -> bool:
        """Take one event; return False when the caller must not see it.

        :raises MalformedInput: an event whose usage contradicts itself.
        """
        ...

    def result(self) -> Observation:
        """What the stream said so far (usage unknown if it never arrived).

        :raises MalformedInput: usage that contradicts itself.
        """
        ...


class AnswerReader(Protocol):
    """Reads a stream's events (as JSON objects) in order, for the answer a CoIn head binds."""

    def feed(self, event: Mapping[str, Any]) -> None:
        """Take one event."""
        ...

    def answer(self) -> str | None:
        """The answer streamed so far; None when the stream has no single text answer."""
        ...


@dataclass(frozen=True, slots=True)
class CoinTexts:
    """The texts a CoIn head binds for one call site's calls (coin.md §4.3).

    All MUST give exactly what the provider committed to: for chat requests,
    :func:`tallystick.verifier.coin.prompt_text` of the messages and the delivered content.
    """

    #: The prompt of a request's keyword arguments.
    #: :raises MalformedInput: messages :func:`~tallystick.verifier.coin.prompt_text` refuses.
    prompt: Callable[[Mapping[str, Any]], str]
    #: The answer of a whole response body; None when it has no single text answer.
    answer: Callable[[Mapping[str, Any]], str | None]
    #: A fresh reader of one streamed call's answer; None: this site's streams are not audited.
    stream_answer: Callable[[], AnswerReader] | None = None


@dataclass(frozen=True, slots=True)
class CallSite:
    """One recorded method: ``client.<path...>.<method>``."""

    path: tuple[str, ...]
    method: str
    #: ``gen_ai.operation.name`` of the records.
    operation: str
    #: Adjust the caller's keyword arguments before the call (never in place).
    prepare: Callable[[Mapping[str, Any]], PreparedRequest]
    #: Read a whole response body. :raises MalformedInput: contradicting usage.
    read_response: Callable[[Mapping[str, Any]], Observation]
    #: A fresh reader for one streamed call.
    stream_reader: Callable[[PreparedRequest], StreamReader]
    #: The texts of a call's CoIn offer; None: this site's calls are not audited.
    coin: CoinTexts | None = None


class Adapter(Protocol):
    """What :func:`tallystick.sdk.wrap.wrap` needs to record one client library's calls."""

    #: ``gen_ai.provider.name`` of the records (``openai``, ``anthropic``).
    provider: str
    call_sites: tuple[CallSite, ...]

    def detect(self, client: object) -> bool | None:
        """None: not this library's client; False: its sync client; True: its async client."""
        ...


def _adapters() -> tuple[Adapter, ...]:
    from .anthropic import ANTHROPIC
    from .openai import OPENAI

    return (OPENAI, ANTHROPIC)


#: Every built-in adapter, tried in order.
ADAPTERS: tuple[Adapter, ...] = _adapters()


def adapter_for(client: object) -> tuple[Adapter, bool]:
    """The adapter for ``client`` and whether the client is asynchronous.

    :raises TypeError: no adapter knows this client.
    """
    for adapter in ADAPTERS:
        is_async = adapter.detect(client)
        if is_async is not None:
            return adapter, is_async
    raise TypeError(f"wrap: no adapter for {type(client).__module__}.{type(client).__qualname__}")
