"""The Query service: the provenance of an entry, with proofs, and usage and cost totals.

Both read the log only. Provenance answers with the exact entry bytes and inclusion proofs in
the tree of one signed checkpoint, so a client checks it offline with ``log.pub`` alone; totals
scan the calls in a time range (entry times never decrease, so the range is found by binary
search) and add token counts without turning unknown counts into zeros.

Who may read what (:class:`~.delegation.Access`): an agent reads calls it made and records of the
principals it acts for (configured, or named with it in a delegation); ``read_all`` lifts the
limit; the shared socket reads totals only, and only with ``shared_totals``.
"""

from __future__ import annotations

import decimal
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.message import Message
from tallystick.proto import query_pb2
from tallystick.verifier.checkpoint import SignedCheckpoint
from tallystick.verifier.errors import MalformedInput, PolicyViolation, TallystickError
from tallystick.verifier.logentry import EntryKind, LogEntry

from .delegation import Access, TokenBook, TokenVersion, entry_kind
from .identity import Caller
from .log import Log

__all__ = ["MAX_U64", "QueryService"]

MAX_U64: Final = 2**64 - 1
_SCAN_CHUNK: Final = 1024
_COUNTS: Final = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
)
# Sums of up to 2^63 amounts of 16 + 12 digits stay exact.
_DECIMAL: Final = decimal.Context(prec=64, traps=[decimal.Inexact, decimal.InvalidOperation])
_GROUPS: Final = {
    query_pb2.GROUP_BY_PRINCIPAL: "principal",
    query_pb2.GROUP_BY_AGENT: "agent",
    query_pb2.GROUP_BY_SESSION: "session_id",
    query_pb2.GROUP_BY_MODEL: "model",
}

_Handler = Callable[[Any], Message]


def _not_permitted(message: str) -> PolicyViolation:
    return PolicyViolation(message, code="auth.not_permitted")


@dataclass(slots=True)
class _Totals:
    """Running sums of one group."""

    calls: int = 0
    sums: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))
    unknown: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))
    costs: dict[str, tuple[decimal.Decimal, int]] = field(default_factory=dict)
    unpriced: int = 0

    def add(self, body: dict[str, Any]) -> None:
        self.calls += 1
        usage = body.get("usage") or {}
        for name in _COUNTS:
            value = usage.get(name)
            if value is None:
                self.unknown[name] += 1
            else:
                self.sums[name] += value
        cost = body.get("cost")
        if cost is None:
            self.unpriced += 1
            return
        amount, calls = self.costs.get(cost["currency"], (decimal.Decimal(0), 0))
        self.costs[cost["currency"]] = (
            _DECIMAL.add(amount, decimal.Decimal(cost["amount"])),
            calls + 1,
        )

    def reply(self, key: str) -> query_pb2.GroupTotals:
        for value in (self.calls, *self.sums.values()):
            if value > MAX_U64:
                raise TallystickError("totals: a sum exceeds 2^64 - 1", code="query.overflow")
        return query_pb2.GroupTotals(
            key=key,
            calls=self.calls,
            costs=[
                query_pb2.CostSum(currency=currency, amount=format(amount, "f"), calls=calls)
                for currency, (amount, calls) in sorted(self.costs.items())
            ],
            unpriced_calls=self.unpriced,
            **{
                name: query_pb2.TokenSum(sum=self.sums[name], unknown_calls=self.unknown[name])
                for name in _COUNTS
            },
        )


class QueryService:
    """Query RPCs for one caller (an agent, or none on the shared socket)."""

    def __init__(self, book: TokenBook, log: Log, access: Access, caller: Caller) -> None:
        """Bind the shared book and log to ``caller``."""
        self._book = book
        self._log = log
        self._access = access
        self._caller = caller

    def methods(self) -> dict[str, tuple[type[Message], _Handler]]:
        """Each RPC's name, request type and handler (taking the parsed request)."""
        return {
            "GetProvenance": (query_pb2.GetProvenanceRequest, self.get_provenance),
            "GetTotals": (query_pb2.GetTotalsRequest, self.get_totals),
        }

    # -- who may read ----------------------------------------------------------------------------

    def _readable_principals(self, agent: str) -> frozenset[str] | None:
        """The principals ``agent`` may read; None for all of them."""
        if agent in self._access.read_all:
            return None
        return self._access.configured_principals(agent) | self._book.acts_for(agent)

    # -- provenance ------------------------------------------------------------------------------

    def get_provenance(self, request: query_pb2.GetProvenanceRequest) -> Message:
        """The entry, the delegation entries behind it back to the principal, and proofs.

        :raises TallystickError: no agent identity (``auth.no_agent_identity``), an index beyond
            the log (``query.index_out_of_range``), or an entry the caller may not read
            (``auth.not_permitted``).
        """
        agent = self._caller.require_agent()
        size = self._log.size
        if request.index >= size:
            raise MalformedInput(
                f"entry {request.index}: the log has {size} entries",
                code="query.index_out_of_range",
            )
        (raw,) = self._log.entries(request.index, request.index + 1)
        entry = LogEntry.from_bytes(raw)
        principal, token_id, chain = self._chain(entry)
        readable = self._readable_principals(agent)
        if not (readable is None or entry.agent == agent or (principal and principal in readable)):
            raise _not_permitted(f"entry {entry.index}: not a record agent {agent!r} may read")
        revocations: list[int] = []
        if token_id:
            revoked_at = self._book.revocation(token_id)
            if revoked_at is not None and revoked_at < entry.index:
                revocations.append(revoked_at)
        roles = [(entry.index, "subject")]
        roles += [
            (version.index, version.action.value)
            for version in reversed(chain)
            if version.index != entry.index
        ]
        roles += [(index, "revocation") for index in revocations]
        note, tree_size = self._checkpoint_covering(max(index for index, _ in roles))
        return query_pb2.GetProvenanceResponse(
            checkpoint=note,
            tree_size=tree_size,
            entries=[
                query_pb2.ProvenanceEntry(
                    index=index,
                    entry=raw if index == entry.index else self._log.entries(index, index + 1)[0],
                    inclusion_proof=self._log.inclusion_proof(index, tree_size),
                    role=role,
                )
                for index, role in roles
            ],
            principal=principal,
            token_id=token_id,
        )

    def _chain(self, entry: LogEntry) -> tuple[str, str, list[TokenVersion]]:
        """The principal, token id and delegation entries (oldest first) behind ``entry``."""
        if entry.kind is EntryKind.CALL:
            delegation_id = entry.body.get("delegation_id")
            principal = self._book.attribution(entry.agent, delegation_id, entry.index)
            if not principal:  # an unattributed call shows no one else's delegations
                return "", "", []
            versions = self._book.versions(delegation_id or "", upto=entry.index)
            return principal, versions[-1].token_id, versions
        if entry.kind is EntryKind.DELEGATION:
            version = self._book.version(entry.index)
            if version is None:
                return "", "", []
            versions = self._book.versions(version.token_id, upto=entry.index)
            return version.principal, version.token_id, versions
        if entry.kind is EntryKind.REVOCATION:
            token_id = self._book.revoked_token(entry.index)
            versions = [] if token_id is None else self._book.versions(token_id, upto=entry.index)
            if not versions:
                return "", token_id or "", []
            return versions[0].principal, versions[-1].token_id, versions
        return "", "", []

    def _checkpoint_covering(self, index: int) -> tuple[str, int]:
        note = self._log.latest_checkpoint()
        size = SignedCheckpoint.from_text(note).checkpoint.size
        if size <= index:
            note = self._log.checkpoint_now()
            size = SignedCheckpoint.from_text(note).checkpoint.size
        return note, size

    # -- totals ----------------------------------------------------------------------------------

    def get_totals(self, request: query_pb2.GetTotalsRequest) -> Message:
        """Token and cost sums of the calls in a time range, by one dimension.

        :raises TallystickError: no ``group_by`` (``query.invalid_argument``), the shared
            socket without ``shared_totals`` or a principal filter the caller may not read
            (``auth.not_permitted``).
        """
        dimension = _GROUPS.get(request.group_by)
        if dimension is None:
            raise MalformedInput(
                "group_by: principal, agent, session or model", code="query.invalid_argument"
            )
        agent = self._caller.agent
        if agent is None:
            if not self._access.shared_totals:
                raise _not_permitted("totals: the shared socket may not read them (shared_totals)")
            readable = None
        else:
            readable = self._readable_principals(agent)
        wanted = request.principal if request.HasField("principal") else None
        if wanted is not None and readable is not None and wanted not in readable:
            raise _not_permitted(f"principal {wanted[:80]!r}: not one agent {agent!r} acts for")
        filters = {
            name: getattr(request, name)
            for name in ("agent", "session_id", "model")
            if request.HasField(name)
        }
        size = self._log.size
        start = self._first_at(request.from_ms, size) if request.HasField("from_ms") else 0
        end = self._first_at(request.to_ms, size) if request.HasField("to_ms") else size
        groups: dict[str, _Totals] = {}
        named: dict[tuple[str, str | None], tuple[str, int] | None] = {}
        for index, entry in self._calls(start, end):
            caller, body = entry["agent"], entry["body"]
            if filters.get("agent", caller) != caller:
                continue
            if any(
                filters.get(name, body.get(name)) != body.get(name)
                for name in ("session_id", "model")
            ):
                continue
            key = (caller, body.get("delegation_id"))
            if key not in named:
                named[key] = self._book.named_since(*key)
            since = named[key]
            principal = since[0] if since is not None and since[1] <= index else ""
            if wanted is not None and principal != wanted:
                continue
            if readable is not None and caller != agent and principal not in readable:
                continue
            values = {"principal": principal, "agent": caller}
            group = values.get(dimension, body.get(dimension)) or ""
            groups.setdefault(group, _Totals()).add(body)
        return query_pb2.GetTotalsResponse(
            groups=[totals.reply(key) for key, totals in sorted(groups.items())],
            log_size=size,
        )

    def _time_at(self, index: int) -> int:
        (raw,) = self._log.entries(index, index + 1)
        return entry_kind(raw)[2]

    def _first_at(self, time_ms: int, size: int) -> int:
        """The first index whose entry time is at least ``time_ms`` (``size`` if none)."""
        low, high = 0, size
        while low < high:
            middle = (low + high) // 2
            if self._time_at(middle) < time_ms:
                low = middle + 1
            else:
                high = middle
        return low

    def _calls(self, start: int, end: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """The parsed ``call`` entries in ``[start, end)``; other kinds skipped by their tail."""
        for chunk in range(start, end, _SCAN_CHUNK):
            for offset, raw in enumerate(self._log.entries(chunk, min(end, chunk + _SCAN_CHUNK))):
                if entry_kind(raw)[1] == EntryKind.CALL:
                    # Stored entries were validated on append and checked on start.
                    yield chunk + offset, json.loads(raw)
