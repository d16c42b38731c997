"""CoIn challenge derivation, sample size and opened-leaf checks (coin.md §4.4, §4.5).

Unstable machinery behind :mod:`tallystick.verifier.coin`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

from .. import merkle
from ..errors import MalformedInput, ProofInvalid
from .coin_head import CommitmentHead
from .coin_leaf import SALT_BYTES, Leaf, require_uint, token_commitment

_SEED_BYTES = 32


class LeafOpeningInvalid(ProofInvalid):
    """An opened leaf that is not the committed leaf at the challenged index."""

    default_code = "coin.opening_invalid"


# -- challenge (§4.4) -------------------------------------------------------------------------


def block_count(tree_size: int, block_size: int) -> int:
    """The number of reasoning blocks, ``ceil(tree_size / block_size)``."""
    return -(-tree_size // block_size)


class _CounterStream:
    """Uniform integers from ``SHA-256(seed || u64be counter)`` blocks, by rejection sampling."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._buffer = b""

    def _u64(self) -> int:
        if len(self._buffer) < 8:
            block = hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            self._buffer += block
        value, self._buffer = self._buffer[:8], self._buffer[8:]
        return int.from_bytes(value, "big")

    def below(self, bound: int) -> int:
        """A uniform integer in ``[0, bound)``: u64 draws at or above the last full multiple
        of ``bound`` are rejected, so no residue is favoured."""
        limit = (1 << 64) - (1 << 64) % bound
        while True:
            value = self._u64()
            if value < limit:
                return value % bound


def challenge_indices(
    seed: bytes, tree_size: int, block_size: int, k: int, run_length: int = 1
) -> list[int]:
    """The leaf indices to open, sorted ascending: ``min(k, tree_size)`` distinct anchors, each
    widened into a run of ``run_length`` consecutive leaves.

    Deterministic in its arguments. Draws are uniform integers from SHA-256 counter blocks over
    ``SHA-256``-domain ``"coin/indices/v1" || seed`` (rejection sampling, no modulo bias).

    1. The last index, ``tree_size - 1``, is always opened. No leaf past the end of the tree
       the root was built over can verify at the claimed size (its hash chain never meets that
       root), so a head that bills more tokens than its tree holds fails with certainty, not
       by chance: this is what makes "tree size = reasoning_tokens" checkable.
    2. When ``k`` reaches the number of blocks, one index is drawn uniformly inside each other
       block, so every block is hit (the last block holds the last index).
    3. The rest are uniform over ``[0, tree_size)``, skipping indices already taken.
    4. Each anchor ``a`` opens ``[s, s + run_length)`` with ``s = min(a, tree_size - run_length)``
       (clipped at 0): runs stay inside the tree, so the last anchor's run ends at the last leaf.
       Runs let the auditor read short stretches of token ids: n-gram checks (the sketch of
       :mod:`.coin_sketch`, canonical tokenization) need neighbours, not isolated tokens. With
       ``run_length`` 1 this is exactly the anchors.

    :raises MalformedInput: a seed that is not 32 bytes, or a size, block size, ``k`` or run
        length that is not a non-negative uint32 (block size and run length at least 1)
        (``coin.bad_seed``, ``coin.bad_int``).
    """
    if not isinstance(seed, bytes) or len(seed) != _SEED_BYTES:
        raise MalformedInput("challenge: seed must be 32 bytes", code="coin.bad_seed")
    size = require_uint(tree_size, "challenge: tree size")
    block = require_uint(block_size, "challenge: block size", low=1)
    wanted = min(require_uint(k, "challenge: k"), size)
    run = require_uint(run_length, "challenge: run length", low=1)
    stream = _CounterStream(b"coin/indices/v1" + seed)
    if not wanted:
        return []
    chosen = {size - 1}  # (1)
    blocks = block_count(size, block)
    if wanted >= blocks:  # (2)
        for start in range(0, (blocks - 1) * block, block):
            chosen.add(start + stream.below(block))
    while len(chosen) < wanted:  # (3)
        chosen.add(stream.below(size))
    if run == 1:
        return sorted(chosen)
    opened: set[int] = set()
    for anchor in chosen:  # (4)
        start = max(0, min(anchor, size - run))
        opened.update(range(start, min(start + run, size)))
    return sorted(opened)


# -- sample size (§4.5) -----------------------------------------------------------------------


def _check_probabilities(fraction: float, per_leaf_detection: float) -> float:
    for value, what in ((fraction, "fraction"), (per_leaf_detection, "per-leaf detection")):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MalformedInput(f"sample size: {what} must be a number", code="coin.bad_param")
        if not 0.0 < value <= 1.0:
            raise MalformedInput(f"sample size: {what} must be in (0, 1]", code="coin.bad_param")
    return float(fraction) * float(per_leaf_detection)


def detection_probability(k: int, fraction: float, per_leaf_detection: float) -> float:
    """``1 - (1 - f*p)^k``: the chance that ``k`` uniform openings catch a forged fraction ``f``
    when each opened forged leaf is flagged with probability ``p`` (coin.md §4.5).

    :raises MalformedInput: ``k`` negative, or ``f`` or ``p`` outside ``(0, 1]``
        (``coin.bad_param``).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise MalformedInput("detection: k must be a non-negative integer", code="coin.bad_param")
    return 1.0 - (1.0 - _check_probabilities(fraction, per_leaf_detection)) ** k


def sample_size(fraction: float, per_leaf_detection: float, target: float) -> int:
    """The least ``k`` with ``1 - (1 - f*p)^k >= target``: ``ceil(ln(1-P) / ln(1-f*p))``.

    :raises MalformedInput: ``f`` or ``p`` outside ``(0, 1]``, or ``target`` outside ``(0, 1)``
        (``coin.bad_param``).
    """
    rate = _check_probabilities(fraction, per_leaf_detection)
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target < 1:
        raise MalformedInput("sample size: target must be in (0, 1)", code="coin.bad_param")
    if rate >= 1.0:
        return 1
    k = max(1, math.ceil(math.log1p(-target) / math.log1p(-rate)))
    # The closed form can land one off where ln(1-P)/ln(1-fp) is an integer up to rounding.
    while k > 1 and detection_probability(k - 1, fraction, per_leaf_detection) >= target:
        k -= 1
    while detection_probability(k, fraction, per_leaf_detection) < target:
        k += 1
    return k


# -- openings ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opening:
    """What the provider reveals for one challenged index: the leaf, its salt, the token id and
    the RFC 9162 inclusion proof at tree size ``reasoning_tokens``."""

    index: int
    leaf: Leaf
    salt: bytes
    token_id: int
    proof: tuple[bytes, ...]


def verify_opening(head: CommitmentHead, opening: Opening) -> None:
    """Check one opened leaf against a verified head. Steps, in order:

    1. the leaf is at the challenged index (``coin.index_mismatch``) and the index is below
       ``reasoning_tokens`` (``coin.index_out_of_range``);
    2. its block index is ``index // block_size`` (``coin.block_mismatch``);
    3. the salt and token id open its token commitment (``coin.token_commitment_mismatch``);
    4. its hash is leaf ``index`` of the tree of size ``reasoning_tokens`` under the head's root
       (``coin.inclusion_invalid``). A leaf past the end of the tree the root was built over
       never verifies at a larger claimed size, and the challenge always opens the last index,
       so the count the head bills is the count the tree holds.

    :raises LeafOpeningInvalid: any step fails (codes above).
    :raises MalformedInput: an opening whose fields have the wrong types or sizes
        (``coin.opening_malformed``).
    """
    if not isinstance(head, CommitmentHead) or not isinstance(opening, Opening):
        raise MalformedInput(
            "opening: expected a head and an Opening", code="coin.opening_malformed"
        )
    if not isinstance(opening.leaf, Leaf):
        raise MalformedInput("opening: leaf must be a Leaf", code="coin.opening_malformed")
    index = require_uint(opening.index, "opening: index")
    token_id = require_uint(opening.token_id, "opening: token id")
    if not isinstance(opening.salt, bytes) or len(opening.salt) != SALT_BYTES:
        raise MalformedInput(
            f"opening: salt must be {SALT_BYTES} bytes", code="coin.opening_malformed"
        )
    if not isinstance(opening.proof, tuple) or not all(
        isinstance(node, bytes) and len(node) == merkle.HASH_SIZE for node in opening.proof
    ):
        raise MalformedInput("opening: proof must be 32-byte hashes", code="coin.opening_malformed")
    # (1)
    if opening.leaf.token_index != index:
        raise LeafOpeningInvalid(
            f"opening {index}: leaf is for index {opening.leaf.token_index}",
            code="coin.index_mismatch",
        )
    if index >= head.reasoning_tokens:
        raise LeafOpeningInvalid(
            f"opening {index}: not below reasoning_tokens {head.reasoning_tokens}",
            code="coin.index_out_of_range",
        )
    # (2)
    if opening.leaf.block_index != index // head.block_size:
        raise LeafOpeningInvalid(
            f"opening {index}: block index {opening.leaf.block_index}, expected "
            f"{index // head.block_size}",
            code="coin.block_mismatch",
        )
    # (3)
    if not hmac.compare_digest(
        token_commitment(opening.salt, token_id), opening.leaf.token_commitment
    ):
        raise LeafOpeningInvalid(
            f"opening {index}: salt and token id do not open the token commitment",
            code="coin.token_commitment_mismatch",
        )
    # (4)
    try:
        merkle.verify_inclusion(
            leaf_index=index,
            tree_size=head.reasoning_tokens,
            leaf_hash=opening.leaf.hash(),
            proof=opening.proof,
            root_hash=head.root,
        )
    except (ProofInvalid, MalformedInput) as exc:
        raise LeafOpeningInvalid(
            f"opening {index}: inclusion proof fails at tree size {head.reasoning_tokens}: "
            f"{exc.code}",
            code="coin.inclusion_invalid",
        ) from exc
