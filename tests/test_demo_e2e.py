"""The demo's flow as a test: real tallystickd, real ``openai`` client, local LLM server,
an over-billed call found offline with its proof, and the provenance of that call."""

from __future__ import annotations

import pytest
from tallystick.verifier.checkpoint import NoteVerifier, verify_checkpoint
from tallystick.verifier.keys import load_public_key
from tallystick.verifier.logbundle import Bundle, verify_bundle
from tallystick.verifier.logentry import LogEntry
from tallystick.verifier.merkle import verify_inclusion

from demo.workflow import ORCHESTRATOR_HOP, PRINCIPAL, DemoResult, run, summary


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    return run(tmp_path_factory.mktemp("demo"))


def test_the_overbilled_call_and_only_it_is_found(demo: DemoResult) -> None:
    reconcile = demo.reconcile
    assert demo.reconcile_exit == 1
    assert not reconcile["matches"]
    assert reconcile["recorded_calls"] == reconcile["billed_items"] == 4
    found = {(f["kind"], f.get("field")) for f in reconcile["findings"]}
    assert found == {
        ("token_count_differs", "output_tokens"),
        ("token_count_differs", "reasoning_tokens"),
        ("price_differs", "cost"),
    }
    assert {f["request_id"] for f in reconcile["findings"]} == {demo.overbilled_request_id}
    output = next(f for f in reconcile["findings"] if f.get("field") == "output_tokens")
    assert int(output["billed"]) - int(output["recorded"]) == 1_500


def test_each_finding_carries_a_proof_anyone_with_the_log_key_can_check(demo: DemoResult) -> None:
    log_key = load_public_key(str(demo.out_dir / "var" / "log.pub"))
    for finding in demo.reconcile["findings"]:
        (proof,) = finding["proofs"]
        origin = str(proof["checkpoint"]).split("\n", 1)[0]
        checkpoint = verify_checkpoint(
            proof["checkpoint"],
            verifiers=[NoteVerifier.from_public_key(origin, log_key)],
            origin=origin,
        )
        assert checkpoint.size == proof["tree_size"]
        verify_inclusion(
            leaf_index=proof["leaf_index"],
            tree_size=proof["tree_size"],
            leaf_hash=bytes.fromhex(proof["leaf_hash"]),
            proof=[bytes.fromhex(h) for h in proof["hashes"]],
            root_hash=checkpoint.root_hash,
        )
        assert proof["leaf_index"] == demo.provenance_entry


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
    assert "3 finding(s)" in summary(demo)


def test_no_prompt_or_answer_text_is_stored(demo: DemoResult) -> None:
    entries = b"\n".join(Bundle.from_path(demo.out_dir / "log.bundle").entries)
    database = (demo.out_dir / "var" / "tallystick.sqlite3").read_bytes()
    assert b'"request_sha256":"' in entries  # the request is there as its hash
    for stored in (entries, database):
        assert b"17% of 2,340" not in stored
        assert b"seasonal revenue" not in stored
