"""Reconcile a provider's invoice with the signed call records of a log bundle, offline.

::

    log = AuditedLog.open(bundle, log_key=key)          # fails closed on a damaged bundle
    result = reconcile(log, Invoice.from_path("usage.csv"), tolerance=Tolerance())
    for finding in result.findings:
        print(finding.kind, finding.entries)            # each entry with its inclusion proof

What is compared (usage_accounting.md §7.6):

- **Per-request CSV**: each billed row with the ``call`` entry whose ``request_id`` is the
  row's. Input, cached input, output and reasoning counts, then the cost (USD) when both sides
  state one. A row no call has is ``billed_not_recorded``; a recorded call on a day the
  invoice covers that no row names is ``recorded_not_billed``.
- **OpenAI usage/costs export**: per model and UTC day, the billed totals against the sums
  of the recorded calls of that model and day: the request count (more billed than recorded
  is ``billed_not_recorded``, fewer is ``recorded_not_billed``), the token sums, and the
  cost sums (a cost with no model is compared with the whole day).

- **Recount** (whatever the invoice's shape): a call whose recorder recounted the visible
  output text (``recount``) and whose provider reported output and reasoning: the visible
  part the provider counted, ``output - reasoning``, against the recount
  (``recount_differs``); the billed field is the provider's number, the recorded the recount.

- **Reasoning commitments** (CoIn audits, whatever the invoice's shape): a call whose provider
  committed to its hidden reasoning (an ``audit`` entry ``{"coin": "head"}`` that the sidecar
  logged with the call's ``request_id`` as ``call_request_id``): the reasoning count the call
  recorded against the count the signed head commits to (``reasoning_not_committed``: a
  provider that bills more reasoning than it committed to, or a head whose signature fails).
  The audits of that head are re-checked offline
  (:func:`~tallystick.verifier.coin.verify_log_audits`), never taken on the logged verdict's
  word: one that flagged the reasoning or whose protocol step failed is
  ``reasoning_audit_failed``; one whose entries or evidence do not verify, or whose logged
  verdict is not the one its evidence gives, is ``reasoning_audit_invalid`` (the log's
  record of that audit cannot be trusted, whichever way it says it went).

A count or cost that either side does not know (``None``) is not compared; a recorded call
without a price is listed in :attr:`Reconciliation.unpriced` instead, never taken as zero.
Which calls are in scope: ``call`` entries that are not tool executions
(``operation == "execute_tool"``), of ``provider`` when one is given, on the UTC days the
invoice covers. Two values agree when they differ by at most the :class:`Tolerance`.

Every :class:`Finding` lists the entries it rests on, each with its RFC 9162 inclusion proof
against the bundle's last signed checkpoint, so it can be shown to the provider.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC as _UTC
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, NamedTuple

from .checkpoint import NoteVerifier
from .coin import AuditStatus, LoggedAudit, verify_head, verify_log_audits
from .errors import TallystickError
from .invoice import BilledCost, BilledDay, Invoice, InvoiceFormat
from .logentry import EntryKind, LogEntry
from .provenance import AuditedLog, EntryProof

__all__ = [
    "Finding",
    "FindingKind",
    "Reconciliation",
    "Tolerance",
    "reconcile",
]

#: ``(invoice field, recorded usage field)`` pairs compared per request.
_REQUEST_COUNTS: Final = (
    ("input_tokens", "input_tokens"),
    ("cached_input_tokens", "cache_read_input_tokens"),
    ("output_tokens", "output_tokens"),
    ("reasoning_tokens", "reasoning_output_tokens"),
)
#: The same pairs for the OpenAI daily usage results (no reasoning count there).
_DAY_COUNTS: Final = _REQUEST_COUNTS[:3]
_TOOL_OPERATION: Final = "execute_tool"

ProgressCallback = Callable[[int, int], None]


class FindingKind(StrEnum):
    """What disagrees; the values are stable and scripts may rely on them."""

    BILLED_NOT_RECORDED = "billed_not_recorded"
    RECORDED_NOT_BILLED = "recorded_not_billed"
    TOKEN_COUNT_DIFFERS = "token_count_differs"
    PRICE_DIFFERS = "price_differs"
    #: The provider's visible output (output - reasoning) and the recorder's own recount of
    #: the visible text disagree: hidden tokens were billed as visible, or the reverse.
    RECOUNT_DIFFERS = "recount_differs"
    #: The reasoning count a call recorded is not the count its provider's signed CoIn head
    #: commits to (or the head does not verify under the key logged with it).
    REASONING_NOT_COMMITTED = "reasoning_not_committed"
    #: The sidecar's CoIn audit of the call's hidden reasoning, re-checked offline, flagged it
    #: or has no evidence (a protocol step failed).
    REASONING_AUDIT_FAILED = "reasoning_audit_failed"
    #: The logged CoIn audit of the call's hidden reasoning does not verify: its evidence or
    #: entries are broken, or the logged verdict is not the evidence's; it proves nothing.
    REASONING_AUDIT_INVALID = "reasoning_audit_invalid"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How far apart two values may be and still agree.

    ``relative`` is a fraction of the larger value (``0.01`` is 1 %), applied to token
    counts and costs; ``cost`` an absolute amount in the invoice currency (for rounding).
    The default, zero, demands exact agreement.
    """

    relative: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        for name in ("relative", "cost"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise ValueError(f"tolerance {name}: must be a finite Decimal of zero or more")

    def tokens_agree(self, billed: int, recorded: int) -> bool:
        """True when two counts agree within ``relative``."""
        return abs(billed - recorded) <= self.relative * max(billed, recorded)

    def costs_agree(self, billed: Decimal, recorded: Decimal) -> bool:
        """True when two amounts agree within ``relative`` or ``cost``."""
        allowed = max(self.relative * max(billed, recorded), self.cost)
        return abs(billed - recorded) <= allowed

    def to_dict(self) -> dict[str, str]:
        """The tolerance as decimal strings."""
        return {"relative": str(self.relative), "cost": str(self.cost)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement between the bill and the records.

    ``field`` names what differs (a count such as ``output_tokens``, ``requests``, or
    ``cost``); ``billed`` and ``recorded`` are the two values as decimal strings (None where a
    side has nothing). ``entries`` are the indexes of the calls the finding rests on (then, for
    the CoIn kinds, the audit entries: the head, and the verdict) and ``proofs`` their
    inclusion proofs, in the same order.
    """

    kind: FindingKind
    model: str | None
    day: date | None
    request_id: str | None
    field: str | None
    billed: str | None
    recorded: str | None
    entries: tuple[int, ...]
    proofs: tuple[EntryProof, ...]
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """The finding as a stable JSON object."""
        return {
            "kind": self.kind.value,
            "model": self.model,
            "day": None if self.day is None else self.day.isoformat(),
            "request_id": self.request_id,
            "field": self.field,
            "billed": self.billed,
            "recorded": self.recorded,
            "entries": list(self.entries),
            "proofs": [proof.to_dict() for proof in self.proofs],
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The outcome: ``matches`` holds when there is no finding.

    ``recorded_calls`` counts the calls in scope, ``billed_items`` the invoice rows (CSV) or
    usage results (OpenAI); ``unpriced`` are in-scope calls recorded without a cost.
    """

    invoice_format: InvoiceFormat
    tolerance: Tolerance
    log_size: int
    checkpoint: str
    days: tuple[date, ...]
    billed_items: int
    recorded_calls: int
    findings: tuple[Finding, ...]
    unpriced: tuple[int, ...]

    @property
    def matches(self) -> bool:
        """True when the bill and the records agree."""
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON object ``tallystick billing reconcile --json`` prints."""
        return {
            "matches": self.matches,
            "invoice_format": self.invoice_format.value,
            "tolerance": self.tolerance.to_dict(),
            "log_size": self.log_size,
            "checkpoint": self.checkpoint,
            "days": [day.isoformat() for day in self.days],
            "billed_items": self.billed_items,
            "recorded_calls": self.recorded_calls,
            "findings": [finding.to_dict() for finding in self.findings],
            "unpriced_entries": list(self.unpriced),
        }


def _day_of(entry: LogEntry) -> date:
    return datetime.fromtimestamp(entry.time_ms / 1000, tz=_UTC).date()


@dataclass(frozen=True, slots=True)
class _Call:
    entry: LogEntry
    body: dict[str, Any]
    day: date

    def count(self, name: str) -> int | None:
        value = self.body["usage"].get(name)
        return value if isinstance(value, int) else None

    def cost(self, currency: str) -> Decimal | None:
        cost = self.body.get("cost")
        if cost is None or cost["currency"] != currency:
            return None
        return Decimal(cost["amount"])


def reconcile(
    log: AuditedLog,
    invoice: Invoice,
    *,
    tolerance: Tolerance | None = None,
    provider: str | None = None,
    progress: ProgressCallback | None = None,
) -> Reconciliation:
    """Compare ``invoice`` with the calls of a verified log (see the module docstring).

    ``log`` is already verified (:meth:`AuditedLog.open` refuses a damaged bundle), so every
    finding's proof is against a checkpoint signed by the log key.
    """
    tolerance = tolerance or Tolerance()
    calls = [
        _Call(entry, body, _day_of(entry))
        for entry, body in log.calls()
        if body.get("operation") != _TOOL_OPERATION
        and (provider is None or body["provider"] == provider)
    ]
    calls = [call for call in calls if call.day in invoice.days]
    builder = _Findings(log, tolerance)
    if invoice.format is InvoiceFormat.CSV:
        _reconcile_requests(invoice, calls, builder, progress)
        billed = len(invoice.requests)
    else:
        _reconcile_days(invoice, calls, builder)
        billed = len(invoice.usage)
    _compare_recounts(calls, builder)
    _compare_commitments(log, calls, builder)
    unpriced = tuple(call.entry.index for call in calls if call.body.get("cost") is None)
    return Reconciliation(
        invoice_format=invoice.format,
        tolerance=tolerance,
        log_size=log.size,
        checkpoint=log.checkpoint,
        days=tuple(sorted(invoice.days)),
        billed_items=billed,
        recorded_calls=len(calls),
        findings=tuple(builder.findings),
        unpriced=unpriced,
    )


class _Where(NamedTuple):
    model: str | None
    day: date | None
    request_id: str | None = None


class _Findings:
    """Collects findings, attaching each entry's proof."""

    def __init__(self, log: AuditedLog, tolerance: Tolerance) -> None:
        self._log = log
        self.tolerance = tolerance
        self.findings: list[Finding] = []

    def add(
        self,
        kind: FindingKind,
        calls: Iterable[_Call],
        detail: str,
        where: _Where,
        *,
        field: str | None = None,
        billed: object = None,
        recorded: object = None,
        also: Iterable[int] = (),
    ) -> None:
        """Add a finding resting on ``calls`` and the entries ``also`` (audit entries)."""
        indexes = (*(call.entry.index for call in calls), *also)
        self.findings.append(
            Finding(
                kind=kind,
                model=where.model,
                day=where.day,
                request_id=where.request_id,
                field=field,
                billed=None if billed is None else str(billed),
                recorded=None if recorded is None else str(recorded),
                entries=indexes,
                proofs=tuple(self._log.proof(index) for index in indexes),
                detail=detail,
            )
        )


def _reconcile_requests(
    invoice: Invoice, calls: list[_Call], out: _Findings, progress: ProgressCallback | None
) -> None:
    by_id: dict[str, list[_Call]] = {}
    for call in calls:
        request_id = call.body.get("request_id")
        if request_id:
            by_id.setdefault(request_id, []).append(call)
    matched: set[int] = set()
    total = len(invoice.requests)
    for number, row in enumerate(invoice.requests, 1):
        if progress is not None and (number % 1024 == 0 or number == total):
            progress(number, total)
        found = by_id.get(row.request_id, [])
        where = _Where(row.model, row.day, row.request_id)
        if not found:
            out.add(
                FindingKind.BILLED_NOT_RECORDED,
                (),
                f"request {row.request_id} (line {row.line}) is billed but no call records it",
                where,
            )
            continue
        call, *again = found
        matched.add(call.entry.index)
        for name, recorded_name in _REQUEST_COUNTS:
            billed, recorded = getattr(row, name), call.count(recorded_name)
            if billed is None or recorded is None or out.tolerance.tokens_agree(billed, recorded):
                continue
            out.add(
                FindingKind.TOKEN_COUNT_DIFFERS,
                (call,),
                f"request {row.request_id}: {name} billed {billed}, recorded {recorded}",
                where,
                field=name,
                billed=billed,
                recorded=recorded,
            )
        recorded_cost = call.cost("USD")
        if (
            row.cost_usd is not None
            and recorded_cost is not None
            and not out.tolerance.costs_agree(row.cost_usd, recorded_cost)
        ):
            out.add(
                FindingKind.PRICE_DIFFERS,
                (call,),
                f"request {row.request_id}: billed {row.cost_usd} USD, "
                f"recorded {recorded_cost} USD",
                where,
                field="cost",
                billed=row.cost_usd,
                recorded=recorded_cost,
            )
        for extra in again:
            matched.add(extra.entry.index)
            out.add(
                FindingKind.RECORDED_NOT_BILLED,
                (extra,),
                f"request {row.request_id} is recorded again at entry {extra.entry.index} "
                "but billed once",
                where,
            )
    for call in calls:
        if call.entry.index not in matched:
            out.add(
                FindingKind.RECORDED_NOT_BILLED,
                (call,),
                f"entry {call.entry.index} (request {call.body.get('request_id')}) "
                "is recorded but not billed",
                _Where(call.body["model"], call.day, call.body.get("request_id")),
            )


def _compare_recounts(calls: list[_Call], out: _Findings) -> None:
    for call in calls:
        recount = call.body.get("recount")
        output, reasoning = call.count("output_tokens"), call.count("reasoning_output_tokens")
        if recount is None or output is None or reasoning is None:
            continue
        visible, counted = output - reasoning, recount["visible_output_tokens"]
        if out.tolerance.tokens_agree(visible, counted):
            continue
        request_id = call.body.get("request_id")
        out.add(
            FindingKind.RECOUNT_DIFFERS,
            (call,),
            f"entry {call.entry.index} (request {request_id}): the provider's visible output "
            f"is {visible} tokens ({output} output - {reasoning} reasoning), "
            f"{recount['tokenizer']} counts {counted} in the text",
            _Where(call.body["model"], call.day, request_id),
            field="visible_output_tokens",
            billed=visible,
            recorded=counted,
        )


def _committed_count(body: dict[str, Any]) -> int | None:
    """The reasoning count a logged head commits to; None when it does not verify."""
    try:
        return verify_head(
            body["head_note"], NoteVerifier.from_vkey(body["provider_vkey"])
        ).reasoning_tokens
    except (TallystickError, KeyError, TypeError):
        return None


def _compare_commitments(log: AuditedLog, calls: list[_Call], out: _Findings) -> None:
    by_request = {call.body["request_id"]: call for call in calls if call.body.get("request_id")}
    heads: dict[int, _Call] = {}  # head entry -> the call it is for
    for entry in log.entries:
        body = entry.body
        if entry.kind is not EntryKind.AUDIT or body.get("coin") != "head":
            continue
        call = by_request.get(body.get("call_request_id"))
        if call is None:
            continue
        heads[entry.index] = call
        request_id = call.body["request_id"]
        where = _Where(call.body["model"], call.day, request_id)
        committed = _committed_count(body)
        billed = call.count("reasoning_output_tokens")
        if committed is None:
            out.add(
                FindingKind.REASONING_NOT_COMMITTED,
                (call,),
                f"entry {entry.index}: the head for request {request_id} does not verify "
                "under the provider key logged with it",
                where,
                also=(entry.index,),
            )
        elif billed is not None and not out.tolerance.tokens_agree(billed, committed):
            out.add(
                FindingKind.REASONING_NOT_COMMITTED,
                (call,),
                f"entry {call.entry.index} (request {request_id}) records {billed} reasoning "
                f"tokens; the provider's head (entry {entry.index}) commits to {committed}",
                where,
                field="reasoning_tokens",
                billed=billed,
                recorded=committed,
                also=(entry.index,),
            )
    if heads:  # a log without audits of these calls need not be re-checked
        _compare_audits(log, heads, out)


def _compare_audits(log: AuditedLog, heads: dict[int, _Call], out: _Findings) -> None:
    """Findings for the audits of ``heads`` that did not pass, as re-checked offline.

    The logged verdict is not trusted: :func:`verify_log_audits` is the one place that decides
    what an audit says, so a verdict logged consistent over evidence that does not verify is a
    finding too.
    """
    for audit in verify_log_audits(log):
        head = audit.head_entry  # also named for an invalid audit whose chain is broken
        if audit.passed or head is None or head not in heads:
            continue
        call = heads[head]
        request_id = call.body["request_id"]
        if audit.status is AuditStatus.INVALID:
            kind = FindingKind.REASONING_AUDIT_INVALID
            what = (
                f"the logged audit of request {request_id}'s hidden reasoning cannot be "
                "trusted, whatever its verdict says"
            )
        else:
            kind = FindingKind.REASONING_AUDIT_FAILED
            what = f"the audit of request {request_id}'s hidden reasoning failed"
        out.add(
            kind,
            (call,),
            f"entry {audit.verdict_entry}: {what}: {_reason(audit)}",
            _Where(call.body["model"], call.day, request_id),
            also=(head, audit.verdict_entry),
        )


def _reason(audit: LoggedAudit) -> str:
    """Why an audit did not pass: its code, then the detail (the flagged checks, or the check
    that rejected it)."""
    return ": ".join(part for part in (audit.code, audit.detail) if part) or audit.status.value


def _reconcile_days(invoice: Invoice, calls: list[_Call], out: _Findings) -> None:
    groups: dict[tuple[date, str], list[_Call]] = {}
    for call in calls:
        groups.setdefault((call.day, call.body["model"]), []).append(call)
    billed_days: dict[tuple[date, str], list[BilledDay]] = {}
    for result in invoice.usage:
        billed_days.setdefault((result.day, result.model), []).append(result)
    for key in sorted(set(groups) | set(billed_days)):
        _compare_day(key, billed_days.get(key, []), groups.get(key, []), out)
    _compare_costs(invoice.costs, calls, out)


def _compare_day(
    key: tuple[date, str], billed: list[BilledDay], recorded: list[_Call], out: _Findings
) -> None:
    day, model = key
    where = _Where(model, day)
    billed_requests = sum(result.requests for result in billed)
    if billed_requests != len(recorded):
        kind = (
            FindingKind.BILLED_NOT_RECORDED
            if billed_requests > len(recorded)
            else FindingKind.RECORDED_NOT_BILLED
        )
        out.add(
            kind,
            recorded,
            f"{model} on {day}: {billed_requests} request(s) billed, {len(recorded)} recorded",
            where,
            field="requests",
            billed=billed_requests,
            recorded=len(recorded),
        )
    if not billed or not recorded:
        return
    for name, recorded_name in _DAY_COUNTS:
        counts = [call.count(recorded_name) for call in recorded]
        if any(count is None for count in counts):
            continue  # an unknown count makes the sum unknown
        billed_sum = sum(getattr(result, name) for result in billed)
        recorded_sum = sum(count or 0 for count in counts)
        if not out.tolerance.tokens_agree(billed_sum, recorded_sum):
            out.add(
                FindingKind.TOKEN_COUNT_DIFFERS,
                recorded,
                f"{model} on {day}: {name} billed {billed_sum}, recorded {recorded_sum}",
                where,
                field=name,
                billed=billed_sum,
                recorded=recorded_sum,
            )


def _compare_costs(costs: tuple[BilledCost, ...], calls: list[_Call], out: _Findings) -> None:
    billed: dict[tuple[date, str | None, str], Decimal] = {}
    for cost in costs:
        key = (cost.day, cost.model, cost.currency)
        billed[key] = billed.get(key, Decimal(0)) + cost.amount
    for (day, model, currency), amount in sorted(billed.items(), key=lambda item: str(item[0])):
        group = [
            call
            for call in calls
            if call.day == day and (model is None or call.body["model"] == model)
        ]
        amounts = [call.cost(currency) for call in group]
        if not group or any(value is None for value in amounts):
            continue  # nothing recorded (a request finding says so) or a price unknown
        recorded = sum((value or Decimal(0) for value in amounts), Decimal(0))
        if not out.tolerance.costs_agree(amount, recorded):
            what = model or "all models"
            out.add(
                FindingKind.PRICE_DIFFERS,
                group,
                f"{what} on {day}: billed {amount} {currency}, recorded {recorded} {currency}",
                _Where(model, day),
                field="cost",
                billed=amount,
                recorded=recorded,
            )
