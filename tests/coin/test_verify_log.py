"""``tallystick audit verify-log``: every CoIn audit a REAL tallystickd logged, re-checked offline
from an exported bundle and the log key alone.

One daemon for the module logs three audits over gRPC (an honest one, a flagged one whose
reasoning repeats its own blocks, and one whose opening was tampered with, so it has no
evidence) and exports a bundle before the first audit, after it, and after all three. Tamper
cases run the pure layer (:func:`~tallystick.verifier.coin.verify_audit_entries`) on the
real entries with one body changed, since the signed bundle cannot be edited.

A copy of that log is then rotated with the daemon's own ``keys rotate`` path, audited again
by the restarted daemon (its new key countersigns), and given the honest audit's entries once
more after the rotation: a head countersigned by the retired key, as whoever kept that key
could log it, in a bundle that verifies as a log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sdk.conftest import Sidecar  # the SDK tests' real-daemon fixture class
from tallystick.daemon.coin.attacks import AttackSource, inflate
from tallystick.daemon.coin.embedding import EmbeddingEngine
from tallystick.daemon.coin.provider import Commitment, commit, commit_tokens
from tallystick.daemon.coin.tokenizer import Tokenizer
from tallystick.daemon.keys_cli import rotate_log_key
from tallystick.daemon.log import Log
from tallystick.sdk import Client
from tallystick.sdk.client import Policy
from tallystick.verifier._cli import EXIT_OK, EXIT_REJECTED, EXIT_USAGE, main
from tallystick.verifier.checkpoint import NoteSigner, NoteVerifier, SignedNote
from tallystick.verifier.coin import (
    Attestation,
    AuditStatus,
    LoggedAudit,
    join_evidence,
    verify_audit_entries,
    verify_log_audits,
)
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.keys import PrivateKey, load_public_key
from tallystick.verifier.logbundle import Bundle, LogKeys
from tallystick.verifier.logentry import EntryKind, LogEntry
from tallystick.verifier.provenance import AuditedLog

MODEL = "test-model"
#: A stand-in TEE quote: Tallystick records it by digest and never verifies it.
QUOTE = Attestation(format="tdx-quote", document=b"\x04\x00quote-bytes")


@dataclasses.dataclass(frozen=True)
class Logged:
    """What the module's daemon logged and exported."""

    data_dir: Path  # the stopped daemon's data directory
    empty: Path  # a bundle from before any audit
    honest_only: Path  # after the consistent audit
    all_three: Path  # after all three audits
    log_key: str  # the log's public key (base64url)
    log_vkey: str  # its C2SP note verifier key
    consistent: int  # verdict entry indexes
    flagged: int
    no_evidence: int
    evidence: dict[int, bytes]  # verdict entry -> the evidence FinishAudit returned


def _audit(
    client: Client,
    commitment: Commitment,
    trace: dict[str, Any],
    vkey: str,
    *,
    call_request_id: str | None = None,
    tamper: bool = False,
    attestation: Attestation | None = None,
) -> Any:
    challenge = client.begin_coin_audit(
        head_note=commitment.head_note,
        provider_vkey=vkey,
        prompt=trace["prompt"],
        answer=trace["answer"],
        sketch=commitment.sketch,
        call_request_id=call_request_id,
        attestation=attestation,
    )
    openings = commitment.open(challenge.indices)
    if tamper:
        openings[0] = dataclasses.replace(openings[0], token_id=openings[0].token_id + 1)
    return client.finish_coin_audit(challenge.audit_id, openings, sketch_key=commitment.sketch_key)


def _policy(root: Path) -> Policy:
    return Policy(spool_dir=root / "spool", retry_in_background=False, timeout_s=30)


@pytest.fixture(scope="module")
def honest(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    short_traces: list[dict[str, Any]],
    signer: NoteSigner,
) -> tuple[Commitment, dict[str, Any]]:
    """An honest commitment to a short trace, and the trace."""
    trace = short_traces[0]
    commitment = commit(
        engine,
        tokenizer,
        prompt=trace["prompt"],
        reasoning=trace["reasoning"],
        answer=trace["answer"],
        request_id="req-log-1",
        model=MODEL,
        reported_usage=None,
        signer=signer,
    )
    return commitment, trace


@pytest.fixture(scope="module")
def logged(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    dev_traces: list[dict[str, Any]],
    signer: NoteSigner,
    honest: tuple[Commitment, dict[str, Any]],
) -> Iterator[Logged]:
    commitment, honest_trace = honest
    # A medium math trace whose blocks are repeated: the sketch and the duplicate check flag it.
    padded_trace = next(
        t
        for t in dev_traces
        if t["domain"] == "math" and 600 <= len(tokenizer.encode(t["reasoning"])) <= 900
    )
    source = AttackSource(padded_trace["prompt"], padded_trace["reasoning"], padded_trace["answer"])
    inflated = inflate(
        source, "duplicate_blocks", 1.0, tokenizer=tokenizer, rng=np.random.default_rng(0)
    )
    padded = commit_tokens(
        engine,
        tokenizer,
        reasoning_ids=inflated.token_ids,
        prompt=padded_trace["prompt"],
        answer=padded_trace["answer"],
        request_id="req-log-2",
        model=MODEL,
        reported_usage=None,
        signer=signer,
    )
    with tempfile.TemporaryDirectory(prefix="tsv-") as name:
        root = Path(name)
        sidecar = Sidecar(root / "d").start()
        try:
            assert sidecar.daemon is not None
            log = sidecar.daemon.log
            log_key, log_vkey = log.public_key.to_b64url(), log.vkey
            log.export(root / "empty.bundle")
            with Client(sidecar.address("alice"), policy=_policy(root)) as client:
                first = _audit(
                    client, commitment, honest_trace, signer.vkey, call_request_id="call-7"
                )
                log.export(root / "honest.bundle")
                second = _audit(client, padded, padded_trace, signer.vkey, attestation=QUOTE)
                third = _audit(client, commitment, honest_trace, signer.vkey, tamper=True)
            log.export(root / "all.bundle")
        finally:
            sidecar.stop()
        assert first.consistent, first.flagged
        assert not second.consistent and second.error_code is None, second
        assert third.error_code == "coin.token_commitment_mismatch"
        yield Logged(
            data_dir=root / "d",
            empty=root / "empty.bundle",
            honest_only=root / "honest.bundle",
            all_three=root / "all.bundle",
            log_key=log_key,
            log_vkey=log_vkey,
            consistent=first.verdict_entry_index,
            flagged=second.verdict_entry_index,
            no_evidence=third.verdict_entry_index,
            evidence={
                first.verdict_entry_index: first.evidence,
                second.verdict_entry_index: second.evidence,
            },
        )


@dataclasses.dataclass(frozen=True)
class Rotated:
    """A copy of the module's log, rotated once after its three audits."""

    bundle: Path  # exported after the audits below
    original_key: str  # the retired key (base64url), as first published
    new_key: str  # the key in service
    retired_at: int  # the original key's retirement (ms)
    after: int  # verdict entry of an honest audit logged after the rotation
    replayed: int  # verdict entry of the first honest audit's entries, logged again after it


def _replay(log: Log, verdict_entry: int) -> int:
    """Append the audit judged at ``verdict_entry`` again: its head, challenge, parts and
    verdict, re-linked to their new indexes. The head keeps its countersignature by the key
    the log had then; after a rotation that key is retired, so this is the head a holder of
    the retired key could log. Returns the new verdict's index."""
    entries = [LogEntry.from_bytes(raw) for raw in log.entries(0, log.size)]
    verdict = entries[verdict_entry]
    challenge = entries[verdict.body["challenge_entry"]]
    head = entries[challenge.body["head_entry"]]
    parts = entries[verdict_entry - verdict.body["evidence_parts"] : verdict_entry]
    agent = verdict.agent
    head_index = log.append(EntryKind.AUDIT, agent, dict(head.body))
    challenge_index = log.append(
        EntryKind.AUDIT, agent, {**challenge.body, "head_entry": head_index}
    )
    relinked = [
        (EntryKind.AUDIT, agent, {**entry.body, "challenge_entry": challenge_index})
        for entry in (*parts, verdict)
    ]
    return log.append_batch(relinked)[-1]


@pytest.fixture(scope="module")
def rotated(
    logged: Logged, honest: tuple[Commitment, dict[str, Any]], signer: NoteSigner
) -> Iterator[Rotated]:
    """The module's log copied, rotated by ``keys rotate``'s own path, audited once by the
    restarted daemon, its first honest audit replayed, and exported."""
    commitment, trace = honest
    with tempfile.TemporaryDirectory(prefix="tsr-") as name:
        root = Path(name)
        data_dir = root / "d"
        shutil.copytree(logged.data_dir, data_dir, ignore=shutil.ignore_patterns("*.sock"))
        rotation = rotate_log_key(data_dir, now_ms=time.time_ns() // 1_000_000)
        sidecar = Sidecar(data_dir).start()
        try:
            with Client(sidecar.address("alice"), policy=_policy(root)) as client:
                after = _audit(client, commitment, trace, signer.vkey, call_request_id="call-8")
        finally:
            sidecar.stop()
        assert after.consistent, after.flagged
        with Log.open(data_dir) as log:
            replayed = _replay(log, logged.consistent)
            log.export(root / "rotated.bundle")
        yield Rotated(
            bundle=root / "rotated.bundle",
            original_key=logged.log_key,
            new_key=rotation.log_pub,
            retired_at=rotation.rotated_at,
            after=after.verdict_entry_index,
            replayed=replayed,
        )


@pytest.fixture(scope="module")
def audited(logged: Logged) -> AuditedLog:
    """The three-audit bundle, verified."""
    bundle = Bundle.from_path(logged.all_three)
    return AuditedLog.open(bundle, log_key=load_public_key(logged.log_key))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


# -- the command ----------------------------------------------------------------------------------


def test_each_audit_gets_a_line_and_a_failed_one_exits_1(
    logged: Logged, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(
        capsys, "audit", "verify-log", str(logged.all_three), "--log-key", logged.log_key
    )

    assert code == EXIT_REJECTED
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"entry {logged.consistent} request call-7: consistent: ")
    assert "detection probability 0." in lines[0]
    assert lines[1].startswith(f"entry {logged.flagged} request -: flagged: coin.flagged: ")
    assert lines[1].endswith(
        f" (attestation tdx-quote sha256:{QUOTE.sha256}, not verified)"
    )  # recorded with the head, shown as such
    assert lines[2] == (
        f"entry {logged.no_evidence} request -: no_evidence: coin.token_commitment_mismatch: "
        "a protocol step failed: no evidence was logged"
    )
    assert lines[3].startswith("NOT ALL CONSISTENT: 3 CoIn audit(s) in log ")
    assert lines[3].endswith("1 consistent, 1 flagged, 1 no_evidence, 0 invalid")


def test_json_lists_every_audit(logged: Logged, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(
        capsys,
        "audit",
        "verify-log",
        str(logged.all_three),
        "--log-key",
        logged.log_key,
        "--json",
    )

    assert code == EXIT_REJECTED
    result = json.loads(out)
    assert set(result) == {"valid", "origin", "log_size", "consistent", "counts", "audits"}
    assert result["valid"] is True and result["consistent"] is False
    assert result["counts"] == {"consistent": 1, "flagged": 1, "no_evidence": 1, "invalid": 0}
    audits = {audit["verdict_entry"]: audit for audit in result["audits"]}
    assert list(audits) == [logged.consistent, logged.flagged, logged.no_evidence]
    honest, padded, failed = audits.values()
    assert set(honest) == {
        "verdict_entry",
        "head_entry",
        "challenge_entry",
        "call_request_id",
        "status",
        "code",
        "detail",
        "evidence_sha256",
        "verdict",
        "attestation",
    }
    assert (honest["status"], honest["call_request_id"], honest["code"]) == (
        "consistent",
        "call-7",
        None,
    )
    assert honest["attestation"] is None  # the provider offered none
    assert audits[logged.flagged]["attestation"] == QUOTE.digest_json()
    assert honest["head_entry"] < honest["challenge_entry"] < honest["verdict_entry"]
    assert honest["verdict"]["consistent"] is True
    assert (
        honest["evidence_sha256"] == hashlib.sha256(logged.evidence[logged.consistent]).hexdigest()
    )
    assert (padded["status"], padded["code"], padded["call_request_id"]) == (
        "flagged",
        "coin.flagged",
        None,
    )
    assert padded["verdict"]["flagged"] and padded["verdict"]["consistent"] is False
    assert padded["detail"] == ", ".join(padded["verdict"]["flagged"])
    assert (failed["status"], failed["code"]) == ("no_evidence", "coin.token_commitment_mismatch")
    assert failed["verdict"] is None and failed["evidence_sha256"] is None
    assert failed["challenge_entry"] == failed["verdict_entry"] - 1


def test_only_consistent_audits_exit_0(logged: Logged, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(
        capsys, "audit", "verify-log", str(logged.honest_only), "--log-key", logged.log_key
    )

    assert code == EXIT_OK
    assert out.splitlines()[-1].startswith("valid: 1 CoIn audit(s) in log ")


def test_no_audits_exit_0(logged: Logged, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, "audit", "verify-log", str(logged.empty), "--log-key", logged.log_key)

    assert code == EXIT_OK
    assert out.startswith("valid: no CoIn audits in this log: ")


def test_a_wrong_log_key_is_a_damaged_bundle(
    logged: Logged, capsys: pytest.CaptureFixture[str]
) -> None:
    other = PrivateKey.generate().public_key.to_b64url()
    code, out = _run(capsys, "audit", "verify-log", str(logged.all_three), "--log-key", other)
    assert code == EXIT_REJECTED
    assert out.startswith("invalid: the bundle does not verify, nothing checked: ")

    code, out = _run(
        capsys, "audit", "verify-log", str(logged.all_three), "--log-key", other, "--json"
    )
    assert code == EXIT_REJECTED
    assert json.loads(out)["valid"] is False


def test_an_unreadable_bundle_exits_2(logged: Logged, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["audit", "verify-log", str(tmp_path / "missing"), "--log-key", logged.log_key])
    assert exited.value.code == EXIT_USAGE


def test_out_writes_the_exact_evidence_that_audit_verify_accepts(
    logged: Logged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "new" / "evidence"
    argv = ["audit", "verify-log", str(logged.all_three), "--log-key", logged.log_key]

    code, _ = _run(capsys, *argv, "--out", str(out_dir))

    assert code == EXIT_REJECTED
    written = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    assert written == {
        f"audit-{logged.consistent}.json": logged.evidence[logged.consistent],
        f"audit-{logged.flagged}.json": logged.evidence[logged.flagged],
    }
    honest = str(out_dir / f"audit-{logged.consistent}.json")
    padded = str(out_dir / f"audit-{logged.flagged}.json")
    assert _run(capsys, "audit", "verify", honest, "--log-key", logged.log_vkey)[0] == EXIT_OK
    assert _run(capsys, "audit", "verify", padded, "--log-key", logged.log_vkey)[0] == EXIT_REJECTED

    # A second run into the same folder refuses to overwrite, and leaves the files alone.
    (out_dir / f"audit-{logged.consistent}.json").write_bytes(b"kept")
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--out", str(out_dir)])
    assert exited.value.code == EXIT_USAGE
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (out_dir / f"audit-{logged.consistent}.json").read_bytes() == b"kept"


# -- the pure layer, on the real entries ----------------------------------------------------------


def _keys(logged: Logged) -> LogKeys:
    """The module log's one key, never retired."""
    verifier = NoteVerifier.from_vkey(logged.log_vkey)
    return LogKeys.single(verifier.name, verifier.public_key)


def _statuses(audits: tuple[LoggedAudit, ...]) -> dict[int, tuple[AuditStatus, str | None]]:
    return {audit.verdict_entry: (audit.status, audit.code) for audit in audits}


def _edited(
    audited: AuditedLog, index: int, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> list[LogEntry]:
    entries = list(audited.entries)
    entries[index] = dataclasses.replace(entries[index], body=change(dict(entries[index].body)))
    return entries


def test_the_recipe_and_the_layer_agree(logged: Logged, audited: AuditedLog) -> None:
    audits = verify_log_audits(audited)
    layer = verify_audit_entries(audited.entries, log_keys=_keys(logged))
    assert audits == layer
    assert _statuses(audits) == {
        logged.consistent: (AuditStatus.CONSISTENT, None),
        logged.flagged: (AuditStatus.FLAGGED, "coin.flagged"),
        logged.no_evidence: (AuditStatus.NO_EVIDENCE, "coin.token_commitment_mismatch"),
    }
    assert audits[0].evidence == logged.evidence[logged.consistent]
    assert audits[0].passed and not any(audit.passed for audit in audits[1:])


def _without_countersignature(note: str) -> str:
    """The provider's note as it arrived, before the log countersigned it."""
    signed = SignedNote.from_text(note)
    return SignedNote(signed.text, signed.signatures[:-1]).to_text()


def _only(audits: tuple[LoggedAudit, ...], verdict_entry: int) -> LoggedAudit:
    (found,) = [audit for audit in audits if audit.verdict_entry == verdict_entry]
    return found


def test_parts_out_of_order_do_not_join(logged: Logged, audited: AuditedLog) -> None:
    verdict = audited.entries[logged.consistent]
    count = verdict.body["evidence_parts"]
    assert count >= 2, "the honest evidence should span several entries"
    entries = list(audited.entries)
    first, second = logged.consistent - count, logged.consistent - count + 1
    entries[first], entries[second] = (
        dataclasses.replace(entries[first], body=entries[second].body),
        dataclasses.replace(entries[second], body=entries[first].body),
    )

    found = _only(
        verify_audit_entries(entries, log_keys=_keys(logged)),
        logged.consistent,
    )

    assert (found.status, found.code) == (AuditStatus.INVALID, "coin.evidence_parts_invalid")
    assert found.evidence is None


@pytest.mark.parametrize(
    ("target", "change", "code"),
    [
        pytest.param(
            "verdict",
            lambda body: {**body, "evidence_sha256": "00" * 32},
            "coin.evidence_parts_invalid",
            id="wrong-hash",
        ),
        pytest.param(
            "verdict",
            lambda body: {**body, "consistent": False},
            "coin.logged_verdict_mismatch",
            id="verdict-flipped",
        ),
        pytest.param(
            "verdict",
            lambda body: {**body, "error_code": "coin.index_mismatch"},
            "coin.logged_verdict_mismatch",
            id="error-code-with-evidence",
        ),
        pytest.param(
            "challenge",
            lambda body: {**body, "nonce": "00" * 32},
            "coin.audit_chain_invalid",
            id="nonce",
        ),
        pytest.param(
            "challenge",
            lambda body: {**body, "indices_sha256": "00" * 32},
            "coin.audit_chain_invalid",
            id="indices",
        ),
        pytest.param(
            "head",
            lambda body: {**body, "head_note": _without_countersignature(body["head_note"])},
            "coin.audit_chain_invalid",
            id="head-note",
        ),
        pytest.param(
            "verdict",
            lambda body: {**body, "challenge_entry": body["challenge_entry"] - 1},
            "coin.audit_chain_invalid",
            id="challenge-is-the-head",
        ),
        pytest.param(
            "head",
            lambda body: {**body, "attestation": None},
            "coin.audit_chain_invalid",
            id="attestation-null",
        ),
        pytest.param(
            "head",
            lambda body: {**body, "attestation": {"format": "Intel TDX", "sha256": "ab" * 32}},
            "coin.audit_chain_invalid",
            id="attestation-format",
        ),
        pytest.param(
            "head",
            lambda body: {**body, "attestation": {"format": "intel-tdx-quote", "sha256": "ab"}},
            "coin.audit_chain_invalid",
            id="attestation-digest",
        ),
        pytest.param(
            "head",
            lambda body: {
                **body,
                "attestation": {"format": "tdx", "sha256": "ab" * 32, "document": "AA=="},
            },
            "coin.audit_chain_invalid",
            id="attestation-extra-member",
        ),
    ],
)
def test_entries_that_disagree_are_invalid(
    logged: Logged,
    audited: AuditedLog,
    target: str,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    code: str,
) -> None:
    verdict = audited.entries[logged.consistent]
    challenge_index = verdict.body["challenge_entry"]
    index = {
        "verdict": logged.consistent,
        "challenge": challenge_index,
        "head": audited.entries[challenge_index].body["head_entry"],
    }[target]

    found = _only(
        verify_audit_entries(_edited(audited, index, change), log_keys=_keys(logged)),
        logged.consistent,
    )

    assert (found.status, found.code) == (AuditStatus.INVALID, code), found.detail


def test_a_head_entrys_attestation_record_is_reported_not_verified(
    logged: Logged, audited: AuditedLog
) -> None:
    head = audited.entries[audited.entries[logged.consistent].body["challenge_entry"]].body[
        "head_entry"
    ]
    record = {"format": "intel-tdx-quote", "sha256": "ab" * 32}
    entries = _edited(audited, head, lambda body: {**body, "attestation": record})

    found = _only(verify_audit_entries(entries, log_keys=_keys(logged)), logged.consistent)

    assert found.status is AuditStatus.CONSISTENT
    assert found.attestation == record
    assert found.to_dict()["attestation"] == record
    assert _only(verify_log_audits(audited), logged.consistent).attestation is None


def test_a_head_not_countersigned_by_this_log_is_invalid(
    logged: Logged, audited: AuditedLog
) -> None:
    origin = NoteVerifier.from_vkey(logged.log_vkey).name
    stranger = LogKeys.single(origin, PrivateKey.generate().public_key)

    audits = verify_audit_entries(audited.entries, log_keys=stranger)

    found = _only(audits, logged.consistent)
    assert (found.status, found.code) == (AuditStatus.INVALID, "coin.countersignature_missing")
    assert found.evidence == logged.evidence[logged.consistent]  # joined, for a look by hand


def test_a_verdict_without_evidence_cannot_be_consistent(
    logged: Logged, audited: AuditedLog
) -> None:
    entries = _edited(audited, logged.no_evidence, lambda body: {**body, "consistent": True})

    found = _only(
        verify_audit_entries(entries, log_keys=_keys(logged)),
        logged.no_evidence,
    )

    assert (found.status, found.code) == (AuditStatus.INVALID, "coin.logged_verdict_mismatch")


def test_join_evidence_checks_order_and_hash() -> None:
    raw = b'{"evidence":"' + b"x" * 50 + b'"}'
    texts = [raw[:20].decode(), raw[20:].decode()]
    verdict = {
        "coin": "verdict",
        "challenge_entry": 3,
        "evidence_sha256": hashlib.sha256(raw).hexdigest(),
        "evidence_parts": 2,
    }
    parts = [
        {"coin": "evidence", "challenge_entry": 3, "part": i, "parts": 2, "evidence_json": text}
        for i, text in enumerate(texts)
    ]
    assert join_evidence(verdict, parts) == raw
    for bad_verdict, bad_parts in [
        (verdict, parts[::-1]),
        ({**verdict, "evidence_sha256": "00" * 32}, parts),
        ({**verdict, "evidence_parts": 3}, parts),
        ({**verdict, "challenge_entry": 4}, parts),
        ({**verdict, "evidence_parts": 0, "evidence_sha256": None}, parts),
    ]:
        with pytest.raises(MalformedInput) as caught:
            join_evidence(bad_verdict, bad_parts)
        assert caught.value.code == "coin.evidence_parts_invalid"


# -- a rotated log ---------------------------------------------------------------------------------


def _head(log: AuditedLog, verdict_entry: int) -> LogEntry:
    challenge = log.entries[log.entries[verdict_entry].body["challenge_entry"]]
    return log.entries[challenge.body["head_entry"]]


def _countersigner_kid(log: AuditedLog, verdict_entry: int) -> int:
    """The key id of the log's countersignature: the signature the daemon adds last."""
    return SignedNote.from_text(_head(log, verdict_entry).body["head_note"]).signatures[-1].key_id


@pytest.mark.parametrize("pinned", ["original_key", "new_key"])
def test_a_rotated_log_judges_each_head_by_its_countersigners_retirement(
    logged: Logged, rotated: Rotated, pinned: str
) -> None:
    log = AuditedLog.open(
        Bundle.from_path(rotated.bundle), log_key=load_public_key(getattr(rotated, pinned))
    )
    original = NoteVerifier.from_vkey(logged.log_vkey)
    assert len(log.bundle.key_documents) == 2
    # What each case stands for: heads before the rotation and the replayed one carry the
    # original key's countersignature, the audit after it the new key's.
    assert _head(log, logged.consistent).time_ms < rotated.retired_at
    assert _head(log, rotated.replayed).time_ms >= rotated.retired_at
    assert _countersigner_kid(log, logged.consistent) == original.key_id
    assert _countersigner_kid(log, rotated.replayed) == original.key_id
    assert _countersigner_kid(log, rotated.after) != original.key_id

    audits = verify_log_audits(log)

    assert _statuses(audits) == {
        logged.consistent: (AuditStatus.CONSISTENT, None),
        logged.flagged: (AuditStatus.FLAGGED, "coin.flagged"),
        logged.no_evidence: (AuditStatus.NO_EVIDENCE, "coin.token_commitment_mismatch"),
        rotated.after: (AuditStatus.CONSISTENT, None),
        rotated.replayed: (AuditStatus.INVALID, "coin.countersigner_retired"),
    }
    replayed = _only(audits, rotated.replayed)
    assert replayed.evidence == logged.evidence[logged.consistent]
    assert f"retired at {rotated.retired_at}" in (replayed.detail or "")


def test_verify_log_reports_a_head_countersigned_after_its_keys_retirement(
    rotated: Rotated, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(
        capsys, "audit", "verify-log", str(rotated.bundle), "--log-key", rotated.original_key
    )

    assert code == EXIT_REJECTED
    lines = out.splitlines()
    assert len(lines) == 6
    assert lines[3].startswith(f"entry {rotated.after} request call-8: consistent: ")
    assert lines[4].startswith(
        f"entry {rotated.replayed} request call-7: invalid: coin.countersigner_retired: "
    )
    assert lines[5].endswith("2 consistent, 1 flagged, 1 no_evidence, 1 invalid")


@pytest.mark.parametrize(
    ("retired_after_head_ms", "status", "code"),
    [
        pytest.param(0, AuditStatus.INVALID, "coin.countersigner_retired", id="retired-at-head"),
        pytest.param(1, AuditStatus.CONSISTENT, None, id="retired-just-after-head"),
    ],
)
def test_the_countersigner_must_be_in_service_at_the_head_entrys_time(
    logged: Logged,
    audited: AuditedLog,
    retired_after_head_ms: int,
    status: AuditStatus,
    code: str | None,
) -> None:
    # As for checkpoints, a key vouches only for entries strictly older than its retirement;
    # a successor in service that never signed the head does not rescue it.
    countersigner = NoteVerifier.from_vkey(logged.log_vkey)
    (successor,) = LogKeys.single(countersigner.name, PrivateKey.generate().public_key).keys
    retired_at = _head(audited, logged.consistent).time_ms + retired_after_head_ms
    keys = LogKeys(countersigner.name, ((countersigner, retired_at), successor))

    found = _only(verify_audit_entries(audited.entries, log_keys=keys), logged.consistent)

    assert (found.status, found.code) == (status, code), found.detail


def test_verify_audit_entries_needs_a_log_key(audited: AuditedLog) -> None:
    with pytest.raises(ValueError, match="at least one log key"):
        verify_audit_entries(audited.entries, log_keys=LogKeys("tallystick.local/x", ()))
