"""CoIn audits through the sidecar: an agent has its tallystickd audit a provider's hidden
reasoning-token count (coin.md §4), without seeing the reasoning.

A cooperating provider attaches an offer to its API response (the top-level member
``"tallystick_coin"``, :class:`tallystick.verifier.coin.CoinOffer`): its signed head, the sketch
the head binds and where to ask for openings. :func:`audit_offer` audits one::

    from tallystick.sdk import Client, audit_offer
    from tallystick.verifier.coin import CoinOffer, prompt_text

    body = response.to_dict()                             # the provider's response body
    with Client("unix:var/agents/researcher.sock") as sidecar:
        verdict = audit_offer(
            sidecar,
            CoinOffer.from_response(body),
            prompt=prompt_text(messages),                 # as sent
            answer=body["choices"][0]["message"]["content"],  # as delivered
            call_request_id=body["id"],                   # the recorded call it is for
        )
    verdict.consistent, verdict.flagged, verdict.verdict_entry_index

:func:`tallystick.sdk.wrap.wrap` does this for every call whose response carries an offer
(``wrap(OpenAI(), recorder=sidecar, coin_audit=sidecar)``). :func:`audit_commitment` is the
same flow with any opener, such as a provider's ``Commitment.answer_challenge`` in process.

The sidecar logs the head before it draws the challenge, then the evidence and the verdict;
prompt and answer go to the sidecar (its semantic checks read them) but are never written. An
offer's attestation (a TEE quote, :class:`~tallystick.verifier.coin.Attestation`) goes with the
head: the sidecar logs its format and SHA-256, unverified; keep the document to check later.
:meth:`Client.begin_coin_audit <tallystick.sdk.client.Client.begin_coin_audit>` and
:meth:`~tallystick.sdk.client.Client.finish_coin_audit` are the two steps, on both clients;
like delegation calls they fail closed (an unreachable sidecar raises
:class:`~tallystick.sdk.errors.SidecarUnavailable`; nothing is spooled).

A consistent verdict is evidence that the billed count equals the tree the provider signed and
that what was opened looks like honest reasoning, not proof that the tokens were generated;
``tallystick audit verify`` re-checks :attr:`CoinVerdict.evidence` offline.

This module needs neither torch nor the daemon: openings are
:class:`tallystick.verifier.coin.Opening` values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tallystick.proto import audit_pb2
from tallystick.verifier.coin import (
    DEFAULT_OPEN_TIMEOUT_S,
    Attestation,
    CoinOffer,
    HttpOpener,
    Opening,
    parse_head,
)

if TYPE_CHECKING:
    from .client import AsyncClient, Client

__all__ = [
    "CoinChallenge",
    "CoinVerdict",
    "Opener",
    "audit_commitment",
    "audit_offer",
    "audit_offer_async",
    "head_request_id",
]

#: The provider's side of a challenge: the openings of the challenged indices, in their order,
#: and the sketch key revealed with them (``b""`` when the head binds no sketch). The shape of
#: :class:`~tallystick.verifier.coin.HttpOpener` and ``Commitment.answer_challenge``.
Opener = Callable[[tuple[int, ...]], tuple[Sequence[Opening], bytes]]


@dataclass(frozen=True, slots=True)
class CoinChallenge:
    """A begun audit: its id, the log entries of the head and of the challenge, the auditor
    nonce (drawn after the head entry was written) and the indices to open, ascending."""

    audit_id: str
    head_entry_index: int
    challenge_entry_index: int
    nonce: bytes
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CoinVerdict:
    """A finished audit.

    ``consistent`` is false when an opening failed verification (``error_code`` says which
    check; ``score`` is None and ``evidence`` empty) or a check flagged (``flagged`` names each,
    such as ``"block_prompt@block3"``). ``score`` is the calibrated semantic score, larger is
    more suspicious. ``evidence`` is the evidence document's canonical JSON, as logged before
    ``verdict_entry_index``.
    """

    consistent: bool
    score: float | None
    flagged: tuple[str, ...]
    verdict_entry_index: int
    evidence: bytes
    error_code: str | None


def audit_commitment(
    client: Client,
    *,
    head_note: str,
    provider_vkey: str,
    prompt: str,
    answer: str,
    sketch: bytes,
    opener: Opener,
    domain: str | None = None,
    call_request_id: str | None = None,
    attestation: Attestation | None = None,
) -> CoinVerdict:
    """Audit one commitment: begin, ``opener(indices)``, finish.

    :param sketch: the n-gram sketch the head binds (``b""`` for a head without one).
    :param opener: the provider's openings of the challenged indices and its sketch key
        (:class:`~tallystick.verifier.coin.HttpOpener` for a cooperating provider's
        endpoint, ``Commitment.answer_challenge`` in process).
    :param domain: the calibration domain (``"math"``, ``"safety"``); None routes by the
        prompt.
    :param call_request_id: the ``request_id`` of the recorded call the commitment is for.
    :param attestation: the provider's attestation evidence, if it offered some: the sidecar
        logs its format and the document's SHA-256 with the head, and does not verify it.
    :raises SidecarRejected: the head does not verify (its ``coin.*`` code; nothing was
        logged), malformed openings (``coin.opening_malformed``), ``coin.unavailable``.
    :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
    :raises TallystickError: whatever ``opener`` raises (the audit then stays pending on the
        sidecar until it expires).
    """
    challenge = client.begin_coin_audit(
        head_note=head_note,
        provider_vkey=provider_vkey,
        prompt=prompt,
        answer=answer,
        domain=domain,
        sketch=sketch,
        call_request_id=call_request_id,
        attestation=attestation,
    )
    openings, sketch_key = opener(challenge.indices)
    return client.finish_coin_audit(challenge.audit_id, openings, sketch_key=sketch_key)


def head_request_id(head_note: str) -> str:
    """The ``request_id`` line of a head note, read WITHOUT verifying it: the name the
    provider's ``openings_url`` knows the commitment by. The sidecar verifies the head before
    anything is opened.

    :raises MalformedInput: not a signed note carrying a v1 head (``coin.head_malformed``).
    :raises UnsupportedVersion: another head format (``coin.head_version``).
    """
    return parse_head(head_note).request_id


def audit_offer(
    client: Client,
    offer: CoinOffer,
    *,
    prompt: str,
    answer: str,
    request_id: str | None = None,
    domain: str | None = None,
    call_request_id: str | None = None,
    timeout: float = DEFAULT_OPEN_TIMEOUT_S,
) -> CoinVerdict:
    """Audit a provider's offer: :func:`audit_commitment` with an
    :class:`~tallystick.verifier.coin.HttpOpener` on the offer's ``openings_url`` (and the
    offer's attestation, if any).

    :param prompt: the prompt as sent, the way the head binds it (for chat requests
        :func:`~tallystick.verifier.coin.prompt_text` of the messages).
    :param answer: the answer as delivered.
    :param request_id: the name the provider knows the commitment by; None (the default) is
        the head's own ``request_id`` (:func:`head_request_id`).
    :param domain: the calibration domain; None routes by the prompt.
    :param call_request_id: the ``request_id`` of the recorded call the offer came with.
    :param timeout: seconds to wait for the provider's openings.
    :raises TypeError: ``offer`` is not a :class:`~tallystick.verifier.coin.CoinOffer`.
    :raises MalformedInput: a head that does not parse (``coin.head_malformed``; nothing was
        sent), a bad ``request_id`` or ``timeout`` (``coin.input_invalid``), or openings that
        do not parse (``coin.response_malformed``, ``coin.opening_malformed``).
    :raises OpeningsUnavailable: the provider did not answer with openings
        (``coin.openings_unavailable``).
    :raises SidecarRejected: as :func:`audit_commitment`.
    :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
    """
    opener = _opener(offer, request_id, timeout)
    return audit_commitment(
        client,
        head_note=offer.head_note,
        provider_vkey=offer.provider_vkey,
        prompt=prompt,
        answer=answer,
        sketch=offer.sketch,
        opener=opener,
        domain=domain,
        call_request_id=call_request_id,
        attestation=offer.attestation,
    )


async def audit_offer_async(
    client: AsyncClient,
    offer: CoinOffer,
    *,
    prompt: str,
    answer: str,
    request_id: str | None = None,
    domain: str | None = None,
    call_request_id: str | None = None,
    timeout: float = DEFAULT_OPEN_TIMEOUT_S,
) -> CoinVerdict:
    """As :func:`audit_offer`, with an :class:`~tallystick.sdk.client.AsyncClient`; the
    provider's openings are fetched on a worker thread (``asyncio.to_thread``).

    :raises: as :func:`audit_offer`.
    """
    opener = _opener(offer, request_id, timeout)
    challenge = await client.begin_coin_audit(
        head_note=offer.head_note,
        provider_vkey=offer.provider_vkey,
        prompt=prompt,
        answer=answer,
        domain=domain,
        sketch=offer.sketch,
        call_request_id=call_request_id,
        attestation=offer.attestation,
    )
    openings, sketch_key = await asyncio.to_thread(opener, challenge.indices)
    return await client.finish_coin_audit(challenge.audit_id, openings, sketch_key=sketch_key)


def _opener(offer: CoinOffer, request_id: str | None, timeout: float) -> HttpOpener:
    """The offer's opener, built before anything is sent (so a bad input logs nothing)."""
    if not isinstance(offer, CoinOffer):
        raise TypeError(f"offer: expected a CoinOffer, got {type(offer).__name__}")
    if request_id is None:
        request_id = head_request_id(offer.head_note)
    return HttpOpener(offer, request_id, timeout=timeout)


# -- wire forms (shared by Client and AsyncClient) ---------------------------------------------


def _begin_request(
    *,
    head_note: str,
    provider_vkey: str,
    prompt: str,
    answer: str,
    domain: str | None,
    sketch: bytes,
    call_request_id: str | None,
    attestation: Attestation | None,
) -> audit_pb2.BeginAuditRequest:
    """The ``BeginAudit`` request (empty strings for what is not given, no attestation message
    for none).

    :raises TypeError: ``attestation`` is neither None nor an
        :class:`~tallystick.verifier.coin.Attestation`.
    """
    if attestation is not None and not isinstance(attestation, Attestation):
        raise TypeError(f"attestation: expected an Attestation, got {type(attestation).__name__}")
    return audit_pb2.BeginAuditRequest(
        head_note=head_note,
        provider_vkey=provider_vkey,
        prompt=prompt,
        answer=answer,
        domain=domain or "",
        sketch=bytes(sketch),
        call_request_id=call_request_id or "",
        attestation=None
        if attestation is None
        else audit_pb2.Attestation(format=attestation.format, document=attestation.document),
    )


def _finish_request(
    audit_id: str, openings: Sequence[Opening], sketch_key: bytes
) -> audit_pb2.FinishAuditRequest:
    """The ``FinishAudit`` request.

    :raises TypeError: an item of ``openings`` is not an :class:`Opening`.
    """
    wire = []
    for opening in openings:
        if not isinstance(opening, Opening):
            raise TypeError(f"openings: expected Opening items, got {type(opening).__name__}")
        wire.append(
            audit_pb2.LeafOpening(
                index=opening.index,
                leaf=opening.leaf.to_bytes(),
                salt=opening.salt,
                token_id=opening.token_id,
                proof=list(opening.proof),
            )
        )
    return audit_pb2.FinishAuditRequest(
        audit_id=audit_id, openings=wire, sketch_key=bytes(sketch_key)
    )


def _challenge_from(reply: audit_pb2.BeginAuditResponse) -> CoinChallenge:
    """The :class:`CoinChallenge` of a ``BeginAudit`` reply."""
    return CoinChallenge(
        audit_id=reply.audit_id,
        head_entry_index=reply.head_entry_index,
        challenge_entry_index=reply.challenge_entry_index,
        nonce=reply.nonce,
        indices=tuple(reply.indices),
    )


def _verdict_from(reply: audit_pb2.FinishAuditResponse) -> CoinVerdict:
    """The :class:`CoinVerdict` of a ``FinishAudit`` reply."""
    return CoinVerdict(
        consistent=reply.consistent,
        score=reply.score if reply.HasField("score") else None,
        flagged=tuple(reply.flagged),
        verdict_entry_index=reply.verdict_entry_index,
        evidence=reply.evidence,
        error_code=reply.error_code or None,
    )
