"""The CoIn protocol core (coin.md §4.1-§4.5): leaves, head, challenge, sample size, openings."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tallystick.verifier import coin
from tallystick.verifier.checkpoint import NoteSigner, sign_note
from tallystick.verifier.errors import (
    CheckpointInvalid,
    MalformedInput,
    TallystickError,
    UnsupportedVersion,
)
from tallystick.verifier.keys import PrivateKey
from tallystick.verifier.merkle import MerkleTree, hash_children, hash_leaf, verify_inclusion
from vectors import generate_coin as golden

VECTORS = Path(__file__).resolve().parent / "vectors" / "coin"


def _vector(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


@pytest.fixture(scope="module")
def trace() -> golden.Synthetic:
    return golden.commit(golden.TOKEN_IDS)


# -- quantization ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", _vector("quantize.json")["cases"], ids=lambda case: case["description"]
)
def test_quantize_matches_the_golden_bytes(case: dict[str, Any]) -> None:
    assert [b - 256 if b > 127 else b for b in coin.quantize(case["vector"])] == [
        b - 256 if b > 127 else b for b in case["int8"]
    ]


def test_quantize_rounds_half_to_even_and_maps_zero_to_zeros() -> None:
    assert coin.quantize([1.0, 1.0, 1.0, 1.0]) == bytes([64] * 4)  # 63.5 -> 64
    # [125, 221, 7, 1] has norm exactly 254, so x*127 for the first is 62.5 -> 62 (not 63).
    assert 125 / 254 * 127 == 62.5
    assert coin.quantize([125.0, 221.0, 7.0, 1.0])[0] == 62
    assert coin.quantize([-125.0, 221.0, 7.0, 1.0])[0] == (-62) & 0xFF
    assert coin.quantize([0.0] * 384) == bytes(384)


def test_quantize_is_scale_invariant_and_never_writes_minus_128() -> None:
    vector = golden.synthetic_vector(b"scale")
    assert coin.quantize(vector) == coin.quantize([x * 1e6 for x in vector])
    assert 0x80 not in coin.quantize([-1.0, 0.0]) and coin.quantize([-1.0, 0.0])[0] == 0x81


@pytest.mark.parametrize(
    "vector", [[], [float("nan")], [float("inf"), 1.0], ["a"], [None]], ids=repr
)
def test_quantize_rejects_bad_vectors(vector: list[Any]) -> None:
    with pytest.raises(MalformedInput) as caught:
        coin.quantize(vector)
    assert caught.value.code == "coin.bad_vector"


def test_within_tolerance_is_plus_minus_one_in_int8() -> None:
    base = coin.quantize(golden.synthetic_vector(b"tol"))
    near = bytes((b + 1) & 0xFF if b != 127 else 126 for b in base)
    far = bytes((b + 2) & 0xFF if b < 120 else b for b in base)
    assert coin.within_tolerance(base, base)
    assert coin.within_tolerance(base, near)
    assert not coin.within_tolerance(base, far)
    assert coin.within_tolerance(base, far, tolerance=2)
    # 127 and -127 are 254 apart, not 2 (no unsigned wrap-around).
    assert not coin.within_tolerance(bytes([127]), bytes([0x81]))
    assert not coin.within_tolerance(base, base[:-1])
    assert not coin.within_tolerance(b"", b"")
    assert not coin.within_tolerance(base, base, tolerance=-1)


# -- salts, commitments, leaves --------------------------------------------------------------


def test_salt_and_commitment_match_an_independent_computation() -> None:
    vector = _vector("leaf.json")
    secret = bytes.fromhex(vector["trace_secret_hex"])
    salt = hmac.new(secret, b"coin/salt" + (5).to_bytes(4, "big"), hashlib.sha256).digest()[:16]
    commitment = hashlib.sha256(
        b"coin/tok/v1" + salt + vector["token_id"].to_bytes(4, "big")
    ).digest()
    assert coin.leaf_salt(secret, 5) == salt == bytes.fromhex(vector["salt_hex"])
    assert coin.token_commitment(salt, vector["token_id"]) == commitment
    assert commitment.hex() == vector["token_commitment_hex"]
    assert coin.leaf_salt(secret, 6) != salt


def test_leaf_bytes_round_trip_and_match_the_golden_layout() -> None:
    vector = _vector("leaf.json")
    raw = bytes.fromhex(vector["leaf_input_hex"])
    leaf = coin.Leaf.from_bytes(raw)
    assert len(raw) == coin.LEAF_BYTES == 811
    assert raw[0] == 1 and raw[1:5] == (5).to_bytes(4, "big") and raw[5:9] == (1).to_bytes(4, "big")
    assert raw[41:43] == (384).to_bytes(2, "big")
    assert leaf.to_bytes() == raw
    assert leaf.hash() == hashlib.sha256(b"\x00" + raw).digest()
    assert leaf.hash().hex() == vector["leaf_hash_hex"]


def _leaf_raw() -> bytes:
    return bytes.fromhex(_vector("leaf.json")["leaf_input_hex"])


@pytest.mark.parametrize(
    ("raw", "error", "code"),
    [
        pytest.param(b"\x02" + _leaf_raw()[1:], UnsupportedVersion, "coin.leaf_version", id="v2"),
        pytest.param(_leaf_raw()[:-1], MalformedInput, "coin.leaf_malformed", id="short"),
        pytest.param(_leaf_raw() + b"\x00", MalformedInput, "coin.leaf_malformed", id="long"),
        pytest.param(
            _leaf_raw()[:41] + (383).to_bytes(2, "big") + _leaf_raw()[43:],
            MalformedInput,
            "coin.leaf_malformed",
            id="dim-383",
        ),
        pytest.param(_leaf_raw()[:-1] + b"\x80", MalformedInput, "coin.leaf_malformed", id="-128"),
        pytest.param(b"", MalformedInput, "coin.leaf_malformed", id="empty"),
        pytest.param(b"\x01" + bytes(63), MalformedInput, "coin.leaf_malformed", id="node-size"),
    ],
)
def test_leaf_parser_rejects(raw: bytes, error: type[TallystickError], code: str) -> None:
    with pytest.raises(error) as caught:
        coin.Leaf.from_bytes(raw)
    assert caught.value.code == code


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=900))
def test_leaf_parser_never_crashes_on_arbitrary_bytes(raw: bytes) -> None:
    try:
        leaf = coin.Leaf.from_bytes(raw)
    except TallystickError:
        return
    assert leaf.to_bytes() == raw


@settings(max_examples=150, deadline=None)
@given(st.integers(0, coin.LEAF_BYTES - 1), st.integers(1, 255))
def test_leaf_bytes_are_canonical(position: int, delta: int) -> None:
    raw = bytearray(_leaf_raw())
    raw[position] = (raw[position] + delta) & 0xFF
    try:
        leaf = coin.Leaf.from_bytes(bytes(raw))
    except TallystickError:
        return
    assert leaf.to_bytes() == bytes(raw)


# -- the signed head (§4.3) ------------------------------------------------------------------


def test_head_signs_and_verifies_with_the_golden_bytes(trace: golden.Synthetic) -> None:
    vector = _vector("head.json")
    assert trace.head_note == vector["head_note"]
    verifier = golden.PROVIDER.verifier
    head = coin.verify_head(vector["head_note"], verifier, answer="4", prompt="What is 2 + 2?")
    assert head == trace.head
    assert head.reasoning_tokens == 10 and head.reported_usage.cached is None
    assert coin.CommitmentHead.from_text(head.to_text()) == head
    # The sidecar's countersignature is ignored by the provider check.
    assert coin.verify_head(vector["countersigned_head_note"], verifier) == head


def _resign(text: str) -> str:
    return sign_note(text, golden.PROVIDER)


def test_head_rejects_the_section_4_3_mismatches(trace: golden.Synthetic) -> None:
    verifier = golden.PROVIDER.verifier
    inflated = golden.commit(golden.TOKEN_IDS, reported_reasoning=11)
    with pytest.raises(coin.CommitmentMismatch) as caught:
        coin.verify_head(inflated.head_note, verifier)
    assert caught.value.code == "coin.usage_mismatch"
    missing = trace.head_note.replace("reasoning=10", "reasoning=-")
    with pytest.raises(coin.CommitmentMismatch) as caught:
        coin.verify_head(_resign(missing.split("\n\n")[0] + "\n"), verifier)
    assert caught.value.code == "coin.usage_mismatch"
    # A provider that re-tokenizes may be allowed a stated tolerance, never silently.
    assert coin.verify_head(inflated.head_note, verifier, reasoning_tolerance=1).reasoning_tokens
    with pytest.raises(coin.CommitmentMismatch) as caught:
        coin.verify_head(trace.head_note, verifier, answer="5")
    assert caught.value.code == "coin.answer_mismatch"
    with pytest.raises(coin.CommitmentMismatch) as caught:
        coin.verify_head(trace.head_note, verifier, prompt="What is 2 + 3?")
    assert caught.value.code == "coin.prompt_mismatch"


def test_head_rejects_other_keys_and_altered_text(trace: golden.Synthetic) -> None:
    other = NoteSigner("provider.example/coin", PrivateKey.from_seed(bytes(32)))
    with pytest.raises(CheckpointInvalid) as caught:
        coin.verify_head(trace.head_note, other.verifier)
    assert caught.value.code == "coin.head_signature_invalid"
    altered = trace.head_note.replace("reasoning_tokens 10", "reasoning_tokens 11")
    with pytest.raises(CheckpointInvalid) as caught:
        coin.verify_head(altered, golden.PROVIDER.verifier)
    assert caught.value.code == "coin.head_signature_invalid"
    with pytest.raises(MalformedInput) as caught:
        coin.verify_head("not a note", golden.PROVIDER.verifier)
    assert caught.value.code == "coin.head_malformed"


def _head_text() -> str:
    return str(_vector("head.json")["head_note"]).split("\n\n")[0] + "\n"


def _mutations() -> list[Any]:
    text = _head_text()
    lines = text[:-1].split("\n")
    cases = {
        "no-final-newline": text[:-1],
        "extra-line": text + "extra\n",
        "missing-line": "\n".join(lines[:-1]) + "\n",
        "origin-space": text.replace("provider.example/coin\n", "provider example\n", 1),
        "request-id-empty": text.replace("request_id req-golden-1", "request_id "),
        "key-renamed": text.replace("model ", "Model "),
        "double-space": text.replace("block_size 4", "block_size  4"),
        "block-size-zero": text.replace("block_size 4", "block_size 0"),
        "block-size-leading-zero": text.replace("block_size 4", "block_size 04"),
        "tokens-plus": text.replace("reasoning_tokens 10", "reasoning_tokens +10"),
        "tokens-over-u32": text.replace("reasoning_tokens 10", "reasoning_tokens 4294967296"),
        "usage-order": text.replace("input=12 output=1", "output=1 input=12"),
        "usage-missing": text.replace(" cached=-", ""),
        "usage-bad": text.replace("cached=-", "cached=x"),
        "embedder-no-hash": text.replace(" sha256:973176", "973176"),
        "prompt-upper-hex": text.replace("sha256:38d46ad3", "sha256:38D46AD3"),
        "answer-short": text.replace("sha256:4b227777", "sha256:4b2277"),
        "root-not-base64": text.replace("root 5hRZ", "root *hRZ"),
        "root-short": text.replace(
            "root 5hRZ06NPkVHvOvXzwyrK3vPyG65o8Qmnnjr+FHh+nFk=", "root AAAA"
        ),
        "time-negative": text.replace("time 1700000000", "time -1"),
        "time-over-i63": text.replace("time 1700000000", f"time {1 << 63}"),
        "trailing-space": text.replace("time 1700000000\n", "time 1700000000 \n"),
        "crlf": text.replace("\n", "\r\n"),
    }
    return [pytest.param(value, id=key) for key, value in cases.items()]


@pytest.mark.parametrize("text", _mutations())
def test_head_parser_is_strict_on_every_line(text: str) -> None:
    assert text != _head_text()
    with pytest.raises(MalformedInput) as caught:
        coin.CommitmentHead.from_text(text)
    assert caught.value.code == "coin.head_malformed"


def test_head_parser_names_an_unknown_version() -> None:
    with pytest.raises(UnsupportedVersion) as caught:
        coin.CommitmentHead.from_text(_head_text().replace("coin/v1", "coin/v2", 1))
    assert caught.value.code == "coin.head_version"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(_head_text()) - 1), st.characters(max_codepoint=0x7F))
def test_head_parser_accepts_only_its_own_canonical_text(position: int, char: str) -> None:
    text = _head_text()
    mutated = text[:position] + char + text[position + 1 :]
    try:
        head = coin.CommitmentHead.from_text(mutated)
    except TallystickError:
        return
    assert head.to_text() == mutated


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_head_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(TallystickError):
        coin.CommitmentHead.from_text(text)


# -- challenge (§4.4) ------------------------------------------------------------------------


def _reference_indices(seed: bytes, size: int, block: int, k: int) -> list[int]:
    """An independent re-derivation of coin.md §4.4's sampler, written from its docstring."""
    stream: list[int] = []
    counter = 0

    def below(bound: int) -> int:
        nonlocal counter
        while True:
            if not stream:
                digest = hashlib.sha256(
                    b"coin/indices/v1" + seed + counter.to_bytes(8, "big")
                ).digest()
                counter += 1
                stream.extend(int.from_bytes(digest[i : i + 8], "big") for i in range(0, 32, 8))
            value = stream.pop(0)
            if value < (1 << 64) - (1 << 64) % bound:
                return value % bound

    wanted = min(k, size)
    if wanted == 0:
        return []
    chosen = {size - 1}
    blocks = -(-size // block)
    if wanted >= blocks:
        for start in range(0, (blocks - 1) * block, block):
            chosen.add(start + below(block))
    while len(chosen) < wanted:
        chosen.add(below(size))
    return sorted(chosen)


def test_challenge_is_deterministic_and_matches_the_golden_and_reference(
    trace: golden.Synthetic,
) -> None:
    vector = _vector("head.json")
    seed = coin.challenge_seed(trace.head_note, golden.NONCE)
    text = trace.head_note.split("\n\n")[0] + "\n"
    assert seed == hashlib.sha256(b"coin/challenge/v1" + text.encode() + golden.NONCE).digest()
    assert seed.hex() == vector["seed_hex"]
    # A countersignature added on receipt does not move the challenge.
    assert coin.challenge_seed(vector["countersigned_head_note"], golden.NONCE) == seed
    for k in (3, 5, 10):
        indices = coin.challenge_indices(seed, 10, 4, k)
        assert indices == vector[f"indices_k{k}"] == _reference_indices(seed, 10, 4, k)
    for size, block, k in ((1000, 64, 40), (1000, 64, 10), (257, 256, 2), (5000, 256, 300)):
        assert coin.challenge_indices(seed, size, block, k) == _reference_indices(
            seed, size, block, k
        )
    assert coin.challenge_seed(trace.head_note, bytes(32)) != seed


@pytest.mark.parametrize(("size", "block", "k"), [(1000, 64, 16), (1000, 64, 40), (999, 100, 10)])
def test_challenge_hits_every_block_once_k_reaches_the_block_count(
    size: int, block: int, k: int
) -> None:
    blocks = coin.block_count(size, block)
    for nonce in range(20):
        seed = hashlib.sha256(nonce.to_bytes(4, "big")).digest()
        indices = coin.challenge_indices(seed, size, block, k)
        assert len(indices) == k == len(set(indices)) and indices == sorted(indices)
        assert all(0 <= index < size for index in indices)
        assert {index // block for index in indices} == set(range(blocks))


def test_challenge_edges() -> None:
    seed = bytes(32)
    assert coin.challenge_indices(seed, 10, 4, 50) == list(range(10))
    assert coin.challenge_indices(seed, 0, 4, 5) == []
    assert coin.challenge_indices(seed, 10, 4, 0) == []
    with pytest.raises(MalformedInput) as caught:
        coin.challenge_indices(bytes(31), 10, 4, 3)
    assert caught.value.code == "coin.bad_seed"
    with pytest.raises(MalformedInput):
        coin.challenge_indices(seed, 10, 0, 3)
    with pytest.raises(MalformedInput) as caught:
        coin.challenge_seed(_vector("head.json")["head_note"], bytes(15))
    assert caught.value.code == "coin.bad_nonce"


# -- sample size (§4.5) ----------------------------------------------------------------------

_TABLE = {  # coin.md §4.5: f -> k for (p, P) in column order
    0.01: (299, 459, 398, 612, 598, 919),
    0.05: (59, 90, 79, 121, 119, 182),
    0.10: (29, 44, 39, 60, 59, 90),
    0.25: (11, 17, 15, 23, 23, 35),
    0.50: (5, 7, 7, 10, 11, 17),
}
_COLUMNS = ((1.0, 0.95), (1.0, 0.99), (0.75, 0.95), (0.75, 0.99), (0.5, 0.95), (0.5, 0.99))


@pytest.mark.parametrize("fraction", sorted(_TABLE))
def test_sample_size_reproduces_the_section_4_5_table(fraction: float) -> None:
    for (p, target), expected in zip(_COLUMNS, _TABLE[fraction], strict=True):
        k = coin.sample_size(fraction, p, target)
        assert k == expected, (fraction, p, target)
        assert coin.detection_probability(k, fraction, p) >= target
        assert coin.detection_probability(k - 1, fraction, p) < target


def test_sample_size_edges_and_rejections() -> None:
    assert coin.sample_size(1.0, 1.0, 0.99) == 1
    assert coin.detection_probability(0, 0.5, 1.0) == 0.0
    for args in ((0.0, 1.0, 0.9), (0.5, 1.5, 0.9), (0.5, 1.0, 1.0), (0.5, 1.0, 0.0)):
        with pytest.raises(MalformedInput) as caught:
            coin.sample_size(*args)
        assert caught.value.code == "coin.bad_param"
    with pytest.raises(MalformedInput):
        coin.detection_probability(-1, 0.5, 1.0)


# -- openings --------------------------------------------------------------------------------


def test_every_honest_opening_verifies(trace: golden.Synthetic) -> None:
    for opening in trace.open(range(10)):
        coin.verify_opening(trace.head, opening)


def _twin(trace: golden.Synthetic, at: int, **changes: Any) -> coin.Opening:
    opening = trace.open([at])[0]
    fields = {
        name: getattr(opening, name) for name in ("index", "leaf", "salt", "token_id", "proof")
    }
    fields.update(changes)
    return coin.Opening(**fields)


def _flip(data: bytes, position: int = 0) -> bytes:
    return data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]


def test_opening_tamper_twins(trace: golden.Synthetic) -> None:
    leaf = trace.leaves[5]
    other = trace.leaves[6]
    twins = {
        "coin.index_mismatch": _twin(trace, 5, index=6),
        "coin.block_mismatch": _twin(
            trace,
            5,
            leaf=coin.Leaf(5, 2, leaf.token_commitment, leaf.block_fp, leaf.token_fp),
        ),
        "coin.token_commitment_mismatch": _twin(trace, 5, salt=_flip(coin.leaf_salt(b"x" * 16, 5))),
    }
    token_twin = _twin(trace, 5, token_id=golden.TOKEN_IDS[5] + 1)
    fp_twin = _twin(
        trace, 5, leaf=coin.Leaf(5, 1, leaf.token_commitment, leaf.block_fp, other.token_fp)
    )
    proof = trace.open([5])[0].proof
    proof_twin = _twin(trace, 5, proof=(_flip(proof[0]), *proof[1:]))
    short_twin = _twin(trace, 5, proof=proof[:-1])
    out_of_range = coin.Opening(
        10,
        coin.Leaf(10, 2, leaf.token_commitment, leaf.block_fp, leaf.token_fp),
        coin.leaf_salt(golden.TRACE_SECRET, 10),
        1,
        proof,
    )
    cases = [
        *twins.items(),
        ("coin.token_commitment_mismatch", token_twin),
        ("coin.inclusion_invalid", fp_twin),
        ("coin.inclusion_invalid", proof_twin),
        ("coin.inclusion_invalid", short_twin),
        ("coin.index_out_of_range", out_of_range),
    ]
    for code, opening in cases:
        with pytest.raises(coin.LeafOpeningInvalid) as caught:
            coin.verify_opening(trace.head, opening)
        assert caught.value.code == code


def test_opening_rejects_malformed_fields(trace: golden.Synthetic) -> None:
    for changes in ({"salt": bytes(15)}, {"proof": (b"x",)}, {"token_id": -1}, {"index": True}):
        with pytest.raises(MalformedInput):
            coin.verify_opening(trace.head, _twin(trace, 2, **changes))


# -- CoIn's own tree, and why ours is not fooled (coin.md §3) -------------------------------


def _coin_root(leaf_hashes: list[bytes]) -> bytes:
    """CoIn's released tree: H(left || right), no prefixes, padded by duplicating the last."""
    level = list(leaf_hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]


def test_duplicate_padding_ambiguity_is_rejected() -> None:
    tokens = golden.TOKEN_IDS[:3]
    leaves = golden.leaves_for(tokens, 4)
    raw = [hashlib.sha256(leaf.to_bytes()).digest() for leaf in leaves]
    # CoIn: 3 leaves and the same 3 plus a duplicate of the last share a root, so the root
    # does not commit to the count.
    assert _coin_root(raw) == _coin_root([*raw, raw[-1]])
    # Ours: a head billing 4 tokens over the 3-leaf tree. Leaves left of where the shapes
    # of the 3- and 4-leaf trees part still verify (their paths are alike), but leaf 2 does
    # not, and no leaf at index 3 can: the challenge always opens the last index.
    honest = golden.commit(tokens)
    padded = golden.commit(tokens, reasoning_tokens=4, leaves=honest.leaves)
    assert padded.head.root == honest.head.root
    for opening in honest.open([0, 1]):
        coin.verify_opening(padded.head, opening)
    with pytest.raises(coin.LeafOpeningInvalid) as caught:
        coin.verify_opening(padded.head, honest.open([2])[0])
    assert caught.value.code == "coin.inclusion_invalid"
    forged = golden.leaves_for([*tokens, tokens[-1]], 4)[3]
    salt = coin.leaf_salt(golden.TRACE_SECRET, 3)
    for proof in (
        (),
        (raw[2],),
        (raw[2], honest.tree.get_node(1, 0)),
        tuple(honest.open([2])[0].proof),
    ):
        with pytest.raises(coin.LeafOpeningInvalid) as caught:
            coin.verify_opening(padded.head, coin.Opening(3, forged, salt, tokens[-1], proof))
        assert caught.value.code == "coin.inclusion_invalid"
    duplicate = coin.Opening(3, leaves[2], coin.leaf_salt(golden.TRACE_SECRET, 2), tokens[2], ())
    with pytest.raises(coin.LeafOpeningInvalid) as caught:
        coin.verify_opening(padded.head, duplicate)
    assert caught.value.code == "coin.index_mismatch"
    seed = coin.challenge_seed(padded.head_note, golden.NONCE)
    assert 3 in coin.challenge_indices(seed, 4, 4, 1)
    # And an RFC 9162 tree of n+1 leaves has another root than the tree of n.
    tree = MerkleTree()
    tree.extend(leaf.hash() for leaf in [*leaves, leaves[-1]])
    assert tree.root() != honest.head.root


def test_interior_node_opened_as_a_leaf_is_rejected(trace: golden.Synthetic) -> None:
    four = trace.leaves[:4]
    raw = [hashlib.sha256(leaf.to_bytes()).digest() for leaf in four]
    # CoIn: with no leaf/node separation, "leaves" whose fingerprints are h0||h1 and h2||h3
    # form a 2-leaf tree with the same root: an interior node opens as a leaf.
    forged = [hashlib.sha256(raw[0] + raw[1]).digest(), hashlib.sha256(raw[2] + raw[3]).digest()]
    assert _coin_root(forged) == _coin_root(raw)
    # Ours: the same forgery against an RFC 9162 tree of the four leaves.
    tree = MerkleTree()
    tree.extend(leaf.hash() for leaf in four)
    h = [leaf.hash() for leaf in four]
    with pytest.raises(TallystickError) as caught:
        coin.Leaf.from_bytes(h[0] + h[1])
    assert caught.value.code in {"coin.leaf_malformed", "coin.leaf_version"}
    assert hash_leaf(h[0] + h[1]) != hash_children(h[0], h[1])
    with pytest.raises(TallystickError):
        verify_inclusion(
            leaf_index=0,
            tree_size=2,
            leaf_hash=hash_leaf(h[0] + h[1]),
            proof=[hash_children(h[2], h[3])],
            root_hash=tree.root(),
        )
    # Nor can the node hash itself pass as leaf 0 at the real size.
    with pytest.raises(TallystickError):
        verify_inclusion(
            leaf_index=0,
            tree_size=4,
            leaf_hash=hash_children(h[0], h[1]),
            proof=tree.inclusion_proof(0, 4)[1:],
            root_hash=tree.root(),
        )
