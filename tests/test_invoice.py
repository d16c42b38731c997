"""Invoice parsing: both export shapes, and every malformed input refused with its code."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.invoice import (
    CSV_COLUMNS,
    Invoice,
    InvoiceFormat,
    parse_invoice,
)

HEADER = ",".join(CSV_COLUMNS)
JAN1 = 1_767_225_600  # 2026-01-01T00:00:00Z


def usage_result(**overrides: Any) -> dict[str, Any]:
    result = {
        "object": "organization.usage.completions.result",
        "input_tokens": 1000,
        "input_cached_tokens": 200,
        "output_tokens": 300,
        "input_audio_tokens": 0,
        "num_model_requests": 4,
        "project_id": None,
        "model": "gpt-4o",
    }
    result.update(overrides)
    return result


def page(*results: dict[str, Any], start: int = JAN1, end: int = JAN1 + 86_400) -> dict[str, Any]:
    return {
        "object": "page",
        "has_more": False,
        "next_page": None,
        "data": [
            {"object": "bucket", "start_time": start, "end_time": end, "results": list(results)}
        ],
    }


def test_csv_rows_parse_with_unknown_cells_as_none() -> None:
    text = (
        f"{HEADER}\n"
        "req_1,2026-01-01T10:00:00Z,gpt-4o,100,20,50,10,0.0015\n"
        "req_2,2026-01-03T23:59:59.5+00:00,gpt-4o-mini,7,,3,,\n"
    )
    invoice = parse_invoice(text)
    assert invoice.format is InvoiceFormat.CSV
    first, second = invoice.requests
    assert (first.request_id, first.day, first.cost_usd) == (
        "req_1",
        date(2026, 1, 1),
        Decimal("0.0015"),
    )
    assert (second.cached_input_tokens, second.reasoning_tokens, second.cost_usd) == (
        None,
        None,
        None,
    )
    # The covered days run from the first billed day to the last.
    assert invoice.days == {date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)}


def test_openai_usage_and_costs_pages_parse_per_day_and_model() -> None:
    cost = {
        "object": "organization.costs.result",
        "amount": {"value": 0.06, "currency": "usd"},
        "line_item": "gpt-4o, input",
        "project_id": None,
    }
    day_cost = {
        "object": "organization.costs.result",
        "amount": {"value": "1.5", "currency": "usd"},
        "line_item": None,
    }
    invoice = parse_invoice(json.dumps([page(usage_result()), page(cost, day_cost)]))
    assert invoice.format is InvoiceFormat.OPENAI
    (usage,) = invoice.usage
    assert (usage.day, usage.model, usage.input_tokens, usage.requests) == (
        date(2026, 1, 1),
        "gpt-4o",
        1000,
        4,
    )
    assert [(c.model, c.amount, c.currency) for c in invoice.costs] == [
        ("gpt-4o", Decimal("0.06"), "USD"),
        (None, Decimal("1.5"), "USD"),
    ]
    assert invoice.days == {date(2026, 1, 1)}


def test_from_path_reads_a_file_and_refuses_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    path.write_text(json.dumps(page(usage_result())), encoding="utf-8")
    assert len(Invoice.from_path(path).usage) == 1
    with pytest.raises(MalformedInput) as caught:
        Invoice.from_path(tmp_path / "missing.csv")
    assert caught.value.code == "invoice.unreadable"


BAD_INPUTS = [
    pytest.param("request_id,model\nr,m\n", "csv", "invoice.bad_header", id="csv-wrong-header"),
    pytest.param(
        f"{HEADER}\nr,2026-01-01T00:00:00Z,m,1,0,1,0\n",
        "csv",
        "invoice.bad_csv",
        id="csv-short-row",
    ),
    pytest.param(
        f"{HEADER}\nr,2026-01-01T00:00:00,m,1,0,1,0,0.1\n",
        "csv",
        "invoice.bad_value",
        id="csv-naive-time",
    ),
    pytest.param(
        f"{HEADER}\nr,2026-01-01T00:00:00+02:00,m,1,0,1,0,0.1\n",
        "csv",
        "invoice.bad_value",
        id="csv-non-utc",
    ),
    pytest.param(
        f"{HEADER}\nr,yesterday,m,1,0,1,0,0.1\n", "csv", "invoice.bad_value", id="csv-bad-time"
    ),
    pytest.param(
        f"{HEADER}\nr,2026-01-01T00:00:00Z,m,-1,0,1,0,0.1\n",
        "csv",
        "invoice.bad_value",
        id="csv-negative",
    ),
    pytest.param(
        f"{HEADER}\nr,2026-01-01T00:00:00Z,m,1.5,0,1,0,0.1\n",
        "csv",
        "invoice.bad_value",
        id="csv-fraction",
    ),
    pytest.param(
        f"{HEADER}\nr,2026-01-01T00:00:00Z,m,1,2,1,0,0.1\n",
        "csv",
        "invoice.bad_value",
        id="csv-cached-over-input",
    ),
    pytest.param(
        f"{HEADER}\nr,2026-01-01T00:00:00Z,m,1,0,1,2,0.1\n",
        "csv",
        "invoice.bad_value",
        id="csv-reasoning-over-output",
    ),
    pytest.param(
        f"{HEADER}\nr,2026-01-01T00:00:00Z,m,1,0,1,0,NaN\n",
        "csv",
        "invoice.bad_value",
        id="csv-nan-cost",
    ),
    pytest.param(
        f"{HEADER}\nr,2026-01-01T00:00:00Z,m,1,0,1,0,-0.1\n",
        "csv",
        "invoice.bad_value",
        id="csv-negative-cost",
    ),
    pytest.param(
        f"{HEADER}\nr,2026-01-01T00:00:00Z,,1,0,1,0,0.1\n",
        "csv",
        "invoice.bad_value",
        id="csv-no-model",
    ),
    pytest.param(
        f"{HEADER}\nr,2026-01-01T00:00:00Z,m,1,0,1,0,0.1\nr,2026-01-01T00:00:01Z,m,1,0,1,0,0.1\n",
        "csv",
        "invoice.duplicate_request",
        id="csv-duplicate-request",
    ),
    pytest.param(f'{HEADER}\n"r,2026\n', "csv", "invoice.bad_csv", id="csv-open-quote"),
    pytest.param("{not json", "openai", "invoice.bad_json", id="json-broken"),
    pytest.param(
        '{"object":"page","object":"page"}',
        "openai",
        "invoice.bad_json",
        id="json-duplicate-member",
    ),
    pytest.param(
        '{"object":"list","data":[]}', "openai", "invoice.bad_shape", id="json-not-a-page"
    ),
    pytest.param(
        json.dumps(page(start=JAN1, end=JAN1 + 2 * 86_400)),
        "openai",
        "invoice.bad_bucket",
        id="json-two-days",
    ),
    pytest.param(
        json.dumps(page(usage_result(model=None))),
        "openai",
        "invoice.bad_value",
        id="json-no-model",
    ),
    pytest.param(
        json.dumps(page(usage_result(input_tokens=-5))),
        "openai",
        "invoice.bad_value",
        id="json-negative",
    ),
    pytest.param(
        json.dumps(page(usage_result(output_tokens=True))),
        "openai",
        "invoice.bad_value",
        id="json-bool-count",
    ),
    pytest.param(
        json.dumps(page(usage_result(input_cached_tokens=5000))),
        "openai",
        "invoice.bad_value",
        id="json-cached-over-input",
    ),
    pytest.param(
        json.dumps(page({"object": "organization.usage.embeddings.result"})),
        "openai",
        "invoice.bad_shape",
        id="json-unknown-result",
    ),
    pytest.param(
        json.dumps(
            page(
                {"object": "organization.costs.result", "amount": {"value": "x", "currency": "usd"}}
            )
        ),
        "openai",
        "invoice.bad_value",
        id="json-bad-amount",
    ),
    pytest.param("anything", "pdf", "invoice.unknown_format", id="unknown-format"),
]


@pytest.mark.parametrize(("text", "fmt", "code"), BAD_INPUTS)
def test_malformed_invoices_are_refused_with_a_stable_code(text: str, fmt: str, code: str) -> None:
    with pytest.raises(MalformedInput) as caught:
        parse_invoice(text, format=fmt)
    assert caught.value.code == code


def test_size_and_encoding_limits() -> None:
    with pytest.raises(MalformedInput) as caught:
        parse_invoice(HEADER + "\n" + "x" * 100, max_bytes=64)
    assert caught.value.code == "invoice.too_large"
    with pytest.raises(MalformedInput) as caught:
        parse_invoice(b"\xff\xfe" + HEADER.encode())
    assert caught.value.code == "invoice.bad_unicode"


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: HEADER + "\n" + t))
def test_arbitrary_input_is_parsed_or_refused_never_crashes(data: bytes | str) -> None:
    try:
        parse_invoice(data)
    except MalformedInput as exc:
        assert exc.code.startswith("invoice.")
