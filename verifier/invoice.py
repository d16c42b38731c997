"""A provider's usage export, parsed strictly into typed rows for billing reconciliation.

Two shapes are read (``format="auto"`` tells them apart by the first character: ``{`` or
``[`` is OpenAI JSON, anything else CSV):

**OpenAI organization usage/costs export** (``openai``): one page object, or a JSON array of
pages (so a usage page and a costs page can travel in one file)::

    {"object": "page", "has_more": false, "next_page": null,
     "data": [{"object": "bucket", "start_time": 1767225600, "end_time": 1767312000,
               "results": [...]}]}

``start_time`` and ``end_time`` are Unix seconds; a bucket must lie within one UTC day (the
export's ``bucket_width=1d``), and every result counts for that day. A result is one of

- ``{"object": "organization.usage.completions.result", "model": M, "input_tokens": n,
  "input_cached_tokens": n, "output_tokens": n, "num_model_requests": n, ...}``: the day's
  totals for model ``M`` (``model`` is required: export grouped by model). Counts follow the
  Chat Completions semantics: cached input is a subset of input, and output includes
  reasoning. Other members (``project_id``, ``input_audio_tokens``, ...) are ignored.
- ``{"object": "organization.costs.result", "amount": {"value": x, "currency": "usd"},
  "line_item": L, ...}``: a cost for the day. ``value`` is a JSON number or a decimal string;
  ``line_item`` is ``"<model>"`` or ``"<model>, <component>"`` (``"gpt-4o, input"``) and names
  the model the cost is for, or null for a cost of the whole day.

**Per-request CSV** (``csv``): UTF-8, a header row exactly
``request_id,timestamp,model,input_tokens,cached_input_tokens,output_tokens,reasoning_tokens,cost_usd``
and one row per billed request. ``request_id`` is the provider's response id (what
``CallBody.request_id`` records), unique in the file; ``timestamp`` ISO 8601 in UTC
(``2026-01-01T12:00:00Z`` or ``+00:00``); counts are non-negative decimal integers with the
same subset semantics; ``cost_usd`` a decimal string (``0.0042``). An empty count or cost
cell means the provider did not say (unknown, never zero).

Every failure is a :class:`~tallystick.verifier.errors.MalformedInput` with a code
``invoice.*``: ``too_large``, ``unreadable``, ``bad_unicode``, ``bad_json``, ``bad_shape``,
``bad_bucket``, ``bad_csv``, ``bad_header``, ``bad_value``, ``duplicate_request``,
``unknown_format``. Nothing is partially accepted.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC as _UTC
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from os import PathLike
from pathlib import Path
from typing import Any, Final

from . import canonical
from .canonical import parse_json
from .errors import MalformedInput

__all__ = [
    "CSV_COLUMNS",
    "MAX_INVOICE_BYTES",
    "BilledCost",
    "BilledDay",
    "BilledRequest",
    "Invoice",
    "InvoiceFormat",
    "parse_invoice",
]

#: Cap on an invoice file: a month of per-request rows for a busy organisation.
MAX_INVOICE_BYTES: Final = 64 << 20
#: The per-request CSV header, in order.
CSV_COLUMNS: Final = (
    "request_id",
    "timestamp",
    "model",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
)

_USAGE_RESULT = "organization.usage.completions.result"
_COST_RESULT = "organization.costs.result"
_DAY_SECONDS = 86_400
_MAX_TEXT = 256
_MAX_COST_DIGITS = 28


class InvoiceFormat(StrEnum):
    """The export shapes :func:`parse_invoice` reads."""

    OPENAI = "openai"
    CSV = "csv"


@dataclass(frozen=True, slots=True)
class BilledRequest:
    """One CSV row: a request as the provider billed it. ``None`` counts are unknown."""

    line: int
    request_id: str
    time: datetime
    model: str
    input_tokens: int | None
    cached_input_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: Decimal | None

    @property
    def day(self) -> date:
        """The UTC day the request was billed on."""
        return self.time.date()


@dataclass(frozen=True, slots=True)
class BilledDay:
    """One OpenAI usage result: a model's totals for one UTC day."""

    day: date
    model: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    requests: int


@dataclass(frozen=True, slots=True)
class BilledCost:
    """One OpenAI costs result: an amount billed on a UTC day, for a model or (None) the day."""

    day: date
    model: str | None
    line_item: str | None
    amount: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class Invoice:
    """A parsed export. Build with :func:`parse_invoice` or :meth:`from_path`.

    ``days`` are every UTC day the export covers (for OpenAI, the buckets' days, empty ones
    included; for CSV, from the first to the last billed day).
    """

    format: InvoiceFormat
    requests: tuple[BilledRequest, ...] = ()
    usage: tuple[BilledDay, ...] = ()
    costs: tuple[BilledCost, ...] = ()
    days: frozenset[date] = frozenset()

    @classmethod
    def from_path(
        cls, path: str | PathLike[str], *, format: str = "auto", max_bytes: int = MAX_INVOICE_BYTES
    ) -> Invoice:
        """Read and parse an export file.

        :raises MalformedInput: ``invoice.unreadable``, or as :func:`parse_invoice`.
        """
        try:
            with Path(path).open("rb") as handle:
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise _bad(f"cannot read {path}: {exc.strerror}", "unreadable") from exc
        return parse_invoice(data, format=format, max_bytes=max_bytes)


def _bad(message: str, code: str) -> MalformedInput:
    return MalformedInput(f"invoice: {message}", code=f"invoice.{code}")


def parse_invoice(
    data: str | bytes, *, format: str = "auto", max_bytes: int = MAX_INVOICE_BYTES
) -> Invoice:
    """Parse an export in ``format`` (``auto``, ``openai`` or ``csv``).

    :raises MalformedInput: any deviation from the shapes in the module docstring (codes
        ``invoice.*``).
    """
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _bad("not valid Unicode", "bad_unicode") from exc
    if not isinstance(data, bytes):
        raise _bad("must be text or bytes", "bad_shape")
    if len(data) > max_bytes:
        raise _bad(f"larger than {max_bytes} bytes", "too_large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad("not UTF-8 text", "bad_unicode") from exc
    text = text.removeprefix("\ufeff")
    if format == "auto":
        format = "openai" if text.lstrip()[:1] in ("{", "[") else "csv"
    if format == InvoiceFormat.OPENAI:
        return _parse_openai(text, max_bytes)
    if format == InvoiceFormat.CSV:
        return _parse_csv(text)
    raise _bad(f"unknown format {format!r}: auto, openai or csv", "unknown_format")


# -- OpenAI JSON --------------------------------------------------------------------------------


def _parse_openai(text: str, max_bytes: int) -> Invoice:
    try:
        document = parse_json(text, max_bytes=max_bytes)
    except MalformedInput as exc:
        raise _bad(f"not JSON: {exc}", "bad_json") from exc
    pages = document if isinstance(document, list) else [document]
    usage: list[BilledDay] = []
    costs: list[BilledCost] = []
    days: set[date] = set()
    for number, page in enumerate(pages):
        where = f"page {number}"
        if not isinstance(page, dict) or page.get("object") != "page":
            raise _bad(f'{where}: expected an object with "object": "page"', "bad_shape")
        buckets = page.get("data")
        if not isinstance(buckets, list):
            raise _bad(f"{where}: data must be a list of buckets", "bad_shape")
        for position, bucket in enumerate(buckets):
            day, results = _bucket(bucket, f"{where} bucket {position}")
            days.add(day)
            for item, result in enumerate(results):
                what = f"{where} bucket {position} result {item}"
                kind = result.get("object") if isinstance(result, dict) else None
                if kind == _USAGE_RESULT:
                    usage.append(_usage_result(result, day, what))
                elif kind == _COST_RESULT:
                    costs.append(_cost_result(result, day, what))
                else:
                    raise _bad(f"{what}: unknown result object {kind!r}", "bad_shape")
    return Invoice(
        InvoiceFormat.OPENAI, usage=tuple(usage), costs=tuple(costs), days=frozenset(days)
    )


def _bucket(bucket: Any, where: str) -> tuple[date, list[Any]]:
    if not isinstance(bucket, dict) or bucket.get("object") != "bucket":
        raise _bad(f'{where}: expected an object with "object": "bucket"', "bad_shape")
    start = _count(bucket.get("start_time"), f"{where} start_time")
    end = _count(bucket.get("end_time"), f"{where} end_time")
    if end <= start or start // _DAY_SECONDS != (end - 1) // _DAY_SECONDS:
        raise _bad(f"{where}: must cover part of one UTC day (bucket_width=1d)", "bad_bucket")
    results = bucket.get("results")
    if not isinstance(results, list):
        raise _bad(f"{where}: results must be a list", "bad_shape")
    return date(1970, 1, 1) + timedelta(days=start // _DAY_SECONDS), results


def _count(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= canonical.MAX_SAFE_INTEGER:
        raise _bad(f"{what}: must be a non-negative integer", "bad_value")
    return value


def _optional_count(value: Any, what: str) -> int:
    return 0 if value is None else _count(value, what)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT:
        raise _bad(f"{what}: must be a string of 1-{_MAX_TEXT} characters", "bad_value")
    return value


def _usage_result(result: dict[str, Any], day: date, what: str) -> BilledDay:
    input_tokens = _count(result.get("input_tokens"), f"{what} input_tokens")
    cached = _optional_count(result.get("input_cached_tokens"), f"{what} input_cached_tokens")
    if cached > input_tokens:
        raise _bad(f"{what}: input_cached_tokens exceed input_tokens", "bad_value")
    return BilledDay(
        day=day,
        model=_text(result.get("model"), f"{what} model (export grouped by model)"),
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        output_tokens=_count(result.get("output_tokens"), f"{what} output_tokens"),
        requests=_count(result.get("num_model_requests"), f"{what} num_model_requests"),
    )


def _cost_result(result: dict[str, Any], day: date, what: str) -> BilledCost:
    amount = result.get("amount")
    if not isinstance(amount, dict):
        raise _bad(f"{what}: amount must be an object", "bad_shape")
    value = amount.get("value")
    # A JSON number arrives as a float; its shortest repr is the text the export wrote.
    text = repr(value) if type(value) in (int, float) else value
    currency = amount.get("currency")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise _bad(f"{what}: amount.currency must be a 3-letter code", "bad_value")
    line_item = result.get("line_item")
    if line_item is not None:
        line_item = _text(line_item, f"{what} line_item")
    model = None if line_item is None else line_item.split(",", 1)[0].strip() or None
    return BilledCost(
        day=day,
        model=model,
        line_item=line_item,
        amount=_decimal(text, f"{what} amount.value"),
        currency=currency.upper(),
    )


def _decimal(text: Any, what: str) -> Decimal:
    if not isinstance(text, str) or not text or len(text) > _MAX_COST_DIGITS + 2:
        raise _bad(f"{what}: must be a decimal amount", "bad_value")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise _bad(f"{what}: {text!r} is not a decimal amount", "bad_value") from exc
    if not value.is_finite() or value < 0:
        raise _bad(f"{what}: must be a finite amount of zero or more", "bad_value")
    return value


# -- per-request CSV ----------------------------------------------------------------------------


def _parse_csv(text: str) -> Invoice:
    rows = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(rows, None)
        if header is None or tuple(cell.strip() for cell in header) != CSV_COLUMNS:
            raise _bad(f"the header must be exactly {','.join(CSV_COLUMNS)}", "bad_header")
        requests: list[BilledRequest] = []
        seen: dict[str, int] = {}
        for row in rows:
            line = rows.line_num
            if not row or row == [""]:
                continue  # a blank line (a trailing newline at the end)
            request = _csv_row(row, line)
            if request.request_id in seen:
                raise _bad(
                    f"line {line}: request_id {request.request_id!r} repeats line "
                    f"{seen[request.request_id]}",
                    "duplicate_request",
                )
            seen[request.request_id] = line
            requests.append(request)
    except csv.Error as exc:
        raise _bad(f"not CSV: {exc}", "bad_csv") from exc
    days: set[date] = set()
    if requests:
        first = min(request.day for request in requests)
        last = max(request.day for request in requests)
        days = {first + timedelta(days=n) for n in range((last - first).days + 1)}
    return Invoice(InvoiceFormat.CSV, requests=tuple(requests), days=frozenset(days))


def _csv_row(row: list[str], line: int) -> BilledRequest:
    if len(row) != len(CSV_COLUMNS):
        raise _bad(f"line {line}: {len(row)} cells, expected {len(CSV_COLUMNS)}", "bad_csv")
    cells = dict(zip(CSV_COLUMNS, (cell.strip() for cell in row), strict=True))
    input_tokens = _csv_count(cells, "input_tokens", line)
    cached = _csv_count(cells, "cached_input_tokens", line)
    output_tokens = _csv_count(cells, "output_tokens", line)
    reasoning = _csv_count(cells, "reasoning_tokens", line)
    if input_tokens is not None and cached is not None and cached > input_tokens:
        raise _bad(f"line {line}: cached_input_tokens exceed input_tokens", "bad_value")
    if output_tokens is not None and reasoning is not None and reasoning > output_tokens:
        raise _bad(f"line {line}: reasoning_tokens exceed output_tokens", "bad_value")
    cost = cells["cost_usd"]
    return BilledRequest(
        line=line,
        request_id=_text(cells["request_id"], f"line {line} request_id"),
        time=_utc_time(cells["timestamp"], line),
        model=_text(cells["model"], f"line {line} model"),
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning,
        cost_usd=None if cost == "" else _decimal(cost, f"line {line} cost_usd"),
    )


def _csv_count(cells: dict[str, str], name: str, line: int) -> int | None:
    text = cells[name]
    if text == "":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 16:
        raise _bad(f"line {line} {name}: {text[:40]!r} is not a non-negative integer", "bad_value")
    return _count(int(text), f"line {line} {name}")


def _utc_time(text: str, line: int) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _bad(f"line {line} timestamp: {text[:40]!r} is not ISO 8601", "bad_value") from exc
    if value.utcoffset() != timedelta(0):
        raise _bad(f"line {line} timestamp: must be UTC (Z or +00:00)", "bad_value")
    return value.astimezone(_UTC)
