"""The price of a call, from a price table kept as data: decimal arithmetic, unknown never 0.

Rates are per million tokens, keyed by (provider, response model, service tier, context tier);
the packaged table is ``verifier/data/prices.toml`` (its header documents the format), and
users merge their own file over it::

    table = PriceTable.load(Path("my_prices.toml"))   # or PriceTable.load(None)
    cost = table.price("openai", "gpt-4.1-2025-04-14", usage, service_tier="default")

Cost, with every count a subset as in :class:`~tallystick.verifier.logentry.Usage`::

    (input - cache_read - cache_creation) x input + cache_read x cache_read_rate
    + cache_creation x cache_creation_rate
    + (output - reasoning) x output + reasoning x reasoning_rate   (reasoning never added twice)

An unknown model, service tier or needed count, or a cache count without its rate, gives
``None`` (unknown), never a cost of 0 (litellm#25874, #35691). Unknown cache counts are priced
as uncached input (an upper bound); unknown reasoning only matters when its rate differs.
"""

from __future__ import annotations

import decimal
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, Final, Self

from .errors import MalformedInput
from .logentry import Cost, Usage

__all__ = ["DEFAULT_TIER", "PriceTable", "Rates", "base_model"]

#: The tier name a response's "default", "standard" or "auto" tier (or none at all) maps to.
DEFAULT_TIER: Final = "default"
_DEFAULT_TIER_ALIASES: Final = frozenset({None, "default", "standard", "auto"})
_MALFORMED: Final = "pricing.malformed"
_PER_MILLION: Final = Decimal(1_000_000)
#: The Cost pattern allows at most 12 decimals.
_QUANTUM: Final = Decimal("1e-12")
_RATE_PATTERN: Final = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")
#: Dated snapshots: OpenAI "gpt-4.1-2025-04-14", Anthropic "claude-sonnet-4-20250514".
_SNAPSHOT_SUFFIX: Final = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|20\d{6})$")
_RATE_FIELDS: Final = ("input", "cache_read", "cache_creation", "output", "reasoning")
_ENTRY_FIELDS: Final = frozenset(
    {"provider", "model", "service_tier", "above_input_tokens", "currency", *_RATE_FIELDS}
)


def base_model(model: str) -> str:
    """The model name without a dated snapshot suffix (``gpt-4.1-2025-04-14`` -> ``gpt-4.1``)."""
    return _SNAPSHOT_SUFFIX.sub("", model)


def _tier(service_tier: str | None) -> str:
    return DEFAULT_TIER if service_tier in _DEFAULT_TIER_ALIASES else str(service_tier)


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-million-token rates of one price-table entry; ``None`` = no such rate."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_creation: Decimal | None = None
    reasoning: Decimal | None = None
    currency: str = "USD"

    def cost(self, usage: Usage) -> Decimal | None:
        """The cost of ``usage`` at these rates, unrounded; None when it cannot be known."""
        if usage.input_tokens is None or usage.output_tokens is None:
            return None
        cache_read = usage.cache_read_input_tokens or 0
        cache_creation = usage.cache_creation_input_tokens or 0
        if (cache_read and self.cache_read is None) or (
            cache_creation and self.cache_creation is None
        ):
            return None
        total = (usage.input_tokens - cache_read - cache_creation) * self.input
        total += cache_read * (self.cache_read or 0) + cache_creation * (self.cache_creation or 0)
        reasoning_rate = self.output if self.reasoning is None else self.reasoning
        if reasoning_rate == self.output:
            total += usage.output_tokens * self.output
        elif usage.reasoning_output_tokens is None:
            return None
        else:
            reasoning = usage.reasoning_output_tokens
            total += (usage.output_tokens - reasoning) * self.output + reasoning * reasoning_rate
        return total / _PER_MILLION


def _format_amount(amount: Decimal) -> str:
    text = format(amount.quantize(_QUANTUM, rounding=decimal.ROUND_HALF_EVEN), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


_Key = tuple[str, str, str, int]


class PriceTable:
    """Rates by (provider, model, service tier, context tier). Build with :meth:`load`."""

    def __init__(self, entries: dict[_Key, Rates]) -> None:
        """Private: use :meth:`load` or :meth:`from_toml`."""
        self._entries = entries
        self._thresholds: dict[tuple[str, str, str], list[int]] = {}
        for provider, model, tier, above in sorted(entries, key=lambda key: -key[3]):
            self._thresholds.setdefault((provider, model, tier), []).append(above)

    @classmethod
    def from_toml(cls, text: str, *, base: PriceTable | None = None) -> Self:
        """Parse a price file, its entries merged over ``base``'s (same key: replaced).

        :raises MalformedInput: not TOML, or an entry that does not fit the format
            (``pricing.malformed``).
        """
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise MalformedInput(f"price table: not TOML: {exc}", code=_MALFORMED) from exc
        raw_entries = data.get("price", [])
        if set(data) - {"price"} or not isinstance(raw_entries, list):
            raise MalformedInput("price table: expected only [[price]] entries", code=_MALFORMED)
        entries = dict(base._entries) if base is not None else {}
        for number, raw in enumerate(raw_entries, start=1):
            key, rates = _parse_entry(raw, number)
            entries[key] = rates
        return cls(entries)

    @classmethod
    def load(cls, path: Path | str | None = None) -> Self:
        """The packaged table, with the file at ``path`` (if given) merged over it.

        :raises MalformedInput: a file that cannot be read or parsed (``pricing.malformed``).
        """
        packaged = resources.files(__package__).joinpath("data/prices.toml").read_text("utf-8")
        table = cls.from_toml(packaged)
        if path is None:
            return table
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MalformedInput(
                f"price table: cannot read {path}: {exc}", code=_MALFORMED
            ) from exc
        return cls.from_toml(text, base=table)

    def rates(
        self,
        provider: str,
        model: str,
        *,
        service_tier: str | None = None,
        input_tokens: int | None = None,
    ) -> Rates | None:
        """The entry for a call, or None when the model or tier is not in the table.

        The exact model name is tried first, then its :func:`base_model`. With context tiers,
        the entry with the highest ``above_input_tokens`` below ``input_tokens`` applies; an
        unknown input count then matches nothing.
        """
        tier = _tier(service_tier)
        for name in dict.fromkeys((model, base_model(model))):
            thresholds = self._thresholds.get((provider, name, tier))
            if thresholds is None:
                continue
            if input_tokens is None and thresholds != [0]:
                return None
            for above in thresholds:  # highest first
                if above == 0 or (input_tokens is not None and input_tokens > above):
                    return self._entries[(provider, name, tier, above)]
            return None
        return None

    def price(
        self, provider: str, model: str, usage: Usage, service_tier: str | None = None
    ) -> Cost | None:
        """The cost of one call, rounded half-even to 12 decimals; None when unknown (never 0)."""
        rates = self.rates(
            provider, model, service_tier=service_tier, input_tokens=usage.input_tokens
        )
        if rates is None:
            return None
        amount = rates.cost(usage)
        if amount is None:
            return None
        return Cost(amount=_format_amount(amount), currency=rates.currency)


def _parse_entry(raw: Any, number: int) -> tuple[_Key, Rates]:
    where = f"price table: entry {number}"
    if not isinstance(raw, dict):
        raise MalformedInput(f"{where}: not a table", code=_MALFORMED)
    unknown = set(raw) - _ENTRY_FIELDS
    if unknown:
        raise MalformedInput(f"{where}: unknown fields {sorted(unknown)}", code=_MALFORMED)
    for name in ("provider", "model", "input", "output"):
        if name not in raw:
            raise MalformedInput(f"{where}: missing {name}", code=_MALFORMED)
    provider, model = raw["provider"], raw["model"]
    tier = raw.get("service_tier", DEFAULT_TIER)
    currency = raw.get("currency", "USD")
    above = raw.get("above_input_tokens", 0)
    if not all(isinstance(value, str) and value for value in (provider, model, tier, currency)):
        raise MalformedInput(f"{where}: names must be non-empty strings", code=_MALFORMED)
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise MalformedInput(f"{where}: currency must be an ISO 4217 code", code=_MALFORMED)
    if type(above) is not int or above < 0:
        raise MalformedInput(f"{where}: above_input_tokens must be >= 0", code=_MALFORMED)
    rates: dict[str, Decimal] = {}
    for name in _RATE_FIELDS:
        value = raw.get(name)
        if value is None:
            continue
        # Strings only: a TOML float would already have lost the exact decimal.
        if not isinstance(value, str) or not _RATE_PATTERN.match(value):
            raise MalformedInput(
                f'{where}: {name} must be a decimal string such as "2.50"', code=_MALFORMED
            )
        try:
            rates[name] = Decimal(value)
        except InvalidOperation as exc:  # unreachable past the pattern; kept as a guard
            raise MalformedInput(f"{where}: {name} is not a decimal", code=_MALFORMED) from exc
    return (provider, model, _tier(tier), above), Rates(currency=currency, **rates)
