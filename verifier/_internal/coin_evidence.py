"""CoIn audit evidence and its verdict (coin.md §4.6, §4.9), re-checked offline without a model.

Unstable machinery behind :mod:`tallystick.verifier.coin`. The evidence is one canonical
(RFC 8785) JSON object, ``"format": "tallystick.coin.evidence/v1"``::

    {"format", "head_note", "provider_vkey", "auditor_nonce": base64,
     "challenge": {"k", "fraction", "target", "per_leaf_detection"},
     "openings": [{"index", "leaf": base64, "salt": base64, "token_id", "proof": [base64]}],
     "checks": [{"block_index", "check", "score", "threshold", "flag_if", "flagged"}],
     "length_prior": {"z", "threshold", "flagged"} | null,
     "fpr_at_threshold": number | null,
     "verdict": {"consistent", "k", "p_assumed", "detection_probability", "flagged",
                 "fpr_at_threshold", "length_prior_z", "reasoning_tokens", "claims",
                 "not_claimed"}}

It holds no reasoning text: only the signed head, the opened leaves (hashes, fingerprints,
salts, token ids) and the scores the auditor's model computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..canonical import canonicalize, parse_json
from ..checkpoint import NoteVerifier, SignedNote
from ..errors import (
    CheckpointInvalid,
    KeyInvalid,
    MalformedInput,
    TallystickError,
    UnsupportedVersion,
)
from .coin_challenge import (
    Opening,
    challenge_indices,
    detection_probability,
    sample_size,
    verify_opening,
)
from .coin_head import CommitmentHead, challenge_seed, parse_head, verify_head
from .coin_sketch import SKETCH_KEY_BYTES, SKETCH_NGRAM, SketchMismatch, verify_sketch
from .coin_wire import opening_from_json, opening_to_json
from .encoding import b64_decode, b64_encode

#: The ``format`` member of every v1 evidence document.
EVIDENCE_FORMAT = "tallystick.coin.evidence/v1"
#: Evidence carries up to a few hundred openings of about 2 KB each.
MAX_EVIDENCE_BYTES = 4 << 20
#: The longest run of consecutive leaves one challenge anchor may open.
MAX_RUN_LENGTH = 256

#: What a consistent verdict is evidence of (coin.md §4.9).
WHAT_IS_CLAIMED = (
    "the billed reasoning count equals the size of the tree the provider signed",
    "each opened leaf is in that tree at its challenged index, under a challenge drawn after "
    "the signed head",
    "the semantic and length signals of the opened blocks fall within calibrated honest ranges",
)
#: What no CoIn audit can show (coin.md §3, the Token Inflation critique).
NOT_CLAIMED = (
    "that the model actually generated the committed tokens: every leaf comes from the audited "
    "provider; only attestation, proof of inference or re-execution closes that gap",
    "anything about leaves that were not opened, beyond the stated detection probability",
)

_FLAG_RULES = ("below", "above")


class EvidenceInvalid(TallystickError):
    """Evidence whose parts do not follow from each other: ``coin.challenge_mismatch``,
    ``coin.challenge_undersized``, ``coin.runs_too_short``, ``coin.flag_mismatch``,
    ``coin.check_unopened_block``, ``coin.check_duplicate``, ``coin.check_missing``,
    ``coin.verdict_mismatch``, ``coin.provider_key_mismatch`` or
    ``coin.countersignature_missing``."""

    default_code = "coin.evidence_invalid"


def _malformed(message: str) -> MalformedInput:
    return MalformedInput(f"evidence: {message}", code="coin.evidence_malformed")


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _malformed(f"{what} must be a finite number")
    return float(value)


def _probability(value: object, what: str, *, open_top: bool = False) -> float:
    number = _finite(value, what)
    if not 0.0 < number < 1.0 and not (number == 1.0 and not open_top):
        raise _malformed(f"{what} must be in (0, 1{')' if open_top else ']'}")
    return number


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise _malformed(f"{what} must be a uint32")
    return value


@dataclass(frozen=True, slots=True)
class Challenge:
    """The audit's sampling parameters: ``k`` anchors asked for, the forged fraction ``f`` and
    target detection probability ``P`` it was sized for, the per-anchor detection ``p`` assumed,
    and the run of consecutive leaves each anchor opens (``challenge_indices``).
    """

    k: int
    fraction: float
    target: float
    per_leaf_detection: float
    run_length: int = 1

    def __post_init__(self) -> None:
        _count(self.k, "challenge.k")
        if (
            isinstance(self.run_length, bool)
            or not isinstance(self.run_length, int)
            or not 1 <= self.run_length <= MAX_RUN_LENGTH
        ):
            raise _malformed(f"challenge.run_length must be an integer in [1, {MAX_RUN_LENGTH}]")
        _probability(self.fraction, "challenge.fraction")
        _probability(self.target, "challenge.target", open_top=True)
        _probability(self.per_leaf_detection, "challenge.per_leaf_detection")


@dataclass(frozen=True, slots=True)
class BlockCheck:
    """One semantic check's result on one opened block.

    ``flag_if="below"`` flags a score under the threshold (a relevance that is too low);
    ``"above"`` flags one over it (a similarity to another block that is too high, a
    fingerprint distance beyond tolerance). ``flagged`` MUST follow from that rule.
    Evidence MUST report every check it ran once for every opened block (a check that does not
    apply to a block reports a score that does not flag), so no result can be dropped unseen.
    """

    block_index: int
    check: str
    score: float
    threshold: float
    flagged: bool
    flag_if: str = "below"

    def __post_init__(self) -> None:
        _count(self.block_index, "check.block_index")
        if not isinstance(self.check, str) or not 0 < len(self.check) <= 64:
            raise _malformed("check.check must be a name of 1-64 characters")
        _finite(self.score, "check.score")
        _finite(self.threshold, "check.threshold")
        if not isinstance(self.flagged, bool) or self.flag_if not in _FLAG_RULES:
            raise _malformed("check: flagged must be a boolean, flag_if 'below' or 'above'")

    @property
    def should_flag(self) -> bool:
        """What ``flagged`` must be, from the score, the threshold and the rule."""
        if self.flag_if == "below":
            return self.score < self.threshold
        return self.score > self.threshold

    @property
    def label(self) -> str:
        """``<check>@block<j>``, how the verdict names a flag."""
        return f"{self.check}@block{self.block_index}"


@dataclass(frozen=True, slots=True)
class LengthPrior:
    """The length prior's signal (coin.md §4.8): ``z`` of the billed count, flagged above
    ``threshold``."""

    z: float
    threshold: float
    flagged: bool

    def __post_init__(self) -> None:
        _finite(self.z, "length_prior.z")
        _finite(self.threshold, "length_prior.threshold")
        if not isinstance(self.flagged, bool):
            raise _malformed("length_prior.flagged must be a boolean")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an audit shows, with what it does not (coin.md §4.6, §4.9).

    ``consistent`` holds when the head and every opening verified and nothing was flagged.
    ``k`` is the number of leaves opened, ``detection_probability`` the ``1 - (1 - f*p)^a``
    that the challenge's ``a`` anchors (``min(challenge.k, reasoning_tokens)``; each opens a run)
    imply for its ``f`` and the assumed ``p`` (``p_assumed``).
    """

    consistent: bool
    k: int
    p_assumed: float
    detection_probability: float
    flagged: tuple[str, ...]
    fpr_at_threshold: float | None
    length_prior_z: float | None
    reasoning_tokens: int
    claims: tuple[str, ...] = WHAT_IS_CLAIMED
    not_claimed: tuple[str, ...] = NOT_CLAIMED

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form."""
        return {
            "consistent": self.consistent,
            "k": self.k,
            "p_assumed": self.p_assumed,
            "detection_probability": self.detection_probability,
            "flagged": list(self.flagged),
            "fpr_at_threshold": self.fpr_at_threshold,
            "length_prior_z": self.length_prior_z,
            "reasoning_tokens": self.reasoning_tokens,
            "claims": list(self.claims),
            "not_claimed": list(self.not_claimed),
        }


def derive_verdict(
    head: CommitmentHead,
    challenge: Challenge,
    openings: Sequence[Opening],
    checks: Sequence[BlockCheck],
    length_prior: LengthPrior | None,
    fpr_at_threshold: float | None,
) -> Verdict:
    """The verdict that follows from checked evidence (the openings verified, flags consistent)."""
    flagged = [check.label for check in checks if check.flagged]
    if length_prior is not None and length_prior.flagged:
        flagged.append("length_prior")
    k = len(openings)
    # Leaves of one run are not independent samples: the probability counts anchors.
    anchors = min(challenge.k, head.reasoning_tokens) if k else 0
    probability = (
        detection_probability(anchors, challenge.fraction, challenge.per_leaf_detection)
        if anchors
        else 0.0
    )
    return Verdict(
        consistent=not flagged,
        k=k,
        p_assumed=challenge.per_leaf_detection,
        detection_probability=probability,
        flagged=tuple(flagged),
        fpr_at_threshold=fpr_at_threshold,
        length_prior_z=None if length_prior is None else length_prior.z,
        reasoning_tokens=head.reasoning_tokens,
    )


@dataclass(frozen=True, slots=True)
class Evidence:
    """One audit's record, everything :func:`verify_evidence` needs offline.

    Build it with :meth:`build` (which derives the verdict) or :meth:`from_json`.
    """

    head_note: str
    provider_vkey: str
    auditor_nonce: bytes
    challenge: Challenge
    openings: tuple[Opening, ...]
    checks: tuple[BlockCheck, ...]
    length_prior: LengthPrior | None
    fpr_at_threshold: float | None
    verdict: Verdict
    #: The provider's n-gram sketch and its revealed key, when the head binds a sketch.
    sketch: bytes | None = None
    sketch_key: bytes | None = None

    @classmethod
    def build(
        cls,
        *,
        head_note: str,
        provider_vkey: str,
        auditor_nonce: bytes,
        challenge: Challenge,
        openings: Sequence[Opening],
        checks: Sequence[BlockCheck] = (),
        length_prior: LengthPrior | None = None,
        fpr_at_threshold: float | None = None,
        sketch: bytes | None = None,
        sketch_key: bytes | None = None,
    ) -> Evidence:
        """Evidence with the verdict derived from its parts (nothing is verified here: run
        :func:`verify_evidence` on the result before logging it).

        :raises MalformedInput: a head note that does not parse (``coin.head_malformed``).
        """
        head = parse_head(head_note)
        verdict = derive_verdict(head, challenge, openings, checks, length_prior, fpr_at_threshold)
        return cls(
            head_note,
            provider_vkey,
            auditor_nonce,
            challenge,
            tuple(openings),
            tuple(checks),
            length_prior,
            fpr_at_threshold,
            verdict,
            sketch,
            sketch_key,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form."""
        return {
            "format": EVIDENCE_FORMAT,
            "head_note": self.head_note,
            "provider_vkey": self.provider_vkey,
            "auditor_nonce": b64_encode(self.auditor_nonce),
            "challenge": {
                "k": self.challenge.k,
                "fraction": self.challenge.fraction,
                "target": self.challenge.target,
                "per_leaf_detection": self.challenge.per_leaf_detection,
                "run_length": self.challenge.run_length,
            },
            "openings": [opening_to_json(opening) for opening in self.openings],
            "checks": [
                {
                    "block_index": check.block_index,
                    "check": check.check,
                    "score": check.score,
                    "threshold": check.threshold,
                    "flag_if": check.flag_if,
                    "flagged": check.flagged,
                }
                for check in self.checks
            ],
            "length_prior": None
            if self.length_prior is None
            else {
                "z": self.length_prior.z,
                "threshold": self.length_prior.threshold,
                "flagged": self.length_prior.flagged,
            },
            "fpr_at_threshold": self.fpr_at_threshold,
            "verdict": self.verdict.to_dict(),
            "sketch": None if self.sketch is None else b64_encode(self.sketch),
            "sketch_key": None if self.sketch_key is None else b64_encode(self.sketch_key),
        }

    def to_json(self) -> bytes:
        """Canonical (RFC 8785) UTF-8 JSON bytes.

        :raises MalformedInput: a field JSON cannot carry (``input.not_canonicalizable``).
        """
        return canonicalize(self.to_dict())

    @classmethod
    def from_json(cls, raw: str | bytes) -> Evidence:
        """Parse an evidence document strictly: exact member sets, exact types.

        :raises MalformedInput: not a JSON object (``coin.evidence_unreadable``), or a member
            missing, extra or of the wrong type (``coin.evidence_malformed``, or the leaf's
            ``coin.leaf_malformed``).
        :raises UnsupportedVersion: another ``format`` (``coin.evidence_version``).
        """
        try:
            document = parse_json(raw, max_bytes=MAX_EVIDENCE_BYTES)
        except MalformedInput as exc:
            raise MalformedInput(
                f"evidence: not JSON: {exc}", code="coin.evidence_unreadable"
            ) from exc
        if not isinstance(document, dict):
            raise MalformedInput("evidence: not a JSON object", code="coin.evidence_unreadable")
        if document.get("format") != EVIDENCE_FORMAT:
            raise UnsupportedVersion(
                f"evidence: format is not {EVIDENCE_FORMAT}", code="coin.evidence_version"
            )
        _members(document, _EVIDENCE_KEYS, "evidence")
        challenge = _members(document["challenge"], _CHALLENGE_KEYS, "challenge")
        openings = _list(document["openings"], "openings")
        checks = _list(document["checks"], "checks")
        prior = document["length_prior"]
        fpr = document["fpr_at_threshold"]
        return cls(
            head_note=_text(document["head_note"], "head_note"),
            provider_vkey=_text(document["provider_vkey"], "provider_vkey"),
            auditor_nonce=_bytes(document["auditor_nonce"], "auditor_nonce"),
            challenge=Challenge(
                k=challenge["k"],
                fraction=_finite(challenge["fraction"], "challenge.fraction"),
                target=_finite(challenge["target"], "challenge.target"),
                per_leaf_detection=_finite(
                    challenge["per_leaf_detection"], "challenge.per_leaf_detection"
                ),
                run_length=challenge["run_length"],
            ),
            openings=tuple(_opening_from_dict(item) for item in openings),
            checks=tuple(_check_from_dict(item) for item in checks),
            length_prior=None if prior is None else _prior_from_dict(prior),
            fpr_at_threshold=None if fpr is None else _probability_or_zero(fpr),
            verdict=_verdict_from_dict(document["verdict"]),
            sketch=_optional_bytes(document["sketch"], "sketch"),
            sketch_key=_optional_bytes(document["sketch_key"], "sketch_key"),
        )


_EVIDENCE_KEYS = frozenset(
    {
        "format",
        "head_note",
        "provider_vkey",
        "auditor_nonce",
        "challenge",
        "openings",
        "checks",
        "length_prior",
        "fpr_at_threshold",
        "verdict",
        "sketch",
        "sketch_key",
    }
)
_CHALLENGE_KEYS = frozenset({"k", "fraction", "target", "per_leaf_detection", "run_length"})
_CHECK_KEYS = frozenset({"block_index", "check", "score", "threshold", "flag_if", "flagged"})
_PRIOR_KEYS = frozenset({"z", "threshold", "flagged"})
_VERDICT_KEYS = frozenset(
    {
        "consistent",
        "k",
        "p_assumed",
        "detection_probability",
        "flagged",
        "fpr_at_threshold",
        "length_prior_z",
        "reasoning_tokens",
        "claims",
        "not_claimed",
    }
)


def _members(value: object, keys: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(f"{what} must be an object")
    if set(value) != keys:
        extra, missing = sorted(set(value) - keys), sorted(keys - set(value))
        raise _malformed(f"{what}: unexpected members {extra}, missing {missing}")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _malformed(f"{what} must be an array")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _malformed(f"{what} must be a string")
    return value


def _bytes(value: object, what: str) -> bytes:
    try:
        return b64_decode(_text(value, what), what=what, code="coin.evidence_malformed")
    except MalformedInput as exc:
        raise _malformed(f"{what} is not standard base64") from exc


def _optional_bytes(value: object, what: str) -> bytes | None:
    return None if value is None else _bytes(value, what)


def _probability_or_zero(value: object) -> float:
    number = _finite(value, "fpr_at_threshold")
    if not 0.0 <= number <= 1.0:
        raise _malformed("fpr_at_threshold must be in [0, 1]")
    return number


def _opening_from_dict(value: object) -> Opening:
    """One opening in the wire encoding (:mod:`.coin_wire`); a malformed one is malformed
    evidence (``coin.evidence_malformed``), a bad leaf keeps the leaf's code."""
    try:
        return opening_from_json(value)
    except MalformedInput as exc:
        if exc.code != "coin.opening_malformed":
            raise
        raise _malformed(str(exc)) from exc


def _check_from_dict(value: object) -> BlockCheck:
    item = _members(value, _CHECK_KEYS, "check")
    return BlockCheck(
        block_index=item["block_index"],
        check=item["check"],
        score=_finite(item["score"], "check.score"),
        threshold=_finite(item["threshold"], "check.threshold"),
        flagged=item["flagged"],
        flag_if=item["flag_if"],
    )


def _prior_from_dict(value: object) -> LengthPrior:
    item = _members(value, _PRIOR_KEYS, "length_prior")
    return LengthPrior(
        z=_finite(item["z"], "length_prior.z"),
        threshold=_finite(item["threshold"], "length_prior.threshold"),
        flagged=item["flagged"],
    )


def _strings(value: object, what: str) -> tuple[str, ...]:
    items = _list(value, what)
    if not all(isinstance(item, str) for item in items):
        raise _malformed(f"{what} must be strings")
    return tuple(items)


def _optional_number(value: object, what: str) -> float | None:
    return None if value is None else _finite(value, what)


def _verdict_from_dict(value: object) -> Verdict:
    item = _members(value, _VERDICT_KEYS, "verdict")
    if not isinstance(item["consistent"], bool):
        raise _malformed("verdict.consistent must be a boolean")
    return Verdict(
        consistent=item["consistent"],
        k=_count(item["k"], "verdict.k"),
        p_assumed=_finite(item["p_assumed"], "verdict.p_assumed"),
        detection_probability=_finite(item["detection_probability"], "verdict.detection"),
        flagged=_strings(item["flagged"], "verdict.flagged"),
        fpr_at_threshold=_optional_number(item["fpr_at_threshold"], "verdict.fpr_at_threshold"),
        length_prior_z=_optional_number(item["length_prior_z"], "verdict.length_prior_z"),
        reasoning_tokens=_count(item["reasoning_tokens"], "verdict.reasoning_tokens"),
        claims=_strings(item["claims"], "verdict.claims"),
        not_claimed=_strings(item["not_claimed"], "verdict.not_claimed"),
    )


def verify_evidence(
    evidence: Evidence | str | bytes,
    *,
    log_key: NoteVerifier | None = None,
    provider_key: NoteVerifier | None = None,
) -> Verdict:
    """Re-check an audit offline and return its verdict; everything that needs no model.

    Steps: (1) parse; (2) the provider key is ``provider_key`` when pinned; (3) the head verifies
    under it (:func:`~tallystick.verifier.coin.verify_head`); (4) with ``log_key``, the head also
    carries a valid countersignature by the log; (5) the challenge's ``k`` reaches
    ``sample_size(f, p, P)`` for its own parameters, and the opened indices are exactly the
    challenge re-derived from the head and the nonce; (6) each opening verifies; (7) the checks
    cover every opened block once per check name, and each flag follows from its score and
    threshold, as does the length prior's; (8) the recorded verdict is the one that follows.

    The evidence's ``provider_vkey`` is only as trustworthy as its source: pin ``provider_key``
    or ``log_key`` to tie the audit to a known party.

    :raises MalformedInput: unreadable or malformed evidence (``coin.evidence_unreadable``,
        ``coin.evidence_malformed``, ``coin.leaf_malformed``, ...).
    :raises UnsupportedVersion: another evidence or head format.
    :raises KeyInvalid: a malformed ``provider_vkey`` (``note.bad_vkey``).
    :raises CheckpointInvalid: a head signature failure (``coin.head_signature_invalid``).
    :raises CommitmentMismatch: the head's usage disagrees with its count.
    :raises LeafOpeningInvalid: an opening fails (``coin.index_mismatch``, ...).
    :raises EvidenceInvalid: parts that do not follow from each other (codes on the class).
    """
    if not isinstance(evidence, Evidence):  # (1)
        evidence = Evidence.from_json(evidence)
    try:
        provider = NoteVerifier.from_vkey(evidence.provider_vkey)
    except KeyInvalid as exc:
        raise KeyInvalid(f"evidence: provider_vkey: {exc}", code="note.bad_vkey") from exc
    if provider_key is not None and provider_key != provider:  # (2)
        raise EvidenceInvalid(
            f"evidence: provider key {provider.label} is not the pinned {provider_key.label}",
            code="coin.provider_key_mismatch",
        )
    head = verify_head(evidence.head_note, provider)  # (3)
    if log_key is not None:  # (4)
        try:
            SignedNote.from_text(evidence.head_note).verify([log_key])
        except CheckpointInvalid as exc:
            raise EvidenceInvalid(
                f"evidence: head has no valid countersignature by {log_key.label}",
                code="coin.countersignature_missing",
            ) from exc
    challenge = evidence.challenge  # (5)
    needed = sample_size(challenge.fraction, challenge.per_leaf_detection, challenge.target)
    if challenge.k < needed:
        raise EvidenceInvalid(
            f"evidence: k={challenge.k} is below the {needed} its own f, p and P require",
            code="coin.challenge_undersized",
        )
    seed = challenge_seed(evidence.head_note, evidence.auditor_nonce)
    expected = challenge_indices(
        seed, head.reasoning_tokens, head.block_size, challenge.k, challenge.run_length
    )
    if [opening.index for opening in evidence.openings] != expected:
        raise EvidenceInvalid(
            "evidence: the opened indices are not the challenge derived from head and nonce",
            code="coin.challenge_mismatch",
        )
    for opening in evidence.openings:  # (6)
        verify_opening(head, opening)
    _check_sketch(head, evidence)
    _check_flags(evidence)  # (7)
    verdict = derive_verdict(  # (8)
        head,
        evidence.challenge,
        evidence.openings,
        evidence.checks,
        evidence.length_prior,
        evidence.fpr_at_threshold,
    )
    if verdict != evidence.verdict:
        raise EvidenceInvalid(
            "evidence: the recorded verdict does not follow from the evidence",
            code="coin.verdict_mismatch",
        )
    return verdict


def _check_sketch(head: CommitmentHead, evidence: Evidence) -> None:
    """A head that binds a sketch needs the sketch and its key, runs long enough to cover an
    n-gram, and agreement with every n-gram the openings cover; a head without one, neither."""
    if head.sketch_sha256 is None:
        if evidence.sketch is not None or evidence.sketch_key is not None:
            raise SketchMismatch("evidence: a sketch for a head that binds none")
        return
    if evidence.sketch is None or evidence.sketch_key is None:
        raise SketchMismatch("evidence: the head binds a sketch; sketch or key missing")
    run = evidence.challenge.run_length
    if run < SKETCH_NGRAM:  # shorter runs cover no entry: the sketch would go unchecked
        raise EvidenceInvalid(
            f"evidence: runs of {run} leaves cover no {SKETCH_NGRAM}-token sketch entry; "
            f"a sketched head needs runs of at least {SKETCH_NGRAM}",
            code="coin.runs_too_short",
        )
    if len(evidence.sketch_key) != SKETCH_KEY_BYTES:
        raise _malformed(f"sketch_key must be {SKETCH_KEY_BYTES} bytes")
    verify_sketch(
        head,
        evidence.sketch,
        evidence.sketch_key,
        ((opening.index, opening.token_id) for opening in evidence.openings),
    )


def _check_flags(evidence: Evidence) -> None:
    opened_blocks = {opening.leaf.block_index for opening in evidence.openings}
    seen: set[tuple[int, str]] = set()
    names = {check.check for check in evidence.checks}
    for check in evidence.checks:
        if check.block_index not in opened_blocks:
            raise EvidenceInvalid(
                f"evidence: check {check.label} is about a block with no opened leaf",
                code="coin.check_unopened_block",
            )
        if (check.block_index, check.check) in seen:
            raise EvidenceInvalid(
                f"evidence: check {check.label} appears twice", code="coin.check_duplicate"
            )
        seen.add((check.block_index, check.check))
        if check.flagged != check.should_flag:
            raise EvidenceInvalid(
                f"evidence: check {check.label} flag does not follow from its score",
                code="coin.flag_mismatch",
            )
    if len(seen) != len(names) * len(opened_blocks):
        raise EvidenceInvalid(
            f"evidence: checks {sorted(names)} are not reported for every opened block",
            code="coin.check_missing",
        )
    prior = evidence.length_prior
    if prior is not None and prior.flagged != (prior.z > prior.threshold):
        raise EvidenceInvalid(
            "evidence: length prior flag does not follow from z", code="coin.flag_mismatch"
        )
