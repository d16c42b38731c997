"""Offline provenance: from an action in a verified log bundle back to the human principal.

::

    log = AuditedLog.open(Bundle.from_path("log.bundle"), log_key=load_public_key("log.pub"))
    found = provenance(log, 41)
    if not found.verified:
        print(found.status, found.detail)       # e.g. "revoked", "unattributed"
    found.entries[0].proof.to_dict()            # RFC 9162 proof against the signed checkpoint

:class:`AuditedLog` is the one way the audit commands (provenance, billing, report) read a
bundle: it runs :func:`~tallystick.verifier.logbundle.verify_bundle` first and refuses a
damaged bundle (fail closed), then keeps the parsed entries and the Merkle tree so each
entry's :class:`EntryProof` (inclusion proof plus the signed checkpoint note) can be handed to
anyone holding the log key.

:class:`TokenIndex` reads ``delegation`` and ``revocation`` entries in log order, as the
sidecar's own index does, and answers the same questions offline: which entries made a token
(for a chained AIP token, the entries that made each of its blocks), its principal, the agents
it names, and when it was revoked. A call counts for a token's principal only when the call's
agent is named in one of the token's delegation entries before the call (naming another
principal's token id claims nothing).

A provenance's ``status`` (:class:`ProvenanceStatus`) is ``verified`` only when every check
passed; anything else is an unverifiable chain. AIP agents are named here as the tokens name
them (subject and delegates); the sidecar additionally maps AIP key identities to its agent
names, which a bundle does not record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from biscuit_auth import UnverifiedBiscuit

from . import aip, hdp
from ._internal.encoding import b64url_encode
from .checkpoint import SignedCheckpoint
from .errors import MalformedInput, TallystickError
from .keys import PublicKey
from .logbundle import Bundle, Damage, DamageKind, LogDamaged, verify_bundle
from .logentry import (
    CallBody,
    DelegationBody,
    DelegationFormat,
    EntryKind,
    LogEntry,
    RevocationBody,
)
from .merkle import MerkleTree, hash_leaf, verify_inclusion
from .usage import otel_attributes

__all__ = [
    "AuditedLog",
    "ChainEntry",
    "EntryProof",
    "Hop",
    "Provenance",
    "ProvenanceStatus",
    "TokenIndex",
    "TokenVersion",
    "build_index",
    "chained_token_id",
    "provenance",
]

#: Called with (entries done, entries in all) while a long read runs.
ProgressCallback = Callable[[int, int], None]


def chained_token_id(token: str) -> str:
    """The id of a chained AIP token: ``sha256:`` + unpadded base64url SHA-256 of its text."""
    return "sha256:" + b64url_encode(hashlib.sha256(token.encode("utf-8")).digest())


# -- proofs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryProof:
    """An entry's RFC 9162 inclusion proof in the tree a signed checkpoint vouches for.

    Anyone with the log key checks it: verify ``checkpoint`` (a C2SP signed note) with the key,
    then :func:`~tallystick.verifier.merkle.verify_inclusion` with these fields, where
    ``leaf_hash`` is ``SHA-256(0x00 || entry bytes)``.
    """

    leaf_index: int
    tree_size: int
    leaf_hash: bytes
    audit_path: tuple[bytes, ...]
    root_hash: bytes
    checkpoint: str

    def verify(self) -> None:
        """Recompute the root from the path and compare it with ``root_hash``.

        :raises ProofInvalid: the path does not lead to ``root_hash``.
        """
        verify_inclusion(
            leaf_index=self.leaf_index,
            tree_size=self.tree_size,
            leaf_hash=self.leaf_hash,
            proof=self.audit_path,
            root_hash=self.root_hash,
        )

    def to_dict(self) -> dict[str, Any]:
        """The proof as JSON: hashes in lowercase hex, as ``log proof --json`` prints them."""
        return {
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "leaf_hash": self.leaf_hash.hex(),
            "hashes": [node.hex() for node in self.audit_path],
            "root_hash": self.root_hash.hex(),
            "checkpoint": self.checkpoint,
        }


@dataclass(frozen=True, slots=True)
class AuditedLog:
    """A bundle that verified, with its parsed entries. Build with :meth:`open`.

    ``checkpoint`` is the last signed checkpoint's note; it covers every entry.
    """

    bundle: Bundle
    entries: tuple[LogEntry, ...]
    checkpoint: str
    _tree: MerkleTree = field(repr=False)

    @classmethod
    def open(
        cls,
        bundle: Bundle,
        *,
        log_key: PublicKey,
        origin: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> AuditedLog:
        """Verify ``bundle`` against the log key, then parse its entries and build its tree.

        :raises LogDamaged: the bundle does not verify (code ``log.<kind>``); nothing is read.
        :raises KeyInvalid: ``log_key`` is not a public key.
        """
        report = verify_bundle(bundle, log_key=log_key, origin=origin)
        report.raise_for_damage()
        tree = MerkleTree()
        entries: list[LogEntry] = []
        total = bundle.size
        for number, raw in enumerate(bundle.entries, 1):
            entries.append(LogEntry.from_bytes(raw))
            tree.append(hash_leaf(raw))
            if progress is not None and (number % 4096 == 0 or number == total):
                progress(number, total)
        note = bundle.checkpoints[-1]
        if tree.root() != SignedCheckpoint.from_text(note).checkpoint.root_hash:
            # verify_bundle matched it; a second look that disagrees is a bug, never a pass.
            raise LogDamaged(
                Damage(DamageKind.ROOT_MISMATCH, None, "the rebuilt tree differs from the root")
            )
        return cls(bundle, tuple(entries), note, tree)

    @property
    def size(self) -> int:
        """The number of entries."""
        return len(self.entries)

    def proof(self, index: int) -> EntryProof:
        """The inclusion proof of entry ``index`` against :attr:`checkpoint`.

        :raises MalformedInput: no such entry (``provenance.index_out_of_range``).
        """
        if not 0 <= index < self.size:
            raise MalformedInput(
                f"entry {index}: the log has {self.size} entries",
                code="provenance.index_out_of_range",
            )
        return EntryProof(
            leaf_index=index,
            tree_size=self._tree.size,
            leaf_hash=self._tree.get_node(0, index),
            audit_path=tuple(self._tree.inclusion_proof(index, self._tree.size)),
            root_hash=self._tree.root(),
            checkpoint=self.checkpoint,
        )

    def calls(self) -> Iterable[tuple[LogEntry, dict[str, Any]]]:
        """Each ``call`` entry with its body, in log order."""
        for entry in self.entries:
            if entry.kind is EntryKind.CALL:
                yield entry, entry.body


# -- the token index -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of the chain: an agent and what it did, with its signature status."""

    seq: int
    agent_id: str
    agent_type: str
    action_summary: str
    status: str

    def to_dict(self) -> dict[str, Any]:
        """The hop as JSON."""
        return {
            "seq": self.seq,
            "agent_id": self.agent_id,
            "agent_type": self.agent_type,
            "action_summary": self.action_summary,
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class TokenVersion:
    """One ``delegation`` entry, as the index reads it.

    ``agents`` are the agent ids the token names (the entry's agent; HDP: bound and hop agents;
    AIP: subject and delegates); ``blocks`` a chained token's Biscuit revocation ids.
    ``status`` is ``valid`` or the error code re-verifying the stored token gave; ``scopes``
    are the HDP authorised tools or the AIP scopes; ``hops`` the chain as the token states it.
    """

    index: int
    format: DelegationFormat
    action: str
    token_id: str
    principal: str
    agents: frozenset[str]
    status: str = "valid"
    blocks: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    hops: tuple[Hop, ...] = ()
    intent: str | None = None
    session_id: str | None = None


class TokenIndex:
    """Tokens and revocations of a log, fed entries in index order with :meth:`add`.

    The same reading the sidecar's token book does, with no storage: a daemon could feed it
    its entries incrementally.
    """

    def __init__(self) -> None:
        """An empty index."""
        self._versions: dict[int, TokenVersion] = {}
        self._by_token: dict[str, list[int]] = {}
        self._by_block: dict[str, int] = {}
        self._revoked: dict[str, int] = {}
        self._revocations: dict[int, str] = {}

    def add(self, entry: LogEntry) -> None:
        """Index ``entry`` if it is a delegation or revocation (others are ignored).

        Bodies that do not parse are left out, as the sidecar leaves them out.
        """
        if entry.kind is EntryKind.DELEGATION:
            try:
                version = _read_version(entry)
            except TallystickError:
                return
            self._versions[entry.index] = version
            self._by_token.setdefault(version.token_id, []).append(entry.index)
            if version.blocks:
                self._by_block[version.blocks[-1]] = entry.index
        elif entry.kind is EntryKind.REVOCATION:
            try:
                body = RevocationBody.from_body(entry.body)
            except MalformedInput:
                return
            self._revoked.setdefault(body.token_id, entry.index)
            self._revocations[entry.index] = body.token_id

    def versions(self, token_id: str, *, upto: int | None = None) -> list[TokenVersion]:
        """The delegation entries behind ``token_id``, oldest first (at most index ``upto``)."""
        indexes = self._by_token.get(token_id) or self._by_token.get(token_id.lower(), [])
        found = [self._versions[index] for index in indexes]
        if len(found) == 1 and found[0].blocks:
            # A chained token: the entries that made each of its blocks' tokens.
            made = {self._by_block[b] for b in found[0].blocks if b in self._by_block}
            found = [self._versions[index] for index in sorted(made)]
        return [version for version in found if upto is None or version.index <= upto]

    def version(self, index: int) -> TokenVersion | None:
        """The delegation entry at ``index``, if it is an indexed one."""
        return self._versions.get(index)

    def revocation(self, token_id: str) -> int | None:
        """The entry that revoked ``token_id``, if any."""
        return self._revoked.get(token_id)

    def revoked_token(self, index: int) -> str | None:
        """The token id the revocation entry at ``index`` revokes, if it is one."""
        return self._revocations.get(index)

    def attribution(self, agent: str, delegation_id: str | None, index: int) -> str:
        """The principal a call by ``agent`` at ``index`` counts for (``""`` when none)."""
        if not delegation_id:
            return ""
        versions = self.versions(delegation_id)
        for version in versions:
            if agent in version.agents and version.index <= index:
                return versions[0].principal
        return ""


def _read_version(entry: LogEntry) -> TokenVersion:
    body = DelegationBody.from_body(entry.body)
    if isinstance(body.token, dict):
        return _hdp_version(entry, body, body.token)
    return _aip_version(entry, body, body.token)


def _hdp_version(entry: LogEntry, body: DelegationBody, raw: dict[str, Any]) -> TokenVersion:
    token = hdp.HdpToken.from_dict(raw)
    status = "valid"
    try:
        hdp.verify(token, public_key=body.public_key)
    except TallystickError as exc:
        status = exc.code
    data = token.to_dict()
    scope = data["scope"]
    claims = scope.get("extensions", {}).get("x-tallystick", {})
    named = {entry.agent}
    named.update(str(agent["agent_id"]) for agent in claims.get("agents", []))
    named.update(str(hop["agent_id"]) for hop in data["chain"])
    hop_status = "valid" if status == "valid" else "unverified"
    hops = tuple(
        Hop(
            int(hop["seq"]),
            str(hop["agent_id"]),
            str(hop.get("agent_type", "")),
            str(hop.get("action_summary", "")),
            hop_status,
        )
        for hop in data["chain"]
    )
    return TokenVersion(
        entry.index,
        body.format,
        body.action.value,
        token.token_id,
        str(data["principal"]["id"]),
        frozenset(named),
        status,
        scopes=tuple(str(tool) for tool in scope.get("authorized_tools") or ()),
        hops=hops,
        intent=str(scope.get("intent", "")),
        session_id=token.session_id,
    )


def _aip_version(entry: LogEntry, body: DelegationBody, raw: str) -> TokenVersion:
    # Verified at the time the sidecar stored it, as log verify does.
    verified = aip.verify(
        raw, public_key=body.public_key, now=entry.time_ms // 1000, audience=body.audience
    )
    named = {entry.agent}
    named.update(p for p in (verified.subject, *(h.delegate for h in verified.hops)) if p)
    blocks: tuple[str, ...] = ()
    if body.format is DelegationFormat.AIP_COMPACT:
        token_id = verified.jti or chained_token_id(raw)
    else:
        token_id = chained_token_id(raw)
        blocks = tuple(UnverifiedBiscuit.from_base64(raw).revocation_ids)
    hops = tuple(
        Hop(
            seq, hop.delegate, "delegate", hop.context, "valid" if hop.authenticated else "asserted"
        )
        for seq, hop in enumerate(verified.hops, 1)
    )
    return TokenVersion(
        entry.index,
        body.format,
        body.action.value,
        token_id,
        verified.principal or "",
        frozenset(named),
        blocks=blocks,
        scopes=verified.scopes,
        hops=hops,
    )


# -- provenance --------------------------------------------------------------------------------


class ProvenanceStatus(StrEnum):
    """Whether the chain behind an entry verified; the values are stable."""

    #: Every delegation entry verified, the agent is named, and nothing was revoked before.
    VERIFIED = "verified"
    #: The call names no delegation token.
    NO_DELEGATION = "no_delegation"
    #: The call names a token the log holds no delegation entry for (before the call).
    UNKNOWN_TOKEN = "unknown_token"
    #: The token exists, but no delegation entry before the call names the call's agent.
    UNATTRIBUTED = "unattributed"
    #: A stored token does not verify under its issuer key.
    SIGNATURE_INVALID = "signature_invalid"
    #: The token was revoked before the entry.
    REVOKED = "revoked"
    #: A tool call outside the token's authorised tools.
    OUT_OF_SCOPE = "out_of_scope"


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """A log entry the provenance rests on, its role, and its inclusion proof.

    ``role`` is ``subject`` (the entry asked about), the delegation action (``issue``,
    ``extend``, ``attenuate``) or ``revocation``; ``status`` is ``valid`` or an error code.
    """

    index: int
    role: str
    agent: str
    time_ms: int
    status: str
    proof: EntryProof

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON."""
        return {
            "index": self.index,
            "role": self.role,
            "agent": self.agent,
            "time_ms": self.time_ms,
            "status": self.status,
            "proof": self.proof.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Provenance:
    """Who authorised an entry, through which agents, under which scope, with proofs."""

    index: int
    kind: str
    agent: str
    status: ProvenanceStatus
    detail: str
    principal: str
    token_id: str
    format: str | None
    intent: str | None
    scopes: tuple[str, ...]
    session_id: str | None
    hops: tuple[Hop, ...]
    entries: tuple[ChainEntry, ...]
    #: A call's OpenTelemetry GenAI attributes (``gen_ai.usage.input_tokens``, ...).
    attributes: dict[str, int | str] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        """True only when the whole chain verified."""
        return self.status is ProvenanceStatus.VERIFIED

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON object ``tallystick provenance --json`` prints."""
        return {
            "index": self.index,
            "kind": self.kind,
            "agent": self.agent,
            "verified": self.verified,
            "status": self.status.value,
            "detail": self.detail,
            "principal": self.principal or None,
            "token_id": self.token_id or None,
            "format": self.format,
            "intent": self.intent,
            "scopes": list(self.scopes),
            "session_id": self.session_id,
            "hops": [hop.to_dict() for hop in self.hops],
            "entries": [item.to_dict() for item in self.entries],
            "attributes": dict(self.attributes),
        }


def build_index(log: AuditedLog) -> TokenIndex:
    """The token index of every entry of ``log``."""
    index = TokenIndex()
    for entry in log.entries:
        index.add(entry)
    return index


def provenance(log: AuditedLog, index: int, *, tokens: TokenIndex | None = None) -> Provenance:
    """The chain behind entry ``index`` (a ``call`` or ``delegation`` entry).

    ``tokens`` is :func:`build_index` of ``log``, to reuse one across many entries.

    :raises MalformedInput: no such entry (``provenance.index_out_of_range``) or an entry of
        another kind (``provenance.unsupported_entry``).
    """
    subject_proof = log.proof(index)
    entry = log.entries[index]
    tokens = tokens or build_index(log)
    if entry.kind is EntryKind.CALL:
        delegation_id = entry.body.get("delegation_id")
        versions = tokens.versions(delegation_id, upto=index) if delegation_id else []
        token_id = versions[-1].token_id if versions else (delegation_id or "")
        principal = tokens.attribution(entry.agent, delegation_id, index)
    elif entry.kind is EntryKind.DELEGATION:
        own = tokens.version(index)
        versions = tokens.versions(own.token_id, upto=index) if own else []
        token_id = own.token_id if own else ""
        principal = versions[0].principal if versions else ""
    else:
        raise MalformedInput(
            f"entry {index}: a {entry.kind.value} entry; provenance starts at a call or "
            "delegation entry",
            code="provenance.unsupported_entry",
        )
    revoked_at = tokens.revocation(token_id) if token_id else None
    revocations = [revoked_at] if revoked_at is not None and revoked_at < index else []
    status, detail = _judge(entry, versions, principal, revocations, token_id)
    chain = [ChainEntry(index, "subject", entry.agent, entry.time_ms, "valid", subject_proof)]
    chain += [
        _chain_entry(log, version.index, version.action, version.status)
        for version in reversed(versions)
        if version.index != index
    ]
    chain += [_chain_entry(log, at, "revocation", "valid") for at in revocations]
    latest = versions[-1] if versions else None
    scopes = () if latest is None else latest.scopes
    if status is ProvenanceStatus.VERIFIED and not _tool_in_scope(entry, latest, scopes):
        status = ProvenanceStatus.OUT_OF_SCOPE
        detail = f"tool {entry.body.get('tool_name')!r} is not among the authorised tools"
    return Provenance(
        index=index,
        kind=entry.kind.value,
        agent=entry.agent,
        status=status,
        detail=detail,
        principal=principal if status is not ProvenanceStatus.UNATTRIBUTED else "",
        token_id=token_id,
        format=None if latest is None else latest.format.value,
        intent=None if latest is None else latest.intent,
        scopes=scopes,
        session_id=None if latest is None else latest.session_id,
        hops=() if latest is None else latest.hops,
        entries=tuple(chain),
        attributes=_call_attributes(entry),
    )


def _call_attributes(entry: LogEntry) -> dict[str, int | str]:
    if entry.kind is not EntryKind.CALL:
        return {}
    call = CallBody.model_validate(entry.body)  # verified and canonical: it parses
    return otel_attributes(
        call.usage,
        provider=call.provider,
        operation=call.operation,
        response_model=call.model,
    )


def _chain_entry(log: AuditedLog, index: int, role: str, status: str) -> ChainEntry:
    entry = log.entries[index]
    return ChainEntry(index, role, entry.agent, entry.time_ms, status, log.proof(index))


def _judge(
    entry: LogEntry,
    versions: list[TokenVersion],
    principal: str,
    revocations: list[int],
    token_id: str,
) -> tuple[ProvenanceStatus, str]:
    if entry.kind is EntryKind.CALL and not entry.body.get("delegation_id"):
        return ProvenanceStatus.NO_DELEGATION, "the call names no delegation token"
    if not versions:
        return (
            ProvenanceStatus.UNKNOWN_TOKEN,
            f"no delegation entry for token {token_id!r} before entry {entry.index}",
        )
    bad = [version for version in versions if version.status != "valid"]
    if bad:
        return (
            ProvenanceStatus.SIGNATURE_INVALID,
            f"the token stored at entry {bad[0].index} does not verify: {bad[0].status}",
        )
    if not principal:
        return (
            ProvenanceStatus.UNATTRIBUTED,
            f"agent {entry.agent!r} is not named by token {token_id!r} before entry {entry.index}",
        )
    if revocations:
        return (
            ProvenanceStatus.REVOKED,
            f"token {token_id!r} was revoked at entry {revocations[0]}, before entry {entry.index}",
        )
    return ProvenanceStatus.VERIFIED, f"authorised by {principal!r} through token {token_id!r}"


def _tool_in_scope(entry: LogEntry, version: TokenVersion | None, scopes: tuple[str, ...]) -> bool:
    """A tool call's tool must be authorised when the token lists tools (HDP)."""
    tool = entry.body.get("tool_name") if entry.kind is EntryKind.CALL else None
    if tool is None or version is None or version.format is not DelegationFormat.HDP:
        return True
    return not scopes or tool in scopes
