"""Billing reconciliation against real bundles from a real log: findings with proofs that verify."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from audit_bundles import DAY1_MS, DAY_MS, audited, call, write_bundle
from tallystick.daemon.log import Log
from tallystick.verifier import coin
from tallystick.verifier.billing import FindingKind, Tolerance, reconcile
from tallystick.verifier.checkpoint import NoteSigner, NoteVerifier, verify_checkpoint
from tallystick.verifier.errors import ProofInvalid
from tallystick.verifier.invoice import CSV_COLUMNS, parse_invoice
from tallystick.verifier.keys import PrivateKey, PublicKey, load_public_key
from tallystick.verifier.logbundle import Bundle, LogDamaged
from tallystick.verifier.logentry import CallBody, Recount
from tallystick.verifier.merkle import hash_leaf, verify_inclusion
from tallystick.verifier.provenance import AuditedLog
from vectors import generate_coin as golden

HEADER = ",".join(CSV_COLUMNS)
JAN1 = DAY1_MS // 1000


def csv(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


def four_calls(tmp_path: Path) -> AuditedLog:
    return audited(
        tmp_path,
        [
            (DAY1_MS + 1_000, "alice", call("req_1")),
            (DAY1_MS + 2_000, "alice", call("req_2", output_tokens=80, reasoning=40)),
            (DAY1_MS + 3_000, "bob", call("req_3", cost="0.0020")),
            (DAY1_MS + 4_000, "bob", call("req_4")),
            # A tool execution is never on an LLM bill.
            (DAY1_MS + 5_000, "bob", call(None, operation="execute_tool", tool_name="search")),
        ],
    )


def test_a_matching_bill_has_no_findings(tmp_path: Path) -> None:
    log = four_calls(tmp_path)
    invoice = parse_invoice(
        csv(
            "req_1,2026-01-01T00:00:01Z,gpt-4o,100,20,50,10,0.0015",
            "req_2,2026-01-01T00:00:02Z,gpt-4o,100,20,80,40,0.0015",
            "req_3,2026-01-01T00:00:03Z,gpt-4o,100,20,50,10,0.0020",
            "req_4,2026-01-01T00:00:04Z,gpt-4o,100,20,50,,",
        )
    )
    result = reconcile(log, invoice)
    assert result.matches, result.findings
    assert (result.billed_items, result.recorded_calls) == (4, 4)


def _check_proof(proof_json: dict[str, object], raw: bytes, key: PublicKey) -> None:
    """Check a finding's proof as the provider would: checkpoint signature, then the path."""
    note = str(proof_json["checkpoint"])
    origin = note.split("\n", 1)[0]
    checkpoint = verify_checkpoint(
        note, verifiers=[NoteVerifier.from_public_key(origin, key)], origin=origin
    )
    assert checkpoint.size == proof_json["tree_size"]
    assert checkpoint.root_hash.hex() == proof_json["root_hash"]
    assert hash_leaf(raw).hex() == proof_json["leaf_hash"]
    verify_inclusion(
        leaf_index=int(str(proof_json["leaf_index"])),
        tree_size=checkpoint.size,
        leaf_hash=hash_leaf(raw),
        proof=[bytes.fromhex(h) for h in proof_json["hashes"]],  # type: ignore[attr-defined]
        root_hash=checkpoint.root_hash,
    )


def test_each_kind_of_finding_carries_proofs_that_verify_with_the_log_key(tmp_path: Path) -> None:
    path, key = write_bundle(
        tmp_path,
        [
            (DAY1_MS + 1_000, "alice", call("req_1")),
            (DAY1_MS + 2_000, "alice", call("req_2")),
            (DAY1_MS + 3_000, "bob", call("req_3")),
            (DAY1_MS + 4_000, "bob", call("req_4")),
        ],
    )
    bundle = Bundle.from_path(path)
    log = AuditedLog.open(bundle, log_key=key)
    invoice = parse_invoice(
        csv(
            "req_1,2026-01-01T00:00:01Z,gpt-4o,100,20,50,10,0.0015",
            "req_2,2026-01-01T00:00:02Z,gpt-4o,100,20,75,10,0.0015",  # output over-billed
            "req_3,2026-01-01T00:00:03Z,gpt-4o,100,20,50,10,0.0100",  # over-priced
            "req_9,2026-01-01T00:00:05Z,gpt-4o,100,20,50,10,0.0015",  # never made
            # req_4 is recorded but missing from the bill
        )
    )
    result = reconcile(log, invoice)
    kinds = [
        (f.kind, f.request_id, f.field, f.billed, f.recorded, f.entries) for f in result.findings
    ]
    assert kinds == [
        (FindingKind.TOKEN_COUNT_DIFFERS, "req_2", "output_tokens", "75", "50", (1,)),
        (FindingKind.PRICE_DIFFERS, "req_3", "cost", "0.0100", "0.0015", (2,)),
        (FindingKind.BILLED_NOT_RECORDED, "req_9", None, None, None, ()),
        (FindingKind.RECORDED_NOT_BILLED, "req_4", None, None, None, (3,)),
    ]
    assert not result.matches
    # Through JSON, as the CLI prints it: every proof checks against the log key alone.
    document = json.loads(json.dumps(result.to_dict()))
    checked = 0
    for finding in document["findings"]:
        assert len(finding["proofs"]) == len(finding["entries"])
        for index, proof in zip(finding["entries"], finding["proofs"], strict=True):
            _check_proof(proof, bundle.entries[index], key)
            checked += 1
    assert checked == 3
    # The same path for another entry's bytes fails.
    proof = document["findings"][0]["proofs"][0]
    with pytest.raises(ProofInvalid) as caught:
        verify_inclusion(
            leaf_index=proof["leaf_index"],
            tree_size=proof["tree_size"],
            leaf_hash=hash_leaf(bundle.entries[0]),
            proof=[bytes.fromhex(h) for h in proof["hashes"]],
            root_hash=bytes.fromhex(proof["root_hash"]),
        )
    assert caught.value.code == "merkle.root_mismatch"


def test_tolerance_absorbs_small_differences_and_is_stated(tmp_path: Path) -> None:
    log = audited(tmp_path, [(DAY1_MS + 1_000, "alice", call("req_1", cost="0.001500"))])
    invoice = parse_invoice(csv("req_1,2026-01-01T00:00:01Z,gpt-4o,101,20,50,10,0.0015004"))
    assert {f.field for f in reconcile(log, invoice).findings} == {"input_tokens", "cost"}
    loose = Tolerance(relative=Decimal("0.01"), cost=Decimal("0.000001"))
    result = reconcile(log, invoice, tolerance=loose)
    assert result.matches
    assert result.to_dict()["tolerance"] == {"relative": "0.01", "cost": "0.000001"}
    with pytest.raises(ValueError, match="tolerance"):
        Tolerance(relative=Decimal(-1))


def test_unknown_counts_and_prices_are_not_compared_and_never_zero(tmp_path: Path) -> None:
    log = audited(
        tmp_path,
        [(DAY1_MS + 1_000, "alice", call("req_1", output_tokens=None, reasoning=None, cost=None))],
    )
    invoice = parse_invoice(csv("req_1,2026-01-01T00:00:01Z,gpt-4o,100,20,999,10,5.00"))
    result = reconcile(log, invoice)
    assert result.matches
    assert result.unpriced == (0,)


def test_calls_outside_the_invoiced_days_and_other_providers_are_out_of_scope(
    tmp_path: Path,
) -> None:
    log = audited(
        tmp_path,
        [
            (DAY1_MS - 1_000, "alice", call("old")),
            (DAY1_MS + 1_000, "alice", call("req_1")),
            (DAY1_MS + 2_000, "alice", call("claude_1", provider="anthropic")),
        ],
    )
    invoice = parse_invoice(csv("req_1,2026-01-01T00:00:01Z,gpt-4o,100,20,50,10,0.0015"))
    assert [f.request_id for f in reconcile(log, invoice).findings] == ["claude_1"]
    assert reconcile(log, invoice, provider="openai").matches


def test_a_request_recorded_twice_but_billed_once_is_a_finding(tmp_path: Path) -> None:
    log = audited(
        tmp_path,
        [(DAY1_MS + 1_000, "alice", call("req_1")), (DAY1_MS + 2_000, "alice", call("req_1"))],
    )
    invoice = parse_invoice(csv("req_1,2026-01-01T00:00:01Z,gpt-4o,100,20,50,10,0.0015"))
    (finding,) = reconcile(log, invoice).findings
    assert (finding.kind, finding.entries) == (FindingKind.RECORDED_NOT_BILLED, (1,))


def _openai(*buckets: tuple[int, list[dict[str, object]]]) -> str:
    return json.dumps(
        {
            "object": "page",
            "data": [
                {
                    "object": "bucket",
                    "start_time": start,
                    "end_time": start + 86_400,
                    "results": results,
                }
                for start, results in buckets
            ],
        }
    )


def _usage(model: str, inp: int, cached: int, out: int, requests: int) -> dict[str, object]:
    return {
        "object": "organization.usage.completions.result",
        "model": model,
        "input_tokens": inp,
        "input_cached_tokens": cached,
        "output_tokens": out,
        "num_model_requests": requests,
    }


def _cost(value: str, line_item: str | None) -> dict[str, object]:
    return {
        "object": "organization.costs.result",
        "amount": {"value": value, "currency": "usd"},
        "line_item": line_item,
    }


def test_openai_daily_aggregates_compare_per_model_and_day(tmp_path: Path) -> None:
    log = audited(
        tmp_path,
        [
            (DAY1_MS + 1_000, "alice", call("a", model="gpt-4o")),
            (DAY1_MS + 2_000, "bob", call("b", model="gpt-4o")),
            (DAY1_MS + 3_000, "bob", call("c", model="o3-mini", cost="0.0100")),
            (DAY1_MS + DAY_MS + 1_000, "alice", call("d", model="gpt-4o")),
        ],
    )
    matching = _openai(
        (JAN1, [_usage("gpt-4o", 200, 40, 100, 2), _usage("o3-mini", 100, 20, 50, 1)]),
        (JAN1 + 86_400, [_usage("gpt-4o", 100, 20, 50, 1)]),
    )
    assert reconcile(log, parse_invoice(matching)).matches
    costs = _openai((JAN1, [_cost("0.0030", "gpt-4o, input"), _cost("0.0100", "o3-mini")]))
    assert reconcile(log, parse_invoice(costs)).findings[0].field == "requests"  # no usage rows
    wrong = _openai(
        (JAN1, [_usage("gpt-4o", 200, 40, 130, 3), _cost("0.0030", "gpt-4o"), _cost("0.02", None)]),
        (JAN1 + 86_400, []),
    )
    result = reconcile(log, parse_invoice(wrong))
    found = [(f.kind, f.model, f.field, f.billed, f.recorded, f.entries) for f in result.findings]
    assert found == [
        (FindingKind.BILLED_NOT_RECORDED, "gpt-4o", "requests", "3", "2", (0, 1)),
        (FindingKind.TOKEN_COUNT_DIFFERS, "gpt-4o", "output_tokens", "130", "100", (0, 1)),
        (FindingKind.RECORDED_NOT_BILLED, "o3-mini", "requests", "0", "1", (2,)),
        (FindingKind.RECORDED_NOT_BILLED, "gpt-4o", "requests", "0", "1", (3,)),
        (FindingKind.PRICE_DIFFERS, None, "cost", "0.02", "0.0130", (0, 1, 2)),
    ]
    for finding in result.findings:
        for proof in finding.proofs:
            proof.verify()


def test_a_damaged_bundle_is_refused_before_any_finding(tmp_path: Path) -> None:
    path, key = write_bundle(tmp_path, [(DAY1_MS + 1_000, "alice", call("req_1"))])
    lines = path.read_bytes().splitlines(keepends=True)
    lines.pop(1)  # drop the only entry
    with pytest.raises(LogDamaged) as caught:
        AuditedLog.open(
            Bundle.from_text(b"".join(lines).replace(b'"size":1', b'"size":0')), log_key=key
        )
    assert caught.value.code == "log.truncated"
    other = load_public_key("A" * 43)
    with pytest.raises(LogDamaged) as caught:
        AuditedLog.open(Bundle.from_path(path), log_key=other)
    assert caught.value.code == "log.wrong_key"


def test_a_recount_that_disagrees_with_the_visible_output_is_a_finding(tmp_path: Path) -> None:
    # 50 output - 10 reasoning = 40 visible; the recorder counted 40 in one call, 25 in the other.
    log = audited(
        tmp_path,
        [
            (
                DAY1_MS + 1_000,
                "alice",
                call("req_1", recount=Recount(tokenizer="cl100k_base", visible_output_tokens=40)),
            ),
            (
                DAY1_MS + 2_000,
                "alice",
                call("req_2", recount=Recount(tokenizer="cl100k_base", visible_output_tokens=25)),
            ),
            (
                DAY1_MS + 3_000,
                "alice",
                call(
                    "req_3",
                    reasoning=None,
                    recount=Recount(tokenizer="cl100k_base", visible_output_tokens=1),
                ),
            ),
        ],
    )
    rows = [f"req_{n},2026-01-01T00:00:0{n}Z,gpt-4o,100,20,50,,0.0015" for n in (1, 2, 3)]
    result = reconcile(log, parse_invoice(csv(*rows)))
    (finding,) = result.findings  # req_3: reasoning unknown, so nothing to compare
    assert finding.kind is FindingKind.RECOUNT_DIFFERS
    assert (finding.request_id, finding.billed, finding.recorded) == ("req_2", "40", "25")
    assert finding.entries == (1,)
    assert finding.proofs[0].leaf_index == 1
    tolerant = reconcile(
        log, parse_invoice(csv(*rows)), tolerance=Tolerance(relative=Decimal("0.5"))
    )
    assert tolerant.matches


_PROVIDER = NoteSigner("provider.example/coin", PrivateKey.from_seed(bytes(range(32))))


def _head(request_id: str, reasoning_tokens: int) -> dict[str, object]:
    """The audit entry a sidecar logs for a provider's signed CoIn head of one call."""
    head = coin.CommitmentHead(
        origin=_PROVIDER.name,
        request_id=request_id,
        model="o3",
        tokenizer="cl100k_base@tiktoken",
        embedder="all-MiniLM-L6-v2@test",
        embedder_sha256="0" * 64,
        block_size=256,
        reasoning_tokens=reasoning_tokens,
        reported_usage=coin.ReportedUsage(None, None, reasoning_tokens, None),
        prompt_sha256="1" * 64,
        answer_sha256="2" * 64,
        root=bytes(32),
        time_s=JAN1,
    )
    return {
        "coin": "head",
        "head_note": coin.sign_head(head, _PROVIDER),
        "provider_vkey": _PROVIDER.vkey,
        "call_request_id": request_id,
    }


def test_reasoning_billed_beyond_the_providers_commitment_is_a_finding(tmp_path: Path) -> None:
    forged = _head("req_3", 40)
    note = str(forged["head_note"])
    forged["head_note"] = note.replace("reasoning_tokens 40", "reasoning_tokens 10")
    log = audited(
        tmp_path,
        [
            (DAY1_MS + 1_000, "alice", call("req_1", reasoning=10)),
            (DAY1_MS + 1_500, "alice", _head("req_1", 10)),  # committed what it billed
            (DAY1_MS + 2_000, "alice", call("req_2", reasoning=40)),
            (DAY1_MS + 2_500, "alice", _head("req_2", 25)),  # bills 40, committed to 25
            (DAY1_MS + 3_000, "alice", call("req_3", reasoning=40)),
            (DAY1_MS + 3_500, "alice", forged),  # a head whose signature fails
            (DAY1_MS + 4_000, "alice", _head("req_elsewhere", 99)),  # no such call: not ours
        ],
    )
    rows = [
        "req_1,2026-01-01T00:00:01Z,gpt-4o,100,20,50,10,0.0015",
        "req_2,2026-01-01T00:00:02Z,gpt-4o,100,20,50,40,0.0015",
        "req_3,2026-01-01T00:00:03Z,gpt-4o,100,20,50,40,0.0015",
    ]
    result = reconcile(log, parse_invoice(csv(*rows)))
    findings = [f for f in result.findings if f.kind is FindingKind.REASONING_NOT_COMMITTED]
    assert [f.request_id for f in findings] == ["req_2", "req_3"]
    billed_more, unverified = findings
    assert (billed_more.billed, billed_more.recorded, billed_more.entries) == ("40", "25", (2, 3))
    assert unverified.entries == (4, 5) and "does not verify" in unverified.detail
    assert [proof.leaf_index for proof in billed_more.proofs] == [2, 3]
    # A relative tolerance wide enough absorbs the count difference, never the bad signature.
    wide = Tolerance(relative=Decimal("0.5"))
    tolerant = reconcile(log, parse_invoice(csv(*rows)), tolerance=wide)
    assert [f.request_id for f in tolerant.findings] == ["req_3"]


# -- CoIn audits as tallystickd logs them, from the golden synthetic provider (no model) --------

#: The golden trace's reasoning count: what each audited call bills and its head commits to.
_GOLDEN_REASONING = len(golden.TOKEN_IDS)
#: A failed protocol step's code (a tampered opening, as tallystickd reports it).
_FAILED_STEP = "coin.token_commitment_mismatch"


def _countersigned(directory: Path, request_id: str) -> golden.Synthetic:
    """The golden provider's commitment for ``request_id``, its head countersigned by the key
    of the log :func:`audited` then writes in ``directory`` (as ``BeginAudit`` does)."""
    synthetic = golden.commit(golden.TOKEN_IDS, request_id=request_id)
    log = Log.open(directory / "log", clock_ms=lambda: DAY1_MS)
    try:
        return dataclasses.replace(synthetic, head_note=log.countersign(synthetic.head_note))
    finally:
        log.close()


class _Entries:
    """Entries for :func:`audited`, one agent's, 100 ms apart on the first invoiced day."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str, CallBody | dict[str, Any]]] = []

    def add(self, body: CallBody | dict[str, Any]) -> int:
        """Append ``body``; its entry index."""
        self.items.append((DAY1_MS + 1_000 + 100 * len(self.items), "alice", body))
        return len(self.items) - 1

    def audit(
        self,
        evidence: coin.Evidence,
        request_id: str | None,
        *,
        consistent: bool | None = None,
        failed_step: str | None = None,
    ) -> tuple[int, int]:
        """Append an audit's head, challenge, evidence parts and verdict as ``CoinAudit`` logs
        them; ``(head entry, verdict entry)``. The verdict is the evidence's unless
        ``consistent`` says otherwise; a ``failed_step`` logs no evidence, as its code."""
        head = self.add(
            {
                "coin": "head",
                "head_note": evidence.head_note,
                "provider_vkey": evidence.provider_vkey,
                "call_request_id": request_id,
            }
        )
        challenge = self.add(
            {
                "coin": "challenge",
                "head_entry": head,
                "nonce": evidence.auditor_nonce.hex(),
                "k": evidence.challenge.k,
                "indices_sha256": coin.indices_sha256([item.index for item in evidence.openings]),
            }
        )
        raw = evidence.to_json()
        parts = [] if failed_step else coin.evidence_parts(raw)
        if failed_step:
            consistent = False
        elif consistent is None:
            consistent = evidence.verdict.consistent
        for number, text in enumerate(parts):
            self.add(
                {
                    "coin": "evidence",
                    "challenge_entry": challenge,
                    "part": number,
                    "parts": len(parts),
                    "evidence_json": text,
                }
            )
        verdict = self.add(
            {
                "coin": "verdict",
                "challenge_entry": challenge,
                "consistent": consistent,
                "error_code": failed_step,
                "evidence_sha256": None if failed_step else hashlib.sha256(raw).hexdigest(),
                "evidence_parts": len(parts),
            }
        )
        return head, verdict


def _csv_for(*request_ids: str) -> str:
    return csv(
        *(
            f"{request_id},2026-01-01T00:00:01Z,gpt-4o,100,20,50,{_GOLDEN_REASONING},0.0015"
            for request_id in request_ids
        )
    )


def test_a_failed_reasoning_audit_of_a_billed_call_is_a_finding(tmp_path: Path) -> None:
    log = _Entries()
    flagged_call = log.add(call("req_1", reasoning=_GOLDEN_REASONING))
    flagged = golden.evidence(_countersigned(tmp_path, "req_1"), scores=(0.9, 0.1))
    flagged_head, flagged_verdict = log.audit(flagged, "req_1")
    failed_call = log.add(call("req_2", reasoning=_GOLDEN_REASONING))
    honest = golden.evidence(_countersigned(tmp_path, "req_2"))
    failed_head, failed_verdict = log.audit(honest, "req_2", failed_step=_FAILED_STEP)
    log.audit(flagged, "req_elsewhere")  # no such call: not ours
    audited_log = audited(tmp_path, log.items)

    result = reconcile(audited_log, parse_invoice(_csv_for("req_1", "req_2")))

    found = [(f.kind, f.request_id, f.entries) for f in result.findings]
    assert found == [
        (
            FindingKind.REASONING_AUDIT_FAILED,
            "req_1",
            (flagged_call, flagged_head, flagged_verdict),
        ),
        (FindingKind.REASONING_AUDIT_FAILED, "req_2", (failed_call, failed_head, failed_verdict)),
    ]
    flagged_finding, failed_finding = result.findings
    assert flagged_finding.detail == (
        f"entry {flagged_verdict}: the audit of request req_1's hidden reasoning failed: "
        "coin.flagged: block_answer@block1"
    )
    assert f"failed: {_FAILED_STEP}: a protocol step failed" in failed_finding.detail
    for finding in result.findings:
        for proof in finding.proofs:
            proof.verify()


def test_an_honest_consistent_audit_of_a_billed_call_is_no_finding(tmp_path: Path) -> None:
    log = _Entries()
    log.add(call("req_1", reasoning=_GOLDEN_REASONING))
    log.audit(golden.evidence(_countersigned(tmp_path, "req_1")), "req_1")
    audited_log = audited(tmp_path, log.items)

    result = reconcile(audited_log, parse_invoice(_csv_for("req_1")))

    assert result.matches, result.findings
    (audit,) = coin.verify_log_audits(audited_log)  # a real audit, re-checked: it passes
    assert audit.status is coin.AuditStatus.CONSISTENT


def _tampered_opening(evidence: coin.Evidence) -> coin.Evidence:
    first, *rest = evidence.openings
    return dataclasses.replace(
        evidence, openings=(dataclasses.replace(first, token_id=first.token_id + 1), *rest)
    )


@pytest.mark.parametrize(
    ("make", "consistent", "code"),
    [
        pytest.param(
            lambda synthetic: golden.evidence(synthetic, scores=(0.9, 0.1)),
            True,
            "coin.logged_verdict_mismatch",
            id="flagged-evidence-logged-consistent",
        ),
        pytest.param(
            golden.evidence, False, "coin.logged_verdict_mismatch", id="a-pass-logged-as-a-failure"
        ),
        pytest.param(
            lambda synthetic: _tampered_opening(golden.evidence(synthetic)),
            True,
            "coin.token_commitment_mismatch",
            id="tampered-opening",
        ),
        pytest.param(
            lambda _: golden.evidence(golden.commit(golden.TOKEN_IDS, request_id="req_1")),
            True,
            "coin.countersignature_missing",
            id="head-not-countersigned-by-this-log",
        ),
    ],
)
def test_a_logged_audit_that_does_not_verify_is_invalid_whatever_its_verdict(
    tmp_path: Path,
    make: Callable[[golden.Synthetic], coin.Evidence],
    consistent: bool,
    code: str,
) -> None:
    log = _Entries()
    log.add(call("req_1", reasoning=_GOLDEN_REASONING))
    evidence = make(_countersigned(tmp_path, "req_1"))
    head, verdict = log.audit(evidence, "req_1", consistent=consistent)
    audited_log = audited(tmp_path, log.items)

    result = reconcile(audited_log, parse_invoice(_csv_for("req_1")))

    (finding,) = result.findings
    assert (finding.kind, finding.request_id, finding.entries) == (
        FindingKind.REASONING_AUDIT_INVALID,
        "req_1",
        (0, head, verdict),
    )
    assert finding.detail.startswith(
        f"entry {verdict}: the logged audit of request req_1's hidden reasoning cannot be "
        f"trusted, whatever its verdict says: {code}: "
    ), finding.detail
    assert finding.to_dict()["kind"] == "reasoning_audit_invalid"
    for proof in finding.proofs:
        proof.verify()


def test_a_broken_audit_chain_of_a_billed_call_is_invalid(tmp_path: Path) -> None:
    log = _Entries()
    log.add(call("req_1", reasoning=_GOLDEN_REASONING))
    head, verdict = log.audit(golden.evidence(_countersigned(tmp_path, "req_1")), "req_1")
    challenge = head + 1
    # A second verdict for the same challenge, logged as a pass.
    again = log.add(
        {
            "coin": "verdict",
            "challenge_entry": challenge,
            "consistent": True,
            "error_code": None,
            "evidence_sha256": None,
            "evidence_parts": 0,
        }
    )
    # A verdict of another billed call's challenge with no evidence_parts: its parts unknown.
    log.add(call("req_2", reasoning=_GOLDEN_REASONING))
    other_head, _ = log.audit(
        golden.evidence(_countersigned(tmp_path, "req_2")), "req_2", failed_step=_FAILED_STEP
    )
    partless = log.add({"coin": "verdict", "challenge_entry": other_head + 1, "consistent": True})
    audited_log = audited(tmp_path, log.items)

    result = reconcile(audited_log, parse_invoice(_csv_for("req_1", "req_2")))

    found = [(f.kind, f.request_id, f.entries) for f in result.findings]
    assert found == [
        (FindingKind.REASONING_AUDIT_INVALID, "req_1", (0, head, again)),
        (FindingKind.REASONING_AUDIT_FAILED, "req_2", (again + 1, other_head, other_head + 2)),
        (FindingKind.REASONING_AUDIT_INVALID, "req_2", (again + 1, other_head, partless)),
    ]
    assert result.findings[0].detail.endswith(
        f": coin.audit_chain_invalid: entry {again}: challenge {challenge} was judged at {verdict}"
    )
    assert ": coin.evidence_parts_invalid: " in result.findings[2].detail
