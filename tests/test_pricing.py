"""The price table: decimal costs, snapshot matching, tiers, user files, unknown never 0."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.logentry import Usage
from tallystick.verifier.pricing import PriceTable, base_model

TABLE = PriceTable.load()
COST_PATTERN = re.compile(r"^(0|[1-9][0-9]{0,15})(\.[0-9]{1,12})?$")


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("o3", "o3"),
        ("gpt-4.1-mini", "gpt-4.1-mini"),  # not a snapshot: kept whole
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),  # a different model, not claude-opus-4
        ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash-preview-05-20"),
    ],
)
def test_base_model(model: str, base: str) -> None:
    assert base_model(model) == base


def test_snapshot_priced_as_its_base_model() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    dated = TABLE.price("openai", "gpt-4.1-2025-04-14", usage)
    assert dated is not None and dated == TABLE.price("openai", "gpt-4.1", usage)
    assert dated.amount == "10" and dated.currency == "USD"
    assert TABLE.price("anthropic", "claude-opus-4-1-20250805", usage) is None


def test_unknown_model_provider_and_tier_are_unknown_never_zero() -> None:
    usage = Usage(input_tokens=10, output_tokens=10)
    assert TABLE.price("openai", "no-such-model", usage) is None
    assert TABLE.price("anthropic", "gpt-4.1", usage) is None
    assert TABLE.price("openai", "gpt-4.1", usage, service_tier="priority") is None
    assert TABLE.price("openai", "gpt-4.1", Usage(input_tokens=10)) is None


def test_service_tier_selects_rates_and_default_aliases() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    assert TABLE.price("openai", "o3", usage, service_tier="flex").amount == "1"  # type: ignore[union-attr]
    for tier in (None, "default", "auto", "standard"):
        assert TABLE.price("openai", "o3", usage, service_tier=tier).amount == "2"  # type: ignore[union-attr]


def test_context_tier_above_threshold() -> None:
    at = Usage(input_tokens=200_000, output_tokens=0)
    above = Usage(input_tokens=200_001, output_tokens=0)
    assert TABLE.price("anthropic", "claude-sonnet-4", at).amount == "0.6"  # type: ignore[union-attr]
    assert TABLE.price("anthropic", "claude-sonnet-4", above).amount == "1.200006"  # type: ignore[union-attr]


def test_decimal_arithmetic_and_rounding_fit_the_cost_pattern() -> None:
    # 1 token at 0.275 per million = 0.000000275 exactly; no float noise.
    cost = TABLE.price(
        "openai", "o4-mini", Usage(input_tokens=1, cache_read_input_tokens=1, output_tokens=0)
    )
    assert cost is not None and cost.amount == "0.000000275"
    # Rounded half-even at 12 decimals: 1 token at 0.0000005 per million.
    table = PriceTable.from_toml(
        '[[price]]\nprovider="p"\nmodel="m"\ninput="0.0000005"\noutput="0.0000015"\n'
    )
    assert table.price("p", "m", Usage(input_tokens=1, output_tokens=1)).amount == "0.000000000002"  # type: ignore[union-attr]
    assert table.price("p", "m", Usage(input_tokens=0, output_tokens=0)).amount == "0"  # type: ignore[union-attr]
    for case in (Usage(input_tokens=123_457, output_tokens=98_765, reasoning_output_tokens=5),):
        amount = TABLE.price("gcp.gemini", "gemini-2.5-flash", case)
        assert amount is not None and COST_PATTERN.match(amount.amount)


def test_reasoning_rate_when_stated() -> None:
    table = PriceTable.from_toml(
        '[[price]]\nprovider="p"\nmodel="m"\ninput="0"\noutput="10"\nreasoning="20"\n'
    )
    usage = Usage(input_tokens=0, output_tokens=1_000_000, reasoning_output_tokens=250_000)
    assert table.price("p", "m", usage).amount == "12.5"  # type: ignore[union-attr]
    # The reasoning rate differs and the reasoning count is unknown: the cost is unknown.
    assert table.price("p", "m", Usage(input_tokens=0, output_tokens=5)) is None


def test_cache_count_without_a_rate_is_unknown() -> None:
    table = PriceTable.from_toml('[[price]]\nprovider="p"\nmodel="m"\ninput="1"\noutput="1"\n')
    assert (
        table.price("p", "m", Usage(input_tokens=10, cache_read_input_tokens=5, output_tokens=1))
        is None
    )
    assert (
        table.price("p", "m", Usage(input_tokens=10, cache_read_input_tokens=0, output_tokens=1))
        is not None
    )


def test_user_file_merges_over_packaged(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        '[[price]]\nprovider="openai"\nmodel="gpt-4.1"\ninput="1"\noutput="1"\n'
        '[[price]]\nprovider="local"\nmodel="llama"\ninput="0"\noutput="0"\ncurrency="EUR"\n'
    )
    table = PriceTable.load(path)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert table.price("openai", "gpt-4.1", usage).amount == "2"  # type: ignore[union-attr]
    local = table.price("local", "llama", usage)
    assert local is not None and local.amount == "0" and local.currency == "EUR"
    assert table.price("openai", "o3", usage) == TABLE.price("openai", "o3", usage)


@pytest.mark.parametrize(
    "text",
    [
        "not toml [",
        '[[price]]\nprovider="p"\nmodel="m"\ninput=2.5\noutput="1"\n',  # a float rate
        '[[price]]\nprovider="p"\nmodel="m"\ninput="-1"\noutput="1"\n',
        '[[price]]\nprovider="p"\nmodel="m"\ninput="1e3"\noutput="1"\n',
        '[[price]]\nprovider="p"\nmodel="m"\ninput="1"\n',  # no output rate
        '[[price]]\nprovider="p"\nmodel="m"\ninput="1"\noutput="1"\ncolour="red"\n',
        '[[price]]\nprovider="p"\nmodel="m"\ninput="1"\noutput="1"\ncurrency="usd"\n',
        '[[price]]\nprovider="p"\nmodel="m"\ninput="1"\noutput="1"\nabove_input_tokens=-5\n',
        '[[price]]\nprovider=""\nmodel="m"\ninput="1"\noutput="1"\n',
        "[models]\nx=1\n",
        "price = 3\n",
    ],
)
def test_malformed_price_files_are_rejected(text: str) -> None:
    with pytest.raises(MalformedInput) as exc:
        PriceTable.from_toml(text)
    assert exc.value.code == "pricing.malformed"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(MalformedInput) as exc:
        PriceTable.load(tmp_path / "missing.toml")
    assert exc.value.code == "pricing.malformed"


def test_cost_decimal_roundtrip() -> None:
    cost = TABLE.price("openai", "gpt-5", Usage(input_tokens=3, output_tokens=7))
    assert cost is not None
    assert cost.decimal() == (Decimal(3) * Decimal("1.25") + Decimal(7) * Decimal(10)) / 1_000_000
