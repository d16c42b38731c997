"""CoIn audits through the sidecar: an agent has its tallystickd audit a provider's hidden
reasoning-token count (coin.md §4), without seeing the reasoning.

::

    from tallystick.sdk import Client, audit_commitment

    # What the provider sent with its answer: a signed head and the sketch it binds; and a
    # way to ask it for openings, here its Commitment (tallystick.daemon.coin.provider).
    with Client("unix:var/agents/researcher.sock") as sidecar:
        verdict = audit_commitment(
            sidecar,
            head_note=commitment.head_note,
            provider_vkey=provider_vkey,
            prompt=prompt,                        # as sent
            answer=answer,                        # as delivered
            sketch=commitment.sketch,
            opener=commitment.open,               # opens the challenged leaves
            sketch_key_from=lambda challenge: commitment.sketch_key,  # revealed after them
        )
    verdict.consistent, verdict.flagged, verdict.verdict_entry_index

The sidecar logs the head before it draws the challenge, then the evidence and the verdict;
prompt and answer go to the sidecar (its semantic checks read them) but are never written.
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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tallystick.proto import audit_pb2
from tallystick.verifier.coin import Opening

if TYPE_CHECKING:
    from .client import Client

__all__ = [
    "CoinChallenge",
    "CoinVerdict",
    "Opener",
    "audit_commitment",
]

#: The provider's side of a challenge: the openings of the challenged indices, in their order.
Opener = Callable[[tuple[int, ...]], Sequence[Opening]]


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
    opener: Opener,
    domain: str | None = None,
    sketch: bytes = b"",
    sketch_key_from: Callable[[CoinChallenge], bytes] | None = None,
    call_request_id: str | None = None,
) -> CoinVerdict:
    """Audit one commitment: begin, ``opener(indices)``, finish.

    :param opener: the provider's openings of the challenged indices (a cooperating
        provider's endpoint, or ``Commitment.open`` in process).
    :param sketch_key_from: the provider's sketch key, asked for after the openings (None:
        no key is sent).
    :param call_request_id: the ``request_id`` of the recorded call the commitment is for.
    :raises SidecarRejected: the head does not verify (its ``coin.*`` code; nothing was
        logged), malformed openings (``coin.opening_malformed``), ``coin.unavailable``.
    :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
    :raises TallystickError: whatever ``opener`` or ``sketch_key_from`` raise (the audit then
        stays pending on the sidecar until it expires).
    """
    challenge = client.begin_coin_audit(
        head_note=head_note,
        provider_vkey=provider_vkey,
        prompt=prompt,
        answer=answer,
        domain=domain,
        sketch=sketch,
        call_request_id=call_request_id,
    )
    openings = opener(challenge.indices)
    sketch_key = b"" if sketch_key_from is None else sketch_key_from(challenge)
    return client.finish_coin_audit(challenge.audit_id, openings, sketch_key=sketch_key)


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
) -> audit_pb2.BeginAuditRequest:
    """The ``BeginAudit`` request (empty strings for what is not given)."""
    return audit_pb2.BeginAuditRequest(
        head_note=head_note,
        provider_vkey=provider_vkey,
        prompt=prompt,
        answer=answer,
        domain=domain or "",
        sketch=bytes(sketch),
        call_request_id=call_request_id or "",
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
