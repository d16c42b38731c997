"""The sidecar client: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), one surface.

Both connect to ``unix:PATH`` (an agent's socket ``DATA_DIR/agents/ID.sock``, or the shared
``DATA_DIR/tallystickd.sock`` with ``agent_id=`` to pick the agent's) or ``HOST:PORT`` with
mutual TLS (``tls_cert``, ``tls_key``: the agent's client certificate; ``tls_ca``: the CA of
the daemon's certificate). Nothing connects until the first call, so an agent may start before
its sidecar. The agent is never named in a request: the daemon takes it from the transport.

Usage records (:meth:`Client.record`, :meth:`Client.record_many`) survive connection loss.
A record the sidecar cannot take goes to the backlog and ``record`` returns None; the backlog
is replayed in order before any newer record is sent: on the next ``record``, on
:meth:`Client.flush`, after any other successful call, and by a background retry with
exponential backoff. :class:`Policy` decides what the backlog is:

- ``on_unavailable_usage="spool"`` (the default, fail-open): the durable :class:`~.spool.Spool`.
  A record is fsynced to it before ``record`` returns, and removed only once the sidecar has
  acknowledged it. A crash between that acknowledgement and the delete, or an acknowledgement
  lost in transit (a call that missed its deadline after the daemon wrote it), replays the
  record: delivery is at-least-once in that window, never at-most-once.
- ``on_unavailable_usage="raise"``: a bounded in-memory buffer of ``max_buffered`` records;
  when it is full, ``record`` raises :class:`~.errors.SidecarUnavailable`
  (``sdk.buffer_full``). Records still buffered when the process ends are lost.

A record the sidecar refuses on replay (say, ``ledger.call_invalid``) is never dropped and
never blocks the queue: it moves aside (:meth:`Client.rejected`) and :meth:`Client.flush`
raises :class:`~.errors.SidecarRejected` for it. ``CallBody.principal`` is not sent: the
wire record has no such field; the daemon knows the principal from ``delegation_id``.

Delegation calls (``issue_hdp_root`` ... ``revoke_token``) and CoIn audits
(``begin_coin_audit``, ``finish_coin_audit``; see :mod:`~tallystick.sdk.coin`) fail closed: an
unreachable sidecar raises :class:`~.errors.SidecarUnavailable` whatever the policy
(``on_unavailable_delegation`` is read by :func:`tallystick.sdk.tools.tool`). Every error the
daemon sends becomes :class:`~.errors.SidecarRejected` with its ``tallystick-reason`` code.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import grpc
import grpc.aio
from tallystick.daemon.remote_cli import TcpAddress, agent_address, parse_address
from tallystick.daemon.tls import TlsMaterial
from tallystick.proto import (
    audit_pb2_grpc,
    delegation_pb2,
    delegation_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
)
from tallystick.verifier._cli import UsageError
from tallystick.verifier.coin import Attestation, Opening
from tallystick.verifier.errors import TallystickError
from tallystick.verifier.logentry import CallBody, DelegationFormat

from .coin import (
    CoinChallenge,
    CoinVerdict,
    _begin_request,
    _challenge_from,
    _finish_request,
    _verdict_from,
)
from .errors import (
    REASON_KEY,
    ClientClosed,
    ClientConfigError,
    SidecarRejected,
    SidecarUnavailable,
)
from .spool import RejectedRecord, Spool, SpooledRecord, default_spool_dir

__all__ = [
    "COIN_AUDIT_TIMEOUT_S",
    "AipGrant",
    "AsyncClient",
    "Client",
    "HdpGrant",
    "Policy",
    "Revocation",
    "TokenVerdict",
    "call_record",
]

_logger = logging.getLogger("tallystick.sdk")
_T = TypeVar("_T")

#: Reconnect quickly once the sidecar is back (gRPC's own default waits up to two minutes).
_CHANNEL_OPTIONS: Final = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
#: Statuses that mean "not delivered, try again later"; every other error is a refusal.
_UNAVAILABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_USAGE_FIELDS: Final = tuple(f.name for f in ledger_pb2.Usage.DESCRIPTOR.fields)
#: The CallRecord scalars with presence: set exactly when the body's field is not None.
_OPTIONAL_FIELDS: Final = tuple(
    f.name
    for f in ledger_pb2.CallRecord.DESCRIPTOR.fields
    if f.has_presence and f.message_type is None
)
_FORMAT_BY_ENUM: Final = {
    delegation_pb2.TOKEN_FORMAT_HDP: DelegationFormat.HDP,
    delegation_pb2.TOKEN_FORMAT_AIP_COMPACT: DelegationFormat.AIP_COMPACT,
    delegation_pb2.TOKEN_FORMAT_AIP_CHAINED: DelegationFormat.AIP_CHAINED,
}
_ENUM_BY_FORMAT: Final = {value: key for key, value in _FORMAT_BY_ENUM.items()}
#: CoIn calls wait at least this long: the sidecar loads its embedding model on the first
#: BeginAudit (seconds, more on a cold disk), and FinishAudit runs the model.
COIN_AUDIT_TIMEOUT_S: Final = 120.0


# -- policy and results -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """What a client does when the sidecar is unreachable, and how it retries.

    ``spool_dir`` (``on_unavailable_usage="spool"``) holds the spool; default
    :func:`~.spool.default_spool_dir`. ``max_buffered`` bounds the in-memory buffer of the
    ``"raise"`` policy. ``connect_wait_s`` is how long :meth:`Client.flush` waits for the
    connection (a sidecar just restarted); ``record`` never waits. ``replay_batch`` records
    go in one ``RecordCalls`` on replay (keep it at or under the daemon's ``max_batch``).

    :raises ClientConfigError: a value out of range (``sdk.bad_policy``).
    """

    on_unavailable_usage: Literal["spool", "raise"] = "spool"
    on_unavailable_delegation: Literal["raise", "allow"] = "raise"
    max_buffered: int = 10_000
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    retry_in_background: bool = True
    timeout_s: float = 10.0
    connect_wait_s: float = 2.0
    replay_batch: int = 100
    spool_dir: Path | None = None

    def __post_init__(self) -> None:
        problems = [
            name
            for name, bad in (
                ("on_unavailable_usage", self.on_unavailable_usage not in ("spool", "raise")),
                (
                    "on_unavailable_delegation",
                    self.on_unavailable_delegation not in ("raise", "allow"),
                ),
                ("max_buffered", self.max_buffered < 1),
                ("retry_initial_s", not 0 < self.retry_initial_s <= self.retry_max_s),
                ("timeout_s", not self.timeout_s > 0),
                ("connect_wait_s", not self.connect_wait_s >= 0),
                ("replay_batch", self.replay_batch < 1),
            )
            if bad
        ]
        if problems:
            raise ClientConfigError(f"policy: bad {', '.join(problems)}", code="sdk.bad_policy")


@dataclass(frozen=True, slots=True)
class HdpGrant:
    """An HDP token the sidecar issued or extended: canonical JSON ``token``, its id, the
    hop count, the head commitment the log anchors, and the delegation entry's index."""

    token: str
    token_id: str
    hop_count: int
    head: str
    index: int


@dataclass(frozen=True, slots=True)
class AipGrant:
    """An AIP token the sidecar issued or attenuated; ``expires_at`` in seconds."""

    token: str
    format: DelegationFormat
    token_id: str
    subject: str
    expires_at: int
    index: int


@dataclass(frozen=True, slots=True)
class TokenVerdict:
    """The sidecar's verdict on a token. When not ``valid``: ``code``, ``step`` and
    ``detail`` say why; when valid, the rest describe it (``expires_at_ms`` in ms)."""

    valid: bool
    format: DelegationFormat | None
    code: str | None = None
    step: int | None = None
    detail: str = ""
    token_id: str = ""
    principal: str = ""
    subject: str = ""
    depth: int = 0
    expires_at_ms: int = 0
    entries: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Revocation:
    """The revocation entry's index; ``already_revoked`` when an earlier one exists."""

    index: int
    already_revoked: bool


# -- wire forms -------------------------------------------------------------------------------


def call_record(call: CallBody) -> ledger_pb2.CallRecord:
    """The wire form of ``call``: every field that is not None, ``principal`` excepted."""
    usage = call.usage
    counts = {name: value for name in _USAGE_FIELDS if (value := getattr(usage, name)) is not None}
    fields: dict[str, Any] = {
        "provider": call.provider,
        "model": call.model,
        "usage": ledger_pb2.Usage(**counts),
    }
    for name in _OPTIONAL_FIELDS:
        value = getattr(call, name)
        if value is not None:
            fields[name] = value
    if call.cost is not None:
        fields["cost"] = ledger_pb2.Cost(amount=call.cost.amount, currency=call.cost.currency)
    if call.recount is not None:
        fields["recount"] = ledger_pb2.Recount(
            tokenizer=call.recount.tokenizer,
            visible_output_tokens=call.recount.visible_output_tokens,
        )
    return ledger_pb2.CallRecord(**fields)


def _hdp_root_request(
    principal_id: str,
    session_id: str,
    intent: str,
    *,
    principal_id_type: str,
    authorized_tools: Sequence[str],
    max_hops: int | None,
    ttl_ms: int | None,
    agents: Sequence[str],
    data_classification: str,
    network_egress: bool,
    persistence: bool,
) -> delegation_pb2.IssueHdpRootRequest:
    return delegation_pb2.IssueHdpRootRequest(
        principal_id=principal_id,
        principal_id_type=principal_id_type,
        session_id=session_id,
        intent=intent,
        data_classification=data_classification,
        network_egress=network_egress,
        persistence=persistence,
        authorized_tools=list(authorized_tools),
        max_hops=max_hops,
        ttl_ms=ttl_ms,
        agents=list(agents),
    )


def _aip_request(
    scopes: Sequence[str],
    *,
    principal: str,
    format: DelegationFormat,
    subject_agent: str,
    max_depth: int | None,
    budget_cents: int | None,
    ttl_s: int | None,
    audience: str | None,
    domains: Sequence[str],
) -> delegation_pb2.IssueAipRequest:
    if format not in (DelegationFormat.AIP_COMPACT, DelegationFormat.AIP_CHAINED):
        raise ClientConfigError(
            f"issue_aip: format must be aip-compact or aip-chained, not {format!r}",
            code="delegation.wrong_format",
        )
    return delegation_pb2.IssueAipRequest(
        format=_ENUM_BY_FORMAT[DelegationFormat(format)],
        principal=principal,
        subject_agent=subject_agent,
        scopes=list(scopes),
        max_depth=max_depth,
        budget_cents=budget_cents,
        ttl_s=ttl_s,
        audience=audience,
        domains=list(domains),
    )


def _hdp_grant(reply: delegation_pb2.HdpTokenResponse) -> HdpGrant:
    return HdpGrant(reply.token, reply.token_id, reply.hop_count, reply.head, reply.index)


def _aip_grant(reply: delegation_pb2.AipTokenResponse) -> AipGrant:
    return AipGrant(
        reply.token,
        _FORMAT_BY_ENUM[reply.format],
        reply.token_id,
        reply.subject,
        reply.expires_at,
        reply.index,
    )


def _verdict(reply: delegation_pb2.VerifyTokenResponse) -> TokenVerdict:
    return TokenVerdict(
        valid=reply.valid,
        format=_FORMAT_BY_ENUM.get(reply.format),
        code=reply.code or None,
        step=reply.step if reply.HasField("step") else None,
        detail=reply.detail,
        token_id=reply.token_id,
        principal=reply.principal,
        subject=reply.subject,
        depth=reply.depth,
        expires_at_ms=reply.expires_at_ms,
        entries=tuple(reply.entries),
    )


def _rpc_error(exc: grpc.RpcError, target: str) -> TallystickError:
    """The typed SDK error of a failed call (sync ``grpc.Call`` or ``grpc.aio`` error)."""
    code_of = getattr(exc, "code", None)
    if not callable(code_of):
        return SidecarUnavailable(f"tallystickd at {target}: {exc!r}")
    status: grpc.StatusCode = code_of()
    details = " ".join(str(exc.details() or "").split())
    reason = None
    for key, value in exc.trailing_metadata() or ():
        if key == REASON_KEY:
            reason = str(value)
    if status in _UNAVAILABLE:
        return SidecarUnavailable(
            f"cannot reach tallystickd at {target}: {status.name}: {details}", reason=reason
        )
    return SidecarRejected(
        f"tallystickd at {target} refused: {status.name}: {details}",
        code=reason or f"grpc.{status.name.lower()}",
        status=status.name,
    )


# -- channels and backlogs --------------------------------------------------------------------


def _resolve(
    address: str,
    agent_id: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> tuple[str, grpc.ChannelCredentials | None]:
    """The gRPC target and, for TCP, the mutual-TLS credentials.

    :raises ClientConfigError: a bad address or agent, some TLS files but not all.
    :raises TlsError: TLS files that cannot be read or do not match (``tls.*``).
    """
    files = (tls_cert, tls_key, tls_ca)
    tls = None
    if any(path is not None for path in files):
        if tls_cert is None or tls_key is None or tls_ca is None:
            raise ClientConfigError("mutual TLS needs all of tls_cert, tls_key and tls_ca")
        tls = TlsMaterial.load(certificate=Path(tls_cert), key=Path(tls_key), trusted=Path(tls_ca))
    try:
        parsed = parse_address(address, tls=tls)
        if agent_id is not None:
            parsed = agent_address(parsed, agent_id)
    except UsageError as exc:
        raise ClientConfigError(f"address {address!r}: {exc}") from None
    if isinstance(parsed, TcpAddress):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=parsed.tls.trusted_roots,
            private_key=parsed.tls.private_key,
            certificate_chain=parsed.tls.certificate_chain,
        )
        return parsed.target, credentials
    return parsed.target, None


class _MemoryBacklog:
    """The ``"raise"`` policy's backlog: the :class:`Spool` interface, in memory, bounded."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._records: collections.deque[SpooledRecord] = collections.deque()
        self._rejected: list[RejectedRecord] = []
        self._next_id = 1
        self._mutex = threading.Lock()

    def append(self, calls: Sequence[CallBody]) -> None:
        with self._mutex:
            if len(self._records) + len(calls) > self._capacity:
                raise SidecarUnavailable(
                    f"the sidecar is unreachable and {len(self._records)} records already "
                    "wait in memory (policy max_buffered)",
                    code="sdk.buffer_full",
                )
            for call in calls:
                self._records.append(SpooledRecord(self._next_id, call))
                self._next_id += 1

    def head(self, limit: int) -> tuple[list[SpooledRecord], list[RejectedRecord]]:
        with self._mutex:
            return ([self._records[i] for i in range(min(limit, len(self._records)))], [])

    def remove_through(self, last_id: int) -> None:
        with self._mutex:
            while self._records and self._records[0].id <= last_id:
                self._records.popleft()

    def reject(self, record: SpooledRecord, code: str) -> None:
        with self._mutex:
            self._records.remove(record)
            self._rejected.append(RejectedRecord(record.id, record.call.model_dump_json(), code))

    def rejected(self) -> list[RejectedRecord]:
        with self._mutex:
            return list(self._rejected)

    def __len__(self) -> int:
        return len(self._records)

    def close(self) -> None:
        if self._records:
            _logger.warning("sdk.buffer_dropped count=%d (policy raise keeps no spool)", len(self))


def _open_backlog(policy: Policy, target: str) -> Spool | _MemoryBacklog:
    if policy.on_unavailable_usage == "raise":
        return _MemoryBacklog(policy.max_buffered)
    return Spool.open(policy.spool_dir or default_spool_dir(), target=target)


def _next_delay(policy: Policy, delay: float, *, drained: bool) -> float:
    """Exponential backoff between background replays, reset once the backlog drained."""
    return policy.retry_initial_s if drained else min(delay * 2, policy.retry_max_s)


@dataclass
class _Replay:
    """What one replay pass did: records delivered, whether the backlog is now empty, and
    the refusals met (the records are set aside, not lost)."""

    delivered: int = 0
    drained: bool = False
    refused: list[SidecarRejected] = field(default_factory=list)

    def raise_refusals(self) -> None:
        if self.refused:
            first = self.refused[0]
            raise SidecarRejected(
                f"{len(self.refused)} spooled record(s) refused on replay and set aside "
                f"(Client.rejected()); first: {first}",
                code=first.code,
                status=first.status,
            )


# -- the blocking client ----------------------------------------------------------------------


class Client:
    """A blocking client of one tallystickd socket or TCP port. Thread-safe.

    :raises ClientConfigError: a bad address, agent id or policy.
    :raises TlsError: TLS files that cannot be used.
    :raises SpoolError: the spool cannot be opened.
    """

    def __init__(
        self,
        address: str,
        *,
        agent_id: str | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_ca: Path | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.policy = policy or Policy()
        self.target, credentials = _resolve(address, agent_id, tls_cert, tls_key, tls_ca)
        if credentials is None:
            self._channel = grpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.secure_channel(self.target, credentials, _CHANNEL_OPTIONS)
        self._ledger = ledger_pb2_grpc.LedgerStub(self._channel)
        self._delegation = delegation_pb2_grpc.DelegationStub(self._channel)
        self._audit = audit_pb2_grpc.CoinAuditStub(self._channel)
        self._backlog = _open_backlog(self.policy, self.target)
        self._pending = len(self._backlog)
        self._lock = threading.RLock()
        self._closed = False
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._retry_thread: threading.Thread | None = None
        if self._pending:
            self._start_retry()

    # -- usage records ----------------------------------------------------------------------

    def record(self, call: CallBody) -> int | None:
        """Record one call: its log index once durable, or None when it went to the backlog.

        :raises SidecarRejected: the daemon refused the call (it is not kept).
        :raises SidecarUnavailable: ``sdk.buffer_full`` (policy ``"raise"``).
        :raises SpoolError: the sidecar is unreachable and the spool cannot be written.
        :raises ClientClosed: after :meth:`close`.
        """
        indexes = self._record([call], many=False)
        return None if indexes is None else indexes[0]

    def record_many(self, calls: Iterable[CallBody]) -> list[int] | None:
        """Record calls atomically, in order: their indexes, or None when they were backlogged.

        :raises: as :meth:`record`.
        """
        batch = list(calls)
        if not batch:
            return []
        return self._record(batch, many=True)

    def _record(self, calls: list[CallBody], *, many: bool) -> list[int] | None:
        self._check_open()
        if self._pending:
            with self._lock:
                if not self._replay(self.policy.replay_batch).drained:
                    self._enqueue(calls)
                    return None
        try:
            if many:
                reply = self._ledger.RecordCalls(
                    ledger_pb2.RecordCallsRequest(calls=[call_record(c) for c in calls]),
                    timeout=self.policy.timeout_s,
                )
                return list(reply.indexes)
            single = self._ledger.RecordCall(
                ledger_pb2.RecordCallRequest(call=call_record(calls[0])),
                timeout=self.policy.timeout_s,
            )
            return [single.index]
        except grpc.RpcError as exc:
            error = _rpc_error(exc, self.target)
        if not isinstance(error, SidecarUnavailable):
            raise error
        with self._lock:
            self._enqueue(calls)
        return None

    def _enqueue(self, calls: Sequence[CallBody]) -> None:
        self._backlog.append(calls)
        was_empty = not self._pending
        self._pending += len(calls)
        self._start_retry(wake=was_empty)

    def _replay(self, limit: int | None) -> _Replay:
        """Send the backlog in order (at most ``limit`` batches' worth when given); the
        caller holds the lock. Stops at the first unavailability."""
        result = _Replay()
        batch = self.policy.replay_batch
        while limit is None or result.delivered < limit:
            records, corrupt = self._backlog.head(batch)
            self._pending -= len(corrupt)
            if not records:
                if corrupt:
                    continue
                self._pending = 0
                result.drained = True
                return result
            try:
                self._ledger.RecordCalls(
                    ledger_pb2.RecordCallsRequest(calls=[call_record(r.call) for r in records]),
                    timeout=self.policy.timeout_s,
                )
            except grpc.RpcError as exc:
                error = _rpc_error(exc, self.target)
                if isinstance(error, SidecarUnavailable):
                    return result
                if not self._replay_one_by_one(records, result):
                    return result
                continue
            self._backlog.remove_through(records[-1].id)
            self._pending -= len(records)
            result.delivered += len(records)
        return result

    def _replay_one_by_one(self, records: list[SpooledRecord], result: _Replay) -> bool:
        """A refused batch: find the refused records and set them aside; False if the
        sidecar became unreachable."""
        for record in records:
            try:
                self._ledger.RecordCall(
                    ledger_pb2.RecordCallRequest(call=call_record(record.call)),
                    timeout=self.policy.timeout_s,
                )
            except grpc.RpcError as exc:
                error = _rpc_error(exc, self.target)
                if isinstance(error, SidecarUnavailable):
                    return False
                assert isinstance(error, SidecarRejected)
                self._backlog.reject(record, error.code)
                result.refused.append(error)
                _logger.warning("sdk.record_refused code=%s spool_id=%d", error.code, record.id)
            else:
                self._backlog.remove_through(record.id)
                result.delivered += 1
            self._pending -= 1
        return True

    def flush(self) -> int:
        """Deliver the whole backlog now, in order; return how many records were delivered.
        Waits up to ``policy.connect_wait_s`` for the connection first.

        :raises SidecarUnavailable: the sidecar is unreachable (the rest stays backlogged).
        :raises SidecarRejected: records were refused and set aside (see :meth:`rejected`).
        :raises SpoolError: the spool cannot be read or updated.
        :raises ClientClosed: after :meth:`close`.
        """
        self._check_open()
        if self._pending:
            with contextlib.suppress(grpc.FutureTimeoutError):
                grpc.channel_ready_future(self._channel).result(timeout=self.policy.connect_wait_s)
        with self._lock:
            result = self._replay(None)
        result.raise_refusals()
        if not result.drained:
            raise SidecarUnavailable(
                f"cannot reach tallystickd at {self.target}: {self._pending} records still "
                "wait in the backlog"
            )
        return result.delivered

    @property
    def pending(self) -> int:
        """Records waiting in the backlog."""
        return self._pending

    def rejected(self) -> list[RejectedRecord]:
        """Backlogged records the sidecar refused on replay, set aside, oldest first."""
        return self._backlog.rejected()

    # -- background retry -------------------------------------------------------------------

    def _start_retry(self, *, wake: bool = True) -> None:
        """Start the retry thread if needed; ``wake`` an idle one (the backlog was empty)."""
        if not self.policy.retry_in_background:
            return
        if self._retry_thread is None:
            self._retry_thread = threading.Thread(
                target=self._retry_loop, name="tallystick-sdk-retry", daemon=True
            )
            self._retry_thread.start()
        if wake:
            self._wake.set()

    def _retry_loop(self) -> None:
        delay = self.policy.retry_initial_s
        while not self._stopping.is_set():
            if not self._pending:
                self._wake.wait()
                self._wake.clear()
                delay = self.policy.retry_initial_s
                continue
            # A successful call sets _wake: the sidecar is back, replay without waiting.
            self._wake.wait(delay)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                with self._lock:
                    drained = self._closed or self._replay(None).drained
            except TallystickError as exc:  # the spool failed: keep the records, try later
                _logger.warning("sdk.retry_failed code=%s", exc.code)
                drained = False
            delay = _next_delay(self.policy, delay, drained=drained)

    # -- delegation -------------------------------------------------------------------------

    def _call(self, method: Callable[..., _T], request: object, *, timeout: float = 0) -> _T:
        self._check_open()
        try:
            reply = method(request, timeout=max(timeout, self.policy.timeout_s))
        except grpc.RpcError as exc:
            raise _rpc_error(exc, self.target) from None
        if self._pending:
            self._wake.set()  # the sidecar answers again: replay without waiting out the backoff
        return reply

    def issue_hdp_root(
        self,
        principal_id: str,
        session_id: str,
        intent: str,
        *,
        principal_id_type: str = "",
        authorized_tools: Sequence[str] = (),
        max_hops: int | None = None,
        ttl_ms: int | None = None,
        agents: Sequence[str] = (),
        data_classification: str = "",
        network_egress: bool = False,
        persistence: bool = False,
    ) -> HdpGrant:
        """A Tallystick-profile HDP root for ``principal_id`` (empty strings: daemon defaults).

        :raises SidecarRejected: e.g. ``delegation.principal_not_permitted``.
        :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
        """
        request = _hdp_root_request(
            principal_id,
            session_id,
            intent,
            principal_id_type=principal_id_type,
            authorized_tools=authorized_tools,
            max_hops=max_hops,
            ttl_ms=ttl_ms,
            agents=agents,
            data_classification=data_classification,
            network_egress=network_egress,
            persistence=persistence,
        )
        return _hdp_grant(self._call(self._delegation.IssueHdpRoot, request))

    def extend_hdp(
        self,
        token: str,
        action_summary: str,
        *,
        agent_type: str = "sub-agent",
        parent_hop: int | None = None,
    ) -> HdpGrant:
        """``token`` with one more hop by this client's agent, co-signed by its key.

        :raises SidecarRejected: e.g. ``delegation.agent_not_bound``, ``hdp.max_hops_exceeded``.
        :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
        """
        request = delegation_pb2.ExtendHdpRequest(
            token=token, action_summary=action_summary, agent_type=agent_type, parent_hop=parent_hop
        )
        return _hdp_grant(self._call(self._delegation.ExtendHdp, request))

    def issue_aip(
        self,
        scopes: Sequence[str],
        *,
        principal: str = "",
        format: DelegationFormat = DelegationFormat.AIP_CHAINED,
        subject_agent: str = "",
        max_depth: int | None = None,
        budget_cents: int | None = None,
        ttl_s: int | None = None,
        audience: str | None = None,
        domains: Sequence[str] = (),
    ) -> AipGrant:
        """An AIP token granting ``scopes`` (``tool:search``, ``tool:*``) to ``subject_agent``
        (default: this client's agent). A chained token names its ``principal`` (the caller
        must act for it); a compact one carries none.

        :raises ClientConfigError: ``format`` is not an AIP format (``delegation.wrong_format``).
        :raises SidecarRejected: e.g. ``delegation.principal_not_permitted``.
        :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
        """
        request = _aip_request(
            scopes,
            principal=principal,
            format=format,
            subject_agent=subject_agent,
            max_depth=max_depth,
            budget_cents=budget_cents,
            ttl_s=ttl_s,
            audience=audience,
            domains=domains,
        )
        return _aip_grant(self._call(self._delegation.IssueAip, request))

    def attenuate_aip(
        self,
        token: str,
        delegate_agent: str,
        *,
        scopes: Sequence[str] = (),
        context: str = "",
        budget_cents: int | None = None,
        domains: Sequence[str] = (),
    ) -> AipGrant:
        """A narrower chained token for ``delegate_agent`` (empty ``scopes``: inherit).

        :raises SidecarRejected: e.g. ``delegation.not_holder``, ``aip.scope_insufficient``.
        :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
        """
        request = delegation_pb2.AttenuateAipRequest(
            token=token,
            delegate_agent=delegate_agent,
            scopes=list(scopes),
            context=context,
            budget_cents=budget_cents,
            domains=list(domains),
        )
        return _aip_grant(self._call(self._delegation.AttenuateAip, request))

    def verify_token(
        self, token: str, *, tool: str | None = None, audience: str | None = None
    ) -> TokenVerdict:
        """The sidecar's verdict on ``token`` (a failing token is ``valid=False``, no error).

        :raises SidecarRejected: an empty or oversized token (``delegation.invalid_argument``).
        :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
        """
        request = delegation_pb2.VerifyTokenRequest(token=token, tool=tool, audience=audience)
        return _verdict(self._call(self._delegation.VerifyToken, request))

    def revoke_token(self, token_id: str, reason: str | None = None) -> Revocation:
        """Revoke a token this client's agent is named in.

        :raises SidecarRejected: ``delegation.unknown_token``, ``auth.not_permitted``.
        :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
        """
        request = delegation_pb2.RevokeTokenRequest(token_id=token_id, reason=reason)
        reply = self._call(self._delegation.RevokeToken, request)
        return Revocation(reply.index, reply.already_revoked)

    # -- CoIn audits ------------------------------------------------------------------------

    def begin_coin_audit(
        self,
        *,
        head_note: str,
        provider_vkey: str,
        prompt: str,
        answer: str,
        domain: str | None = None,
        sketch: bytes = b"",
        call_request_id: str | None = None,
        attestation: Attestation | None = None,
    ) -> CoinChallenge:
        """Have the sidecar verify and log a provider's signed commitment head, then draw and
        log the challenge: the indices the provider must open.

        ``prompt`` and ``answer`` (as sent and delivered) are checked against the head's hashes
        and held in the sidecar's memory for the semantic checks, never written. ``domain``
        (``"math"``, ``"safety"``) picks the calibration; None routes by the prompt.
        ``sketch`` is the n-gram sketch the head binds; ``call_request_id`` the ``request_id``
        of the recorded call the commitment is for; ``attestation`` the provider's attestation
        evidence, logged with the head by its format and SHA-256, not verified. Waits at least
        :data:`COIN_AUDIT_TIMEOUT_S`.

        :raises TypeError: ``attestation`` is not an ``Attestation``.
        :raises SidecarRejected: the head does not verify (its ``coin.*`` code, or
            ``note.bad_vkey``; nothing was logged), ``coin.unavailable`` (the sidecar has no
            embedding engine), ``auth.no_agent_identity`` (the shared socket).
        :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
        """
        request = _begin_request(
            head_note=head_note,
            provider_vkey=provider_vkey,
            prompt=prompt,
            answer=answer,
            domain=domain,
            sketch=sketch,
            call_request_id=call_request_id,
            attestation=attestation,
        )
        reply = self._call(self._audit.BeginAudit, request, timeout=COIN_AUDIT_TIMEOUT_S)
        return _challenge_from(reply)

    def finish_coin_audit(
        self, audit_id: str, openings: Sequence[Opening], *, sketch_key: bytes = b""
    ) -> CoinVerdict:
        """Send the provider's openings of the challenged indices (in their order) and its
        sketch key; the sidecar judges them and logs the evidence and the verdict.

        A failed opening is a verdict too (``consistent`` false, ``error_code`` set).

        :raises TypeError: an item of ``openings`` is not an ``Opening``.
        :raises SidecarRejected: ``coin.audit_unknown`` (unknown, finished, expired, or begun
            by another agent), ``coin.opening_malformed`` (the audit stays pending).
        :raises SidecarUnavailable: the sidecar is unreachable (fail closed).
        """
        request = _finish_request(audit_id, openings, sketch_key)
        reply = self._call(self._audit.FinishAudit, request, timeout=COIN_AUDIT_TIMEOUT_S)
        return _verdict_from(reply)

    # -- lifetime ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"client of {self.target} is closed")

    def close(self) -> None:
        """Try one last replay, stop the retry thread, close the channel and the spool.
        Idempotent; spooled records stay on disk for the next client."""
        with self._lock:
            if self._closed:
                return
            if self._pending:
                try:
                    self._replay(None)
                except TallystickError as exc:
                    _logger.warning("sdk.close_replay_failed code=%s", exc.code)
            self._closed = True
        self._stopping.set()
        self._wake.set()
        if self._retry_thread is not None:
            self._retry_thread.join()
        self._channel.close()
        self._backlog.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- the asyncio client -----------------------------------------------------------------------


class AsyncClient:
    """The asyncio form of :class:`Client`: the same names and arguments, as coroutines.

    Use it from one event loop. Spool reads and writes run in a worker thread.

    :raises: as :class:`Client`.
    """

    def __init__(
        self,
        address: str,
        *,
        agent_id: str | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_ca: Path | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.policy = policy or Policy()
        self.target, credentials = _resolve(address, agent_id, tls_cert, tls_key, tls_ca)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.secure_channel(self.target, credentials, _CHANNEL_OPTIONS)
        self._ledger: Any = ledger_pb2_grpc.LedgerStub(self._channel)
        self._delegation: Any = delegation_pb2_grpc.DelegationStub(self._channel)
        self._audit: Any = audit_pb2_grpc.CoinAuditStub(self._channel)
        self._backlog = _open_backlog(self.policy, self.target)
        self._pending = len(self._backlog)
        self._lock = asyncio.Lock()
        self._closed = False
        self._wake = asyncio.Event()
        self._retry_task: asyncio.Task[None] | None = None

    # -- usage records ----------------------------------------------------------------------

    async def record(self, call: CallBody) -> int | None:
        """As :meth:`Client.record`.

        :raises: as :meth:`Client.record`.
        """
        indexes = await self._record([call], many=False)
        return None if indexes is None else indexes[0]

    async def record_many(self, calls: Iterable[CallBody]) -> list[int] | None:
        """As :meth:`Client.record_many`.

        :raises: as :meth:`Client.record`.
        """
        batch = list(calls)
        if not batch:
            return []
        return await self._record(batch, many=True)

    async def _record(self, calls: list[CallBody], *, many: bool) -> list[int] | None:
        self._check_open()
        if self._pending:
            async with self._lock:
                if not (await self._replay(self.policy.replay_batch)).drained:
                    await self._enqueue(calls)
                    return None
        try:
            if many:
                reply = await self._ledger.RecordCalls(
                    ledger_pb2.RecordCallsRequest(calls=[call_record(c) for c in calls]),
                    timeout=self.policy.timeout_s,
                )
                return list(reply.indexes)
            single = await self._ledger.RecordCall(
                ledger_pb2.RecordCallRequest(call=call_record(calls[0])),
                timeout=self.policy.timeout_s,
            )
            return [single.index]
        except grpc.RpcError as exc:
            error = _rpc_error(exc, self.target)
        if not isinstance(error, SidecarUnavailable):
            raise error
        async with self._lock:
            await self._enqueue(calls)
        return None

    async def _enqueue(self, calls: Sequence[CallBody]) -> None:
        await asyncio.to_thread(self._backlog.append, calls)
        was_empty = not self._pending
        self._pending += len(calls)
        self._start_retry(wake=was_empty)

    async def _replay(self, limit: int | None) -> _Replay:
        result = _Replay()
        batch = self.policy.replay_batch
        while limit is None or result.delivered < limit:
            records, corrupt = await asyncio.to_thread(self._backlog.head, batch)
            self._pending -= len(corrupt)
            if not records:
                if corrupt:
                    continue
                self._pending = 0
                result.drained = True
                return result
            try:
                await self._ledger.RecordCalls(
                    ledger_pb2.RecordCallsRequest(calls=[call_record(r.call) for r in records]),
                    timeout=self.policy.timeout_s,
                )
            except grpc.RpcError as exc:
                error = _rpc_error(exc, self.target)
                if isinstance(error, SidecarUnavailable):
                    return result
                if not await self._replay_one_by_one(records, result):
                    return result
                continue
            await asyncio.to_thread(self._backlog.remove_through, records[-1].id)
            self._pending -= len(records)
            result.delivered += len(records)
        return result

    async def _replay_one_by_one(self, records: list[SpooledRecord], result: _Replay) -> bool:
        for record in records:
            try:
                await self._ledger.RecordCall(
                    ledger_pb2.RecordCallRequest(call=call_record(record.call)),
                    timeout=self.policy.timeout_s,
                )
            except grpc.RpcError as exc:
                error = _rpc_error(exc, self.target)
                if isinstance(error, SidecarUnavailable):
                    return False
                assert isinstance(error, SidecarRejected)
                await asyncio.to_thread(self._backlog.reject, record, error.code)
                result.refused.append(error)
                _logger.warning("sdk.record_refused code=%s spool_id=%d", error.code, record.id)
            else:
                await asyncio.to_thread(self._backlog.remove_through, record.id)
                result.delivered += 1
            self._pending -= 1
        return True

    async def flush(self) -> int:
        """As :meth:`Client.flush`.

        :raises: as :meth:`Client.flush`.
        """
        self._check_open()
        if self._pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._channel.channel_ready(), self.policy.connect_wait_s)
        async with self._lock:
            result = await self._replay(None)
        result.raise_refusals()
        if not result.drained:
            raise SidecarUnavailable(
                f"cannot reach tallystickd at {self.target}: {self._pending} records still "
                "wait in the backlog"
            )
        return result.delivered

    @property
    def pending(self) -> int:
        """Records waiting in the backlog."""
        return self._pending

    def rejected(self) -> list[RejectedRecord]:
        """As :meth:`Client.rejected` (a plain method: it reads no network)."""
        return self._backlog.rejected()

    def _start_retry(self, *, wake: bool = True) -> None:
        if not self.policy.retry_in_background:
            return
        if self._retry_task is None:
            self._retry_task = asyncio.get_running_loop().create_task(self._retry_loop())
        if wake:
            self._wake.set()

    async def _retry_loop(self) -> None:
        delay = self.policy.retry_initial_s
        while True:
            if not self._pending:
                await self._wake.wait()
                self._wake.clear()
                delay = self.policy.retry_initial_s
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                async with self._lock:
                    drained = (await self._replay(None)).drained
            except TallystickError as exc:
                _logger.warning("sdk.retry_failed code=%s", exc.code)
                drained = False
            delay = _next_delay(self.policy, delay, drained=drained)

    # -- delegation -------------------------------------------------------------------------

    async def _call(
        self, method: Callable[..., Awaitable[Any]], request: object, *, timeout: float = 0
    ) -> Any:
        self._check_open()
        try:
            reply = await method(request, timeout=max(timeout, self.policy.timeout_s))
        except grpc.RpcError as exc:
            raise _rpc_error(exc, self.target) from None
        if self._pending:
            self._wake.set()
        return reply

    async def issue_hdp_root(
        self,
        principal_id: str,
        session_id: str,
        intent: str,
        *,
        principal_id_type: str = "",
        authorized_tools: Sequence[str] = (),
        max_hops: int | None = None,
        ttl_ms: int | None = None,
        agents: Sequence[str] = (),
        data_classification: str = "",
        network_egress: bool = False,
        persistence: bool = False,
    ) -> HdpGrant:
        """As :meth:`Client.issue_hdp_root`.

        :raises: as :meth:`Client.issue_hdp_root`.
        """
        request = _hdp_root_request(
            principal_id,
            session_id,
            intent,
            principal_id_type=principal_id_type,
            authorized_tools=authorized_tools,
            max_hops=max_hops,
            ttl_ms=ttl_ms,
            agents=agents,
            data_classification=data_classification,
            network_egress=network_egress,
            persistence=persistence,
        )
        return _hdp_grant(await self._call(self._delegation.IssueHdpRoot, request))

    async def extend_hdp(
        self,
        token: str,
        action_summary: str,
        *,
        agent_type: str = "sub-agent",
        parent_hop: int | None = None,
    ) -> HdpGrant:
        """As :meth:`Client.extend_hdp`.

        :raises: as :meth:`Client.extend_hdp`.
        """
        request = delegation_pb2.ExtendHdpRequest(
            token=token, action_summary=action_summary, agent_type=agent_type, parent_hop=parent_hop
        )
        return _hdp_grant(await self._call(self._delegation.ExtendHdp, request))

    async def issue_aip(
        self,
        scopes: Sequence[str],
        *,
        principal: str = "",
        format: DelegationFormat = DelegationFormat.AIP_CHAINED,
        subject_agent: str = "",
        max_depth: int | None = None,
        budget_cents: int | None = None,
        ttl_s: int | None = None,
        audience: str | None = None,
        domains: Sequence[str] = (),
    ) -> AipGrant:
        """As :meth:`Client.issue_aip`.

        :raises: as :meth:`Client.issue_aip`.
        """
        request = _aip_request(
            scopes,
            principal=principal,
            format=format,
            subject_agent=subject_agent,
            max_depth=max_depth,
            budget_cents=budget_cents,
            ttl_s=ttl_s,
            audience=audience,
            domains=domains,
        )
        return _aip_grant(await self._call(self._delegation.IssueAip, request))

    async def attenuate_aip(
        self,
        token: str,
        delegate_agent: str,
        *,
        scopes: Sequence[str] = (),
        context: str = "",
        budget_cents: int | None = None,
        domains: Sequence[str] = (),
    ) -> AipGrant:
        """As :meth:`Client.attenuate_aip`.

        :raises: as :meth:`Client.attenuate_aip`.
        """
        request = delegation_pb2.AttenuateAipRequest(
            token=token,
            delegate_agent=delegate_agent,
            scopes=list(scopes),
            context=context,
            budget_cents=budget_cents,
            domains=list(domains),
        )
        return _aip_grant(await self._call(self._delegation.AttenuateAip, request))

    async def verify_token(
        self, token: str, *, tool: str | None = None, audience: str | None = None
    ) -> TokenVerdict:
        """As :meth:`Client.verify_token`.

        :raises: as :meth:`Client.verify_token`.
        """
        request = delegation_pb2.VerifyTokenRequest(token=token, tool=tool, audience=audience)
        return _verdict(await self._call(self._delegation.VerifyToken, request))

    async def revoke_token(self, token_id: str, reason: str | None = None) -> Revocation:
        """As :meth:`Client.revoke_token`.

        :raises: as :meth:`Client.revoke_token`.
        """
        request = delegation_pb2.RevokeTokenRequest(token_id=token_id, reason=reason)
        reply = await self._call(self._delegation.RevokeToken, request)
        return Revocation(reply.index, reply.already_revoked)

    # -- CoIn audits ------------------------------------------------------------------------

    async def begin_coin_audit(
        self,
        *,
        head_note: str,
        provider_vkey: str,
        prompt: str,
        answer: str,
        domain: str | None = None,
        sketch: bytes = b"",
        call_request_id: str | None = None,
        attestation: Attestation | None = None,
    ) -> CoinChallenge:
        """As :meth:`Client.begin_coin_audit`.

        :raises: as :meth:`Client.begin_coin_audit`.
        """
        request = _begin_request(
            head_note=head_note,
            provider_vkey=provider_vkey,
            prompt=prompt,
            answer=answer,
            domain=domain,
            sketch=sketch,
            call_request_id=call_request_id,
            attestation=attestation,
        )
        reply = await self._call(self._audit.BeginAudit, request, timeout=COIN_AUDIT_TIMEOUT_S)
        return _challenge_from(reply)

    async def finish_coin_audit(
        self, audit_id: str, openings: Sequence[Opening], *, sketch_key: bytes = b""
    ) -> CoinVerdict:
        """As :meth:`Client.finish_coin_audit`.

        :raises: as :meth:`Client.finish_coin_audit`.
        """
        request = _finish_request(audit_id, openings, sketch_key)
        reply = await self._call(self._audit.FinishAudit, request, timeout=COIN_AUDIT_TIMEOUT_S)
        return _verdict_from(reply)

    # -- lifetime ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed(f"client of {self.target} is closed")

    async def close(self) -> None:
        """As :meth:`Client.close`."""
        async with self._lock:
            if self._closed:
                return
            if self._pending:
                try:
                    await self._replay(None)
                except TallystickError as exc:
                    _logger.warning("sdk.close_replay_failed code=%s", exc.code)
            self._closed = True
        if self._retry_task is not None:
            self._retry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry_task
        await self._channel.close()
        self._backlog.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
