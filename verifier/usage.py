"""Provider usage objects in, one normalized :class:`~tallystick.verifier.logentry.Usage` out.

The one rule (``usage_accounting.md``): know, for every provider field, whether it is a
**subset** of another count or a **sibling** to add to it. The normalized view follows the
OpenTelemetry GenAI conventions, where every detail count is a subset:

=================================  ==========================  =============================
normalized                         OpenAI Chat / Responses      Anthropic / Gemini
=================================  ==========================  =============================
``input_tokens`` (all input)       prompt / input tokens        input + cache write + cache
                                                                read / prompt + tool-use
``cache_read_input_tokens``        ``cached_tokens``            cache read / cachedContent
``cache_creation_input_tokens``    (unknown)                    cache write / (unknown)
``output_tokens`` (all output)     completion / output tokens   output / candidates + thoughts
``reasoning_output_tokens``        ``reasoning_tokens``         thinking (if sent) / thoughts
=================================  ==========================  =============================

A count the provider did not send is ``None`` (unknown), never 0. Numbers that contradict
themselves (reasoning above output, cache above input, a total that does not add up) raise
:class:`~tallystick.verifier.errors.MalformedInput` with a ``usage.*`` code: they are evidence,
never silently fixed. Each function takes the provider's JSON object (a ``dict``; SDK objects
via ``model_dump()``).

:func:`otel_attributes` and :func:`token_usage_points` give the OTel span attributes and the
``gen_ai.client.token.usage`` data points (only ``input`` and ``output`` token types: reasoning
and cache are subsets, never extra points).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from . import canonical
from .errors import MalformedInput
from .logentry import Usage

__all__ = [
    "ATTR_CACHE_CREATION_INPUT",
    "ATTR_CACHE_READ_INPUT",
    "ATTR_INPUT",
    "ATTR_OUTPUT",
    "ATTR_REASONING_OUTPUT",
    "TokenUsagePoint",
    "from_anthropic",
    "from_gemini",
    "from_openai_chat",
    "from_openai_responses",
    "otel_attributes",
    "token_usage_points",
]

# OTel GenAI span attributes (usage_accounting.md §5); the deprecated names are never emitted.
ATTR_INPUT: Final = "gen_ai.usage.input_tokens"
ATTR_CACHE_READ_INPUT: Final = "gen_ai.usage.cache_read.input_tokens"
ATTR_CACHE_CREATION_INPUT: Final = "gen_ai.usage.cache_creation.input_tokens"
ATTR_OUTPUT: Final = "gen_ai.usage.output_tokens"
ATTR_REASONING_OUTPUT: Final = "gen_ai.usage.reasoning.output_tokens"

_MALFORMED: Final = "usage.malformed"


def _object(raw: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise MalformedInput(f"usage: {what} must be an object", code=_MALFORMED)
    return raw


def _count(raw: Mapping[str, Any] | None, name: str) -> int | None:
    """A non-negative integer count, or None when absent or null."""
    if raw is None:
        return None
    value = raw.get(name)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= canonical.MAX_SAFE_INTEGER:
        raise MalformedInput(f"usage: {name} must be a non-negative integer", code=_MALFORMED)
    return value


def _details(raw: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    value = raw.get(name)
    return None if value is None else _object(value, name)


def _sum(*counts: int | None) -> int | None:
    """The sum, or None if any part is unknown."""
    if any(count is None for count in counts):
        return None
    return sum(count for count in counts if count is not None)


def _check_total(total: int | None, *parts: int | None) -> None:
    expected = _sum(*parts)
    if total is not None and expected is not None and total != expected:
        raise MalformedInput(
            f"usage: total_tokens {total} is not the sum of its parts {expected}",
            code="usage.total_mismatch",
        )


def _usage(**counts: int | None) -> Usage:
    """Build the normalized view; its validator enforces the subset invariants (§7.1)."""
    reasoning, output = counts.get("reasoning_output_tokens"), counts.get("output_tokens")
    if reasoning is not None and output is not None and reasoning > output:
        # langfuse#14987: never show the reasoning count as the output.
        raise MalformedInput(
            f"usage: reasoning tokens {reasoning} exceed output tokens {output}",
            code="usage.reasoning_exceeds_output",
        )
    cached = (counts.get("cache_read_input_tokens") or 0) + (
        counts.get("cache_creation_input_tokens") or 0
    )
    total_input = counts.get("input_tokens")
    if total_input is not None and cached > total_input:
        raise MalformedInput(
            f"usage: cached tokens {cached} exceed input tokens {total_input}",
            code="usage.cache_exceeds_input",
        )
    try:
        return Usage(**counts)
    except ValidationError as exc:  # out of range after adding siblings
        raise MalformedInput(f"usage: {exc.errors()[0]['msg']}", code=_MALFORMED) from exc


def from_openai_chat(raw: Any) -> Usage:
    """Normalize a Chat Completions ``usage`` object (details are subsets).

    A missing or null ``*_details`` object leaves its counts unknown (litellm#41849).

    :raises MalformedInput: not an object, a count that is not a non-negative integer
        (``usage.malformed``), or contradicting counts (``usage.reasoning_exceeds_output``,
        ``usage.cache_exceeds_input``, ``usage.total_mismatch``).
    """
    usage = _object(raw, "chat usage")
    prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    _check_total(_count(usage, "total_tokens"), prompt, completion)
    return _usage(
        input_tokens=prompt,
        cache_read_input_tokens=_count(_details(usage, "prompt_tokens_details"), "cached_tokens"),
        output_tokens=completion,
        reasoning_output_tokens=_count(
            _details(usage, "completion_tokens_details"), "reasoning_tokens"
        ),
    )


def from_openai_responses(raw: Any) -> Usage:
    """Normalize a Responses API ``usage`` object (details are subsets).

    :raises MalformedInput: as :func:`from_openai_chat`.
    """
    usage = _object(raw, "responses usage")
    input_tokens, output = _count(usage, "input_tokens"), _count(usage, "output_tokens")
    _check_total(_count(usage, "total_tokens"), input_tokens, output)
    return _usage(
        input_tokens=input_tokens,
        cache_read_input_tokens=_count(_details(usage, "input_tokens_details"), "cached_tokens"),
        output_tokens=output,
        reasoning_output_tokens=_count(
            _details(usage, "output_tokens_details"), "reasoning_tokens"
        ),
    )


def from_anthropic(raw: Any) -> Usage:
    """Normalize an Anthropic Messages ``usage`` object.

    ``input_tokens`` there excludes cache reads and writes, which are siblings: the normalized
    input is their sum. Thinking tokens come from ``output_tokens_details.thinking_tokens``
    when the API sent it; otherwise reasoning is unknown (output still includes thinking).
    Anthropic sends no total. For a stream, pass the usage merged from ``message_start`` and
    the last ``message_delta`` (cumulative: the last value wins, never a sum).

    :raises MalformedInput: as :func:`from_openai_chat`, and ``usage.cache_creation_mismatch``
        when the per-TTL cache writes do not sum to ``cache_creation_input_tokens``.
    """
    usage = _object(raw, "anthropic usage")
    base = _count(usage, "input_tokens")
    cache_write = _count(usage, "cache_creation_input_tokens")
    cache_read = _count(usage, "cache_read_input_tokens")
    by_ttl = _details(usage, "cache_creation")
    if by_ttl is not None and cache_write is not None:
        ttl_sum = (_count(by_ttl, "ephemeral_5m_input_tokens") or 0) + (
            _count(by_ttl, "ephemeral_1h_input_tokens") or 0
        )
        if ttl_sum != cache_write:
            raise MalformedInput(
                f"usage: cache writes by TTL sum to {ttl_sum}, not {cache_write}",
                code="usage.cache_creation_mismatch",
            )
    # Absent cache fields mean no caching happened (older API versions omit them), but an
    # unknown base input leaves the whole input unknown.
    total_input = None if base is None else base + (cache_write or 0) + (cache_read or 0)
    return _usage(
        input_tokens=total_input,
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
        output_tokens=_count(usage, "output_tokens"),
        reasoning_output_tokens=_count(_details(usage, "output_tokens_details"), "thinking_tokens"),
    )


def from_gemini(raw: Any) -> Usage:
    """Normalize a Gemini ``usageMetadata`` object.

    Thoughts are a sibling of candidates: output = candidates + thoughts (langfuse#12531,
    #16321); tool-use prompt tokens are input. For a stream, pass the last chunk's object.

    :raises MalformedInput: as :func:`from_openai_chat`.
    """
    usage = _object(raw, "gemini usageMetadata")
    prompt = _count(usage, "promptTokenCount")
    tool_prompt = _count(usage, "toolUsePromptTokenCount") or 0
    candidates = _count(usage, "candidatesTokenCount")
    thoughts = _count(usage, "thoughtsTokenCount")
    # An absent thoughtsTokenCount means a model that did not think: 0, so output is known.
    output = None if candidates is None else candidates + (thoughts or 0)
    total_input = None if prompt is None else prompt + tool_prompt
    _check_total(_count(usage, "totalTokenCount"), total_input, output)
    return _usage(
        input_tokens=total_input,
        cache_read_input_tokens=_count(usage, "cachedContentTokenCount"),
        output_tokens=output,
        reasoning_output_tokens=thoughts,
    )


def otel_attributes(
    usage: Usage,
    *,
    provider: str | None = None,
    operation: str | None = None,
    response_model: str | None = None,
) -> dict[str, int | str]:
    """The OTel GenAI span attributes for one call; unknown counts are left out, never 0.

    ``provider`` becomes ``gen_ai.provider.name`` (never the deprecated ``gen_ai.system``).
    """
    attributes: dict[str, int | str] = {}
    if provider is not None:
        attributes["gen_ai.provider.name"] = provider
    if operation is not None:
        attributes["gen_ai.operation.name"] = operation
    if response_model is not None:
        attributes["gen_ai.response.model"] = response_model
    for name, value in (
        (ATTR_INPUT, usage.input_tokens),
        (ATTR_CACHE_READ_INPUT, usage.cache_read_input_tokens),
        (ATTR_CACHE_CREATION_INPUT, usage.cache_creation_input_tokens),
        (ATTR_OUTPUT, usage.output_tokens),
        (ATTR_REASONING_OUTPUT, usage.reasoning_output_tokens),
    ):
        if value is not None:
            attributes[name] = value
    return attributes


@dataclass(frozen=True, slots=True)
class TokenUsagePoint:
    """One ``gen_ai.client.token.usage`` histogram data point: a token type and its count."""

    token_type: str
    value: int


def token_usage_points(usage: Usage) -> tuple[TokenUsagePoint, ...]:
    """The histogram data points of one call: one per known type, ``input`` and ``output`` only.

    Reasoning and cache counts are subsets and never become extra token types (§5; the
    OpenLIT #1476 invariant: output 1000 with reasoning 700 records 1000, not 1700).
    """
    points = []
    if usage.input_tokens is not None:
        points.append(TokenUsagePoint("input", usage.input_tokens))
    if usage.output_tokens is not None:
        points.append(TokenUsagePoint("output", usage.output_tokens))
    return tuple(points)
