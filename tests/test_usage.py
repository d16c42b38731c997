"""Usage normalization: one golden fixture per bug class of usage_accounting.md §6, and §7."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.logentry import Usage
from tallystick.verifier.pricing import PriceTable
from tallystick.verifier.usage import (
    TokenUsagePoint,
    from_anthropic,
    from_gemini,
    from_openai_chat,
    from_openai_responses,
    otel_attributes,
    token_usage_points,
)

Normalizer = Callable[[Any], Usage]

# (id, normalizer, raw provider usage, expected (input, cache_read, cache_creation, output,
# reasoning), provider, model, expected cost or None)
GOLDEN: list[
    tuple[str, Normalizer, dict[str, Any], tuple[int | None, ...], str, str, str | None]
] = [
    (
        # litellm#18599: reasoning present, no text tokens: all 977 completion tokens priced.
        "litellm-18599-reasoning-subset-priced-whole",
        from_openai_chat,
        {
            "prompt_tokens": 100,
            "completion_tokens": 977,
            "total_tokens": 1077,
            "completion_tokens_details": {"reasoning_tokens": 768},
        },
        (100, None, None, 977, 768),
        "openai",
        "o3",
        "0.008016",
    ),
    (
        # langfuse#11244 / latitude#4051: reasoning is inside output, never added again.
        "langfuse-11244-no-double-reasoning",
        from_openai_responses,
        {
            "input_tokens": 50,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 1970,
            "output_tokens_details": {"reasoning_tokens": 956},
            "total_tokens": 2020,
        },
        (50, 0, None, 1970, 956),
        "openai",
        "o4-mini",
        "0.008723",
    ),
    (
        # litellm#41849: completion_tokens_details null -> reasoning unknown, not 0.
        "litellm-41849-null-details-unknown",
        from_openai_chat,
        {
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "total_tokens": 30,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
        (10, None, None, 20, None),
        "openai",
        "gpt-4.1",
        "0.00018",
    ),
    (
        # langfuse#10592 / agenta#5711: cached is a subset of prompt, priced at its own rate.
        "langfuse-10592-cached-subset-of-input",
        from_openai_chat,
        {
            "prompt_tokens": 10000,
            "completion_tokens": 100,
            "total_tokens": 10100,
            "prompt_tokens_details": {"cached_tokens": 8000},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        (10000, 8000, None, 100, 0),
        "openai",
        "gpt-4.1",
        "0.0088",
    ),
    (
        # litellm#9812: Anthropic cache creation is a sibling: counted once, at its own rate.
        "litellm-9812-anthropic-cache-write-once",
        from_anthropic,
        {
            "input_tokens": 100,
            "cache_creation_input_tokens": 10000,
            "cache_read_input_tokens": 0,
            "output_tokens": 200,
        },
        (10100, 0, 10000, 200, None),
        "anthropic",
        "claude-sonnet-4-20250514",
        "0.0408",
    ),
    (
        # litellm#11789 / #5443 / #35127: cache reads priced at the read rate, not full input.
        "litellm-11789-anthropic-cache-read-rate",
        from_anthropic,
        {
            "input_tokens": 50,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 5000,
            "output_tokens": 10,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        },
        (5050, 5000, 0, 10, None),
        "anthropic",
        "claude-sonnet-4",
        "0.0018",
    ),
    (
        # Anthropic thinking tokens, when the API sends them: a subset of output.
        "anthropic-thinking-subset",
        from_anthropic,
        {
            "input_tokens": 10,
            "output_tokens": 500,
            "output_tokens_details": {"thinking_tokens": 400},
        },
        (10, None, None, 500, 400),
        "anthropic",
        "claude-opus-4",
        "0.03765",
    ),
    (
        # langfuse#12531 / #16321 / vercel#6082: Gemini thoughts are a sibling of candidates.
        "langfuse-12531-gemini-thoughts-sibling",
        from_gemini,
        {
            "promptTokenCount": 324,
            "candidatesTokenCount": 1364,
            "thoughtsTokenCount": 495,
            "totalTokenCount": 2183,
        },
        (324, None, None, 1859, 495),
        "gcp.gemini",
        "gemini-2.5-flash",
        "0.0047447",
    ),
    (
        # Gemini tool-use prompt tokens are input; total includes them.
        "gemini-tool-use-prompt-is-input",
        from_gemini,
        {
            "promptTokenCount": 100,
            "toolUsePromptTokenCount": 50,
            "cachedContentTokenCount": 40,
            "candidatesTokenCount": 10,
            "totalTokenCount": 160,
        },
        (150, 40, None, 10, None),
        "gcp.gemini",
        "gemini-2.5-pro",
        "0.0002499",
    ),
    (
        # litellm#25874 / #35691 / #21023: a model missing from the table costs unknown, not 0.
        "litellm-25874-unknown-model-unknown-cost",
        from_openai_chat,
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
        (10, None, None, 20, None),
        "openai",
        "my-finetune-v7",
        None,
    ),
]


@pytest.mark.parametrize(
    ("normalize", "raw", "expected", "provider", "model", "cost"),
    [pytest.param(*case[1:], id=case[0]) for case in GOLDEN],
)
def test_golden(
    normalize: Normalizer,
    raw: dict[str, Any],
    expected: tuple[int | None, ...],
    provider: str,
    model: str,
    cost: str | None,
) -> None:
    usage = normalize(raw)
    got = (
        usage.input_tokens,
        usage.cache_read_input_tokens,
        usage.cache_creation_input_tokens,
        usage.output_tokens,
        usage.reasoning_output_tokens,
    )
    assert got == expected
    attributes = otel_attributes(usage, provider=provider)
    assert attributes["gen_ai.usage.input_tokens"] == expected[0]
    assert attributes["gen_ai.usage.output_tokens"] == expected[3]
    assert ("gen_ai.usage.reasoning.output_tokens" in attributes) == (expected[4] is not None)
    assert token_usage_points(usage) == (
        TokenUsagePoint("input", expected[0] or 0),
        TokenUsagePoint("output", expected[3] or 0),
    )
    priced = PriceTable.load().price(provider, model, usage)
    assert (priced.amount if priced else None) == cost


def test_gemini_output_is_not_the_total() -> None:
    # langfuse#8020: output_tokens must be candidates (+ thoughts), never the total.
    usage = from_gemini(
        {"promptTokenCount": 361, "candidatesTokenCount": 53, "totalTokenCount": 414}
    )
    assert usage.output_tokens == 53


def test_openlit_1476_reasoning_is_not_an_extra_token_type() -> None:
    usage = Usage(input_tokens=10, output_tokens=1000, reasoning_output_tokens=700)
    points = token_usage_points(usage)
    assert [point.token_type for point in points] == ["input", "output"]
    assert sum(point.value for point in points if point.token_type == "output") == 1000


def test_otel_names_are_current_never_deprecated() -> None:
    usage = Usage(
        input_tokens=10,
        cache_read_input_tokens=2,
        cache_creation_input_tokens=3,
        output_tokens=7,
        reasoning_output_tokens=1,
    )
    attributes = otel_attributes(usage, provider="anthropic", operation="chat", response_model="m")
    assert attributes == {
        "gen_ai.provider.name": "anthropic",
        "gen_ai.operation.name": "chat",
        "gen_ai.response.model": "m",
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.cache_read.input_tokens": 2,
        "gen_ai.usage.cache_creation.input_tokens": 3,
        "gen_ai.usage.output_tokens": 7,
        "gen_ai.usage.reasoning.output_tokens": 1,
    }
    for deprecated in ("gen_ai.system", "gen_ai.usage.prompt_tokens", "cache_read_input_tokens"):
        assert not any(name.endswith(deprecated) for name in attributes)


def test_unknown_counts_are_left_out_never_zero() -> None:
    assert otel_attributes(Usage()) == {}
    assert token_usage_points(Usage()) == ()


@pytest.mark.parametrize(
    ("normalize", "raw", "code"),
    [
        # langfuse#14987: reasoning 109 above completion 102 is rejected, not shown as output.
        (
            from_openai_chat,
            {
                "prompt_tokens": 1,
                "completion_tokens": 102,
                "completion_tokens_details": {"reasoning_tokens": 109},
            },
            "usage.reasoning_exceeds_output",
        ),
        (
            from_openai_responses,
            {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 6}, "output_tokens": 1},
            "usage.cache_exceeds_input",
        ),
        (
            from_openai_chat,
            {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 11},
            "usage.total_mismatch",
        ),
        (
            from_gemini,
            {
                "promptTokenCount": 324,
                "candidatesTokenCount": 1364,
                "thoughtsTokenCount": 495,
                "totalTokenCount": 1688,
            },
            "usage.total_mismatch",
        ),
        (
            from_anthropic,
            {
                "input_tokens": 1,
                "cache_creation_input_tokens": 10,
                "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 4},
                "output_tokens": 1,
            },
            "usage.cache_creation_mismatch",
        ),
        (from_openai_chat, {"prompt_tokens": -1}, "usage.malformed"),
        (from_openai_chat, {"prompt_tokens": True}, "usage.malformed"),
        (from_openai_chat, {"prompt_tokens": 1.5}, "usage.malformed"),
        (from_openai_chat, {"prompt_tokens": 2**53}, "usage.malformed"),
        (from_anthropic, ["input_tokens"], "usage.malformed"),
        (from_gemini, {"promptTokenCount": "12"}, "usage.malformed"),
        (from_openai_responses, {"input_tokens_details": 3}, "usage.malformed"),
    ],
)
def test_contradictions_are_rejected_with_a_code(
    normalize: Normalizer, raw: Any, code: str
) -> None:
    with pytest.raises(MalformedInput) as exc:
        normalize(raw)
    assert exc.value.code == code


def test_streamed_anthropic_takes_the_last_cumulative_value() -> None:
    # §7.3: message_start carries input and a small output; message_delta is cumulative.
    start = {"input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 1}
    deltas = [{"output_tokens": 15}, {"output_tokens": 40}]
    merged = {**start, **deltas[-1]}
    streamed = from_anthropic(merged)
    whole = from_anthropic(
        {"input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 40}
    )
    assert streamed == whole
    assert streamed.output_tokens == 40
