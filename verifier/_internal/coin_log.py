"""CoIn audits as the log records them (coin.md §4.3-4.4), re-checked offline from a bundle.

Unstable machinery behind :mod:`tallystick.verifier.coin`. tallystickd's ``CoinAudit``
service logs each audit as ``audit`` entries (``coin`` names which)::

    head       {"coin": "head", "head_note": str, "provider_vkey": str,
                "call_request_id": str | null,
                "attestation": {"format": str, "sha256": hex}}    # only when offered
    challenge  {"coin": "challenge", "head_entry": int, "nonce": hex, "k": int,
                "indices_sha256": hex}
    evidence   {"coin": "evidence", "challenge_entry": int, "part": int, "parts": int,
                "evidence_json": str}
    verdict    {"coin": "verdict", "challenge_entry": int, "consistent": bool,
                "error_code": str | null, "evidence_sha256": hex | null, "evidence_parts": int}

The evidence document is larger than one entry may be, so it is cut into ``evidence_parts``
entries (:func:`evidence_parts`) appended with the verdict in one batch: the parts are the
entries immediately before the verdict, and their strings, joined in order, are the exact
evidence bytes whose SHA-256 the verdict records (:func:`join_evidence`). A failed protocol
step has no evidence: ``error_code`` names the check, and ``evidence_parts`` is 0.

:func:`verify_audit_entries` re-checks every verdict of a verified log: the parts join, the
evidence verifies with the log's countersignature on the head required, by a key not yet
retired when the head was logged (``coin.countersigner_retired``; the rule
:meth:`~tallystick.verifier.logbundle.LogKeys.check_in_service` applies to checkpoints), the
head and challenge entries agree with the evidence, and the logged verdict with the offline one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from ..canonical import canonicalize
from ..checkpoint import NoteVerifier, SignedNote
from ..errors import MalformedInput, TallystickError
from ..logbundle import LogKeys, log_keyring
from ..logentry import MAX_ENTRY_BYTES, EntryKind, LogEntry
from ..provenance import AuditedLog
from .coin_evidence import Evidence, Verdict, verify_evidence
from .coin_wire import Attestation

#: Canonical JSON bytes of one part's ``evidence_json`` string at most: an entry may hold
#: MAX_ENTRY_BYTES, and 2 KiB is left for the entry's other members (agent ids are <= 64
#: characters, indexes and times <= 16 digits).
EVIDENCE_PART_BUDGET: Final = MAX_ENTRY_BYTES - 2048


class LoggedAuditInvalid(TallystickError):
    """Audit entries that disagree with each other, with their evidence or with the log's keys:
    ``coin.audit_chain_invalid`` (the verdict's challenge or head entry is missing, out of
    order, another agent's, already judged, or disagrees with the evidence),
    ``coin.logged_verdict_mismatch`` (the logged verdict is not the one the evidence gives) or
    ``coin.countersigner_retired`` (the head is countersigned only by a log key retired
    before the head entry's time: whoever still holds a retired key could otherwise vouch for
    new heads)."""

    default_code = "coin.audit_chain_invalid"


class AuditStatus(StrEnum):
    """What re-checking one logged audit found; the values are stable."""

    #: The evidence verifies and is consistent, as the log says.
    CONSISTENT = "consistent"
    #: The evidence verifies and flags the reasoning, as the log says: a failed audit.
    FLAGGED = "flagged"
    #: A protocol step failed (the verdict's ``error_code``), so there is no evidence: a
    #: failed audit.
    NO_EVIDENCE = "no_evidence"
    #: The parts do not join, the evidence does not verify, or the entries disagree.
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class LoggedAudit:
    """One logged audit, re-checked: built by :func:`verify_audit_entries`.

    ``verdict_entry`` is the verdict's index; ``head_entry`` and ``challenge_entry`` those of
    the head and challenge it names, when they are such entries (also for an ``invalid``
    audit whose chain fails its checks); ``call_request_id`` the head entry's.
    ``verdict`` is the offline verdict (``consistent`` and ``flagged`` only); ``evidence``
    the joined evidence bytes whenever the parts joined. ``code`` and ``detail`` say why an
    audit failed: the failed step's code (``no_evidence``), ``coin.flagged``, or the check
    that rejected it (``invalid``). ``attestation`` is the head entry's record of the
    provider's attestation (``{"format", "sha256"}``, never verified here), when it has one.
    """

    verdict_entry: int
    status: AuditStatus
    head_entry: int | None = None
    challenge_entry: int | None = None
    call_request_id: str | None = None
    verdict: Verdict | None = None
    evidence: bytes | None = None
    code: str | None = None
    detail: str | None = None
    attestation: Mapping[str, str] | None = None

    @property
    def passed(self) -> bool:
        """True only for a consistent audit."""
        return self.status is AuditStatus.CONSISTENT

    def to_dict(self) -> dict[str, Any]:
        """The audit as JSON (the evidence as its SHA-256, not its bytes)."""
        return {
            "verdict_entry": self.verdict_entry,
            "head_entry": self.head_entry,
            "challenge_entry": self.challenge_entry,
            "call_request_id": self.call_request_id,
            "status": self.status.value,
            "code": self.code,
            "detail": self.detail,
            "evidence_sha256": None
            if self.evidence is None
            else hashlib.sha256(self.evidence).hexdigest(),
            "verdict": None if self.verdict is None else self.verdict.to_dict(),
            "attestation": None if self.attestation is None else dict(self.attestation),
        }


# -- the log bodies ---------------------------------------------------------------------------


def indices_sha256(indices: Sequence[int]) -> str:
    """Hex SHA-256 of the challenged indices as u32be, in order: the challenge entry's digest."""
    return hashlib.sha256(b"".join(index.to_bytes(4, "big") for index in indices)).hexdigest()


def evidence_parts(evidence: bytes, budget: int = EVIDENCE_PART_BUDGET) -> list[str]:
    """The evidence JSON cut into strings whose canonical JSON forms fit ``budget`` bytes each.

    The evidence is canonical JSON, so UTF-8; it is cut between characters, never inside one,
    and ``"".join(parts).encode()`` gives back the exact bytes.
    """
    text = evidence.decode("utf-8")
    parts: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + budget)
        while (cost := len(canonicalize(text[start:end]))) > budget:
            # Escaping makes a string longer than its characters: shrink in proportion.
            end = start + max(1, (end - start) * budget // cost - 1)
        parts.append(text[start:end])
        start = end
    return parts


def _parts_invalid(message: str) -> MalformedInput:
    return MalformedInput(f"evidence parts: {message}", code="coin.evidence_parts_invalid")


def join_evidence(verdict: Mapping[str, Any], parts: Sequence[Mapping[str, Any]]) -> bytes | None:
    """The evidence bytes a verdict entry's body records, from its evidence parts' bodies.

    ``parts`` are the bodies of the ``verdict["evidence_parts"]`` entries just before the
    verdict, in log order. None when the verdict has no evidence (a failed protocol step).

    :raises MalformedInput: parts that are not this verdict's, out of order, or whose joined
        bytes do not hash to ``evidence_sha256`` (``coin.evidence_parts_invalid``).
    """
    if verdict.get("coin") != "verdict":
        raise _parts_invalid("not a verdict body")
    count = verdict.get("evidence_parts")
    if count == 0 and verdict.get("evidence_sha256") is None:
        if parts:
            raise _parts_invalid("a verdict without evidence has no parts")
        return None
    if type(count) is not int or count != len(parts):
        raise _parts_invalid(f"the verdict has {count!r} parts, {len(parts)} given")
    texts = []
    for number, part in enumerate(parts):
        if (
            part.get("coin") != "evidence"
            or part.get("challenge_entry") != verdict.get("challenge_entry")
            or part.get("part") != number
            or part.get("parts") != count
            or not isinstance(part.get("evidence_json"), str)
        ):
            raise _parts_invalid(f"part {number} is not part {number} of this verdict's evidence")
        texts.append(part["evidence_json"])
    raw = "".join(texts).encode("utf-8")
    if hashlib.sha256(raw).hexdigest() != verdict.get("evidence_sha256"):
        raise _parts_invalid("the joined parts do not hash to the verdict's evidence_sha256")
    return raw


# -- re-checking a log ------------------------------------------------------------------------


def verify_log_audits(
    log: AuditedLog, *, progress: Callable[[int, int], None] | None = None
) -> tuple[LoggedAudit, ...]:
    """Re-check every CoIn audit of a verified bundle, in log order (one per verdict entry).

    The log's countersignature on each head is required, by a key of its verified history
    that was not yet retired when the head was logged. ``progress`` is called with
    ``(done, total)`` audits.

    :raises TallystickError: only for a bundle that did not come from
        :meth:`~tallystick.verifier.provenance.AuditedLog.open` (its key history unreadable).
    """
    return verify_audit_entries(log.entries, log_keys=_log_keys(log), progress=progress)


def verify_audit_entries(
    entries: Iterable[LogEntry],
    *,
    log_keys: LogKeys,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[LoggedAudit, ...]:
    """Re-check every verdict among ``entries`` (a verified log's, or a run of them).

    For implementers: the entries are trusted to be the log's (verify the bundle first).
    Each verdict gets a :class:`LoggedAudit`; nothing raises for a bad audit. The checks, in
    order: (1) the verdict's challenge entry and that challenge's head entry exist, come
    before the verdict's parts, are the same agent's, and no other verdict judged that
    challenge; (2) the parts join (:func:`join_evidence`); without evidence, the verdict is
    not consistent and names the failed step; (3) the evidence verifies
    (:func:`~tallystick.verifier.coin.verify_evidence`) with a countersignature on the head
    by one of ``log_keys`` required, and that key was not retired at the head entry's
    ``time_ms`` (``coin.countersigner_retired``); (4) the head entry's note and the challenge
    entry's nonce, ``k`` and ``indices_sha256`` are the evidence's; (5) the logged
    ``consistent`` is the offline verdict's.

    :param log_keys: the log's keys with their retirement times: its verified key history
        (:meth:`LogKeys.from_keyring`), or :meth:`LogKeys.single` for a log never rotated.
    :raises ValueError: ``log_keys`` holds no key.
    """
    if not log_keys.keys:
        raise ValueError("log_keys: at least one log key is needed")
    audits: dict[int, LogEntry] = {}
    verdicts: list[LogEntry] = []
    for entry in entries:
        if entry.kind is EntryKind.AUDIT:
            audits[entry.index] = entry
            if entry.body.get("coin") == "verdict":
                verdicts.append(entry)
    judged: dict[int, int] = {}  # challenge entry -> the first verdict entry judging it
    results: list[LoggedAudit] = []
    for number, verdict in enumerate(verdicts, 1):
        results.append(_check_audit(verdict, audits, judged, log_keys))
        if progress is not None:
            progress(number, len(verdicts))
    return tuple(results)


@dataclass(frozen=True, slots=True)
class _Chain:
    head: LogEntry
    challenge: LogEntry
    parts: tuple[LogEntry, ...]
    attestation: dict[str, str] | None  # the head's record, its shape checked

    @property
    def call_request_id(self) -> str | None:
        return _call_request_id(self.head)


def _call_request_id(head: LogEntry) -> str | None:
    value = head.body.get("call_request_id")
    return value if isinstance(value, str) else None


def _check_audit(
    verdict: LogEntry,
    audits: Mapping[int, LogEntry],
    judged: dict[int, int],
    log_keys: LogKeys,
) -> LoggedAudit:
    index = verdict.index
    chain: _Chain | None = None
    raw: bytes | None = None
    try:
        chain = _chain(verdict, audits, judged)  # (1)
        raw = join_evidence(verdict.body, [part.body for part in chain.parts])  # (2)
        if raw is None:
            code = _no_evidence_code(verdict.body)
            return LoggedAudit(
                index,
                AuditStatus.NO_EVIDENCE,
                chain.head.index,
                chain.challenge.index,
                chain.call_request_id,
                code=code,
                detail="a protocol step failed: no evidence was logged",
                attestation=chain.attestation,
            )
        evidence = Evidence.from_json(raw)
        countersigner, retired_at = _countersigner(evidence, log_keys, chain.head.time_ms)
        offline = verify_evidence(evidence, log_key=countersigner)  # (3)
        _check_in_service(chain.head, countersigner, retired_at)
        _check_entries_match(chain, evidence)  # (4)
        if verdict.body.get("consistent") is not offline.consistent or (  # (5)
            verdict.body.get("error_code") is not None
        ):
            raise LoggedAuditInvalid(
                f"entry {index}: the logged verdict (consistent "
                f"{verdict.body.get('consistent')!r}, error_code "
                f"{verdict.body.get('error_code')!r}) is not the evidence's (consistent "
                f"{offline.consistent})",
                code="coin.logged_verdict_mismatch",
            )
    except TallystickError as exc:
        # Name the entries the verdict points to even when they fail the chain's checks, so
        # that a broken record is still tied to the head (and call) it claims to judge.
        challenge, head = _locate(verdict, audits)
        return LoggedAudit(
            index,
            AuditStatus.INVALID,
            None if head is None else head.index,
            None if challenge is None else challenge.index,
            None if head is None else _call_request_id(head),
            evidence=raw,
            code=exc.code,
            detail=exc.detail,
        )
    flagged = not offline.consistent
    return LoggedAudit(
        index,
        AuditStatus.FLAGGED if flagged else AuditStatus.CONSISTENT,
        chain.head.index,
        chain.challenge.index,
        chain.call_request_id,
        verdict=offline,
        evidence=raw,
        code="coin.flagged" if flagged else None,
        detail=", ".join(offline.flagged) if flagged else None,
        attestation=chain.attestation,
    )


def _locate(
    verdict: LogEntry, audits: Mapping[int, LogEntry]
) -> tuple[LogEntry | None, LogEntry | None]:
    """The challenge entry the verdict names and the head entry that challenge names, each
    None where the named entry is not one (no order or agent checked yet)."""
    challenge_index = verdict.body.get("challenge_entry")
    challenge = audits.get(challenge_index) if type(challenge_index) is int else None
    if challenge is None or challenge.body.get("coin") != "challenge":
        return None, None
    head_index = challenge.body.get("head_entry")
    head = audits.get(head_index) if type(head_index) is int else None
    return challenge, head if head is not None and head.body.get("coin") == "head" else None


def _chain(verdict: LogEntry, audits: Mapping[int, LogEntry], judged: dict[int, int]) -> _Chain:
    """The verdict's head, challenge and part entries, checked for order and agent."""
    index = verdict.index
    body = verdict.body
    count = body.get("evidence_parts")
    if type(count) is not int or not 0 <= count <= index:
        raise _parts_invalid(f"entry {index}: evidence_parts {count!r} is not a part count")
    first_part = index - count
    parts = tuple(audits.get(number) for number in range(first_part, index))
    if any(part is None for part in parts):
        raise _parts_invalid(f"entry {index}: the {count} entries before it are not all audits")
    challenge, head = _locate(verdict, audits)
    if challenge is None:
        raise _chain_invalid(
            f"entry {index}: challenge_entry {body.get('challenge_entry')!r} is no challenge"
        )
    if head is None:
        raise _chain_invalid(
            f"entry {index}: challenge {challenge.index}'s head_entry "
            f"{challenge.body.get('head_entry')!r} is no head"
        )
    if not head.index < challenge.index < first_part:
        raise _chain_invalid(
            f"entry {index}: head {head.index}, challenge {challenge.index} and the verdict's "
            "parts are not in log order"
        )
    if {head.agent, challenge.agent, *(part.agent for part in parts if part)} != {verdict.agent}:
        raise _chain_invalid(
            f"entry {index}: its head, challenge and parts are not all its agent's"
        )
    attestation = None
    if "attestation" in head.body:  # recorded, not verified: only its shape is checked
        try:
            attestation = Attestation.digest_from_json(head.body["attestation"])
        except MalformedInput as exc:
            raise _chain_invalid(f"entry {index}: head {head.index}'s {exc}") from exc
    earlier = judged.setdefault(challenge.index, index)
    if earlier != index:
        raise _chain_invalid(f"entry {index}: challenge {challenge.index} was judged at {earlier}")
    return _Chain(head, challenge, tuple(part for part in parts if part is not None), attestation)


def _no_evidence_code(body: Mapping[str, Any]) -> str:
    """The failed step a verdict without evidence names; it cannot be consistent."""
    code = body.get("error_code")
    if body.get("consistent") is not False or not isinstance(code, str) or not code:
        raise LoggedAuditInvalid(
            "verdict: no evidence, yet not an inconsistent verdict naming its failed step",
            code="coin.logged_verdict_mismatch",
        )
    return code


def _countersigner(
    evidence: Evidence, log_keys: LogKeys, at_ms: int
) -> tuple[NoteVerifier, int | None]:
    """The log key whose name and key id sign the head, with its retirement time (ms).

    A key in service at ``at_ms`` (the head entry's time) comes first, so a head that a
    retired key signs too is judged by the key that vouches for it. With no key of
    ``log_keys`` on the head, the first in service is returned: verify_evidence fails closed.
    """
    # sorted is stable: the history's order, in-service keys first.
    keys = sorted(log_keys.keys, key=lambda item: not LogKeys.in_service(item[1], at_ms))
    try:
        signed = {
            (item.name, item.key_id) for item in SignedNote.from_text(evidence.head_note).signatures
        }
    except TallystickError:
        return keys[0]  # verify_evidence reports the head itself
    return next((item for item in keys if (item[0].name, item[0].key_id) in signed), keys[0])


def _check_in_service(head: LogEntry, countersigner: NoteVerifier, retired_at: int | None) -> None:
    """The key whose countersignature verified was still in service when the head was logged."""
    if not LogKeys.in_service(retired_at, head.time_ms):
        raise LoggedAuditInvalid(
            f"entry {head.index}: the head is countersigned only by log key "
            f"{countersigner.label}, retired at {retired_at}, before the entry's time "
            f"{head.time_ms}",
            code="coin.countersigner_retired",
        )


def _check_entries_match(chain: _Chain, evidence: Evidence) -> None:
    """The head and challenge entries record what the evidence holds."""
    head, challenge = chain.head.body, chain.challenge.body
    where = f"entries {chain.head.index} and {chain.challenge.index}"
    if head.get("head_note") != evidence.head_note:
        raise _chain_invalid(f"{where}: the logged head note is not the evidence's")
    if head.get("provider_vkey") != evidence.provider_vkey:
        raise _chain_invalid(f"{where}: the logged provider key is not the evidence's")
    if challenge.get("nonce") != evidence.auditor_nonce.hex():
        raise _chain_invalid(f"{where}: the logged nonce is not the evidence's")
    if challenge.get("k") != evidence.challenge.k:
        raise _chain_invalid(f"{where}: the logged k is not the evidence's")
    opened = [opening.index for opening in evidence.openings]
    if challenge.get("indices_sha256") != indices_sha256(opened):
        raise _chain_invalid(f"{where}: the logged indices_sha256 is not the evidence's openings'")


def _chain_invalid(message: str) -> LoggedAuditInvalid:
    return LoggedAuditInvalid(message, code="coin.audit_chain_invalid")


def _log_keys(log: AuditedLog) -> LogKeys:
    """A verified log's keys with their retirement times: the header's key alone, or its history.

    ``AuditedLog.open`` checked that the header's ``log_vkey`` is the pinned key's (or, for a
    rotated log, one of its verified history's), so its history verifies from that key too.
    """
    bundle = log.bundle
    header = NoteVerifier.from_vkey(bundle.log_vkey)
    if not bundle.key_documents:
        return LogKeys.single(bundle.origin, header.public_key)
    keyring = log_keyring(bundle.key_documents, origin=bundle.origin, pinned=header.public_key)
    return LogKeys.from_keyring(bundle.origin, keyring)
