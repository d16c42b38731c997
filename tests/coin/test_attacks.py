"""The attack generators keep :func:`inflate`'s contract, and the two §4.7 families do what
they claim: ``small_model`` writes new on-domain text, ``tokenization_ambiguity`` bills the
same bytes as more tokens. Tokenizer only, no embedding engine: these tests stay fast."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from tallystick.daemon.coin.attacks import (
    ATTACKS,
    AttackSource,
    InflatedReasoning,
    inflate,
)
from tallystick.daemon.coin.tokenizer import Tokenizer
from tallystick.verifier.errors import MalformedInput

#: The attacks that insert chunks of new tokens and leave the honest ones in order.
CHUNKED = tuple(a for a in ATTACKS if a not in ("duplicate_blocks", "tokenization_ambiguity"))


class CharTokenizer:
    """One token per character: a :class:`Tokenizer` that is not tiktoken."""

    id = "chars@test"

    def encode(self, text: str) -> list[int]:
        return [ord(char) for char in text]

    def token_text(self, token_id: int) -> str:
        return chr(token_id)


def _corpus(
    dev_traces: list[dict[str, Any]], trace: dict[str, Any], n: int = 20
) -> tuple[str, ...]:
    return tuple(
        t["reasoning"] for t in dev_traces if t["domain"] == trace["domain"] and t is not trace
    )[:n]


def _source(dev_traces: list[dict[str, Any]], trace: dict[str, Any]) -> AttackSource:
    same = _corpus(dev_traces, trace)
    other = next(t for t in dev_traces if t["domain"] != trace["domain"])
    return AttackSource(
        trace["prompt"],
        trace["reasoning"],
        trace["answer"],
        same_domain_reasoning=same[0],
        other_domain_reasoning=other["reasoning"],
        domain_corpus=same[1:],
    )


def _token_bytes(tokenizer: Tokenizer, ids: tuple[int, ...] | list[int]) -> bytes:
    raw: bytes = tokenizer._encoding.decode_bytes(list(ids))  # type: ignore[attr-defined]
    return raw


def _grams(ids: list[int] | tuple[int, ...], width: int = 8) -> set[tuple[int, ...]]:
    """Every run of ``width`` consecutive token ids."""
    return {tuple(ids[i : i + width]) for i in range(len(ids) - width + 1)}


def _is_subsequence(small: list[int], big: tuple[int, ...]) -> bool:
    rest = iter(big)
    return all(token_id in rest for token_id in small)


def _groups(tokenizer: Tokenizer, original: list[int], inflated: tuple[int, ...]) -> list[int]:
    """How many inflated tokens spell each original token (splits never cross tokens)."""
    sizes: list[int] = []
    pieces = iter(inflated)
    for token_id in original:
        want, got, size = _token_bytes(tokenizer, [token_id]), b"", 0
        while got != want:
            got += _token_bytes(tokenizer, [next(pieces)])
            size += 1
            assert want.startswith(got), "a split crosses a token boundary"
        sizes.append(size)
    assert next(pieces, None) is None
    return sizes


# --- inflate's contract, on every family -----------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("attack", ATTACKS)
def test_every_attack_commits_original_plus_injected(
    attack: str,
    ratio: float,
    tokenizer: Tokenizer,
    dev_traces: list[dict[str, Any]],
    short_traces: list[dict[str, Any]],
) -> None:
    for trace in (short_traces[0], short_traces[3]):  # a math and a safety trace
        original = tokenizer.encode(trace["reasoning"])
        inflated = inflate(
            _source(dev_traces, trace),
            attack,
            ratio,
            tokenizer=tokenizer,
            rng=np.random.default_rng(11),
        )
        assert isinstance(inflated, InflatedReasoning)
        assert (inflated.attack, inflated.ratio) == (attack, ratio)
        assert inflated.original_tokens == len(original)
        asked = max(1, round(ratio * len(original)))
        if attack == "tokenization_ambiguity":  # capped: every token split to single bytes
            cap = len(_token_bytes(tokenizer, original)) - len(original)
            assert inflated.injected_tokens == min(asked, cap)
        else:
            assert inflated.injected_tokens == asked
        assert len(inflated.token_ids) == len(original) + inflated.injected_tokens
        assert all(isinstance(token_id, int) for token_id in inflated.token_ids)
        if attack in CHUNKED:
            assert _is_subsequence(original, inflated.token_ids)


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_attack_is_deterministic_under_a_seeded_generator(
    attack: str, tokenizer: Tokenizer, dev_traces: list[dict[str, Any]], short_traces: list[Any]
) -> None:
    source = _source(dev_traces, short_traces[1])

    def run(seed: int) -> InflatedReasoning:
        return inflate(
            source, attack, 0.5, tokenizer=tokenizer, rng=np.random.default_rng(seed), block_size=64
        )

    assert run(5) == run(5)
    assert run(5).token_ids != run(6).token_ids


def test_a_tiny_ratio_still_injects_one_token(
    tokenizer: Tokenizer, dev_traces: list[dict[str, Any]], short_traces: list[Any]
) -> None:
    source = _source(dev_traces, short_traces[3])
    for attack in ATTACKS:
        inflated = inflate(source, attack, 1e-9, tokenizer=tokenizer, rng=np.random.default_rng(0))
        assert inflated.injected_tokens == 1
        assert len(inflated.token_ids) == inflated.original_tokens + 1


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.0, -1.0, math.nan])
def test_a_ratio_that_is_not_positive_is_refused(ratio: float, tokenizer: Tokenizer) -> None:
    source = AttackSource("p", "some reasoning here", "a", domain_corpus=("other text",))
    for attack in ATTACKS:
        with pytest.raises(MalformedInput) as info:
            inflate(source, attack, ratio, tokenizer=tokenizer, rng=np.random.default_rng(0))
        assert info.value.code == "coin.attack_unknown"


def test_an_unknown_attack_is_refused(tokenizer: Tokenizer) -> None:
    source = AttackSource("p", "some reasoning here", "a")
    with pytest.raises(MalformedInput) as info:
        inflate(source, "large_model", 1.0, tokenizer=tokenizer, rng=np.random.default_rng(0))
    assert info.value.code == "coin.attack_unknown"


@pytest.mark.parametrize(
    ("attack", "source"),
    [
        *((attack, AttackSource("p", "", "a", "s", "o", ("c",))) for attack in ATTACKS),
        ("copy_prompt", AttackSource("", "reasoning", "a")),
        ("copy_answer", AttackSource("p", "reasoning", "")),
        ("splice_same_domain", AttackSource("p", "reasoning", "a")),
        ("off_topic", AttackSource("p", "reasoning", "a")),
        ("small_model", AttackSource("p", "reasoning", "a")),
        ("small_model", AttackSource("p", "reasoning", "a", domain_corpus=("", "  \n"))),
        # The cheap model never learns from the trace it pads.
        ("small_model", AttackSource("p", "reasoning", "a", "reasoning", "", ("reasoning",))),
    ],
)
def test_nothing_to_work_from_is_a_typed_error(
    attack: str, source: AttackSource, tokenizer: Tokenizer
) -> None:
    with pytest.raises(MalformedInput) as info:
        inflate(source, attack, 1.0, tokenizer=tokenizer, rng=np.random.default_rng(0))
    assert info.value.code == "coin.attack_source_empty"


def test_tokenization_ambiguity_needs_a_tiktoken_tokenizer() -> None:
    source = AttackSource("p", "some reasoning here", "a")
    with pytest.raises(MalformedInput) as info:
        inflate(
            source,
            "tokenization_ambiguity",
            1.0,
            tokenizer=CharTokenizer(),
            rng=np.random.default_rng(0),
        )
    assert info.value.code == "coin.attack_unsupported"


# --- small_model -------------------------------------------------------------------------------


def test_small_model_writes_new_text_rather_than_copying_the_corpus(
    tokenizer: Tokenizer, dev_traces: list[dict[str, Any]], short_traces: list[Any]
) -> None:
    for trace in (short_traces[0], short_traces[3]):
        source = _source(dev_traces, trace)
        original = tokenizer.encode(trace["reasoning"])
        inflated = inflate(
            source, "small_model", 2.0, tokenizer=tokenizer, rng=np.random.default_rng(3)
        )
        corpus = (*source.domain_corpus, source.same_domain_reasoning)
        honest = _grams(original)
        learned = set().union(*(_grams(tokenizer.encode(text)) for text in corpus))
        padding = _grams(inflated.token_ids) - honest
        assert len(padding) > inflated.injected_tokens // 2
        # Order-3 sampling recombines: few long runs come out of the corpus verbatim.
        assert len(padding & learned) / len(padding) < 0.2
        # ...but the words are the domain's: nearly every padding token was seen in training.
        vocabulary = set().union(*(tokenizer.encode(text) for text in corpus))
        honest_vocabulary = set(original)
        extra = [t for t in inflated.token_ids if t not in honest_vocabulary]
        assert sum(t in vocabulary for t in extra) / len(extra) > 0.9


def test_small_model_works_with_any_tokenizer() -> None:
    # One token per character: decoding and re-encoding is the identity, so the padding is
    # exactly the sampled characters, and those can only be the corpus's.
    corpus = ("abcabcabd abd",)
    source = AttackSource("p", "zzzz", "a", domain_corpus=corpus)
    inflated = inflate(
        source, "small_model", 10.0, tokenizer=CharTokenizer(), rng=np.random.default_rng(1)
    )
    padding = [t for t in inflated.token_ids if t != ord("z")]
    assert len(padding) == inflated.injected_tokens == 40
    assert set(padding) <= {ord(c) for c in corpus[0]}


def test_small_model_learns_only_from_its_corpus(tokenizer: Tokenizer) -> None:
    sentence = "Let me check the arithmetic once more."
    reasoning = "The answer is 42."
    source = AttackSource("p", reasoning, "42", domain_corpus=(sentence, f"{sentence} {sentence}"))
    inflated = inflate(
        source, "small_model", 5.0, tokenizer=tokenizer, rng=np.random.default_rng(0)
    )
    text = _token_bytes(tokenizer, inflated.token_ids).decode()
    assert set(text) <= set(sentence + reasoning)
    assert "arithmetic" in text


# --- tokenization_ambiguity --------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 1.0])
def test_tokenization_ambiguity_keeps_the_visible_bytes(
    ratio: float, tokenizer: Tokenizer, short_traces: list[dict[str, Any]]
) -> None:
    for trace in short_traces:
        original = tokenizer.encode(trace["reasoning"])
        inflated = inflate(
            AttackSource(trace["prompt"], trace["reasoning"], trace["answer"]),
            "tokenization_ambiguity",
            ratio,
            tokenizer=tokenizer,
            rng=np.random.default_rng(2),
        )
        assert _token_bytes(tokenizer, inflated.token_ids) == _token_bytes(tokenizer, original)
        # Re-tokenizing the visible text with the pinned tokenizer gives the honest count back.
        assert len(tokenizer.encode(_token_bytes(tokenizer, inflated.token_ids).decode())) == len(
            original
        )
        assert len(inflated.token_ids) == len(original) + inflated.injected_tokens
        assert inflated.injected_tokens == max(1, round(ratio * len(original)))
        assert max(inflated.token_ids) < 100_000  # no special token ever comes out of a split


def test_tokenization_ambiguity_splits_distinct_tokens_first(
    tokenizer: Tokenizer, short_traces: list[dict[str, Any]]
) -> None:
    trace = short_traces[0]
    original = tokenizer.encode(trace["reasoning"])
    inflated = inflate(
        AttackSource(trace["prompt"], trace["reasoning"], trace["answer"]),
        "tokenization_ambiguity",
        0.25,
        tokenizer=tokenizer,
        rng=np.random.default_rng(4),
    )
    sizes = _groups(tokenizer, original, inflated.token_ids)
    # Each picked token is split once (into two vocabulary tokens) before any is split again.
    assert max(sizes) == 2
    assert sizes.count(2) == inflated.injected_tokens


def test_tokenization_ambiguity_is_capped_at_single_bytes(
    tokenizer: Tokenizer, short_traces: list[dict[str, Any]]
) -> None:
    trace = short_traces[3]
    original = tokenizer.encode(trace["reasoning"])
    raw = _token_bytes(tokenizer, original)
    inflated = inflate(
        AttackSource(trace["prompt"], trace["reasoning"], trace["answer"]),
        "tokenization_ambiguity",
        100.0,
        tokenizer=tokenizer,
        rng=np.random.default_rng(0),
    )
    # Past the cap every token is a single byte, and the count reports what was really injected.
    assert len(inflated.token_ids) == len(raw)
    assert inflated.injected_tokens == len(raw) - len(original)
    assert inflated.injected_tokens < round(100.0 * len(original))
    assert inflated.ratio == 100.0
    assert all(len(_token_bytes(tokenizer, [t])) == 1 for t in inflated.token_ids)
    assert _token_bytes(tokenizer, inflated.token_ids) == raw
    assert _groups(tokenizer, original, inflated.token_ids) == [
        len(_token_bytes(tokenizer, [t])) for t in original
    ]


def test_tokenization_ambiguity_of_single_byte_text_injects_nothing(tokenizer: Tokenizer) -> None:
    source = AttackSource("p", "x", "a")  # one one-byte token: nothing to split
    inflated = inflate(
        source, "tokenization_ambiguity", 1.0, tokenizer=tokenizer, rng=np.random.default_rng(0)
    )
    assert inflated.token_ids == tuple(tokenizer.encode("x"))
    assert inflated.injected_tokens == 0
