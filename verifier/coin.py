"""CoIn-style hidden reasoning-token audits, hardened (coin.md §4): the offline protocol core.

The provider commits to its hidden reasoning with an RFC 9162 tree of one leaf per reasoning
token, under a signed head that binds the count; the auditor draws a challenge only after it
holds the signed head, and checks each opened leaf offline::

    head = verify_head(note, NoteVerifier.from_vkey(provider_vkey), answer=delivered_answer)
    seed = challenge_seed(note, auditor_nonce)                # nonce drawn after the head arrived
    indices = challenge_indices(seed, head.reasoning_tokens, head.block_size, k)
    for opening in openings:                                  # the provider opens exactly indices
        verify_opening(head, opening)

Openings come in runs of consecutive leaves (``challenge.run_length``), and a head may bind
an n-gram sketch of the whole reasoning whose key is revealed with the openings
(:func:`verify_sketch`): together they let an auditor see repeated and copied stretches
without reading the reasoning.

This module needs no model: recomputing embeddings and the semantic checks live in
``tallystick.daemon.coin``. Their results travel in an :class:`Evidence` document that
:func:`verify_evidence` re-checks offline (``tallystick audit verify``). The sidecar logs each
audit as ``audit`` entries, the evidence cut into parts (:func:`evidence_parts`,
:func:`join_evidence`); :func:`verify_log_audits` re-checks every audit of a verified bundle
(``tallystick audit verify-log``).

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
    MAX_RUN_LENGTH,
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
    parse_head,
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
from ._internal.coin_log import (
    EVIDENCE_PART_BUDGET,
    AuditStatus,
    LoggedAudit,
    LoggedAuditInvalid,
    evidence_parts,
    indices_sha256,
    join_evidence,
    verify_audit_entries,
    verify_log_audits,
)
from ._internal.coin_sketch import (
    SKETCH_ENTRY_BYTES,
    SKETCH_KEY_BYTES,
    SKETCH_NGRAM,
    SketchMismatch,
    ngram_entries,
    ngram_sketch,
    sketch_key,
    sketch_sha256,
    split_sketch,
    verify_sketch,
)
from ._internal.coin_wire import (
    DEFAULT_OPEN_TIMEOUT_S,
    MAX_ATTESTATION_BYTES,
    MAX_HEAD_NOTE_CHARS,
    MAX_OFFER_BYTES,
    MAX_OPENINGS_BYTES,
    MAX_SKETCH_BYTES,
    MAX_URL_CHARS,
    OFFER_FORMAT,
    OFFER_MEMBER,
    Attestation,
    CoinOffer,
    HttpOpener,
    OpeningsUnavailable,
    opening_from_json,
    opening_to_json,
    openings_from_json,
    openings_to_json,
    prompt_text,
)

__all__ = [
    "DEFAULT_OPEN_TIMEOUT_S",
    "EMBEDDING_DIM",
    "EVIDENCE_FORMAT",
    "EVIDENCE_PART_BUDGET",
    "HEAD_FORMAT",
    "LEAF_BYTES",
    "LEAF_VERSION",
    "MAX_ATTESTATION_BYTES",
    "MAX_HEAD_NOTE_CHARS",
    "MAX_OFFER_BYTES",
    "MAX_OPENINGS_BYTES",
    "MAX_RUN_LENGTH",
    "MAX_SKETCH_BYTES",
    "MAX_URL_CHARS",
    "MIN_NONCE_BYTES",
    "NOT_CLAIMED",
    "OFFER_FORMAT",
    "OFFER_MEMBER",
    "SALT_BYTES",
    "SKETCH_ENTRY_BYTES",
    "SKETCH_KEY_BYTES",
    "SKETCH_NGRAM",
    "WHAT_IS_CLAIMED",
    "Attestation",
    "AuditStatus",
    "BlockCheck",
    "Challenge",
    "CoinOffer",
    "CommitmentHead",
    "CommitmentMismatch",
    "Evidence",
    "EvidenceInvalid",
    "HttpOpener",
    "Leaf",
    "LeafOpeningInvalid",
    "LengthPrior",
    "LoggedAudit",
    "LoggedAuditInvalid",
    "Opening",
    "OpeningsUnavailable",
    "ReportedUsage",
    "SketchMismatch",
    "Verdict",
    "block_count",
    "challenge_indices",
    "challenge_seed",
    "derive_verdict",
    "detection_probability",
    "evidence_parts",
    "indices_sha256",
    "join_evidence",
    "leaf_salt",
    "ngram_entries",
    "ngram_sketch",
    "opening_from_json",
    "opening_to_json",
    "openings_from_json",
    "openings_to_json",
    "parse_head",
    "prompt_text",
    "quantize",
    "sample_size",
    "sha256_hex",
    "sign_head",
    "sketch_key",
    "sketch_sha256",
    "split_sketch",
    "token_commitment",
    "verify_audit_entries",
    "verify_evidence",
    "verify_head",
    "verify_log_audits",
    "verify_opening",
    "verify_sketch",
    "within_tolerance",
]
