"""The provider's commitment builder: commit -> challenge -> open -> verify, and its refusals."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from itertools import groupby
from typing import Any

import pytest
from tallystick.daemon.coin.embedding import EmbeddingEngine
from tallystick.daemon.coin.provider import Commitment, commit, commit_tokens
from tallystick.daemon.coin.tokenizer import Tokenizer
from tallystick.verifier import merkle
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.coin import (
    CommitmentHead,
    CommitmentMismatch,
    LeafOpeningInvalid,
    Opening,
    ReportedUsage,
    challenge_indices,
    challenge_seed,
    leaf_salt,
    ngram_sketch,
    quantize,
    sign_head,
    sketch_key,
    sketch_sha256,
    split_sketch,
    verify_head,
    verify_opening,
    verify_sketch,
)
from tallystick.verifier.errors import MalformedInput

SECRET = bytes(range(32))
NONCE = b"auditor-nonce-16"
BLOCK = 32  # small blocks: a short trace still spans several


@pytest.fixture(scope="module")
def trace(short_traces: list[dict[str, Any]]) -> dict[str, Any]:
    return short_traces[0]


@pytest.fixture(scope="module")
def commitment(
    engine: EmbeddingEngine, tokenizer: Tokenizer, trace: dict[str, Any], signer: NoteSigner
) -> Commitment:
    return commit(
        engine,
        tokenizer,
        prompt=trace["prompt"],
        reasoning=trace["reasoning"],
        answer=trace["answer"],
        request_id=trace["id"],
        model="sky-t1-32b",
        reported_usage=None,
        signer=signer,
        block_size=BLOCK,
        trace_secret=SECRET,
        time_s=1_800_000_000,
    )


def test_head_binds_the_count_and_the_context(
    commitment: Commitment,
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    trace: dict[str, Any],
    signer: NoteSigner,
) -> None:
    head = verify_head(
        commitment.head_note, signer.verifier, answer=trace["answer"], prompt=trace["prompt"]
    )
    assert head == commitment.head
    ids = tokenizer.encode(trace["reasoning"])
    assert head.reasoning_tokens == len(ids) == len(commitment.leaves) > 3 * BLOCK
    assert head.reported_usage == ReportedUsage(None, None, len(ids), None)
    assert commitment.token_ids == tuple(ids)
    assert [len(block) for block in commitment.blocks[:-1]] == [BLOCK] * (len(ids) // BLOCK)
    assert (head.tokenizer, head.embedder) == (tokenizer.id, engine.model_id)
    assert (head.embedder_sha256, head.block_size) == (engine.weights_sha256, BLOCK)
    assert (head.origin, head.request_id, head.time_s) == (signer.name, trace["id"], 1_800_000_000)
    leaf_hashes = [leaf.hash() for leaf in commitment.leaves]
    assert head.root == merkle.root_from_leaf_hashes(leaf_hashes)


def test_leaves_hold_the_engine_fingerprints(
    commitment: Commitment, engine: EmbeddingEngine, tokenizer: Tokenizer
) -> None:
    blocks = commitment.blocks
    block_texts = ["".join(tokenizer.token_text(i) for i in block) for block in blocks[:2]]
    block_fps = [quantize(v.tolist()) for v in engine.embed_texts(block_texts)]
    for index in (0, 5, BLOCK - 1, BLOCK, BLOCK + 7):
        leaf = commitment.leaves[index]
        token_id = commitment.token_ids[index]
        assert (leaf.token_index, leaf.block_index) == (index, index // BLOCK)
        assert leaf.block_fp == block_fps[index // BLOCK]
        vector = engine.token_embeddings(tokenizer, [token_id])[0]
        assert leaf.token_fp == quantize(vector.tolist())
    assert block_fps[0] != block_fps[1]


def test_commit_open_verify_for_a_challenge(
    commitment: Commitment, trace: dict[str, Any], signer: NoteSigner
) -> None:
    head = verify_head(commitment.head_note, signer.verifier, answer=trace["answer"])
    seed = challenge_seed(commitment.head_note, NONCE)
    indices = challenge_indices(seed, head.reasoning_tokens, head.block_size, 12)
    openings = commitment.open(indices)
    assert [opening.index for opening in openings] == indices
    for opening in openings:
        verify_opening(head, opening)
        assert opening.token_id == commitment.token_ids[opening.index]
        assert opening.salt == leaf_salt(SECRET, opening.index)
    # The first and the last leaf (the short last block) open too.
    for opening in commitment.open([0, head.reasoning_tokens - 1]):
        verify_opening(head, opening)


def test_head_binds_the_ngram_sketch_and_the_key_comes_with_the_openings(
    commitment: Commitment, trace: dict[str, Any], signer: NoteSigner
) -> None:
    head = verify_head(commitment.head_note, signer.verifier, answer=trace["answer"])
    m = head.reasoning_tokens
    assert commitment.sketch_key == sketch_key(SECRET)
    assert commitment.sketch == ngram_sketch(sketch_key(SECRET), commitment.token_ids)
    assert len(commitment.sketch) == 8 * (m - 7)
    assert head.sketch_sha256 == sketch_sha256(commitment.sketch)
    assert len(split_sketch(head, commitment.sketch)) == m - 7
    # The key is revealed with the openings, and never shows in the commitment's repr.
    seed = challenge_seed(commitment.head_note, NONCE)
    indices = challenge_indices(seed, m, head.block_size, 6, 8)
    openings, key = commitment.answer_challenge(indices)
    assert key == commitment.sketch_key
    assert openings == commitment.open(indices)
    assert key.hex() not in repr(commitment) and str(key) not in repr(commitment)
    pairs = [(opening.index, opening.token_id) for opening in openings]
    # Every maximal run of consecutive opened leaves covers (its length - 7) whole n-grams.
    runs = [len(list(group)) for _, group in groupby(enumerate(indices), key=lambda p: p[1] - p[0])]
    assert min(runs) >= 8 and sum(runs) == len(indices)
    assert verify_sketch(head, commitment.sketch, key, pairs) == sum(n - 7 for n in runs)
    assert (
        verify_sketch(
            head, commitment.sketch, key, [(i, commitment.token_ids[i]) for i in range(m)]
        )
        == m - 7
    )


def _tampered(opening: Opening, commitment: Commitment) -> dict[str, Opening]:
    other = commitment.open([opening.index + 1])[0]
    flipped = bytes([opening.proof[0][0] ^ 1]) + opening.proof[0][1:]
    fp = bytes([(opening.leaf.token_fp[0] + 1) % 127]) + opening.leaf.token_fp[1:]
    return {
        "token_id": dataclasses.replace(opening, token_id=opening.token_id + 1),
        "salt": dataclasses.replace(opening, salt=other.salt),
        "proof_byte": dataclasses.replace(opening, proof=(flipped, *opening.proof[1:])),
        "proof_short": dataclasses.replace(opening, proof=opening.proof[:-1]),
        "token_fp": dataclasses.replace(
            opening, leaf=dataclasses.replace(opening.leaf, token_fp=fp)
        ),
        "block_fp": dataclasses.replace(
            opening, leaf=dataclasses.replace(opening.leaf, block_fp=other.leaf.token_fp)
        ),
        "other_leaf_here": dataclasses.replace(other, index=opening.index),
        "moved_index": dataclasses.replace(
            opening,
            index=opening.index + 1,
            leaf=dataclasses.replace(opening.leaf, token_index=opening.index + 1),
        ),
        "block_index": dataclasses.replace(
            opening,
            leaf=dataclasses.replace(opening.leaf, block_index=opening.leaf.block_index + 1),
        ),
    }


EXPECTED_CODES = {
    "token_id": "coin.token_commitment_mismatch",
    "salt": "coin.token_commitment_mismatch",
    "proof_byte": "coin.inclusion_invalid",
    "proof_short": "coin.inclusion_invalid",
    "token_fp": "coin.inclusion_invalid",
    "block_fp": "coin.inclusion_invalid",
    "other_leaf_here": "coin.index_mismatch",
    "moved_index": "coin.inclusion_invalid",
    "block_index": "coin.block_mismatch",
}


@pytest.mark.parametrize("how", sorted(EXPECTED_CODES))
def test_tampered_openings_fail(commitment: Commitment, signer: NoteSigner, how: str) -> None:
    head = verify_head(commitment.head_note, signer.verifier)
    honest = commitment.open([2 * BLOCK + 3])[0]
    verify_opening(head, honest)
    with pytest.raises(LeafOpeningInvalid) as exc:
        verify_opening(head, _tampered(honest, commitment)[how])
    assert exc.value.code == EXPECTED_CODES[how]


def test_an_inflated_count_fails_at_the_tail(commitment: Commitment, signer: NoteSigner) -> None:
    """A head re-signed for more tokens (and billed for them) over the same tree.

    The claimed positions past the real ones cannot be opened at all, and neither can the
    real tail. Leaves whose inclusion path has the same shape at both sizes (here the left
    subtree) still verify: the count is enforced by sampling, like padding, with every
    sampled unopenable position caught (p = 1).
    """
    m = commitment.head.reasoning_tokens
    for claimed in (m + 1, 2 * m):
        inflated = dataclasses.replace(
            commitment.head,
            reasoning_tokens=claimed,
            reported_usage=ReportedUsage(None, None, claimed, None),
        )
        head = verify_head(sign_head(inflated, signer), signer.verifier)
        with pytest.raises(LeafOpeningInvalid) as exc:
            verify_opening(head, commitment.open([m - 1])[0])
        assert exc.value.code == "coin.inclusion_invalid"
        with pytest.raises(MalformedInput):
            commitment.open([m])
        failing = 0
        for opening in commitment.open(range(m)):
            try:
                verify_opening(head, opening)
            except LeafOpeningInvalid:
                failing += 1
        assert failing + (claimed - m) >= claimed - m + 1


def test_same_inputs_and_secret_give_the_same_note(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    trace: dict[str, Any],
    signer: NoteSigner,
    commitment: Commitment,
) -> None:
    again = commit_tokens(
        engine,
        tokenizer,
        reasoning_ids=commitment.token_ids,
        prompt=trace["prompt"],
        answer=trace["answer"],
        request_id=trace["id"],
        model="sky-t1-32b",
        reported_usage=None,
        signer=signer,
        block_size=BLOCK,
        trace_secret=SECRET,
        time_s=1_800_000_000,
    )
    assert again.head_note == commitment.head_note


def test_a_random_secret_per_trace(
    engine: EmbeddingEngine, tokenizer: Tokenizer, signer: NoteSigner
) -> None:
    def once() -> Commitment:
        return commit(
            engine,
            tokenizer,
            prompt="p",
            reasoning="Two plus two is four.",
            answer="4",
            request_id="r1",
            model="m",
            reported_usage=None,
            signer=signer,
            time_s=1,
        )

    first, second = once(), once()
    assert first.head.root != second.head.root
    assert first.open([0])[0].salt != second.open([0])[0].salt
    assert "secret" not in repr(first) and str(first.open([0])[0].salt) not in repr(first)


def test_reported_usage_is_signed_as_given(
    engine: EmbeddingEngine, tokenizer: Tokenizer, make_signer: Callable[[str], NoteSigner]
) -> None:
    signer = make_signer("provider.example/usage")
    # The provider bills 7 reasoning tokens for 8 committed ones: signed as given, and the
    # auditor's head check catches it.
    usage = ReportedUsage(input=12, output=40, reasoning=7, cached=0)
    made = commit(
        engine,
        tokenizer,
        prompt="What is 2+2?",
        reasoning="Two plus two is four, clearly.",
        answer="4",
        request_id="req-2",
        model="m",
        reported_usage=usage,
        signer=signer,
    )
    assert CommitmentHead.from_text(made.head_note.split("\n\n")[0] + "\n").reported_usage == usage
    assert made.head.reasoning_tokens == 8
    with pytest.raises(CommitmentMismatch) as exc:
        verify_head(made.head_note, signer.verifier)
    assert exc.value.code == "coin.usage_mismatch"


def test_empty_reasoning_commits_to_zero_tokens(
    engine: EmbeddingEngine, tokenizer: Tokenizer, signer: NoteSigner
) -> None:
    made = commit(
        engine,
        tokenizer,
        prompt="p",
        reasoning="",
        answer="a",
        request_id="r",
        model="m",
        reported_usage=None,
        signer=signer,
    )
    head = verify_head(made.head_note, signer.verifier)
    assert (head.reasoning_tokens, made.blocks, made.open([])) == (0, (), [])
    assert head.root == merkle.root_from_leaf_hashes([])
    assert made.sketch == b"" and head.sketch_sha256 == sketch_sha256(b"")
    assert made.answer_challenge([]) == ([], made.sketch_key)


def _commit_ids(
    engine: EmbeddingEngine, tokenizer: Tokenizer, signer: NoteSigner, **overrides: Any
) -> Commitment:
    arguments: dict[str, Any] = {
        "reasoning_ids": [791, 4320, 374],
        "prompt": "p",
        "answer": "a",
        "request_id": "r",
        "model": "m",
        "reported_usage": None,
        "signer": signer,
    }
    arguments.update(overrides)
    return commit_tokens(engine, tokenizer, **arguments)


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        pytest.param({"reasoning_ids": [791, -1]}, "coin.token_unknown", id="negative-id"),
        pytest.param({"reasoning_ids": [100_256]}, "coin.token_unknown", id="unknown-id"),
        pytest.param({"reasoning_ids": ["791"]}, "coin.token_unknown", id="str-id"),
        pytest.param({"block_size": 0}, "coin.bad_int", id="zero-block"),
        pytest.param({"block_size": True}, "coin.bad_int", id="bool-block"),
        pytest.param({"trace_secret": b"short"}, "coin.bad_secret", id="short-secret"),
        pytest.param({"request_id": "has space"}, "coin.head_malformed", id="request-id"),
        pytest.param({"model": ""}, "coin.head_malformed", id="empty-model"),
        pytest.param({"time_s": -5}, "coin.head_malformed", id="negative-time"),
    ],
)
def test_bad_commit_input_is_refused(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    signer: NoteSigner,
    overrides: dict[str, Any],
    code: str,
) -> None:
    with pytest.raises(MalformedInput) as exc:
        _commit_ids(engine, tokenizer, signer, **overrides)
    assert exc.value.code == code


def test_non_text_reasoning_is_refused(
    engine: EmbeddingEngine, tokenizer: Tokenizer, signer: NoteSigner
) -> None:
    with pytest.raises(MalformedInput) as exc:
        commit(
            engine,
            tokenizer,
            prompt="p",
            reasoning=b"bytes",  # type: ignore[arg-type]
            answer="a",
            request_id="r",
            model="m",
            reported_usage=None,
            signer=signer,
        )
    assert exc.value.code == "coin.input_invalid"


@pytest.mark.parametrize("index", [-1, 3, True, 1.0, "0"], ids=repr)
def test_opening_outside_the_tree_is_refused(
    engine: EmbeddingEngine, tokenizer: Tokenizer, signer: NoteSigner, index: Any
) -> None:
    made = _commit_ids(engine, tokenizer, signer)
    with pytest.raises(MalformedInput) as exc:
        made.open([0, index])
    assert exc.value.code == "coin.index_out_of_range"
