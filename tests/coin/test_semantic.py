"""Each semantic check flags its attack on a real trace, and passes the honest one.

The openings are real (F's provider over real dev traces, E's challenge); an attack is what
a cheating provider would send in their place. Thresholds are the packaged fit.
"""

from __future__ import annotations

import dataclasses
import math
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
    Calibration,
    Measurements,
    Thresholds,
    fit_thresholds,
    measure,
    wilson_interval,
)
from tallystick.daemon.coin.tokenizer import Tokenizer
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.coin import Opening, block_count, challenge_indices
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.keys import PrivateKey


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
    return commitment.open(challenge_indices(bytes(32), len(ids), 256, k))


def _measure(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    openings: list[Opening],
    trace: dict[str, Any],
    *,
    visible: frozenset[int] | None = None,
    length_z: float = 0.0,
) -> Measurements:
    prompt_vec, answer_vec = engine.embed_texts([trace["prompt"], trace["answer"]])
    if visible is None:
        visible = frozenset(tokenizer.encode(trace["prompt"] + "\n" + trace["answer"]))
    return measure(
        engine,
        tokenizer,
        openings=openings,
        prompt_embedding=prompt_vec,
        answer_embedding=answer_vec,
        visible_ids=visible,
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
    measured = _measure(engine, tokenizer, openings, trace)
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
            length_z=0.0,
        )
    assert info.value.code == "coin.audit_incomplete"


def test_fit_thresholds_hits_its_in_sample_target() -> None:
    rng = np.random.default_rng(0)
    honest = [{check: float(rng.normal()) for check in CHECKS} for _ in range(2000)]
    for audit in honest:  # a cosine, as duplicate_blocks is (its threshold stays below 1)
        audit["duplicate_blocks"] = float(rng.uniform(0.5, 0.9))
    thresholds = fit_thresholds(honest, fpr_target=0.01)
    failing = sum(max(thresholds.z_scores(a).values()) > thresholds.threshold for a in honest)
    assert failing <= 20
    assert failing >= 10  # not trivially strict either


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
