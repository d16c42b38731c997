"""The demo's flow as a test: real tallystickd, real ``openai`` client, local LLM server,
an over-billed call found offline with its proof, and the provenance of that call; a real CoIn
provider server and the sidecar's audits, which catch the one call whose hidden reasoning
the provider padded (and billed honestly), found offline too."""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI
from tallystick.verifier.checkpoint import NoteVerifier, verify_checkpoint
from tallystick.verifier.coin import verify_evidence, verify_head
from tallystick.verifier.keys import load_public_key
from tallystick.verifier.logbundle import Bundle, verify_bundle
from tallystick.verifier.logentry import LogEntry
from tallystick.verifier.merkle import verify_inclusion

from demo.llm_server import LLMServer, load_traces
from demo.workflow import (
    ANSWERED_BY,
    INFLATED_PROMPT,
    ORCHESTRATOR_HOP,
    PRINCIPAL,
    DemoResult,
    run,
    summary,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    return run(tmp_path_factory.mktemp("demo"))


def _entries(demo: DemoResult) -> list[LogEntry]:
    return [
        LogEntry.from_bytes(raw) for raw in Bundle.from_path(demo.out_dir / "log.bundle").entries
    ]


def _log_verifier(demo: DemoResult) -> NoteVerifier:
    """The log key under the origin of the bundle's checkpoints."""
    log_key = load_public_key(str(demo.out_dir / "var" / "log.pub"))
    proof = demo.reconcile["findings"][0]["proofs"][0]
    return NoteVerifier.from_public_key(str(proof["checkpoint"]).split("\n", 1)[0], log_key)


def _audits_by_call(entries: list[LogEntry]) -> dict[str, dict[str, Any]]:
    """Each audited call's logged head and verdict, joined as reconcile joins them."""
    heads = {e.index: e.body for e in entries if e.body.get("coin") == "head"}
    challenges = {e.index: e.body for e in entries if e.body.get("coin") == "challenge"}
    audits: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.body.get("coin") == "verdict":
            head = heads[challenges[entry.body["challenge_entry"]]["head_entry"]]
            audits[head["call_request_id"]] = {"head": head, "verdict": entry.body}
    return audits


def test_the_overbilled_and_the_padded_call_and_only_they_are_found(demo: DemoResult) -> None:
    reconcile = demo.reconcile
    assert demo.reconcile_exit == 1
    assert not reconcile["matches"]
    assert reconcile["recorded_calls"] == reconcile["billed_items"] == 4
    found = {(f["kind"], f.get("field"), f["request_id"]) for f in reconcile["findings"]}
    overbilled, inflated = demo.overbilled_request_id, demo.inflated_request_id
    # The over-billed call on the invoice; the padded call agrees with the bill and the
    # commitment (no reasoning_not_committed), and only its failed audit shows.
    assert found == {
        ("token_count_differs", "output_tokens", overbilled),
        ("token_count_differs", "reasoning_tokens", overbilled),
        ("price_differs", "cost", overbilled),
        ("reasoning_audit_failed", None, inflated),
    }
    output = next(f for f in reconcile["findings"] if f.get("field") == "output_tokens")
    assert int(output["billed"]) - int(output["recorded"]) == 1_500


def test_each_finding_carries_a_proof_anyone_with_the_log_key_can_check(demo: DemoResult) -> None:
    verifier = _log_verifier(demo)
    for finding in demo.reconcile["findings"]:
        assert [proof["leaf_index"] for proof in finding["proofs"]] == finding["entries"]
        for proof in finding["proofs"]:
            checkpoint = verify_checkpoint(
                proof["checkpoint"], verifiers=[verifier], origin=verifier.name
            )
            assert checkpoint.size == proof["tree_size"]
            verify_inclusion(
                leaf_index=proof["leaf_index"],
                tree_size=proof["tree_size"],
                leaf_hash=bytes.fromhex(proof["leaf_hash"]),
                proof=[bytes.fromhex(h) for h in proof["hashes"]],
                root_hash=checkpoint.root_hash,
            )
        if finding["request_id"] == demo.overbilled_request_id:
            (proof,) = finding["proofs"]
            assert proof["leaf_index"] == demo.provenance_entry


def test_every_offered_call_is_audited_and_only_the_padded_one_fails(demo: DemoResult) -> None:
    # Every call carried an offer and was audited, the writer's stream included.
    offered = {request_id for ids in demo.request_ids.values() for request_id in ids}
    assert demo.inflated_request_id in offered and len(offered) == 4
    assert set(demo.request_ids["writer"]) <= offered
    assert set(demo.coin_audits) == offered
    for request_id, outcome in demo.coin_audits.items():
        assert outcome.error_code is None and outcome.verdict is not None, outcome
        assert outcome.verdict.consistent is (request_id != demo.inflated_request_id), outcome
    padded = demo.coin_audits[demo.inflated_request_id].verdict
    assert padded is not None and padded.score is not None and padded.error_code is None
    assert {flag.split("@", 1)[0] for flag in padded.flagged} == {
        "duplicate_blocks",
        "repeated_spans",
    }

    # The log holds a head and a verdict for each, agreeing with the SDK's outcomes.
    entries = _entries(demo)
    audits = _audits_by_call(entries)
    assert set(audits) == offered
    for request_id, audit in audits.items():
        assert audit["verdict"]["consistent"] is (request_id != demo.inflated_request_id)

    # The padded call: the provider billed the padding honestly, so the recorded reasoning is
    # what its head commits to, and more than the trace's own reasoning.
    (call,) = [e.body for e in entries if e.body.get("request_id") == demo.inflated_request_id]
    head = audits[demo.inflated_request_id]["head"]
    committed = verify_head(head["head_note"], NoteVerifier.from_vkey(head["provider_vkey"]))
    recorded = call["usage"]["reasoning_output_tokens"]
    assert committed.reasoning_tokens == recorded
    (trace,) = [t for t in load_traces() if t.id == ANSWERED_BY[INFLATED_PROMPT]]
    assert recorded > trace.reasoning_tokens > 512

    # Its failed verdict re-checks offline, tied to the provider's and the log's keys.
    verdict = verify_evidence(
        padded.evidence,
        provider_key=NoteVerifier.from_vkey(head["provider_vkey"]),
        log_key=_log_verifier(demo),
    )
    assert not verdict.consistent and verdict.flagged == padded.flagged


def test_the_failed_audit_is_found_with_the_call_head_and_verdict(demo: DemoResult) -> None:
    (finding,) = [f for f in demo.reconcile["findings"] if f["kind"] == "reasoning_audit_failed"]
    assert finding["request_id"] == demo.inflated_request_id
    entries = _entries(demo)
    call, head, verdict = (entries[index].body for index in finding["entries"])
    assert call["request_id"] == head["call_request_id"] == demo.inflated_request_id
    assert (head["coin"], verdict["coin"], verdict["consistent"]) == ("head", "verdict", False)


def test_the_overbilled_call_traces_back_to_the_principal(demo: DemoResult) -> None:
    chain = demo.provenance
    assert demo.provenance_exit == 0
    assert chain["status"] == "verified"
    assert chain["principal"] == PRINCIPAL
    assert [hop["agent_id"] for hop in chain["hops"]] == ["orchestrator", "researcher"]
    assert chain["hops"][ORCHESTRATOR_HOP - 1]["agent_type"] == "orchestrator"
    assert all(hop["status"] == "valid" for hop in chain["hops"])
    # The call as OpenTelemetry GenAI names it; reasoning is part of output, never added to it.
    attributes = chain["attributes"]
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert (
        attributes["gen_ai.usage.output_tokens"]
        > attributes["gen_ai.usage.reasoning.output_tokens"]
    )
    assert "gen_ai.usage.prompt_tokens" not in attributes  # deprecated names are never emitted


def test_the_exported_log_verifies_and_the_report_is_written(demo: DemoResult) -> None:
    bundle = Bundle.from_path(demo.out_dir / "log.bundle")
    log_key = load_public_key(str(demo.out_dir / "var" / "log.pub"))
    assert verify_bundle(bundle, log_key=log_key).valid
    calls = [LogEntry.from_bytes(raw).body for raw in bundle.entries]
    chats = [body for body in calls if body.get("operation") == "chat"]
    assert len(chats) == 4
    # Every LLM call was recounted offline, and no recount disagreed (see the findings test).
    assert all(body["recount"]["tokenizer"] == "cl100k_base" for body in chats)
    (tool_call,) = [body for body in calls if body.get("operation") == "execute_tool"]
    assert tool_call["tool_name"] == "web_search"
    page = demo.report.read_text(encoding="utf-8")
    assert "<svg" in page and demo.overbilled_request_id in page
    printed = summary(demo)
    assert "4 finding(s)" in printed
    (audit_finding,) = [
        f for f in demo.reconcile["findings"] if f["kind"] == "reasoning_audit_failed"
    ]
    assert f"reasoning_audit_failed: entry {audit_finding['entries'][-1]}:" in printed
    assert "3 consistent, 1 failed" in printed  # the writer's stream is audited too
    assert f"request {demo.inflated_request_id}: score" in printed


def test_no_prompt_or_answer_text_is_stored(demo: DemoResult) -> None:
    entries = b"\n".join(Bundle.from_path(demo.out_dir / "log.bundle").entries)
    database = (demo.out_dir / "var" / "tallystick.sqlite3").read_bytes()
    assert b'"request_sha256":"' in entries  # the request is there as its hash
    for stored in (entries, database):
        assert b"17% of 2,340" not in stored
        assert b"seasonal revenue" not in stored


def test_the_server_pads_one_non_streamed_chat_call_and_bills_it() -> None:
    """No CoIn here: the padding shows in the usage of exactly one call."""
    (trace,) = [t for t in load_traces() if t.id == ANSWERED_BY[INFLATED_PROMPT]]
    messages = [{"role": "user", "content": trace.prompt}]

    def reasoning_tokens(llm: OpenAI, *, stream: bool = False) -> int:
        if stream:
            chunks = llm.chat.completions.create(
                model="o4-mini",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            usage = list(chunks)[-1].usage
        else:
            usage = llm.chat.completions.create(model="o4-mini", messages=messages).usage
        assert usage is not None and usage.completion_tokens_details is not None
        return int(usage.completion_tokens_details.reasoning_tokens or 0)

    with LLMServer((trace,)) as server:
        llm = OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        server.inflate_reasoning(trace.prompt)
        streamed = reasoning_tokens(llm, stream=True)  # streams are never padded
        padded, after = reasoning_tokens(llm), reasoning_tokens(llm)
    assert streamed == after == trace.reasoning_tokens
    # Its three whole blocks of 256 tokens, written twice.
    assert padded == trace.reasoning_tokens + trace.reasoning_tokens // 256 * 256
