"""The CoinAudit service: tallystickd as the auditor of a provider's hidden reasoning (coin.md §4).

An agent that received an answer with a provider's signed commitment head asks its sidecar to
audit it, in two calls on the agent's own socket (any identified agent, as for ``Ledger``):

1. ``BeginAudit``: the head is verified against the delivered prompt and answer (nothing is
   written when it does not verify) and countersigned with the log key (coin.md §4.3: the
   logged head, the challenge seed and the evidence all use the countersigned note, so
   ``tallystick audit verify --log-key`` ties the audit to this log); the head entry is
   appended, and only once it is durable is
   the auditor nonce drawn (``os.urandom``), so the provider cannot have known the challenge
   when it signed; the challenge entry is appended; the challenged indices are returned.
2. ``FinishAudit``: the provider's openings (and its sketch key) are checked and judged by
   :class:`tallystick.daemon.coin.judge.Auditor`; the evidence and the verdict are appended.

Every entry is of kind ``audit``: a head and a challenge (``BeginAudit``), then the evidence
parts and the verdict, appended in one atomic batch (``FinishAudit``). The verifier owns their
bodies and how the evidence document is cut into parts (it is larger than one log entry may
be): see ``tallystick.verifier._internal.coin_log``, re-exported by
:mod:`tallystick.verifier.coin` (:func:`~tallystick.verifier.coin.evidence_parts`,
:func:`~tallystick.verifier.coin.join_evidence`), and ``tallystick audit verify-log``, which
re-checks every audit logged in a bundle. A failed protocol step (a bad opening, a sketch that
does not match) has no evidence: the verdict's ``error_code`` says which check, and
``evidence_parts`` is 0.
The provider's n-gram sketch is not in the head entry: the head note binds its SHA-256, and the
evidence carries the sketch and its key. Nor is the provider's attestation document (a TEE
quote; coin.md §4.9), which is recorded, not verified: the head entry gains
``"attestation": {"format", "sha256"}`` (:meth:`~tallystick.verifier.coin.Attestation.digest_json`)
when the request carries one, and has no such member otherwise. The digest binds the document
the provider presented at audit time; the customer keeps the document, and a later verifier
that can check it matches it to the log.

Prompt and answer texts stay in memory, in the pending audit, and are never written or logged.
A pending audit belongs to the agent that began it, expires (``coin_pending_ttl_s``) and is
bounded (``coin_pending_max``, and :data:`MAX_PENDING_TEXT` characters of held text; when full,
the oldest audit of the agent holding the most is dropped, so an agent that floods the sidecar
drops its own audits, not another's); an unknown, finished, expired or other agent's audit id is
``coin.audit_unknown``, the same answer in every case.

The embedding engine (torch, all-MiniLM-L6-v2) is built on the first ``BeginAudit``, once; its
per-token cache is ``DATA_DIR/coin-cache`` (0700). Without the ``coin`` extra the calls fail
with ``coin.unavailable``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog
from google.protobuf.message import Message
from tallystick.proto import audit_pb2
from tallystick.verifier import merkle
from tallystick.verifier.checkpoint import NoteVerifier
from tallystick.verifier.coin import (
    SALT_BYTES,
    Attestation,
    Leaf,
    Opening,
    evidence_parts,
    indices_sha256,
    verify_head,
)
from tallystick.verifier.errors import MalformedInput, TallystickError
from tallystick.verifier.logentry import EntryKind

from .identity import Caller
from .log import Log

if TYPE_CHECKING:
    from tallystick.daemon.coin.judge import Auditor, PendingAudit

__all__ = [
    "AUDIT_ID_BYTES",
    "CACHE_DIR_NAME",
    "MAX_CALL_REQUEST_ID",
    "MAX_PENDING",
    "MAX_PENDING_TEXT",
    "NONCE_BYTES",
    "PENDING_TTL_S",
    "AuditUnavailable",
    "AuditUnknown",
    "CoinAuditService",
    "CoinAudits",
    "PendingAudits",
    "default_auditor",
]

#: Pending audits held at most (the oldest is dropped first); the ``coin_pending_max`` default.
MAX_PENDING: Final = 1024
#: Seconds a pending audit waits for its openings; the ``coin_pending_ttl_s`` default.
PENDING_TTL_S: Final = 15 * 60.0
#: Characters of prompt, answer, head and sketch that pending audits hold at most, all together
#: (256 Mi: 1,024 audits of 1 MiB requests would otherwise pin 1 GiB).
MAX_PENDING_TEXT: Final = 256 * 1024 * 1024
#: Random bytes of an audit id (shown as 32 hex characters).
AUDIT_ID_BYTES: Final = 16
#: Bytes of auditor nonce drawn per audit (the judge's ``NONCE_BYTES``).
NONCE_BYTES: Final = 32
#: A call's request id is at most this long (``CallBody.request_id``).
MAX_CALL_REQUEST_ID: Final = 256
#: The engine's per-token cache folder, under the data directory.
CACHE_DIR_NAME: Final = "coin-cache"

_logger = structlog.get_logger("tallystickd.coin")


class AuditUnavailable(TallystickError):
    """This sidecar cannot audit: the ``coin`` extra (torch, the embedder) is missing or its
    engine failed to start; the message names the cause."""

    default_code = "coin.unavailable"


class AuditUnknown(TallystickError):
    """No pending audit by that id for the calling agent (unknown, finished or expired)."""

    default_code = "coin.audit_unknown"


def _opening_malformed(message: str) -> MalformedInput:
    return MalformedInput(f"openings: {message}", code="coin.opening_malformed")


def _request_malformed(message: str) -> MalformedInput:
    return MalformedInput(message, code="coin.request_malformed")


# -- pending audits -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pending:
    """One pending audit: whose it is, when it expires, and the judge's state (which holds the
    prompt and answer; never written)."""

    agent: str
    audit: PendingAudit
    challenge_entry: int
    expires_at: float

    @property
    def size(self) -> int:
        audit = self.audit
        return len(audit.prompt) + len(audit.answer) + len(audit.head_note) + len(audit.sketch)


class PendingAudits:
    """Pending audits by id, in memory only: bounded, expiring, each owned by one agent.

    :param capacity: audits held at most; adding one more drops the oldest audit of the agent
        holding the most audits.
    :param ttl_s: seconds an audit stays pending.
    :param max_text: characters of held text at most (past it, the oldest audit of the agent
        holding the most text is dropped).
    :param clock: monotonic seconds (a parameter so tests need not sleep).
    """

    def __init__(
        self,
        *,
        capacity: int = MAX_PENDING,
        ttl_s: float = PENDING_TTL_S,
        max_text: int = MAX_PENDING_TEXT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = capacity
        self._ttl_s = ttl_s
        self._max_text = max_text
        self._clock = clock
        self._items: OrderedDict[str, _Pending] = OrderedDict()
        self._text = 0
        # Per agent: its audit ids, oldest first, and the text they hold (who to drop when full).
        self._ids_of: dict[str, OrderedDict[str, None]] = {}
        self._text_of: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._items)

    def add(self, agent: str, audit: PendingAudit, challenge_entry: int) -> str:
        """Hold ``audit`` for ``agent``; return its new id (32 lowercase hex characters)."""
        audit_id = secrets.token_hex(AUDIT_ID_BYTES)
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._insert(audit_id, _Pending(agent, audit, challenge_entry, now + self._ttl_s))
        return audit_id

    def take(self, audit_id: str, agent: str) -> _Pending:
        """Remove and return ``agent``'s pending audit ``audit_id``.

        :raises AuditUnknown: no such audit for ``agent`` (unknown, taken, expired, or
            another agent's: the same answer for each) (``coin.audit_unknown``).
        """
        with self._lock:
            now = self._clock()
            self._expire(now)
            item = self._items.get(audit_id)
            if item is None or item.agent != agent or item.expires_at <= now:
                raise AuditUnknown(
                    "audit: no pending audit by that id (unknown, finished or expired)"
                )
            return self._remove(audit_id)

    def restore(self, audit_id: str, item: _Pending) -> None:
        """Put back an audit taken by :meth:`take` whose finish failed before its verdict was
        written, so the caller may try again (until it expires)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if item.expires_at > now:
                self._insert(audit_id, item)

    def _insert(self, audit_id: str, item: _Pending) -> None:
        self._items[audit_id] = item
        self._text += item.size
        self._ids_of.setdefault(item.agent, OrderedDict())[audit_id] = None
        self._text_of[item.agent] = self._text_of.get(item.agent, 0) + item.size
        while len(self._items) > self._capacity or (
            self._text > self._max_text and len(self._items) > 1
        ):
            if len(self._items) > self._capacity:
                agent = max(self._ids_of, key=lambda a: len(self._ids_of[a]))
            else:
                agent = max(self._text_of, key=self._text_of.__getitem__)
            dropped = self._remove(next(iter(self._ids_of[agent])))
            _logger.info("coin.pending_dropped", agent=dropped.agent, reason="capacity")

    def _remove(self, audit_id: str) -> _Pending:
        item = self._items.pop(audit_id)
        self._text -= item.size
        ids = self._ids_of[item.agent]
        del ids[audit_id]
        self._text_of[item.agent] -= item.size
        if not ids:
            del self._ids_of[item.agent], self._text_of[item.agent]
        return item

    def _expire(self, now: float) -> None:
        # Insertion order is expiry order (one TTL for all), except for restored audits, which
        # keep their earlier expiry: :meth:`take` checks the expiry of what it finds.
        while self._items:
            audit_id, item = next(iter(self._items.items()))
            if item.expires_at > now:
                return
            self._remove(audit_id)


# -- the auditor, built once ------------------------------------------------------------------


def default_auditor(cache_dir: Path) -> Auditor:
    """The packaged auditor: all-MiniLM-L6-v2 on ``$TALLYSTICK_COIN_DEVICE`` (else CUDA when
    present, else the CPU), cl100k_base, the packaged calibration; token cache in ``cache_dir``.

    :raises AuditUnavailable: the ``coin`` extra is not installed, or the engine cannot start.
    """
    try:
        from tallystick.daemon.coin.embedding import EmbeddingEngine
        from tallystick.daemon.coin.judge import Auditor
        from tallystick.daemon.coin.tokenizer import default_tokenizer
    except ImportError as exc:
        raise AuditUnavailable(
            f"coin audits need tallystick[coin] (torch and the embedder): {exc}"
        ) from exc
    cache_dir.mkdir(mode=0o700, exist_ok=True)
    cache_dir.chmod(0o700)
    try:
        return Auditor(EmbeddingEngine(cache_dir=cache_dir), default_tokenizer())
    except TallystickError as exc:
        raise AuditUnavailable(f"coin audits: the engine cannot start: {exc.code}: {exc}") from exc


class CoinAudits:
    """The daemon-wide audit state: the log, the lazily built auditor and the pending audits.

    :param build_auditor: makes the auditor, called once, on first use (default
        :func:`default_auditor` with ``cache_dir``).
    """

    def __init__(
        self,
        log: Log,
        *,
        cache_dir: Path,
        pending: PendingAudits | None = None,
        build_auditor: Callable[[], Auditor] | None = None,
    ) -> None:
        self.log = log
        self.pending = pending if pending is not None else PendingAudits()
        self._build = build_auditor or (lambda: default_auditor(cache_dir))
        self._auditor: Auditor | None = None
        self._failure: str | None = None
        self._build_lock = threading.Lock()
        # The engine is not documented as thread-safe, and torch uses every core anyway.
        self.judge_lock = threading.Lock()

    def auditor(self) -> Auditor:
        """The auditor, built on first use (later callers wait for it).

        :raises AuditUnavailable: it cannot be built; the failure is kept, so later calls fail
            at once (install the extra, then restart the daemon).
        """
        with self._build_lock:
            if self._auditor is None and self._failure is None:
                started = time.perf_counter()
                try:
                    self._auditor = self._build()
                except AuditUnavailable as exc:
                    self._failure = str(exc)
                    _logger.error("coin.unavailable", detail=self._failure)
                else:
                    _logger.info(
                        "coin.auditor_ready", seconds=round(time.perf_counter() - started, 3)
                    )
            if self._auditor is None:
                raise AuditUnavailable(self._failure or "coin audits are unavailable")
            return self._auditor


# -- the service ------------------------------------------------------------------------------


def _opening(message: audit_pb2.LeafOpening) -> Opening:
    """One wire opening as the verifier's :class:`~tallystick.verifier.coin.Opening`.

    :raises MalformedInput: a leaf that does not parse, a salt or proof node of the wrong size
        (``coin.opening_malformed``).
    """
    where = f"opening {message.index}"
    try:
        leaf = Leaf.from_bytes(message.leaf)
    except TallystickError as exc:
        raise _opening_malformed(f"{where}: leaf: {exc.code}") from exc
    if len(message.salt) != SALT_BYTES:
        raise _opening_malformed(f"{where}: salt must be {SALT_BYTES} bytes")
    proof = tuple(message.proof)
    if any(len(node) != merkle.HASH_SIZE for node in proof):
        raise _opening_malformed(f"{where}: proof nodes must be {merkle.HASH_SIZE} bytes")
    return Opening(message.index, leaf, message.salt, message.token_id, proof)


def _attestation(request: audit_pb2.BeginAuditRequest) -> Attestation | None:
    """The request's attestation, validated as an offer's is; None when it carries none.

    :raises MalformedInput: a format that is not a lowercase token, or a document that is
        empty or over ``MAX_ATTESTATION_BYTES`` (``coin.request_malformed``).
    """
    if not request.HasField("attestation"):
        return None
    wire = request.attestation
    try:
        return Attestation(format=wire.format, document=wire.document)
    except MalformedInput as exc:
        raise _request_malformed(str(exc)) from exc


_Handler = Callable[[Any], Message]


class CoinAuditService:
    """CoinAudit RPCs for one socket: audits are begun and finished in its agent's name."""

    def __init__(self, audits: CoinAudits, caller: Caller) -> None:
        self._audits = audits
        self._caller = caller

    def methods(self) -> dict[str, tuple[type[Message], _Handler]]:
        """Each RPC's name, request type and handler (taking the parsed request)."""
        return {
            "BeginAudit": (audit_pb2.BeginAuditRequest, self.begin_audit),
            "FinishAudit": (audit_pb2.FinishAuditRequest, self.finish_audit),
        }

    def begin_audit(self, request: audit_pb2.BeginAuditRequest) -> audit_pb2.BeginAuditResponse:
        """Verify the head, log it, draw and log the challenge, hold the audit.

        :raises TallystickError: no agent identity (``auth.no_agent_identity``); no engine
            (``coin.unavailable``); a call request id over 256 characters or a malformed
            attestation (``coin.request_malformed``); a head that does not verify (its
            ``coin.*`` code, or ``note.bad_vkey``; nothing is written); a log failure.
        """
        agent = self._caller.require_agent()
        if len(request.call_request_id) > MAX_CALL_REQUEST_ID:
            raise _request_malformed(
                f"call_request_id: longer than {MAX_CALL_REQUEST_ID} characters"
            )
        attestation = _attestation(request)
        auditor = self._audits.auditor()
        log = self._audits.log
        try:  # countersign only a head that verifies (Auditor.begin checks the rest again)
            verify_head(request.head_note, NoteVerifier.from_vkey(request.provider_vkey))
        except TallystickError as exc:
            raise MalformedInput(str(exc), code=exc.code) from exc
        head_note = log.countersign(request.head_note)
        head_body: dict[str, Any] = {
            "coin": "head",
            "head_note": head_note,
            "provider_vkey": request.provider_vkey,
            "call_request_id": request.call_request_id or None,
        }
        if attestation is not None:  # absent, not null: older head entries have none either
            head_body["attestation"] = attestation.digest_json()
        head_entry: list[int] = []
        drawing = False

        def draw_nonce() -> bytes:
            nonlocal drawing
            drawing = True
            head_entry.append(log.append(EntryKind.AUDIT, agent, head_body))
            return os.urandom(NONCE_BYTES)  # only now: the head is durable

        try:
            pending = auditor.begin(
                head_note=head_note,
                provider_vkey=request.provider_vkey,
                prompt=request.prompt,
                answer=request.answer,
                sketch=request.sketch,
                domain=request.domain or None,
                draw_nonce=draw_nonce,
            )
        except TallystickError as exc:
            if drawing:
                raise  # the head verified; the log (or what follows) failed
            # The head does not verify: INVALID_ARGUMENT whatever the verifier's error type.
            raise MalformedInput(str(exc), code=exc.code) from exc
        (head_index,) = head_entry
        challenge_index = log.append(
            EntryKind.AUDIT,
            agent,
            {
                "coin": "challenge",
                "head_entry": head_index,
                "nonce": pending.nonce.hex(),
                "k": pending.challenge.k,
                "indices_sha256": indices_sha256(pending.indices),
            },
        )
        audit_id = self._audits.pending.add(agent, pending, challenge_index)
        _logger.info(
            "coin.audit_begun",
            agent=agent,
            head_entry=head_index,
            challenge_entry=challenge_index,
            reasoning_tokens=pending.head.reasoning_tokens,
            opened=len(pending.indices),
        )
        return audit_pb2.BeginAuditResponse(
            audit_id=audit_id,
            head_entry_index=head_index,
            challenge_entry_index=challenge_index,
            nonce=pending.nonce,
            indices=pending.indices,
        )

    def finish_audit(self, request: audit_pb2.FinishAuditRequest) -> audit_pb2.FinishAuditResponse:
        """Judge the openings of a pending audit; log the evidence and the verdict.

        A failed opening or sketch is a verdict (``consistent`` false, ``error_code`` set),
        logged like any other.

        :raises TallystickError: no agent identity; malformed openings
            (``coin.opening_malformed``: nothing is written, the audit stays pending); no such
            pending audit for this agent (``coin.audit_unknown``); a log failure (the audit
            stays pending).
        """
        agent = self._caller.require_agent()
        openings = [_opening(message) for message in request.openings]
        pending = self._audits.pending
        item = pending.take(request.audit_id, agent)
        try:
            auditor = self._audits.auditor()
            with self._audits.judge_lock:
                outcome = auditor.finish(item.audit, openings, sketch_key=request.sketch_key)
            evidence = None if outcome.evidence is None else outcome.evidence.to_json()
            parts = [] if evidence is None else evidence_parts(evidence)
            entries: list[tuple[EntryKind, str, dict[str, Any]]] = [
                (
                    EntryKind.AUDIT,
                    agent,
                    {
                        "coin": "evidence",
                        "challenge_entry": item.challenge_entry,
                        "part": number,
                        "parts": len(parts),
                        "evidence_json": text,
                    },
                )
                for number, text in enumerate(parts)
            ]
            verdict_body = {
                "coin": "verdict",
                "challenge_entry": item.challenge_entry,
                "consistent": outcome.passed,
                "error_code": outcome.error_code,
                "evidence_sha256": None
                if evidence is None
                else hashlib.sha256(evidence).hexdigest(),
                "evidence_parts": len(parts),
            }
            entries.append((EntryKind.AUDIT, agent, verdict_body))
            verdict_index = self._audits.log.append_batch(entries)[-1]
        except BaseException:
            pending.restore(request.audit_id, item)
            raise
        flagged = () if outcome.evidence is None else outcome.evidence.verdict.flagged
        _logger.info(
            "coin.audit_finished",
            agent=agent,
            verdict_entry=verdict_index,
            consistent=outcome.passed,
            error_code=outcome.error_code,
            flagged=len(flagged),
        )
        return audit_pb2.FinishAuditResponse(
            consistent=outcome.passed,
            score=outcome.score,
            flagged=flagged,
            verdict_entry_index=verdict_index,
            evidence=evidence or b"",
            error_code=outcome.error_code or "",
        )
