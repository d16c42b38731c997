"""The ``openai`` package: ``chat.completions.create`` and ``responses.create``, streams included.

Chat streams carry usage only when the request sets ``stream_options.include_usage``: when
the caller did not, :func:`_prepare_chat` sets it and the usage-only chunk (empty ``choices``)
is hidden from the caller. Responses streams carry the final usage in ``response.completed``
(or ``response.incomplete`` / ``response.failed``).

Chat completions are CoIn-audited (:data:`_CHAT_COIN`): the head binds
``prompt_text(messages)`` and the content of the one choice; for a stream, its ``delta.content``
strings concatenated in order.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Final

from tallystick.verifier.coin import prompt_text
from tallystick.verifier.usage import from_openai_chat, from_openai_responses

from . import CallSite, CoinTexts, Observation, PreparedRequest

__all__ = ["OPENAI", "OpenAIAdapter"]

_PROVIDER: Final = "openai"
_FINAL_RESPONSE_EVENTS: Final = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _prepare_chat(kwargs: Mapping[str, Any]) -> PreparedRequest:
    if kwargs.get("stream") is not True:
        return PreparedRequest(dict(kwargs))
    options = kwargs.get("stream_options")
    options = options if isinstance(options, Mapping) else {}  # absent, None or the SDK's omit
    if options.get("include_usage") is True:
        return PreparedRequest(dict(kwargs))
    return PreparedRequest(
        {**kwargs, "stream_options": {**options, "include_usage": True}}, hide_usage_event=True
    )


def _chat_texts(choices: Any, key: str) -> list[str]:
    texts: list[str] = []
    for choice in choices if isinstance(choices, list) else ():
        part = choice.get(key) if isinstance(choice, Mapping) else None
        content = part.get("content") if isinstance(part, Mapping) else None
        index = choice.get("index", 0) if isinstance(choice, Mapping) else 0
        if isinstance(content, str) and isinstance(index, int) and 0 <= index < 128:
            texts.extend([""] * (index + 1 - len(texts)))
            texts[index] += content
    return texts


def _read_chat(body: Mapping[str, Any]) -> Observation:
    usage = body.get("usage")
    return Observation(
        model=_str(body.get("model")),
        request_id=_str(body.get("id")),
        usage=None if usage is None else from_openai_chat(usage),
        service_tier=_str(body.get("service_tier")),
        visible_text=tuple(_chat_texts(body.get("choices"), "message")),
    )


def _message_json(message: Any) -> Any:
    """A message as its JSON object: the SDK's own message objects are accepted as input."""
    to_dict = getattr(message, "to_dict", None)
    return to_dict() if callable(to_dict) else message


def _chat_prompt(kwargs: Mapping[str, Any]) -> str:
    messages = kwargs.get("messages")
    if isinstance(messages, list | tuple):
        messages = [_message_json(message) for message in messages]
    return prompt_text(messages)


def _chat_answer(body: Mapping[str, Any]) -> str | None:
    choices = body.get("choices")
    texts = _chat_texts(choices, "message")
    if not isinstance(choices, list) or len(choices) != 1 or len(texts) != 1:
        return None
    return texts[0]


class _ChatStreamAnswer:
    """The one choice's ``delta.content`` strings, concatenated in order: None with several
    choices or no text content, as :func:`_chat_answer`."""

    def __init__(self) -> None:
        self._indices: set[int | None] = set()
        self._parts: list[str] = []

    def feed(self, event: Mapping[str, Any]) -> None:
        choices = event.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            index = choice.get("index", 0) if isinstance(choice, Mapping) else None
            self._indices.add(index if isinstance(index, int) else None)
            delta = choice.get("delta") if isinstance(choice, Mapping) else None
            content = delta.get("content") if isinstance(delta, Mapping) else None
            if isinstance(content, str):
                self._parts.append(content)

    def answer(self) -> str | None:
        if len(self._indices) != 1 or not self._parts:
            return None
        return "".join(self._parts)


_CHAT_COIN: Final = CoinTexts(
    prompt=_chat_prompt, answer=_chat_answer, stream_answer=_ChatStreamAnswer
)


class _ChatStreamReader:
    """Chunks: text deltas per choice; usage in the last chunk, whose ``choices`` is empty."""

    def __init__(self, request: PreparedRequest) -> None:
        self._hide_usage = request.hide_usage_event
        self._texts: list[str] = []
        self._head: Mapping[str, Any] = {}
        self._usage: Any = None

    def feed(self, event: Mapping[str, Any]) -> bool:
        if not self._head:
            self._head = event
        choices = event.get("choices")
        for index, text in enumerate(_chat_texts(choices, "delta")):
            self._texts.extend([""] * (index + 1 - len(self._texts)))
            self._texts[index] += text
        if event.get("usage") is not None:
            self._usage = event["usage"]
            return not (self._hide_usage and not choices)
        return True

    def result(self) -> Observation:
        return Observation(
            model=_str(self._head.get("model")),
            request_id=_str(self._head.get("id")),
            usage=None if self._usage is None else from_openai_chat(self._usage),
            service_tier=_str(self._head.get("service_tier")),
            visible_text=tuple(self._texts),
        )


def _response_text(body: Mapping[str, Any]) -> tuple[str, ...]:
    parts = []
    for item in body.get("output") or ():
        if isinstance(item, Mapping) and item.get("type") == "message":
            for content in item.get("content") or ():
                if isinstance(content, Mapping) and content.get("type") == "output_text":
                    text = content.get("text")
                    parts.append(text if isinstance(text, str) else "")
    return ("".join(parts),)


def _read_response(body: Mapping[str, Any]) -> Observation:
    usage = body.get("usage")
    return Observation(
        model=_str(body.get("model")),
        request_id=_str(body.get("id")),
        usage=None if usage is None else from_openai_responses(usage),
        service_tier=_str(body.get("service_tier")),
        visible_text=_response_text(body),
    )


class _ResponsesStreamReader:
    """Events: the final response object (with usage) comes in ``response.completed``."""

    def __init__(self, request: PreparedRequest) -> None:
        self._final: Mapping[str, Any] | None = None
        self._started: Mapping[str, Any] = {}
        self._deltas: list[str] = []

    def feed(self, event: Mapping[str, Any]) -> bool:
        kind = event.get("type")
        response = event.get("response")
        if kind in _FINAL_RESPONSE_EVENTS and isinstance(response, Mapping):
            self._final = response
        elif kind == "response.created" and isinstance(response, Mapping):
            self._started = response
        elif kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            self._deltas.append(event["delta"])
        return True

    def result(self) -> Observation:
        if self._final is not None:
            return _read_response(self._final)
        return Observation(
            model=_str(self._started.get("model")),
            request_id=_str(self._started.get("id")),
            usage=None,
            service_tier=_str(self._started.get("service_tier")),
            visible_text=("".join(self._deltas),),
        )


class OpenAIAdapter:
    """:class:`~tallystick.sdk.adapters.Adapter` for ``openai.OpenAI`` and ``openai.AsyncOpenAI``
    (and their Azure subclasses)."""

    provider: str = _PROVIDER
    call_sites: tuple[CallSite, ...] = (
        CallSite(
            ("chat", "completions"),
            "create",
            "chat",
            _prepare_chat,
            _read_chat,
            _ChatStreamReader,
            coin=_CHAT_COIN,
        ),
        CallSite(
            ("responses",),
            "create",
            "chat",
            lambda kwargs: PreparedRequest(dict(kwargs)),
            _read_response,
            _ResponsesStreamReader,
        ),
    )

    def detect(self, client: object) -> bool | None:
        # The package is imported if one of its clients exists; never import it here.
        module = sys.modules.get("openai")
        if module is None:
            return None
        if isinstance(client, module.AsyncOpenAI):
            return True
        if isinstance(client, module.OpenAI):
            return False
        return None


OPENAI: Final = OpenAIAdapter()
