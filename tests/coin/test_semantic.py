"""Each semantic check flags its attack on a real trace, and passes the honest one.

The openings are real (F's provider over real dev traces, E's challenge); an attack is what
a cheating provider would send in their place. Thresholds are the packaged fit.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from tallystick.daemon.coin.attacks import ATTACKS, AttackSource, inflate
from tallystick.daemon.coin.embedding import EmbeddingEngine
from tallystick.daemon.coin.judge import packaged_length_model
from tallystick.daemon.coin.prior import LengthModel, LengthSample, length_features
from tallystick.daemon.coin.provider import commit_tokens
from tallystick.daemon.coin.semantic import (
    CHECKS,
    RARE_TOKEN_ID,
    RUN_EDGE,
    SPAN_TOKENS,
    SPREAD_QUANTILE,
    Calibration,
    Measurements,
    Thresholds,
    copied_spans,
    fit_thresholds,
    measure,
    noncanonical_runs,
    rare_runs,
    rare_tokens,
    repeated_spans,
    wilson_interval,
)
from tallystick.daemon.coin.tokenizer import Tokenizer
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.coin import (
    SKETCH_NGRAM,
    Leaf,
    Opening,
    block_count,
    challenge_indices,
    ngram_entries,
    sketch_key,
)
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.keys import PrivateKey

#: Consecutive leaves each challenge anchor opens, as the packaged calibration audits.
RUN_LENGTH = Calibration.packaged().run_length
#: The sketch key of these tests (any key: the checks only compare entries under one key).
KEY = sketch_key(b"semantic tests")


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    return Calibration.packaged()


def _opened(
    engine: EmbeddingEngine, tokenizer: Tokenizer, trace: dict[str, Any], signer: NoteSigner
) -> list[Opening]:
    ids = tokenizer.encode(trace["reasoning"])
    commitment = commit_tokens(
        engine,
        tokenizer,
        reasoning_ids=ids,
        prompt=trace["prompt"],
        answer=trace["answer"],
        request_id="t",
        model="m",
        reported_usage=None,
        signer=signer,
    )
    k = max(44, block_count(len(ids), 256))
    return commitment.open(challenge_indices(bytes(32), len(ids), 256, k, RUN_LENGTH))


def _entries(tokenizer: Tokenizer, text: str) -> list[bytes]:
    """A visible text's sketch entries, as the auditor hashes them."""
    return ngram_entries(KEY, tokenizer.encode(text))


def _measure(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    openings: list[Opening],
    trace: dict[str, Any],
    *,
    visible: frozenset[int] | None = None,
    reasoning_ids: Sequence[int] | None = None,
    length_z: float = 0.0,
) -> Measurements:
    prompt_vec, answer_vec = engine.embed_texts([trace["prompt"], trace["answer"]])
    if visible is None:
        visible = frozenset(tokenizer.encode(trace["prompt"] + "\n" + trace["answer"]))
    if reasoning_ids is None:
        reasoning_ids = tokenizer.encode(trace["reasoning"])
    return measure(
        engine,
        tokenizer,
        openings=openings,
        prompt_embedding=prompt_vec,
        answer_embedding=answer_vec,
        visible_ids=visible,
        sketch_entries=ngram_entries(KEY, reasoning_ids),
        prompt_entries=_entries(tokenizer, trace["prompt"]),
        answer_entries=_entries(tokenizer, trace["answer"]),
        length_z=length_z,
    )


def _flags(thresholds: Thresholds, measurements: Measurements) -> set[str]:
    flagged = {c.check for c in thresholds.block_checks(measurements) if c.flagged}
    if thresholds.length_prior(measurements).flagged:
        flagged.add("length_prior")
    return flagged


@pytest.fixture(scope="module")
def math_trace(short_traces: list[dict[str, Any]]) -> dict[str, Any]:
    return short_traces[2]


@pytest.fixture(scope="module")
def safety_trace(short_traces: list[dict[str, Any]]) -> dict[str, Any]:
    return short_traces[5]


@pytest.fixture(scope="module")
def honest(
    engine: EmbeddingEngine, tokenizer: Tokenizer, math_trace: dict[str, Any]
) -> list[Opening]:
    return _opened(engine, tokenizer, math_trace, NoteSigner("t/coin", PrivateKey.generate()))


def test_honest_openings_raise_no_flag(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    calibration: Calibration,
    honest: list[Opening],
    math_trace: dict[str, Any],
) -> None:
    thresholds = calibration.for_domain("math")
    measured = _measure(engine, tokenizer, honest, math_trace)
    assert _flags(thresholds, measured) == set()
    assert thresholds.score(measured) <= thresholds.threshold
    assert set(measured.fingerprint.values()) <= {0.0, 1.0}
    # The audit-wide checks ran on real runs and a real sketch, and found nothing.
    assert RUN_LENGTH == 8
    assert any(b.index == a.index + 1 for a, b in itertools.pairwise(honest))
    assert measured.noncanonical_runs == 0.0 and measured.repeated_spans == 0.0


def test_forged_token_fingerprint_is_flagged(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    calibration: Calibration,
    honest: list[Opening],
    math_trace: dict[str, Any],
) -> None:
    other = honest[1].leaf.token_fp if honest[1].token_id != honest[0].token_id else bytes(384)
    forged = [
        dataclasses.replace(honest[0], leaf=dataclasses.replace(honest[0].leaf, token_fp=other))
    ]
    measured = _measure(engine, tokenizer, forged + honest[1:], math_trace)
    checks = calibration.for_domain("math").block_checks(measured)
    fingerprint = [c for c in checks if c.check == "fingerprint" and c.flagged]
    assert [c.block_index for c in fingerprint] == [honest[0].leaf.block_index]


def test_two_block_fingerprints_for_one_block_are_flagged(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    calibration: Calibration,
    honest: list[Opening],
    math_trace: dict[str, Any],
) -> None:
    leaf = dataclasses.replace(honest[0].leaf, block_fp=bytes(384))
    measured = _measure(
        engine, tokenizer, [dataclasses.replace(honest[0], leaf=leaf), *honest[1:]], math_trace
    )
    assert measured.fingerprint[honest[0].leaf.block_index] == 255.0
    assert "fingerprint" in _flags(calibration.for_domain("math"), measured)


def test_relevance_falls_for_reasoning_unrelated_to_prompt_and_answer(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    honest: list[Opening],
    math_trace: dict[str, Any],
    safety_trace: dict[str, Any],
) -> None:
    # Math reasoning billed for a safety request: off-topic padding. The calibrated thresholds
    # are too lenient to flag this at a 1% false-positive rate (see the benchmark), so the test
    # pins the signal itself: relevance collapses against the unrelated prompt and answer.
    own = _measure(engine, tokenizer, honest, math_trace)
    unrelated = _measure(engine, tokenizer, honest, safety_trace)
    for check in ("block_answer", "block_prompt"):
        assert max(unrelated.blocks[check].values()) < 0.2
        assert min(own.blocks[check].values()) > max(unrelated.blocks[check].values()) + 0.2


def test_duplicate_blocks_flags_a_repeated_block(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    calibration: Calibration,
    dev_traces: list[dict[str, Any]],
    signer: NoteSigner,
) -> None:
    trace = next(
        t
        for t in dev_traces
        if t["domain"] == "math" and 600 <= len(tokenizer.encode(t["reasoning"])) <= 900
    )
    source = AttackSource(trace["prompt"], trace["reasoning"], trace["answer"])
    inflated = inflate(
        source, "duplicate_blocks", 1.0, tokenizer=tokenizer, rng=np.random.default_rng(3)
    )
    commitment = commit_tokens(
        engine,
        tokenizer,
        reasoning_ids=inflated.token_ids,
        prompt=trace["prompt"],
        answer=trace["answer"],
        request_id="t",
        model="m",
        reported_usage=None,
        signer=signer,
    )
    size = len(inflated.token_ids)
    openings = commitment.open(challenge_indices(bytes(32), size, 256, block_count(size, 256)))
    measured = _measure(engine, tokenizer, openings, trace, reasoning_ids=inflated.token_ids)
    assert max(measured.blocks["duplicate_blocks"].values()) > 0.999
    assert "duplicate_blocks" in _flags(calibration.for_domain("math"), measured)


def test_visible_vocab_flags_padding_copied_from_what_the_user_sees(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    calibration: Calibration,
    safety_trace: dict[str, Any],
    signer: NoteSigner,
) -> None:
    openings = _opened(engine, tokenizer, safety_trace, signer)
    honest = _measure(engine, tokenizer, openings, safety_trace)
    # Every opened token is one the user already saw (prompt or answer copied as padding).
    copied = _measure(
        engine, tokenizer, openings, safety_trace, visible=frozenset(o.token_id for o in openings)
    )
    thresholds = calibration.for_domain("safety")
    assert "visible_vocab" not in _flags(thresholds, honest)
    assert copied.visible_vocab == 1.0
    assert "visible_vocab" in _flags(thresholds, copied)


def test_length_prior_flags_an_inflated_count(
    tokenizer: Tokenizer, calibration: Calibration, safety_trace: dict[str, Any]
) -> None:
    model = packaged_length_model()
    tokens = len(tokenizer.encode(safety_trace["reasoning"]))
    common = {
        "domain": "safety",
        "prompt_tokens": len(tokenizer.encode(safety_trace["prompt"])),
        "answer_tokens": len(tokenizer.encode(safety_trace["answer"])),
        "answer": safety_trace["answer"],
    }
    honest_z = model.z(reasoning_tokens=tokens, **common)
    inflated_z = model.z(reasoning_tokens=tokens * 8, **common)
    assert inflated_z - honest_z == pytest.approx(math.log(8) / model.regressions["safety"].sigma)
    thresholds = calibration.for_domain("safety")
    limit = thresholds.length_prior(_fake(honest_z)).threshold
    assert honest_z < limit < inflated_z


def _fake(length_z: float) -> Measurements:
    return Measurements(
        blocks={"token_block": {}, "block_answer": {}, "block_prompt": {}, "duplicate_blocks": {}},
        fingerprint={0: 0.0},
        visible_vocab=0.0,
        noncanonical_runs=0.0,
        rare_tokens=0.0,
        rare_runs=0.0,
        repeated_spans=0.0,
        copied_prompt=0.0,
        copied_answer=0.0,
        length_z=length_z,
    )


def test_measure_refuses_an_empty_audit(engine: EmbeddingEngine, tokenizer: Tokenizer) -> None:
    with pytest.raises(MalformedInput) as info:
        measure(
            engine,
            tokenizer,
            openings=[],
            prompt_embedding=np.zeros(384, dtype=np.float32),
            answer_embedding=np.zeros(384, dtype=np.float32),
            visible_ids=frozenset(),
            sketch_entries=[],
            prompt_entries=[],
            answer_entries=[],
            length_z=0.0,
        )
    assert info.value.code == "coin.audit_incomplete"


# -- the audit-wide checks on real token ids (no engine) -------------------------------------


def _runs(token_ids: Sequence[int], starts: Sequence[int], length: int = 8) -> list[Opening]:
    """Openings of runs of ``length`` leaves at ``starts``, as the statistics read them (index
    and token id; the leaf is a placeholder, nothing here verifies it)."""
    indices = sorted({i for start in starts for i in range(start, start + length)})
    return [
        Opening(i, Leaf(i, 0, bytes(32), bytes(384), bytes(384)), bytes(16), token_ids[i], ())
        for i in indices
    ]


def _separate_starts(size: int, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` random starts of runs of 8 that neither touch nor overlap (stride 9), with the
    first and the last possible run among them."""
    slots = (size - 8) // 9
    picked = {0, slots} | {int(s) for s in rng.choice(slots + 1, min(count, slots + 1), False)}
    return sorted(9 * slot for slot in picked)


def test_noncanonical_runs_is_zero_on_honest_runs(
    tokenizer: Tokenizer, short_traces: list[dict[str, Any]], dev_traces: list[dict[str, Any]]
) -> None:
    rng = np.random.default_rng(0)
    for trace in [*short_traces, *dev_traces[:20]]:
        ids = tokenizer.encode(trace["reasoning"])
        openings = _runs(ids, _separate_starts(len(ids), 20, rng))
        assert noncanonical_runs(tokenizer, openings) == 0.0, trace["id"]
    # Isolated leaves, and runs too short to have an interior, are not tested at all.
    ids = tokenizer.encode(short_traces[0]["reasoning"])
    assert noncanonical_runs(tokenizer, _runs(ids, [0, 20, 40], length=1)) == 0.0
    assert noncanonical_runs(tokenizer, _runs(ids, [0, 20], length=2 * RUN_EDGE)) == 0.0
    assert noncanonical_runs(tokenizer, []) == 0.0


def test_noncanonical_runs_rises_on_random_token_ids(tokenizer: Tokenizer) -> None:
    # Random ids are far from 1.0-ish: most cl100k tokens are whole words with their leading
    # space, and a run of random words re-tokenizes to the same ids. The check catches the
    # runs whose interior holds a word piece that merges with a neighbour (about 1 in 6).
    rng = np.random.default_rng(1)
    size = 9 * 300
    ids: list[int] = []
    while len(ids) < size:
        token_id = int(rng.integers(0, 100_000))
        try:
            tokenizer.token_bytes(token_id)
        except MalformedInput:  # a hole in the vocabulary
            continue
        ids.append(token_id)
    starts = list(range(0, size - 8, 9))
    fraction = noncanonical_runs(tokenizer, _runs(ids, starts))
    assert fraction > 0.08


def _split_positions(tokenizer: Tokenizer, original: list[int], inflated: list[int]) -> list[int]:
    """Positions of ``inflated`` that are pieces of an ``original`` token split in two or more
    (the attack keeps the bytes and the order of every original token)."""
    split: list[int] = []
    at = 0
    for token_id in original:
        want = tokenizer.token_bytes(token_id)
        got, first = b"", at
        while len(got) < len(want):
            got += tokenizer.token_bytes(inflated[at])
            at += 1
        assert got == want
        if at - first > 1:
            split.extend(range(first, at))
    assert at == len(inflated)
    return split


def test_noncanonical_runs_flags_tokenization_ambiguity(
    tokenizer: Tokenizer, short_traces: list[dict[str, Any]]
) -> None:
    for trace in (short_traces[1], short_traces[4]):
        source = AttackSource(trace["prompt"], trace["reasoning"], trace["answer"])
        inflated = inflate(
            source, "tokenization_ambiguity", 1.0, tokenizer=tokenizer, rng=np.random.default_rng(2)
        )
        original = tokenizer.encode(trace["reasoning"])
        ids = list(inflated.token_ids)
        assert inflated.injected_tokens == len(original)  # ratio 1 reached: same text, 2x tokens
        split = set(_split_positions(tokenizer, original, ids))
        # Runs of 8 whose interior (positions 2..5) starts on a split piece.
        starts: list[int] = []
        for piece in sorted(split):
            start = piece - RUN_EDGE
            if 0 <= start <= len(ids) - 8 and (not starts or start >= starts[-1] + 9):
                starts.append(start)
        assert len(starts) >= 10
        fraction = noncanonical_runs(tokenizer, _runs(ids, starts))
        assert fraction >= 0.9, (trace["id"], fraction)
        # The same places in the honest tokenization are canonical.
        honest = _runs(original, _separate_starts(len(original), 20, np.random.default_rng(3)))
        assert noncanonical_runs(tokenizer, honest) == 0.0


def _spans(tokenizer: Tokenizer, trace: dict[str, Any], reasoning_ids: Sequence[int]) -> float:
    """The larger of the three stretch statistics: repeated, copied from prompt or answer."""
    entries = ngram_entries(KEY, reasoning_ids)
    return max(
        repeated_spans(entries),
        copied_spans(entries, _entries(tokenizer, trace["prompt"])),
        copied_spans(entries, _entries(tokenizer, trace["answer"])),
    )


def test_repeated_spans_is_zero_without_repeats_and_high_on_self_copies(
    tokenizer: Tokenizer, short_traces: list[dict[str, Any]], safety_trace: dict[str, Any]
) -> None:
    assert SPAN_TOKENS == 32 == 4 * SKETCH_NGRAM
    ids = tokenizer.encode(safety_trace["reasoning"])
    assert _spans(tokenizer, safety_trace, ids) == 0.0
    assert repeated_spans([]) == 0.0 and copied_spans([], []) == 0.0
    assert repeated_spans(ngram_entries(KEY, ids[: SPAN_TOKENS - 1])) == 0.0
    for trace in (safety_trace, short_traces[2]):
        source = AttackSource(trace["prompt"], trace["reasoning"], trace["answer"])
        copied = inflate(
            source, "duplicate_blocks", 1.0, tokenizer=tokenizer, rng=np.random.default_rng(4)
        )
        assert _spans(tokenizer, trace, copied.token_ids) >= 0.5, trace["id"]
    # The whole reasoning twice over: every token is in a repeated stretch.
    assert _spans(tokenizer, safety_trace, ids + ids) == 1.0


def _insert(ids: list[int], at: int, stretch: list[int]) -> list[int]:
    return ids[:at] + stretch + ids[at:]


def test_repeated_spans_sees_a_stretch_copied_from_the_answer(
    tokenizer: Tokenizer, short_traces: list[dict[str, Any]]
) -> None:
    # A safety trace whose answer is long enough to copy 40 tokens from.
    trace = next(t for t in short_traces[3:] if len(tokenizer.encode(t["answer"])) > 41)
    ids = tokenizer.encode(trace["reasoning"])
    answer = tokenizer.encode(trace["answer"])
    assert _spans(tokenizer, trace, ids) == 0.0
    stretch = answer[:40]
    # Where the tokens after the copy differ from the answer's next one, so it stays 40 long.
    at = next(p for p in range(len(ids) // 2, len(ids)) if ids[p] != answer[40])
    padded = _insert(ids, at, stretch)
    entries = ngram_entries(KEY, padded)
    assert copied_spans(entries, _entries(tokenizer, trace["answer"])) == pytest.approx(
        40 / len(padded)
    )
    # Only the answer's entries see it: the reasoning itself does not repeat, nor the prompt.
    assert repeated_spans(entries) == 0.0
    assert copied_spans(entries, _entries(tokenizer, trace["prompt"])) == 0.0


@pytest.mark.parametrize("prompt_tokens", [7, 8, 20, 31, 32, 90])
def test_copied_spans_matches_a_short_source_in_stretches_it_can_hold(
    tokenizer: Tokenizer, safety_trace: dict[str, Any], prompt_tokens: int
) -> None:
    ids = tokenizer.encode(safety_trace["reasoning"])
    prompt = np.random.default_rng(prompt_tokens).integers(50_000, 90_000, prompt_tokens).tolist()
    source = ngram_entries(KEY, prompt)
    # A one-line request repeated as padding, as copy-prompt padding cycles a short prompt.
    padded = _insert(ids, len(ids) // 2, prompt * 3)
    share = copied_spans(ngram_entries(KEY, padded), source)
    assert copied_spans(ngram_entries(KEY, ids), source) == 0.0
    if prompt_tokens < SKETCH_NGRAM:  # not one whole n-gram: nothing to match
        assert share == 0.0
    else:  # stretches as long as the prompt allows cover every copy (32 tokens at most)
        assert share == pytest.approx(3 * prompt_tokens / len(padded))


@pytest.mark.parametrize(("length", "counted"), [(31, False), (32, True), (45, True)])
def test_repeated_spans_counts_stretches_of_32_tokens_and_more(
    tokenizer: Tokenizer, safety_trace: dict[str, Any], length: int, counted: bool
) -> None:
    ids = tokenizer.encode(safety_trace["reasoning"])
    source = 10
    stretch = ids[source : source + length]
    # Insert the copy after the source, where neither neighbour extends the repeat.
    at = next(
        p
        for p in range(source + length + 1, len(ids))
        if ids[p - 1] != ids[source - 1] and ids[p] != ids[source + length]
    )
    padded = _insert(ids, at, stretch)
    expected = 2 * length / len(padded) if counted else 0.0
    assert _spans(tokenizer, safety_trace, padded) == pytest.approx(expected)


def test_fit_thresholds_hits_its_in_sample_target() -> None:
    rng = np.random.default_rng(0)
    honest = [{check: float(rng.normal()) for check in CHECKS} for _ in range(2000)]
    for audit in honest:  # a cosine, as duplicate_blocks is (its threshold stays below 1)
        audit["duplicate_blocks"] = float(rng.uniform(0.5, 0.9))
    thresholds = fit_thresholds(honest, fpr_target=0.01)
    failing = sum(max(thresholds.z_scores(a).values()) > thresholds.threshold for a in honest)
    assert failing <= 20
    assert failing >= 10  # not trivially strict either


def test_fit_spread_reaches_from_the_median_to_the_spread_quantile() -> None:
    # 0..100: median 50, 95th percentile 95 (a tail-relative scale, not the 90th's 40).
    honest = [{check: float(value) for check in CHECKS} for value in range(101)]
    thresholds = fit_thresholds(honest, fpr_target=0.01)
    assert SPREAD_QUANTILE == 0.95
    for check in ("rare_tokens", "repeated_spans", "length_prior", "block_prompt"):
        assert thresholds.centers[check] == 50.0
        assert thresholds.spreads[check] == pytest.approx(45.0)


def test_calibration_round_trips_and_rejects_damage(calibration: Calibration) -> None:
    data = calibration.to_json()
    assert Calibration.from_json(data) == calibration
    broken = {**data, "domains": {"math": {**data["domains"]["math"], "threshold": "x"}}}
    with pytest.raises(MalformedInput) as info:
        Calibration.from_json(broken)
    assert info.value.code == "coin.fit_malformed"
    with pytest.raises(MalformedInput):
        Calibration.from_json({**data, "format": "other"})


def test_length_model_round_trips_and_fits_per_domain() -> None:
    model = packaged_length_model()
    assert LengthModel.from_json(model.to_json()) == model
    assert set(model.regressions) == {"math", "safety"}
    samples = [
        LengthSample("d", length_features(10 + i, 50 + 3 * i, "x\n" * i), 100 * (i + 1), (1.0, 0.0))
        for i in range(12)
    ]
    fitted = LengthModel.fit(samples)
    assert fitted.route(np.array([1.0, 0.0], dtype=np.float32)) == "d"
    with pytest.raises(MalformedInput) as info:
        LengthModel.fit(samples[:3])
    assert info.value.code == "coin.fit_insufficient"


def test_wilson_interval_matches_known_values() -> None:
    low, high = wilson_interval(0, 100)
    assert low == 0.0 and high == pytest.approx(0.0370, abs=1e-4)
    low, high = wilson_interval(5, 100)
    assert low == pytest.approx(0.0215, abs=1e-4) and high == pytest.approx(0.1118, abs=1e-4)


@pytest.mark.parametrize("attack", ATTACKS)
def test_every_attack_injects_the_asked_ratio(
    attack: str, tokenizer: Tokenizer, dev_traces: list[dict[str, Any]]
) -> None:
    math_traces = [t for t in dev_traces if t["domain"] == "math"]
    trace, donor = math_traces[0], math_traces[1]
    source = AttackSource(
        trace["prompt"],
        trace["reasoning"],
        trace["answer"],
        same_domain_reasoning=donor["reasoning"],
        other_domain_reasoning=dev_traces[-1]["reasoning"],
    )
    inflated = inflate(source, attack, 0.5, tokenizer=tokenizer, rng=np.random.default_rng(1))
    original = tokenizer.encode(trace["reasoning"])
    assert inflated.original_tokens == len(original)
    assert inflated.injected_tokens == round(0.5 * len(original))
    assert len(inflated.token_ids) == len(original) + inflated.injected_tokens


def test_unknown_attacks_and_empty_sources_are_typed_errors(tokenizer: Tokenizer) -> None:
    source = AttackSource("p", "some reasoning here", "a")
    rng = np.random.default_rng(0)
    with pytest.raises(MalformedInput) as info:
        inflate(source, "nope", 1.0, tokenizer=tokenizer, rng=rng)
    assert info.value.code == "coin.attack_unknown"
    with pytest.raises(MalformedInput) as info:
        inflate(source, "splice_same_domain", 1.0, tokenizer=tokenizer, rng=rng)
    assert info.value.code == "coin.attack_source_empty"


def test_rare_runs_counts_runs_of_random_ids_and_flags_two(
    tokenizer: Tokenizer, calibration: Calibration, math_trace: dict[str, Any]
) -> None:
    ids = tokenizer.encode(math_trace["reasoning"])
    starts = _separate_starts(len(ids), 30, np.random.default_rng(4))
    assert rare_runs(_runs(ids, starts)) == 0.0
    rng = np.random.default_rng(5)
    padded = list(ids)
    for start in starts[:2]:  # two opened runs land in padding of random ids
        padded[start : start + 8] = rng.integers(RARE_TOKEN_ID, 100_000, size=8).tolist()
    one = padded[: starts[1]] + ids[starts[1] :]
    assert rare_runs(_runs(one, starts)) == 1.0
    assert rare_runs(_runs(padded, starts)) == 2.0
    for domain in ("math", "safety"):  # one odd run passes, two fail
        thresholds = calibration.for_domain(domain)
        limit = (
            thresholds.centers["rare_runs"] + thresholds.threshold * thresholds.spreads["rare_runs"]
        )
        assert 1.0 < limit < 2.0


def test_rare_tokens_separates_reasoning_from_random_ids(
    tokenizer: Tokenizer, dev_traces: list[dict[str, Any]]
) -> None:
    assert rare_tokens([]) == 0.0
    shares = [rare_tokens(tokenizer.encode(trace["reasoning"])) for trace in dev_traces]
    # Honest reasoning is mostly early-merge tokens (dev: median ~5%, max 13.4%) ...
    assert float(np.median(shares)) < 0.08 and max(shares) < 0.2
    # ... while uniformly random ids land at or past RARE_TOKEN_ID ~70% of the time.
    random_ids = np.random.default_rng(9).integers(0, 100_000, size=5000).tolist()
    assert 0.65 < rare_tokens(random_ids) < 0.75
