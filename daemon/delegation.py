"""The Delegation service: HDP and AIP tokens issued, extended, verified and revoked in the log.

The sidecar holds the keys (:mod:`.agent_keys`); the caller is the agent of the socket (or
client certificate) a call arrived on, never a request field. Every token the service signs is
appended as a ``delegation`` entry (:class:`~tallystick.verifier.logentry.DelegationBody`) before
it is returned, and a revocation as a ``revocation`` entry
(:class:`~tallystick.verifier.logentry.RevocationBody`), so the log alone says which tokens
exist: :class:`TokenBook` rebuilds its index (token ids, HDP heads, revocations, who acts for
which principal) from those entries, reading each entry once, on first use after start.

Token ids, as calls record them in ``delegation_id``: the HDP ``header.token_id``; the compact
AIP ``jti`` (always set on issue); for a chained AIP token ``sha256:`` + base64url SHA-256 of its
text (what ``tallystick record --token`` computes). Revoking a chained token revokes every token
attenuated from it (its last Biscuit block's revocation id is in all of theirs).

Writes are serialised (check, sign, append, index), so two agents cannot both extend the same
HDP version: the second finds the log's head moved on (``hdp.truncated``).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import structlog
from biscuit_auth import UnverifiedBiscuit
from google.protobuf.message import Message
from tallystick.proto import delegation_pb2
from tallystick.verifier import aip, hdp
from tallystick.verifier._internal.encoding import b64url_encode
from tallystick.verifier.errors import (
    ChainBroken,
    Expired,
    MalformedInput,
    PolicyViolation,
    ReplayDetected,
    Revoked,
    ScopeInsufficient,
    TallystickError,
)
from tallystick.verifier.logentry import (
    DelegationAction,
    DelegationBody,
    DelegationFormat,
    EntryKind,
    LogEntry,
    RevocationBody,
)

from .agent_keys import AgentKeys
from .config import Config
from .errors import LogInconsistent, LogUnavailable
from .identity import Caller
from .log import Log

__all__ = [
    "ANY_PRINCIPAL",
    "Access",
    "DelegationService",
    "TokenBook",
    "TokenVersion",
    "chained_token_id",
    "entry_kind",
]

#: In ``[agents.ID] principals``: the agent may issue tokens for any principal.
ANY_PRINCIPAL: Final = "*"
_HDP_DEFAULT_TTL_MS: Final = 86_400_000
_MAX_TTL_MS: Final = 10 * 366 * 86_400_000
_AIP_DEFAULT_TTL_S: Final = 3600
#: Below a minute, a token could expire between signing and its entry's time, and then the
#: offline bundle check (which verifies at the entry's time) would call it invalid.
_AIP_MIN_TTL_S: Final = 60
_CHAINED_DEFAULT_DEPTH: Final = 2
_MAX_TEXT: Final = 4096
#: Longest token text accepted (the request itself is capped by max_message_bytes).
_MAX_TOKEN: Final = 1 << 20
_SCAN_CHUNK: Final = 4096
# The end of every entry's canonical bytes: the members after "body", in JCS order. Matching
# only the tail reads the kind without parsing the entry (or being fooled by its body).
_TAIL: Final = re.compile(
    rb',"index":(\d+),"kind":"([a-z_]+)","prev":"[0-9a-f]{64}","time_ms":(\d+),"v":1\}\Z'
)
_TAIL_BYTES: Final = 200
_FORMAT_ENUM: Final = {
    DelegationFormat.HDP: delegation_pb2.TOKEN_FORMAT_HDP,
    DelegationFormat.AIP_COMPACT: delegation_pb2.TOKEN_FORMAT_AIP_COMPACT,
    DelegationFormat.AIP_CHAINED: delegation_pb2.TOKEN_FORMAT_AIP_CHAINED,
}

_logger = structlog.get_logger("tallystickd")


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def entry_kind(raw: bytes) -> tuple[int, str, int]:
    """``(index, kind, time_ms)`` of stored entry bytes, read from their canonical tail.

    :raises LogInconsistent: the bytes do not end as an entry does.
    """
    match = _TAIL.search(raw[-_TAIL_BYTES:])
    if match is None:
        raise LogInconsistent("entry: bytes do not end as a log entry")
    return int(match[1]), match[2].decode("ascii"), int(match[3])


def chained_token_id(token: str) -> str:
    """The id of a chained AIP token: ``sha256:`` + unpadded base64url SHA-256 of its text."""
    return "sha256:" + b64url_encode(hashlib.sha256(token.encode("utf-8")).digest())


def _bad(message: str, code: str = "delegation.invalid_argument") -> MalformedInput:
    return MalformedInput(message, code=code)


def _text(value: str, what: str, *, required: bool = True, limit: int = 256) -> str:
    if required and not value:
        raise _bad(f"{what}: required")
    if len(value) > limit:
        raise _bad(f"{what}: longer than {limit} characters")
    return value


# --- who may do what --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Access:
    """What the configuration allows: principals each agent may issue for, who reads all."""

    principals: Mapping[str, frozenset[str]]
    read_all: frozenset[str]
    shared_totals: bool

    @classmethod
    def from_config(cls, config: Config) -> Access:
        """The access rules of ``config``'s ``[agents.ID]`` tables and ``shared_totals``."""
        return cls(
            principals={
                agent: frozenset(settings.principals) for agent, settings in config.agents.items()
            },
            read_all=frozenset(
                agent for agent, settings in config.agents.items() if settings.read_all
            ),
            shared_totals=config.shared_totals,
        )

    def may_issue(self, agent: str, principal: str) -> bool:
        """True when ``agent`` may issue tokens for ``principal``."""
        allowed = self.principals.get(agent, frozenset())
        return principal in allowed or ANY_PRINCIPAL in allowed

    def configured_principals(self, agent: str) -> frozenset[str]:
        """The principals ``agent`` is configured to act for (without the ``*`` wildcard)."""
        return self.principals.get(agent, frozenset()) - {ANY_PRINCIPAL}


# --- the index of tokens in the log -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenVersion:
    """One ``delegation`` entry: a token as the sidecar signed it.

    ``agents`` are the agent ids the token names (HDP: bound and hop agents; AIP: subject and
    delegates, as configured agents) and the agent that asked for it. ``blocks`` are a chained
    token's Biscuit revocation ids; ``head`` an HDP version's head commitment.
    """

    index: int
    format: DelegationFormat
    action: DelegationAction
    token_id: str
    principal: str
    agents: frozenset[str]
    blocks: tuple[str, ...] = ()
    head: hdp.HeadCommitment | None = None


class TokenBook:
    """Which tokens the log holds and which are revoked; rebuilt from the log, kept current.

    Thread-safe. :meth:`sync` reads the entries appended since it last ran (every entry once:
    calls are skipped by their tail, only delegations and revocations are parsed).
    """

    def __init__(self, log: Log, keys: AgentKeys) -> None:
        """An empty book over ``log``; the first :meth:`sync` reads the whole log."""
        self._log = log
        self._identities = {
            aip.key_identity(key): agent for agent, key in keys.public_keys().items()
        }
        self._lock = threading.RLock()
        self._synced = 0
        self._versions: dict[int, TokenVersion] = {}
        self._by_token: dict[str, list[int]] = {}
        self._by_block: dict[str, int] = {}
        self._revoked: dict[str, int] = {}
        self._revoked_blocks: set[str] = set()
        self._revocations: dict[int, str] = {}
        self._acts_for: dict[str, set[str]] = {}
        #: Compact jtis accepted by AcceptToken (memory only: a restart forgets them).
        self.replay_cache = aip.ReplayCache()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the book while a write checks, appends and indexes (one write at a time)."""
        with self._lock:
            self.sync()
            yield

    def sync(self) -> None:
        """Index every entry appended since the last call.

        :raises LogInconsistent: stored bytes that do not end as an entry does. (An entry
            that ends well but does not parse, or a body the sidecar did not write, is left
            out of the index with a warning.)
        """
        with self._lock:
            size = self._log.size
            while self._synced < size:
                end = min(size, self._synced + _SCAN_CHUNK)
                for offset, raw in enumerate(self._log.entries(self._synced, end)):
                    index = self._synced + offset
                    kind = entry_kind(raw)[1]
                    if kind == EntryKind.DELEGATION:
                        self._add_version(index, raw)
                    elif kind == EntryKind.REVOCATION:
                        self._add_revocation(index, raw)
                self._synced = end

    def _add_version(self, index: int, raw: bytes) -> None:
        try:
            entry = LogEntry.from_bytes(raw)
            body = DelegationBody.from_body(entry.body)
            version = self._version(entry, body)
        except TallystickError as exc:
            # Not one the sidecar wrote (or under a key it no longer holds): not indexed.
            _logger.warning("delegation.unindexed", index=index, reason=exc.code)
            return
        self._versions[index] = version
        self._by_token.setdefault(version.token_id, []).append(index)
        if version.blocks:
            self._by_block[version.blocks[-1]] = index
        if version.principal:
            for agent in version.agents:
                self._acts_for.setdefault(agent, set()).add(version.principal)

    def _version(self, entry: LogEntry, body: DelegationBody) -> TokenVersion:
        named = {entry.agent}
        if isinstance(body.token, dict):
            token = hdp.HdpToken.from_dict(body.token)
            # Verified (as log verify does), so its profile claims are well formed.
            hdp.verify(token, public_key=body.public_key)
            data = token.to_dict()
            claims = data["scope"].get("extensions", {}).get("x-tallystick", {})
            named.update(agent["agent_id"] for agent in claims.get("agents", []))
            named.update(hop["agent_id"] for hop in data["chain"])
            return TokenVersion(
                entry.index,
                body.format,
                body.action,
                token.token_id,
                str(data["principal"]["id"]),
                frozenset(named),
                head=hdp.head_commitment(token),
            )
        verified = aip.verify(
            body.token,
            public_key=body.public_key,
            now=entry.time_ms // 1000,
            audience=body.audience,
        )
        parties = [verified.subject, *(hop.delegator for hop in verified.hops)]
        named.update(self._identities[party] for party in parties if party in self._identities)
        if body.format is DelegationFormat.AIP_COMPACT:
            token_id = verified.jti or chained_token_id(body.token)
            blocks: tuple[str, ...] = ()
        else:
            token_id = chained_token_id(body.token)
            blocks = tuple(UnverifiedBiscuit.from_base64(body.token).revocation_ids)
        return TokenVersion(
            entry.index,
            body.format,
            body.action,
            token_id,
            verified.principal or "",
            frozenset(named),
            blocks=blocks,
        )

    def _add_revocation(self, index: int, raw: bytes) -> None:
        try:
            entry = LogEntry.from_bytes(raw)
            body = RevocationBody.from_body(entry.body)
        except MalformedInput as exc:
            _logger.warning("revocation.unindexed", index=index, reason=exc.code)
            return
        self._revoked.setdefault(body.token_id, index)
        self._revocations[index] = body.token_id
        # That token's own last block: every token attenuated from it holds it, its parents not.
        for version_index in self._by_token.get(body.token_id, []):
            blocks = self._versions[version_index].blocks
            if blocks:
                self._revoked_blocks.add(blocks[-1])

    # -- lookups (each syncs first) ------------------------------------------------------------

    def _lookup(self, token_id: str) -> list[TokenVersion]:
        indexes = self._by_token.get(token_id) or self._by_token.get(token_id.lower(), [])
        versions = [self._versions[index] for index in indexes]
        if len(versions) == 1 and versions[0].blocks:
            # A chained token: the entries that made each of its blocks' tokens.
            found = {
                self._by_block[block] for block in versions[0].blocks if block in self._by_block
            }
            versions = [self._versions[index] for index in sorted(found)]
        return versions

    def versions(self, token_id: str, *, upto: int | None = None) -> list[TokenVersion]:
        """The delegation entries behind ``token_id``, oldest first (at most index ``upto``)."""
        with self._lock:
            self.sync()
            found = self._lookup(token_id)
        return [version for version in found if upto is None or version.index <= upto]

    def version(self, index: int) -> TokenVersion | None:
        """The indexed delegation entry at ``index``, if it is one."""
        with self._lock:
            self.sync()
            return self._versions.get(index)

    def revocation(self, token_id: str) -> int | None:
        """The entry that revoked ``token_id``, if any."""
        with self._lock:
            self.sync()
            return self._revoked.get(token_id)

    def revoked_token(self, index: int) -> str | None:
        """The token id a ``revocation`` entry at ``index`` revokes, if it is one."""
        with self._lock:
            self.sync()
            return self._revocations.get(index)

    def is_revoked(self, token_id: str, blocks: Iterable[str] = ()) -> bool:
        """True when ``token_id``, or a token a chained token descends from, is revoked."""
        with self._lock:
            self.sync()
            return token_id in self._revoked or any(b in self._revoked_blocks for b in blocks)

    def acts_for(self, agent: str) -> frozenset[str]:
        """The principals of every delegation naming ``agent``."""
        with self._lock:
            self.sync()
            return frozenset(self._acts_for.get(agent, ()))

    def attribution(self, agent: str, delegation_id: str | None, index: int) -> str:
        """The principal a call by ``agent`` at ``index`` counts for ("" when none).

        A call counts for its token's principal only when its agent is named in the token's
        delegations before the call: naming another principal's token id claims nothing.
        """
        named = self.named_since(agent, delegation_id)
        return named[0] if named is not None and named[1] <= index else ""

    def named_since(self, agent: str, delegation_id: str | None) -> tuple[str, int] | None:
        """The principal of ``delegation_id``'s token and the first of its delegation entries
        that names ``agent``; None when none does."""
        if not delegation_id:
            return None
        versions = self.versions(delegation_id)
        for version in versions:
            if agent in version.agents:
                return versions[0].principal, version.index
        return None


# --- the service ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Checked:
    """A token that passed every check: what VerifyToken reports."""

    format: DelegationFormat
    token_id: str
    principal: str
    subject: str
    depth: int
    expires_at_ms: int
    entries: tuple[int, ...]


_LOG_FAILURES = (LogInconsistent, LogUnavailable)
_Handler = Callable[[Any], Message]


class DelegationService:
    """Delegation RPCs for one caller (the agent of a socket, or none on the shared one)."""

    def __init__(
        self,
        book: TokenBook,
        keys: AgentKeys,
        log: Log,
        access: Access,
        caller: Caller,
        *,
        clock_ms: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        """Bind the shared book, keys and log to ``caller``; ``clock_ms`` is the time source."""
        self._book = book
        self._keys = keys
        self._log = log
        self._access = access
        self._caller = caller
        self._clock_ms = clock_ms

    def methods(self) -> dict[str, tuple[type[Message], _Handler]]:
        """Each RPC's name, request type and handler (taking the parsed request)."""
        return {
            "IssueHdpRoot": (delegation_pb2.IssueHdpRootRequest, self.issue_hdp_root),
            "ExtendHdp": (delegation_pb2.ExtendHdpRequest, self.extend_hdp),
            "IssueAip": (delegation_pb2.IssueAipRequest, self.issue_aip),
            "AttenuateAip": (delegation_pb2.AttenuateAipRequest, self.attenuate_aip),
            "VerifyToken": (delegation_pb2.VerifyTokenRequest, self.verify_token),
            "AcceptToken": (delegation_pb2.VerifyTokenRequest, self.accept_token),
            "RevokeToken": (delegation_pb2.RevokeTokenRequest, self.revoke_token),
        }

    def _append(self, agent: str, body: DelegationBody) -> int:
        index = self._log.append(EntryKind.DELEGATION, agent, body.model_dump(mode="json"))
        self._book.sync()
        return index

    def _issuer_body(
        self, fmt: DelegationFormat, action: DelegationAction, token: dict[str, Any] | str
    ) -> DelegationBody:
        return DelegationBody(
            format=fmt,
            action=action,
            token=token,
            issuer_key=self._keys.issuer().public_key.to_b64url(),
        )

    # -- HDP -----------------------------------------------------------------------------------

    def issue_hdp_root(self, request: delegation_pb2.IssueHdpRootRequest) -> Message:
        """A Tallystick-profile HDP root for a principal the caller may act for.

        :raises TallystickError: no agent identity, a principal the caller may not issue for
            (``delegation.principal_not_permitted``), an unknown agent, or a root that would
            not validate (``hdp.schema_invalid``).
        """
        agent = self._caller.require_agent()
        principal = _text(request.principal_id, "principal_id")
        if not self._access.may_issue(agent, principal):
            raise PolicyViolation(
                f"agent {agent!r} may not issue tokens for principal {principal[:80]!r}",
                code="delegation.principal_not_permitted",
            )
        bound = list(request.agents) or sorted(self._keys.agents)
        profile = hdp.TallystickProfile.for_agents(
            {name: self._keys.agent(name).public_key for name in bound}
        )
        if len(profile.agents) != len(bound):
            raise _bad("agents: listed twice")
        ttl_ms = request.ttl_ms if request.HasField("ttl_ms") else _HDP_DEFAULT_TTL_MS
        if not 0 < ttl_ms <= _MAX_TTL_MS:
            raise _bad(f"ttl_ms: must be in 1..{_MAX_TTL_MS}")
        token = hdp.issue_root(
            key=self._keys.issuer(),
            principal_id=principal,
            principal_id_type=_text(request.principal_id_type, "principal_id_type", required=False)
            or "opaque",
            session_id=_text(request.session_id, "session_id"),
            intent=_text(request.intent, "intent", limit=_MAX_TEXT),
            data_classification=request.data_classification or "internal",
            network_egress=request.network_egress,
            persistence=request.persistence,
            authorized_tools=list(request.authorized_tools) or None,
            max_hops=request.max_hops if request.HasField("max_hops") else None,
            issued_at_ms=self._clock_ms(),
            ttl_ms=ttl_ms,
            profile=profile,
        )
        with self._book.writing():
            index = self._append(
                agent,
                self._issuer_body(DelegationFormat.HDP, DelegationAction.ISSUE, token.to_dict()),
            )
        return _hdp_reply(token, index)

    def extend_hdp(self, request: delegation_pb2.ExtendHdpRequest) -> Message:
        """The token with one more hop by the caller, co-signed by the caller's own key.

        :raises TallystickError: a request naming another agent (``auth.agent_mismatch``), a
            token that fails verification, is not the log's latest version of its chain
            (``hdp.truncated``, ``delegation.not_logged``, ``delegation.unknown_token``), is
            expired or revoked, or does not bind the caller (``delegation.agent_not_bound``).
        """
        agent = self._caller.require_agent()
        if request.HasField("agent_id") and request.agent_id != agent:
            raise PolicyViolation(
                f"agent_id {request.agent_id[:80]!r}: hops are signed as the calling agent "
                f"{agent!r}, never another",
                code="auth.agent_mismatch",
            )
        token = hdp.HdpToken.from_json(_text(request.token, "token", limit=_MAX_TOKEN))
        now = self._clock_ms()
        with self._book.writing():
            self._check_hdp(token, now, latest_only=True)
            data = token.to_dict()
            bound = data["scope"]["extensions"]["x-tallystick"]["agents"]  # verified: profile
            if agent not in {binding["agent_id"] for binding in bound}:
                raise PolicyViolation(
                    f"agent {agent!r}: the token's root does not bind this agent's key",
                    code="delegation.agent_not_bound",
                )
            chain = data["chain"]
            extended = hdp.extend(
                token,
                key=self._keys.issuer(),
                agent_id=agent,
                agent_type=request.agent_type or "sub-agent",
                action_summary=_text(request.action_summary, "action_summary", limit=_MAX_TEXT),
                timestamp_ms=max(now, chain[-1]["timestamp"]) if chain else now,
                parent_hop=request.parent_hop if request.HasField("parent_hop") else None,
                agent_key=self._keys.agent(agent),
            )
            index = self._append(
                agent,
                self._issuer_body(
                    DelegationFormat.HDP, DelegationAction.EXTEND, extended.to_dict()
                ),
            )
        return _hdp_reply(extended, index)

    def _check_hdp(self, token: hdp.HdpToken, now_ms: int, *, latest_only: bool) -> hdp.VerifiedHdp:
        """Verify ``token`` against the head the log holds for its version.

        Extending needs the latest version (``latest_only``): a chain grows one version at a
        time. Verifying takes any logged version, matched exactly by its head commitment: when
        an agent hands work to two sub-agents, each acts under its own version of the chain
        (the second extends the first's), and the earlier one stays the first's authority.
        """
        versions = self._book.versions(token.token_id)
        latest = versions[-1] if versions else None
        anchor = latest
        if not latest_only:
            anchor = next(
                (
                    version
                    for version in versions
                    if version.head is not None and version.head.hop_count == token.hop_count
                ),
                latest,
            )
        verified = hdp.verify(
            token,
            public_key=self._keys.issuer().public_key,
            profile="require",
            anchored_head=None if anchor is None else anchor.head,
        )
        if anchor is None or anchor.head is None or token.hop_count > anchor.head.hop_count:
            raise ChainBroken(
                f"hdp token {token.token_id[:80]!r}: this version was never logged",
                code="delegation.not_logged" if latest else "delegation.unknown_token",
            )
        if self._book.is_revoked(latest.token_id):
            raise Revoked(f"hdp token {token.token_id[:80]!r}: revoked", code="hdp.revoked")
        if token.expires_at_ms <= now_ms:
            raise Expired(
                f"hdp token: expired at {token.expires_at_ms} ms", code="hdp.token_expired"
            )
        return verified

    # -- AIP -----------------------------------------------------------------------------------

    def issue_aip(self, request: delegation_pb2.IssueAipRequest) -> Message:
        """A compact (with a fresh jti) or chained AIP token for a configured agent.

        :raises TallystickError: no agent identity, a principal the caller may not issue for,
            an unknown subject agent, or arguments AIP refuses (``aip.*``).
        """
        agent = self._caller.require_agent()
        subject_agent = request.subject_agent or agent
        subject = aip.key_identity(self._keys.agent(subject_agent).public_key)
        principal = _text(request.principal, "principal", required=False)
        ttl_s = request.ttl_s if request.HasField("ttl_s") else _AIP_DEFAULT_TTL_S
        if not _AIP_MIN_TTL_S <= ttl_s <= _MAX_TTL_MS // 1000:
            raise _bad(f"ttl_s: must be in {_AIP_MIN_TTL_S}..{_MAX_TTL_MS // 1000}")
        budget = request.budget_cents if request.HasField("budget_cents") else None
        now_s = self._clock_ms() // 1000
        issuer = self._keys.issuer()
        if request.format == delegation_pb2.TOKEN_FORMAT_AIP_COMPACT:
            if principal or request.domains:
                raise _bad("compact tokens carry no principal or domains; issue a chained token")
            if not self._access.configured_principals(agent) and not self._access.may_issue(
                agent, ANY_PRINCIPAL
            ):
                raise PolicyViolation(
                    f"agent {agent!r} may not issue tokens",
                    code="delegation.principal_not_permitted",
                )
            jti = str(uuid.uuid4())
            token = aip.issue_compact(
                key=issuer,
                subject=subject,
                scopes=list(request.scopes),
                max_depth=request.max_depth if request.HasField("max_depth") else 0,
                budget_usd=None if budget is None else budget / 100,
                issued_at=now_s,
                ttl_s=ttl_s,
                audience=request.audience if request.HasField("audience") else None,
                jti=jti,
            )
            fmt, token_id = DelegationFormat.AIP_COMPACT, jti
        elif request.format == delegation_pb2.TOKEN_FORMAT_AIP_CHAINED:
            if request.HasField("audience"):
                raise _bad("audience applies to compact tokens only")
            if not principal:
                raise _bad("principal: required for a chained token")
            if not self._access.may_issue(agent, principal):
                raise PolicyViolation(
                    f"agent {agent!r} may not issue tokens for principal {principal[:80]!r}",
                    code="delegation.principal_not_permitted",
                )
            depth = request.max_depth if request.HasField("max_depth") else _CHAINED_DEFAULT_DEPTH
            root = aip.issue_chained(
                key=issuer,
                scopes=list(request.scopes),
                max_depth=depth + 1,  # the block that hands the token to its subject
                budget_cents=budget,
                issued_at=now_s,
                ttl_s=ttl_s,
                principal=principal,
                domains=list(request.domains) or None,
            )
            token = aip.delegate_chained(
                root,
                root_public_key=issuer.public_key,
                delegator_key=issuer,
                delegate=subject,
                scopes=[],
                context=f"issued to {subject_agent}",
                now=now_s,
            )
            fmt, token_id = DelegationFormat.AIP_CHAINED, chained_token_id(token)
        else:
            raise _bad("format: TOKEN_FORMAT_AIP_COMPACT or _CHAINED", "delegation.wrong_format")
        body = self._issuer_body(fmt, DelegationAction.ISSUE, token)
        if fmt is DelegationFormat.AIP_COMPACT and request.HasField("audience"):
            body = body.model_copy(update={"audience": request.audience})
        with self._book.writing():
            index = self._append(agent, body)
        return delegation_pb2.AipTokenResponse(
            token=token,
            format=_FORMAT_ENUM[fmt],
            token_id=token_id,
            subject=subject,
            expires_at=now_s + ttl_s,
            index=index,
        )

    def attenuate_aip(self, request: delegation_pb2.AttenuateAipRequest) -> Message:
        """A narrower chained token for another agent, its block signed by the caller's key.

        :raises TallystickError: a compact token (``delegation.wrong_format``), a token that
            fails verification or is revoked, a caller that is not its last delegate
            (``delegation.not_holder``), an unknown delegate agent, or a widening (``aip.*``).
        """
        agent = self._caller.require_agent()
        text = _text(request.token, "token", limit=_MAX_TOKEN)
        if text.startswith("eyJ"):
            raise _bad("compact AIP tokens cannot be attenuated", "delegation.wrong_format")
        delegate_agent = _text(request.delegate_agent, "delegate_agent", limit=64)
        delegate = aip.key_identity(self._keys.agent(delegate_agent).public_key)
        now_s = self._clock_ms() // 1000
        issuer = self._keys.issuer()
        with self._book.writing():
            checked = self._check_aip(text, now_s, tool=None, audience=None)
            holder = aip.key_identity(self._keys.agent(agent).public_key)
            if checked.subject != holder:
                raise PolicyViolation(
                    f"agent {agent!r} is not the last delegate of this token",
                    code="delegation.not_holder",
                )
            token = aip.delegate_chained(
                text,
                root_public_key=issuer.public_key,
                delegator_key=self._keys.agent(agent),
                delegate=delegate,
                scopes=list(request.scopes),
                context=_text(request.context, "context", limit=_MAX_TEXT),
                budget_cents=request.budget_cents if request.HasField("budget_cents") else None,
                domains=list(request.domains) or None,
                now=now_s,
            )
            body = self._issuer_body(
                DelegationFormat.AIP_CHAINED, DelegationAction.ATTENUATE, token
            )
            index = self._append(agent, body)
        return delegation_pb2.AipTokenResponse(
            token=token,
            format=delegation_pb2.TOKEN_FORMAT_AIP_CHAINED,
            token_id=chained_token_id(token),
            subject=delegate,
            expires_at=checked.expires_at_ms // 1000,
            index=index,
        )

    def _check_aip(
        self, text: str, now_s: int, *, tool: str | None, audience: str | None
    ) -> _Checked:
        verified = aip.verify(
            text,
            public_key=self._keys.issuer().public_key,
            now=now_s,
            tool=tool,
            audience=audience,
            require_authenticated_delegators=True,
        )
        if verified.format == "aip-compact":
            fmt = DelegationFormat.AIP_COMPACT
            token_id = verified.jti or chained_token_id(text)
            blocks: list[str] = []
        else:
            fmt = DelegationFormat.AIP_CHAINED
            token_id = chained_token_id(text)
            blocks = list(UnverifiedBiscuit.from_base64(text).revocation_ids)
        if self._book.is_revoked(token_id, blocks):
            raise Revoked(f"aip token {token_id[:80]!r}: revoked", code="aip.revoked")
        return _Checked(
            fmt,
            token_id,
            verified.principal or "",
            verified.subject or "",
            verified.depth,
            verified.expires_at * 1000,
            tuple(version.index for version in self._book.versions(token_id)),
        )

    # -- any token -----------------------------------------------------------------------------

    def _check(self, request: delegation_pb2.VerifyTokenRequest, *, accept: bool) -> _Checked:
        text = _text(request.token.strip(), "token", limit=_MAX_TOKEN)
        tool = request.tool if request.HasField("tool") else None
        audience = request.audience if request.HasField("audience") else None
        now_ms = self._clock_ms()
        if not text.startswith("{"):
            checked = self._check_aip(text, now_ms // 1000, tool=tool, audience=audience)
            if accept and checked.format is DelegationFormat.AIP_COMPACT:
                replay_key = f"{self._keys.issuer().public_key.to_b64url()}:{checked.token_id}"
                if self._book.replay_cache.seen(
                    replay_key, checked.expires_at_ms // 1000, now_ms // 1000
                ):
                    raise ReplayDetected("jti: token already used", code="aip.replay_detected")
            return checked
        if audience is not None:
            raise _bad("audience applies to compact AIP tokens only")
        token = hdp.HdpToken.from_json(text)
        self._check_hdp(token, now_ms, latest_only=False)
        data = token.to_dict()
        tools = data["scope"].get("authorized_tools")
        if tool is not None and tools is not None and tool not in tools:
            raise ScopeInsufficient(
                f"tool {tool[:80]!r}: not in the token's authorized_tools",
                code="hdp.tool_not_authorized",
            )
        versions = self._book.versions(token.token_id)
        return _Checked(
            DelegationFormat.HDP,
            token.token_id,
            str(data["principal"]["id"]),
            data["chain"][-1]["agent_id"] if data["chain"] else "",
            token.hop_count,
            token.expires_at_ms,
            tuple(version.index for version in versions),
        )

    def verify_token(self, request: delegation_pb2.VerifyTokenRequest) -> Message:
        """Whether a token is valid now, and if not, why; writes nothing.

        :raises TallystickError: an empty or oversized token (``delegation.invalid_argument``)
            or a log failure; a token that fails its checks is ``valid = false``, not an error.
        """
        _text(request.token.strip(), "token", limit=_MAX_TOKEN)
        try:
            checked = self._check(request, accept=False)
        except _LOG_FAILURES:
            raise
        except TallystickError as exc:
            return delegation_pb2.VerifyTokenResponse(
                valid=False,
                format=_guess_format(request.token),
                code=exc.code,
                step=exc.step,
                detail=str(exc)[:1024],
            )
        return _verified_reply(checked)

    def accept_token(self, request: delegation_pb2.VerifyTokenRequest) -> Message:
        """As :meth:`verify_token` for a tool about to act: failures are errors, jtis single-use.

        :raises TallystickError: no agent identity, or any check that fails (the verifier's
            code, ``hdp.revoked``/``aip.revoked``, ``aip.replay_detected``).
        """
        self._caller.require_agent()
        return _verified_reply(self._check(request, accept=True))

    # -- revocation ----------------------------------------------------------------------------

    def revoke_token(self, request: delegation_pb2.RevokeTokenRequest) -> Message:
        """Append a revocation entry for a token the caller is named in.

        :raises TallystickError: no agent identity, an unknown token id
            (``delegation.unknown_token``), or a caller the token does not name
            (``auth.not_permitted``).
        """
        agent = self._caller.require_agent()
        token_id = _text(request.token_id, "token_id")
        reason = request.reason if request.HasField("reason") else None
        if reason is not None:
            _text(reason, "reason", limit=1024)
        with self._book.writing():
            versions = self._book.versions(token_id)
            if not versions:
                raise MalformedInput(
                    f"token {token_id[:80]!r}: not in the log", code="delegation.unknown_token"
                )
            if not any(agent in version.agents for version in versions):
                raise PolicyViolation(
                    f"agent {agent!r} is not named in token {token_id[:80]!r}",
                    code="auth.not_permitted",
                )
            canonical = _canonical_id(versions, token_id)
            earlier = self._book.revocation(canonical)
            if earlier is not None:
                return delegation_pb2.RevokeTokenResponse(index=earlier, already_revoked=True)
            body = RevocationBody(format=versions[-1].format, token_id=canonical, reason=reason)
            index = self._log.append(EntryKind.REVOCATION, agent, body.model_dump(mode="json"))
            self._book.sync()
        return delegation_pb2.RevokeTokenResponse(index=index, already_revoked=False)


def _canonical_id(versions: list[TokenVersion], asked: str) -> str:
    """The id as the book stores it (HDP ids are matched without regard to case)."""
    for version in versions:
        if version.token_id.lower() == asked.lower():
            return version.token_id
    return asked


def _guess_format(token: str) -> delegation_pb2.TokenFormat:
    text = token.strip()
    if text.startswith("{"):
        return delegation_pb2.TOKEN_FORMAT_HDP
    if text.startswith("eyJ"):
        return delegation_pb2.TOKEN_FORMAT_AIP_COMPACT
    return delegation_pb2.TOKEN_FORMAT_AIP_CHAINED


def _hdp_reply(token: hdp.HdpToken, index: int) -> delegation_pb2.HdpTokenResponse:
    return delegation_pb2.HdpTokenResponse(
        token=token.to_json(),
        token_id=token.token_id,
        hop_count=token.hop_count,
        head=hdp.head_commitment(token).head,
        index=index,
    )


def _verified_reply(checked: _Checked) -> delegation_pb2.VerifyTokenResponse:
    return delegation_pb2.VerifyTokenResponse(
        valid=True,
        format=_FORMAT_ENUM[checked.format],
        token_id=checked.token_id,
        principal=checked.principal,
        subject=checked.subject,
        depth=checked.depth,
        expires_at_ms=checked.expires_at_ms,
        entries=checked.entries,
    )
