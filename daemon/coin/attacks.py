"""Token-inflation attacks on a reasoning trace, for the benchmark and the tests (coin.md §4.7).

Each attack returns the reasoning a cheating provider would commit to: the honest reasoning
with injected material that makes it about ``ratio`` times longer in extra tokens (the
inflation ratio IR = injected / original tokens). The provider then commits honestly to that
text and bills its full count, so only the audit's sampling and semantic checks stand between
the padding and the bill.

Injected material goes in as chunks of :data:`CHUNK_TOKENS` tokens at uniformly random token
positions (paragraph-sized padding, spread over the trace), except ``duplicate_blocks``, which
copies whole aligned blocks of the trace and inserts them at a block boundary:

- ``random_tokens``: uniformly random token ids (naive inflation);
- ``copy_prompt`` / ``copy_answer``: spans of the prompt or answer (repeated when shorter
  than a chunk), CoIn's adaptive variants;
- ``copy_reasoning``: spans copied from elsewhere in the same reasoning (self-duplication);
- ``duplicate_blocks``: whole blocks of the reasoning, repeated;
- ``splice_same_domain``: spans of another trace's reasoning from the same domain;
- ``off_topic``: spans of fluent reasoning from a trace of another domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from tallystick.verifier.errors import MalformedInput

from .tokenizer import Tokenizer

__all__ = [
    "ATTACKS",
    "CHUNK_TOKENS",
    "INFLATION_RATIOS",
    "AttackSource",
    "InflatedReasoning",
    "inflate",
]

#: Every attack family :func:`inflate` knows, in benchmark order.
ATTACKS: Final = (
    "random_tokens",
    "copy_prompt",
    "copy_answer",
    "copy_reasoning",
    "duplicate_blocks",
    "splice_same_domain",
    "off_topic",
)

#: The inflation ratios the issue asks the benchmark for.
INFLATION_RATIOS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0)

#: Injected chunk sizes, in tokens (inclusive range): paragraph-sized padding.
CHUNK_TOKENS: Final = (32, 128)

#: Random token ids are drawn below this bound: cl100k_base's ordinary tokens (100,256 with
#: its special tokens above them) all lie below it.
_RANDOM_ID_BOUND: Final = 100_000


@dataclass(frozen=True)
class AttackSource:
    """What an attack may copy from: the trace's own visible texts and donor reasoning."""

    prompt: str
    reasoning: str
    answer: str
    #: Reasoning of another trace of the same domain (``splice_same_domain``).
    same_domain_reasoning: str = ""
    #: Reasoning of a trace from another domain (``off_topic``).
    other_domain_reasoning: str = ""


@dataclass(frozen=True)
class InflatedReasoning:
    """An attacked reasoning, as token ids, and how many tokens were injected into it."""

    attack: str
    ratio: float
    token_ids: tuple[int, ...]
    original_tokens: int
    injected_tokens: int


def _chunk_sizes(total: int, rng: np.random.Generator) -> list[int]:
    sizes: list[int] = []
    low, high = CHUNK_TOKENS
    while sum(sizes) < total:
        sizes.append(int(rng.integers(low, high + 1)))
    sizes[-1] -= sum(sizes) - total
    return [size for size in sizes if size > 0]


def _random_tokens(tokenizer: Tokenizer, size: int, rng: np.random.Generator) -> list[int]:
    out: list[int] = []
    while len(out) < size:
        token_id = int(rng.integers(0, _RANDOM_ID_BOUND))
        try:
            tokenizer.token_text(token_id)
        except MalformedInput:  # a hole in the vocabulary
            continue
        out.append(token_id)
    return out


def _span(pool: list[int], size: int, rng: np.random.Generator) -> list[int]:
    """``size`` consecutive tokens of ``pool`` from a random start, cycling through a short pool."""
    start = int(rng.integers(0, len(pool)))
    return [pool[(start + offset) % len(pool)] for offset in range(size)]


def _pool(tokenizer: Tokenizer, text: str, what: str) -> list[int]:
    ids = tokenizer.encode(text)
    if not ids:
        raise MalformedInput(f"attack: no {what} to copy from", code="coin.attack_source_empty")
    return ids


def _insert_chunks(
    original: list[int], chunks: list[list[int]], rng: np.random.Generator
) -> list[int]:
    positions = sorted(int(p) for p in rng.integers(0, len(original) + 1, size=len(chunks)))
    out: list[int] = []
    previous = 0
    for position, chunk in zip(positions, chunks, strict=True):
        out.extend(original[previous:position])
        out.extend(chunk)
        previous = position
    out.extend(original[previous:])
    return out


def _duplicate_blocks(
    original: list[int], injected: int, block_size: int, rng: np.random.Generator
) -> list[int]:
    # Insert at a block boundary copies of the whole blocks before it (cycling through them):
    # the blocks before the boundary keep their alignment, so each copy repeats one of them.
    full_blocks = len(original) // block_size
    if full_blocks == 0:  # shorter than a block: nothing aligned to repeat, append copies
        return original + [original[offset % len(original)] for offset in range(injected)]
    boundary = int(rng.integers(1, full_blocks + 1)) * block_size
    first = int(rng.integers(0, boundary // block_size)) * block_size
    span = boundary - first
    copy = [original[first + offset % span] for offset in range(injected)]
    return original[:boundary] + copy + original[boundary:]


def inflate(
    source: AttackSource,
    attack: str,
    ratio: float,
    *,
    tokenizer: Tokenizer,
    rng: np.random.Generator,
    block_size: int = 256,
) -> InflatedReasoning:
    """The reasoning of ``source`` inflated by ``attack`` at inflation ratio ``ratio``.

    The result is token ids, for :func:`~tallystick.daemon.coin.provider.commit_tokens`: the
    committed count is exactly ``original + injected``.

    :raises MalformedInput: an unknown attack or a ratio that is not positive
        (``coin.attack_unknown``), or an empty text to copy from (``coin.attack_source_empty``).
    """
    if attack not in ATTACKS:
        raise MalformedInput(f"attack: unknown attack {attack!r}", code="coin.attack_unknown")
    if not ratio > 0:
        raise MalformedInput(
            "attack: the inflation ratio must be positive", code="coin.attack_unknown"
        )
    original = _pool(tokenizer, source.reasoning, "reasoning")
    injected = max(1, round(ratio * len(original)))
    if attack == "duplicate_blocks":
        tokens = _duplicate_blocks(original, injected, block_size, rng)
    else:
        sizes = _chunk_sizes(injected, rng)
        if attack == "random_tokens":
            chunks = [_random_tokens(tokenizer, n, rng) for n in sizes]
        else:
            pool = {
                "copy_prompt": lambda: _pool(tokenizer, source.prompt, "prompt"),
                "copy_answer": lambda: _pool(tokenizer, source.answer, "answer"),
                "copy_reasoning": lambda: original,
                "splice_same_domain": lambda: _pool(
                    tokenizer, source.same_domain_reasoning, "same-domain reasoning"
                ),
                "off_topic": lambda: _pool(
                    tokenizer, source.other_domain_reasoning, "other-domain reasoning"
                ),
            }[attack]()
            chunks = [_span(pool, n, rng) for n in sizes]
        tokens = _insert_chunks(original, chunks, rng)
    return InflatedReasoning(attack, ratio, tuple(tokens), len(original), injected)
