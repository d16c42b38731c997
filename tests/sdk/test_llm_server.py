"""The local LLM server: usage including reasoning, its invoice, over-billing and exports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import pytest
from tallystick.verifier.invoice import CSV_COLUMNS

from ._llm import TRACES, LLMServer, llm_server_fixture, load_traces  # noqa: F401 (the fixture)


def test_traces_precomputed_with_reasoning_counted() -> None:
    assert len(TRACES) == 12
    assert all(t.reasoning_tokens > 0 and t.answer_tokens > 0 for t in TRACES)


def test_chat_reports_reasoning_inside_completion_and_bills_it(llm_server: LLMServer) -> None:
    body = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": TRACES[3].prompt}]}
    reply = httpx.post(f"{llm_server.base_url}/chat/completions", json=body).json()
    usage = reply["usage"]
    assert reply["choices"][0]["message"]["content"] == TRACES[3].answer
    assert TRACES[3].reasoning_tokens == usage["completion_tokens_details"]["reasoning_tokens"]
    assert usage["completion_tokens"] == TRACES[3].answer_tokens + TRACES[3].reasoning_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    (row,) = [row for row in llm_server.invoice_rows() if row.request_id == reply["id"]]
    assert (row.output_tokens, row.reasoning_tokens) == (
        usage["completion_tokens"],
        TRACES[3].reasoning_tokens,
    )
    assert row.day == "2025-06-01" and row.cost_usd is not None


def test_bad_requests_are_refused(llm_server: LLMServer) -> None:
    url = f"{llm_server.base_url}/chat/completions"
    assert httpx.post(url, content=b"{not json").status_code == 400
    assert httpx.post(url, json=[1]).status_code == 400
    assert httpx.post(url, json={"messages": []}).status_code == 400  # no model
    assert httpx.post(url, json={"model": "m", "messages": "x"}).status_code == 200  # as text
    assert httpx.post(url, json={"model": "m", "messages": [1]}).status_code == 400
    assert httpx.post(f"{llm_server.base_url}/nope", json={}).status_code == 404


def test_overbill_and_the_three_invoice_formats(tmp_path: Path) -> None:
    with LLMServer(TRACES[:2], clock=lambda: 1_748_779_200.0) as server:
        ids = [
            httpx.post(
                f"{server.base_url}/chat/completions",
                json={"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "q"}]},
            ).json()["id"]
            for _ in range(3)
        ]
        before = server.invoice_rows()[1]
        after = server.overbill(ids[1], 500)
        assert after.output_tokens == before.output_tokens + 500
        assert after.reasoning_tokens == before.reasoning_tokens + 500
        assert after.cost_usd is not None and before.cost_usd is not None
        assert float(after.cost_usd) > float(before.cost_usd)
        with pytest.raises(KeyError):
            server.overbill("chatcmpl-none", 1)
        with pytest.raises(ValueError):
            server.overbill(ids[0], 0)
        server.write_csv(tmp_path / "invoice.csv")
        server.write_usage_export(tmp_path / "usage.json")
        server.write_costs_export(tmp_path / "costs.json")
        rows = server.invoice_rows()
    with (tmp_path / "invoice.csv").open() as lines:
        table = list(csv.DictReader(lines))
    assert tuple(table[0]) == CSV_COLUMNS
    assert [r["request_id"] for r in table] == ids
    assert table[1]["output_tokens"] == str(after.output_tokens)
    assert table[0]["timestamp"] == "2025-06-01T12:00:00Z"
    usage = json.loads((tmp_path / "usage.json").read_text())
    (bucket,) = usage["data"]
    assert bucket["start_time"] == 1_748_736_000 and bucket["end_time"] == 1_748_822_400
    (result,) = bucket["results"]
    assert result["object"] == "organization.usage.completions.result"
    assert result["model"] == "gpt-4.1-mini-2025-04-14" and result["num_model_requests"] == 3
    assert result["output_tokens"] == sum(row.output_tokens for row in rows)
    costs = json.loads((tmp_path / "costs.json").read_text())
    items = {r["line_item"]: r["amount"]["value"] for r in costs["data"][0]["results"]}
    assert set(items) == {
        f"gpt-4.1-mini-2025-04-14, {kind}" for kind in ("input", "cached input", "output")
    }
    assert sum(items.values()) == pytest.approx(sum(float(row.cost_usd or 0) for row in rows))


def test_load_traces_rejects_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no traces"):
        load_traces(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match="not a trace"):
        load_traces(bad)
