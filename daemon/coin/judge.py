"""The auditor's side of a CoIn audit, and the whole protocol in process for one trace.

:class:`Auditor` runs the steps of coin.md §4 on a provider's signed head:

1. verify the head: the provider's signature, billed reasoning usage equal to the committed
   count, and the prompt and answer hashes against what was delivered;
2. hold (log) the head, and only then draw the challenge nonce, so the provider cannot know
   which leaves will be opened when it commits;
3. derive ``k`` stratified indices (``k`` sized for a forged fraction ``f`` at detection
   probability ``P`` with per-leaf detection ``p``, and never fewer than the number of blocks,
   so every block fingerprint is seen); ask the provider to open exactly those;
4. verify every opening (inclusion at tree size = billed count, salt, block index);
5. run the semantic checks and the length prior (:mod:`.semantic`, :mod:`.prior`);
6. build the :class:`~tallystick.verifier.coin.Evidence`, whose verdict says what it shows
   and what it does not.

A protocol failure in steps 1-4 fails the audit with the rejection's code and no evidence.
:func:`judge_trace` plays an honest provider that commits to a trace's reasoning (or to the
token ids a cheating provider would commit to) and audits it. The auditor side never logs
or stores reasoning text: the evidence holds hashes, fingerprints and opened token ids only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Final

import numpy as np
from tallystick.verifier.checkpoint import NoteSigner, NoteVerifier
from tallystick.verifier.coin import (
    Challenge,
    CommitmentHead,
    Evidence,
    Opening,
    block_count,
    challenge_indices,
    challenge_seed,
    ngram_entries,
    sample_size,
    split_sketch,
    verify_head,
    verify_opening,
    verify_sketch,
)
from tallystick.verifier.errors import MalformedInput, TallystickError

from .embedding import EmbeddingEngine
from .prior import LengthModel
from .provider import commit_tokens
from .semantic import Calibration, Measurements, measure
from .tokenizer import Tokenizer

__all__ = [
    "LENGTH_PRIOR_FILE",
    "NONCE_BYTES",
    "AuditOutcome",
    "Auditor",
    "PendingAudit",
    "Trace",
    "judge_trace",
    "packaged_length_model",
    "parse_trace",
    "read_traces",
    "seeded_nonces",
]

#: The fitted length prior shipped in the package (written by ``scripts/fit_coin.py``).
LENGTH_PRIOR_FILE: Final = "length_prior.json"
#: Bytes of auditor nonce drawn per audit.
NONCE_BYTES: Final = 32
#: The model id the in-process provider of :func:`judge_trace` reports.
_JUDGE_MODEL: Final = "judge/honest-provider"

#: The provider's side of step 3: opens challenged leaf indices and reveals the sketch key.
Opener = Callable[[list[int]], tuple[list[Opening], bytes]]


@dataclass(frozen=True)
class Trace:
    """One line of a traces file: ``{"id", "prompt", "reasoning", "answer"}`` and optionally
    ``"domain"`` (else the length prior routes by the prompt)."""

    id: str
    prompt: str
    reasoning: str
    answer: str
    domain: str | None = None


def parse_trace(line: str, *, line_number: int) -> Trace:
    """One JSON line as a :class:`Trace`.

    :raises MalformedInput: not a JSON object, or a required member missing, not a string or
        empty (``coin.trace_malformed``; the message names the line).
    """
    where = f"traces line {line_number}"
    try:
        item = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MalformedInput(f"{where}: not JSON ({exc})", code="coin.trace_malformed") from exc
    if not isinstance(item, dict):
        raise MalformedInput(f"{where}: not a JSON object", code="coin.trace_malformed")
    fields: dict[str, str] = {}
    for name in ("id", "prompt", "reasoning", "answer"):
        value = item.get(name)
        if not isinstance(value, str) or not value:
            raise MalformedInput(
                f"{where}: {name!r} must be a non-empty string", code="coin.trace_malformed"
            )
        fields[name] = value
    domain = item.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise MalformedInput(f"{where}: 'domain' must be a string", code="coin.trace_malformed")
    return Trace(domain=domain, **fields)


def packaged_length_model() -> LengthModel:
    """The length prior fitted on the dev traces, shipped with the package.

    :raises MalformedInput: the packaged file is missing or malformed (``coin.fit_malformed``).
    """
    try:
        raw = resources.files(__package__).joinpath("data", LENGTH_PRIOR_FILE).read_text()
        return LengthModel.from_json(json.loads(raw))
    except (OSError, json.JSONDecodeError) as exc:
        raise MalformedInput(
            f"length prior: cannot read {LENGTH_PRIOR_FILE}: {exc}", code="coin.fit_malformed"
        ) from exc


@dataclass(frozen=True)
class AuditOutcome:
    """One audit's result: the evidence (None when the protocol itself failed) and a summary.

    ``score`` is the calibrated semantic score (larger is more suspicious; None when the
    protocol failed); ``passed`` is the evidence's ``verdict.consistent``, which also fails on
    hard checks (a forged fingerprint) whatever the score.
    """

    passed: bool
    score: float | None
    opened_leaves: int
    reported_tokens: int | None
    evidence: Evidence | None
    measurements: Measurements | None
    domain: str | None = None
    error_code: str | None = None


@dataclass(frozen=True)
class PendingAudit:
    """An audit between its challenge and the openings: what :meth:`Auditor.finish` needs.

    Holds the delivered prompt and answer in memory (the semantic checks read them); whoever
    keeps a pending audit must not write them anywhere.
    """

    head: CommitmentHead
    head_note: str
    provider_vkey: str
    nonce: bytes
    challenge: Challenge
    indices: tuple[int, ...]
    sketch: bytes = field(repr=False)
    prompt: str = field(repr=False)
    answer: str = field(repr=False)
    domain: str | None


class Auditor:
    """The auditor: challenges a signed head, verifies openings, judges them.

    :param engine: recomputes token embeddings and embeds the prompt and answer.
    :param tokenizer: the tokenizer the head names (its id must match the head's).
    :param calibration: thresholds and challenge sizing (default: the packaged fit).
    :param length_model: the length prior (default: the packaged fit).
    """

    def __init__(
        self,
        engine: EmbeddingEngine,
        tokenizer: Tokenizer,
        *,
        calibration: Calibration | None = None,
        length_model: LengthModel | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.calibration = calibration if calibration is not None else Calibration.packaged()
        self.length_model = length_model if length_model is not None else packaged_length_model()
        self.challenge_template = Challenge(
            k=sample_size(
                self.calibration.fraction,
                self.calibration.per_leaf_detection,
                self.calibration.detection_target,
            ),
            fraction=self.calibration.fraction,
            target=self.calibration.detection_target,
            per_leaf_detection=self.calibration.per_leaf_detection,
            run_length=self.calibration.run_length,
        )

    def challenge_for(self, head: CommitmentHead) -> Challenge:
        """The challenge for ``head``: the sized ``k``, raised to one opening per block."""
        k = max(self.challenge_template.k, block_count(head.reasoning_tokens, head.block_size))
        template = self.challenge_template
        return Challenge(
            k, template.fraction, template.target, template.per_leaf_detection, template.run_length
        )

    def begin(
        self,
        *,
        head_note: str,
        provider_vkey: str,
        prompt: str,
        answer: str,
        sketch: bytes,
        domain: str | None = None,
        draw_nonce: Callable[[], bytes] | None = None,
    ) -> PendingAudit:
        """Steps 1-3: verify the head and its sketch, draw the nonce, derive the challenged
        indices.

        :param draw_nonce: called once, after the head verified, so the caller holds (logs) the
            head before any randomness exists (default ``os.urandom``); tests and the benchmark
            pass :func:`seeded_nonces`.
        :raises TallystickError: the head does not verify, is not for this auditor's tokenizer
            and embedder, or binds no sketch or another one (``coin.*`` codes); ``draw_nonce``
            was not called.
        """
        head = verify_head(  # (1)
            head_note, NoteVerifier.from_vkey(provider_vkey), answer=answer, prompt=prompt
        )
        if head.tokenizer != self.tokenizer.id or head.embedder != self.engine.model_id:
            raise MalformedInput(
                "head: tokenizer or embedder is not the auditor's", code="coin.head_unsupported"
            )
        if head.embedder_sha256 != self.engine.weights_sha256:
            raise MalformedInput(
                "head: embedder weights differ from the auditor's", code="coin.head_unsupported"
            )
        # Without the sketch, copies of the reasoning would only show where openings land.
        if head.sketch_sha256 is None:
            raise MalformedInput(
                "head: binds no n-gram sketch, which this auditor requires",
                code="coin.head_unsupported",
            )
        split_sketch(head, sketch)
        # (2) only now, with the head held, is the nonce drawn
        nonce = os.urandom(NONCE_BYTES) if draw_nonce is None else draw_nonce()
        challenge = self.challenge_for(head)  # (3)
        indices = challenge_indices(
            challenge_seed(head_note, nonce),
            head.reasoning_tokens,
            head.block_size,
            challenge.k,
            challenge.run_length,
        )
        return PendingAudit(
            head=head,
            head_note=head_note,
            provider_vkey=provider_vkey,
            nonce=nonce,
            challenge=challenge,
            indices=tuple(indices),
            sketch=sketch,
            prompt=prompt,
            answer=answer,
            domain=domain,
        )

    def finish(
        self, pending: PendingAudit, openings: Sequence[Opening], *, sketch_key: bytes
    ) -> AuditOutcome:
        """Steps 4-6: verify the openings of ``pending``'s indices and the sketch against them
        (with its key, revealed with the openings), run the checks, judge.

        A failed opening or sketch fails the audit (``error_code`` says why, no evidence).
        """
        try:
            if [opening.index for opening in openings] != list(pending.indices):
                raise MalformedInput(
                    "openings: not exactly the challenged indices", code="coin.challenge_mismatch"
                )
            for opening in openings:  # (4)
                verify_opening(pending.head, opening)
            verify_sketch(
                pending.head,
                pending.sketch,
                sketch_key,
                ((opening.index, opening.token_id) for opening in openings),
            )
        except TallystickError as exc:
            return AuditOutcome(False, None, 0, None, None, None, error_code=exc.code)
        domain, measurements = self._measure(  # (5)
            pending, openings, sketch_key=sketch_key
        )
        thresholds = self.calibration.for_domain(domain)
        evidence = Evidence.build(  # (6)
            head_note=pending.head_note,
            provider_vkey=pending.provider_vkey,
            auditor_nonce=pending.nonce,
            challenge=pending.challenge,
            openings=openings,
            checks=thresholds.block_checks(measurements),
            length_prior=thresholds.length_prior(measurements),
            fpr_at_threshold=thresholds.fpr_estimate,
            sketch=pending.sketch,
            sketch_key=sketch_key,
        )
        return AuditOutcome(
            passed=evidence.verdict.consistent,
            score=thresholds.score(measurements),
            opened_leaves=len(openings),
            reported_tokens=pending.head.reasoning_tokens,
            evidence=evidence,
            measurements=measurements,
            domain=domain,
        )

    def audit(
        self,
        *,
        head_note: str,
        provider_vkey: str,
        opener: Opener,
        prompt: str,
        answer: str,
        sketch: bytes,
        domain: str | None = None,
        draw_nonce: Callable[[], bytes] | None = None,
    ) -> AuditOutcome:
        """Audit one commitment in process: :meth:`begin`, ``opener``, :meth:`finish`.

        :param opener: opens the challenged indices and reveals the sketch key with them.
        A head that does not verify fails the audit with its code and no evidence.
        """
        try:
            pending = self.begin(
                head_note=head_note,
                provider_vkey=provider_vkey,
                prompt=prompt,
                answer=answer,
                sketch=sketch,
                domain=domain,
                draw_nonce=draw_nonce,
            )
            openings, sketch_key = opener(list(pending.indices))
        except TallystickError as exc:
            return AuditOutcome(False, None, 0, None, None, None, error_code=exc.code)
        return self.finish(pending, openings, sketch_key=sketch_key)

    def _measure(
        self, pending: PendingAudit, openings: Sequence[Opening], *, sketch_key: bytes
    ) -> tuple[str, Measurements]:
        """The domain the audit is judged in (the trace's own when calibrated, else the
        router's) and the checks' measurements."""
        prompt_vec, answer_vec = self.engine.embed_texts([pending.prompt, pending.answer])
        prompt_ids = self.tokenizer.encode(pending.prompt)
        answer_ids = self.tokenizer.encode(pending.answer)
        known = set(self.length_model.regressions) & set(self.calibration.domains)
        domain = pending.domain
        routed = domain if domain in known else self.length_model.route(prompt_vec)
        length_z = self.length_model.z(
            domain=routed,
            prompt_tokens=len(prompt_ids),
            answer_tokens=len(answer_ids),
            answer=pending.answer,
            reasoning_tokens=pending.head.reasoning_tokens,
        )
        return routed, measure(
            self.engine,
            self.tokenizer,
            openings=openings,
            prompt_embedding=prompt_vec,
            answer_embedding=answer_vec,
            visible_ids=frozenset(prompt_ids) | frozenset(answer_ids),
            sketch_entries=split_sketch(pending.head, pending.sketch),
            prompt_entries=ngram_entries(sketch_key, prompt_ids),
            answer_entries=ngram_entries(sketch_key, answer_ids),
            length_z=length_z,
        )


def judge_trace(
    auditor: Auditor,
    trace: Trace,
    *,
    signer: NoteSigner,
    reasoning_ids: Sequence[int] | None = None,
    draw_nonce: Callable[[], bytes] | None = None,
    trace_secret: bytes | None = None,
    time_s: int | None = None,
) -> AuditOutcome:
    """Commit to ``trace`` as a provider would, then audit the commitment.

    :param reasoning_ids: the token ids the provider commits to and bills; None is the honest
        provider (the trace's reasoning, tokenized). A cheating provider passes inflated ids
        (:func:`~tallystick.daemon.coin.attacks.inflate`) and bills their full count.
    :param draw_nonce: the auditor's nonce source (default ``os.urandom``).
    :param trace_secret: the provider's salt secret (default random).
    :param time_s: the head's time (default now); the challenge depends on it through the head.
    :raises MalformedInput: reasoning the provider cannot commit to (for instance an unknown
        token id, ``coin.token_unknown``).
    """
    ids = auditor.tokenizer.encode(trace.reasoning) if reasoning_ids is None else reasoning_ids
    commitment = commit_tokens(
        auditor.engine,
        auditor.tokenizer,
        reasoning_ids=ids,
        prompt=trace.prompt,
        answer=trace.answer,
        request_id=_request_id(trace.id),
        model=_JUDGE_MODEL,
        reported_usage=None,  # bills exactly the committed count
        signer=signer,
        block_size=auditor.calibration.block_size,
        trace_secret=trace_secret,
        time_s=time_s,
    )
    return auditor.audit(
        head_note=commitment.head_note,
        provider_vkey=signer.vkey,
        opener=commitment.answer_challenge,
        prompt=trace.prompt,
        sketch=commitment.sketch,
        answer=trace.answer,
        domain=trace.domain,
        draw_nonce=draw_nonce,
    )


def _request_id(trace_id: str) -> str:
    """A head-safe request id (1-256 visible ASCII characters, no spaces) for a trace id."""
    safe = "".join(c if "\x21" <= c <= "\x7e" else "_" for c in trace_id)[:256]
    return safe or "trace"


def seeded_nonces(seed: int) -> Callable[[], bytes]:
    """A reproducible nonce source for benchmarks and tests (never for real audits)."""
    rng = np.random.default_rng(seed)
    return lambda: rng.bytes(NONCE_BYTES)


def read_traces(lines: Iterable[str]) -> list[Trace]:
    """Every non-blank line as a :class:`Trace`, validated before any work starts.

    :raises MalformedInput: the first bad line (``coin.trace_malformed``).
    """
    return [
        parse_trace(line, line_number=number)
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
