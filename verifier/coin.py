"""CoIn-style hidden reasoning-token audits, hardened (coin.md §4): the offline protocol core.

The provider commits to its hidden reasoning with an RFC 9162 tree of one leaf per reasoning
token, under a signed head that binds the count; the auditor draws a challenge only after it
holds the signed head, and checks each opened leaf offline::

    head = verify_head(note, NoteVerifier.from_vkey(provider_vkey), answer=delivered_answer)
    seed = challenge_seed(note, auditor_nonce)                # nonce drawn after the head arrived
    indices = challenge_indices(seed, head.reasoning_tokens, head.block_size, k)
    for opening in openings:                                  # the provider opens exactly indices
        verify_opening(head, opening)

This module needs no model: recomputing embeddings and the semantic checks live in
``tallystick.daemon.coin``. Their results travel in an :class:`Evidence` document that
:func:`verify_evidence` re-checks offline (``tallystick audit verify``).

Every rejection is a :class:`~tallystick.verifier.errors.TallystickError` with a ``coin.*`` code.
"""

from __future__ import annotations

from ._internal.coin_challenge import (
    LeafOpeningInvalid,
    Opening,
    block_count,
    challenge_indices,
    detection_probability,
    sample_size,
    verify_opening,
)
from ._internal.coin_evidence import (
    EVIDENCE_FORMAT,
    NOT_CLAIMED,
    WHAT_IS_CLAIMED,
    BlockCheck,
    Challenge,
    Evidence,
    EvidenceInvalid,
    LengthPrior,
    Verdict,
    derive_verdict,
    verify_evidence,
)
from ._internal.coin_head import (
    HEAD_FORMAT,
    MIN_NONCE_BYTES,
    CommitmentHead,
    CommitmentMismatch,
    ReportedUsage,
    challenge_seed,
    sha256_hex,
    sign_head,
    verify_head,
)
from ._internal.coin_leaf import (
    EMBEDDING_DIM,
    LEAF_BYTES,
    LEAF_VERSION,
    SALT_BYTES,
    Leaf,
    leaf_salt,
    quantize,
    token_commitment,
    within_tolerance,
)

__all__ = [
    "EMBEDDING_DIM",
    "EVIDENCE_FORMAT",
    "HEAD_FORMAT",
    "LEAF_BYTES",
    "LEAF_VERSION",
    "MIN_NONCE_BYTES",
    "NOT_CLAIMED",
    "SALT_BYTES",
    "WHAT_IS_CLAIMED",
    "BlockCheck",
    "Challenge",
    "CommitmentHead",
    "CommitmentMismatch",
    "Evidence",
    "EvidenceInvalid",
    "Leaf",
    "LeafOpeningInvalid",
    "LengthPrior",
    "Opening",
    "ReportedUsage",
    "Verdict",
    "block_count",
    "challenge_indices",
    "challenge_seed",
    "derive_verdict",
    "detection_probability",
    "leaf_salt",
    "quantize",
    "sample_size",
    "sha256_hex",
    "sign_head",
    "token_commitment",
    "verify_evidence",
    "verify_head",
    "verify_opening",
    "within_tolerance",
]
