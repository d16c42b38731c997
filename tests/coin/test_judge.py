"""The auditor's flow end to end on real traces: honest passes, duplicated blocks fail,
protocol cheats fail closed with their codes, and the evidence re-verifies offline."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from tallystick.daemon.coin.attacks import AttackSource, inflate
from tallystick.daemon.coin.embedding import EmbeddingEngine
from tallystick.daemon.coin.judge import Auditor, Trace, judge_trace, parse_trace, seeded_nonces
from tallystick.daemon.coin.provider import Commitment, commit_tokens
from tallystick.daemon.coin.tokenizer import Tokenizer
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.coin import (
    SKETCH_ENTRY_BYTES,
    Opening,
    ReportedUsage,
    sign_head,
    sketch_sha256,
    split_sketch,
    verify_evidence,
)
from tallystick.verifier.errors import MalformedInput


@pytest.fixture(scope="module")
def auditor(engine: EmbeddingEngine, tokenizer: Tokenizer) -> Auditor:
    return Auditor(engine, tokenizer)


def _trace(raw: dict[str, Any]) -> Trace:
    return Trace(raw["id"], raw["prompt"], raw["reasoning"], raw["answer"], raw["domain"])


@pytest.fixture(scope="module")
def medium_math(dev_traces: list[dict[str, Any]], tokenizer: Tokenizer) -> Trace:
    """The first math trace of 600-900 reasoning tokens (three or four blocks of 256)."""
    for raw in dev_traces:
        if raw["domain"] == "math" and 600 <= len(tokenizer.encode(raw["reasoning"])) <= 900:
            return _trace(raw)
    raise AssertionError("no medium math trace in the dev set")


def test_honest_trace_passes_and_its_evidence_verifies(
    auditor: Auditor, medium_math: Trace, signer: NoteSigner
) -> None:
    outcome = judge_trace(auditor, medium_math, signer=signer, draw_nonce=seeded_nonces(1))

    assert outcome.passed, outcome.evidence and outcome.evidence.verdict.flagged
    assert outcome.evidence is not None and outcome.score is not None
    assert outcome.score <= auditor.calibration.for_domain("math").threshold
    verdict = verify_evidence(outcome.evidence.to_json())
    assert verdict.consistent
    assert verdict.reasoning_tokens == outcome.reported_tokens
    assert verdict.k == outcome.opened_leaves >= auditor.challenge_template.k
    # Anchors open runs, and the sketch and its revealed key travel with the evidence.
    run_length = auditor.calibration.run_length
    assert outcome.evidence.challenge.run_length == run_length > 1
    assert outcome.opened_leaves > outcome.evidence.challenge.k
    assert outcome.evidence.sketch is not None and outcome.evidence.sketch_key is not None
    assert outcome.measurements is not None
    assert outcome.measurements.noncanonical_runs == 0.0
    # The evidence holds no reasoning text, only hashes, fingerprints and token ids.
    assert medium_math.reasoning[100:160].encode() not in outcome.evidence.to_json()


def test_duplicated_blocks_fail(
    auditor: Auditor, medium_math: Trace, signer: NoteSigner, tokenizer: Tokenizer
) -> None:
    source = AttackSource(medium_math.prompt, medium_math.reasoning, medium_math.answer)
    inflated = inflate(
        source, "duplicate_blocks", 1.0, tokenizer=tokenizer, rng=np.random.default_rng(0)
    )

    outcome = judge_trace(
        auditor,
        medium_math,
        signer=signer,
        reasoning_ids=inflated.token_ids,
        draw_nonce=seeded_nonces(2),
    )

    assert not outcome.passed
    assert outcome.evidence is not None
    assert any(flag.startswith("duplicate_blocks@") for flag in outcome.evidence.verdict.flagged)
    # The sketch shows the copies across the whole trace, not only where leaves were opened.
    assert any(flag.startswith("repeated_spans@") for flag in outcome.evidence.verdict.flagged)
    assert outcome.measurements is not None and outcome.measurements.repeated_spans >= 0.5
    assert outcome.reported_tokens == inflated.original_tokens + inflated.injected_tokens
    assert not verify_evidence(outcome.evidence.to_json()).consistent


def test_billing_more_than_committed_fails_closed(
    auditor: Auditor, short_traces: list[dict[str, Any]], signer: NoteSigner
) -> None:
    trace = _trace(short_traces[0])
    commitment = commit_tokens(
        auditor.engine,
        auditor.tokenizer,
        reasoning_ids=auditor.tokenizer.encode(trace.reasoning),
        prompt=trace.prompt,
        answer=trace.answer,
        request_id="r1",
        model="m",
        reported_usage=ReportedUsage(input=None, output=None, reasoning=10_000, cached=None),
        signer=signer,
    )

    outcome = auditor.audit(
        head_note=commitment.head_note,
        provider_vkey=signer.vkey,
        opener=commitment.answer_challenge,
        prompt=trace.prompt,
        answer=trace.answer,
        sketch=commitment.sketch,
    )

    assert not outcome.passed
    assert outcome.error_code == "coin.usage_mismatch"
    assert outcome.evidence is None and outcome.score is None


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        pytest.param(lambda openings: openings[1:], "coin.challenge_mismatch", id="drops-one"),
        pytest.param(
            lambda openings: (
                [dataclasses.replace(openings[0], token_id=openings[0].token_id + 1), *openings[1:]]
            ),
            "coin.token_commitment_mismatch",
            id="other-token",
        ),
    ],
)
def test_bad_openings_fail_closed(
    auditor: Auditor,
    short_traces: list[dict[str, Any]],
    signer: NoteSigner,
    tamper: Callable[[list[Opening]], list[Opening]],
    code: str,
) -> None:
    trace = _trace(short_traces[3])
    commitment = commit_tokens(
        auditor.engine,
        auditor.tokenizer,
        reasoning_ids=auditor.tokenizer.encode(trace.reasoning),
        prompt=trace.prompt,
        answer=trace.answer,
        request_id="r2",
        model="m",
        reported_usage=None,
        signer=signer,
    )

    outcome = auditor.audit(
        head_note=commitment.head_note,
        provider_vkey=signer.vkey,
        opener=lambda indices: (tamper(commitment.open(indices)), commitment.sketch_key),
        prompt=trace.prompt,
        answer=trace.answer,
        sketch=commitment.sketch,
    )

    assert not outcome.passed
    assert outcome.error_code == code


def test_a_delivered_answer_that_differs_from_the_committed_one_fails(
    auditor: Auditor, short_traces: list[dict[str, Any]], signer: NoteSigner
) -> None:
    trace = _trace(short_traces[1])
    commitment = commit_tokens(
        auditor.engine,
        auditor.tokenizer,
        reasoning_ids=auditor.tokenizer.encode(trace.reasoning),
        prompt=trace.prompt,
        answer=trace.answer,
        request_id="r3",
        model="m",
        reported_usage=None,
        signer=signer,
    )
    outcome = auditor.audit(
        head_note=commitment.head_note,
        provider_vkey=signer.vkey,
        opener=commitment.answer_challenge,
        prompt=trace.prompt,
        answer=trace.answer + " (edited)",
        sketch=commitment.sketch,
    )
    assert outcome.error_code == "coin.answer_mismatch"


def _commitment(
    auditor: Auditor,
    trace: Trace,
    signer: NoteSigner,
    request_id: str,
    reasoning_ids: list[int] | None = None,
) -> Commitment:
    return commit_tokens(
        auditor.engine,
        auditor.tokenizer,
        reasoning_ids=(
            auditor.tokenizer.encode(trace.reasoning) if reasoning_ids is None else reasoning_ids
        ),
        prompt=trace.prompt,
        answer=trace.answer,
        request_id=request_id,
        model="m",
        reported_usage=None,
        signer=signer,
        block_size=auditor.calibration.block_size,
    )


def _never_opens(indices: list[int]) -> tuple[list[Opening], bytes]:
    raise AssertionError("the auditor asked for openings of a head it should have refused")


def test_a_head_without_a_sketch_is_unsupported(
    auditor: Auditor, short_traces: list[dict[str, Any]], signer: NoteSigner
) -> None:
    trace = _trace(short_traces[4])
    commitment = _commitment(auditor, trace, signer, "r4")
    bare_head = dataclasses.replace(commitment.head, sketch_sha256=None)
    for sketch in (b"", commitment.sketch):
        outcome = auditor.audit(
            head_note=sign_head(bare_head, signer),
            provider_vkey=signer.vkey,
            opener=_never_opens,
            prompt=trace.prompt,
            answer=trace.answer,
            sketch=sketch,
        )
        assert not outcome.passed and outcome.evidence is None
        assert outcome.error_code == "coin.head_unsupported"


def test_a_sketch_other_than_the_bound_one_fails_before_the_challenge(
    auditor: Auditor, short_traces: list[dict[str, Any]], signer: NoteSigner
) -> None:
    trace = _trace(short_traces[4])
    commitment = _commitment(auditor, trace, signer, "r5")
    sketch = commitment.sketch
    for other in (
        sketch[:-SKETCH_ENTRY_BYTES],
        sketch + bytes(8),
        bytes([sketch[0] ^ 1]) + sketch[1:],
    ):
        outcome = auditor.audit(
            head_note=commitment.head_note,
            provider_vkey=signer.vkey,
            opener=_never_opens,
            prompt=trace.prompt,
            answer=trace.answer,
            sketch=other,
        )
        assert not outcome.passed and outcome.evidence is None
        assert outcome.error_code == "coin.sketch_mismatch"


def test_a_sketch_key_other_than_the_provider_s_fails(
    auditor: Auditor, short_traces: list[dict[str, Any]], signer: NoteSigner
) -> None:
    trace = _trace(short_traces[4])
    commitment = _commitment(auditor, trace, signer, "r6")
    for key, code in ((bytes(32), "coin.sketch_mismatch"), (bytes(31), "coin.sketch_malformed")):
        outcome = auditor.audit(
            head_note=commitment.head_note,
            provider_vkey=signer.vkey,
            opener=lambda indices, key=key: (commitment.open(indices), key),
            prompt=trace.prompt,
            answer=trace.answer,
            sketch=commitment.sketch,
        )
        assert not outcome.passed and outcome.evidence is None
        assert outcome.error_code == code


def test_a_sketch_that_hides_copied_blocks_fails(
    auditor: Auditor, medium_math: Trace, signer: NoteSigner, tokenizer: Tokenizer
) -> None:
    # The provider bills duplicated blocks, but commits to a sketch in which every repeated
    # n-gram is replaced by fresh bytes, so the copies do not show. Half the positions lie, so
    # the opened runs cover a lying entry, and the sketch fails its verification.
    source = AttackSource(medium_math.prompt, medium_math.reasoning, medium_math.answer)
    inflated = inflate(
        source, "duplicate_blocks", 1.0, tokenizer=tokenizer, rng=np.random.default_rng(0)
    )
    commitment = _commitment(auditor, medium_math, signer, "r7", list(inflated.token_ids))
    seen: set[bytes] = set()
    forged = []
    for number, entry in enumerate(split_sketch(commitment.head, commitment.sketch)):
        forged.append(entry if entry not in seen else number.to_bytes(SKETCH_ENTRY_BYTES, "big"))
        seen.add(entry)
    hidden = b"".join(forged)
    assert len(set(forged)) == len(forged) and hidden != commitment.sketch
    head = dataclasses.replace(commitment.head, sketch_sha256=sketch_sha256(hidden))

    outcome = auditor.audit(
        head_note=sign_head(head, signer),
        provider_vkey=signer.vkey,
        opener=commitment.answer_challenge,
        prompt=medium_math.prompt,
        answer=medium_math.answer,
        sketch=hidden,
        draw_nonce=seeded_nonces(3),
    )

    assert not outcome.passed and outcome.evidence is None
    assert outcome.error_code == "coin.sketch_mismatch"


def test_a_bad_sketch_key_fails_closed_on_reasoning_shorter_than_an_ngram(
    auditor: Auditor, signer: NoteSigner
) -> None:
    trace = Trace("tiny", "What is 2+2?", "Two plus two.", "4", "math")
    commitment = _commitment(auditor, trace, signer, "r8")
    assert 0 < commitment.head.reasoning_tokens < 8 and commitment.sketch == b""
    honest = auditor.audit(
        head_note=commitment.head_note,
        provider_vkey=signer.vkey,
        opener=commitment.answer_challenge,
        prompt=trace.prompt,
        answer=trace.answer,
        sketch=commitment.sketch,
    )
    assert honest.error_code is None and honest.evidence is not None
    outcome = auditor.audit(
        head_note=commitment.head_note,
        provider_vkey=signer.vkey,
        opener=lambda indices: (commitment.open(indices), b"short"),
        prompt=trace.prompt,
        answer=trace.answer,
        sketch=commitment.sketch,
    )
    assert not outcome.passed and outcome.evidence is None
    assert outcome.error_code == "coin.sketch_malformed"


def test_seeded_audits_repeat(
    auditor: Auditor, short_traces: list[dict[str, Any]], signer: NoteSigner
) -> None:
    trace = _trace(short_traces[2])
    # The head's time is part of what the challenge is drawn from: pin it too.
    pinned = {"trace_secret": bytes(32), "time_s": 1_795_000_000}
    first = judge_trace(auditor, trace, signer=signer, draw_nonce=seeded_nonces(5), **pinned)
    second = judge_trace(auditor, trace, signer=signer, draw_nonce=seeded_nonces(5), **pinned)
    assert first.score == second.score
    assert first.evidence is not None and second.evidence is not None
    assert first.evidence.openings == second.evidence.openings


@pytest.mark.parametrize(
    "line",
    [
        "{",
        "[]",
        '{"id": "x", "prompt": "p", "reasoning": "r"}',
        '{"id": "x", "prompt": "p", "reasoning": "", "answer": "a"}',
        '{"id": 1, "prompt": "p", "reasoning": "r", "answer": "a"}',
        '{"id": "x", "prompt": "p", "reasoning": "r", "answer": "a", "domain": 3}',
        "[" * 100_000,
    ],
)
def test_parse_trace_rejects_bad_lines_with_a_code(line: str) -> None:
    with pytest.raises(MalformedInput) as info:
        parse_trace(line, line_number=7)
    assert info.value.code == "coin.trace_malformed"
    assert "line 7" in str(info.value)


def test_parse_trace_reads_the_documented_fields() -> None:
    trace = parse_trace(
        '{"id": "t", "prompt": "p", "reasoning": "r", "answer": "a", "extra": 1}', line_number=1
    )
    assert trace == Trace("t", "p", "r", "a", None)
