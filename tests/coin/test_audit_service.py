"""CoIn audits through a REAL tallystickd (Unix sockets, SQLite log) and the SDK clients.

The provider side is an honest commitment built in process with the session's engine; the
sidecar builds its own engine on the first BeginAudit (one load per module).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sdk.conftest import Sidecar  # the SDK tests' real-daemon fixture class
from tallystick.daemon.coin.embedding import EmbeddingEngine
from tallystick.daemon.coin.provider import Commitment, commit
from tallystick.daemon.coin.tokenizer import Tokenizer
from tallystick.daemon.coin_audit import (
    AuditUnavailable,
    AuditUnknown,
    CoinAudits,
    CoinAuditService,
    PendingAudits,
)
from tallystick.daemon.identity import Caller
from tallystick.daemon.server import status_for
from tallystick.proto import audit_pb2, audit_pb2_grpc
from tallystick.sdk import AsyncClient, Client, CoinVerdict, audit_commitment
from tallystick.sdk.client import Policy
from tallystick.sdk.errors import REASON_KEY, SidecarRejected
from tallystick.verifier._cli import EXIT_OK, main
from tallystick.verifier.checkpoint import NoteSigner, NoteVerifier, SignedNote
from tallystick.verifier.coin import (
    MAX_ATTESTATION_BYTES,
    AuditStatus,
    Opening,
    evidence_parts,
    indices_sha256,
    join_evidence,
    verify_audit_entries,
    verify_evidence,
)
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.logbundle import LogKeys

MODEL = "test-model"


@dataclasses.dataclass(frozen=True)
class Provider:
    """What the agent got from a provider: the texts and the provider's commitment."""

    prompt: str
    answer: str
    reasoning: str
    commitment: Commitment
    vkey: str


@pytest.fixture(scope="module")
def sidecar() -> Iterator[Sidecar]:
    """One daemon for the module (agents alice, bob, carol): its engine loads once."""
    with tempfile.TemporaryDirectory(prefix="tsc-") as name:
        running = Sidecar(Path(name) / "d").start()
        yield running
        running.stop()


@pytest.fixture(scope="module")
def provider(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    short_traces: list[dict[str, Any]],
    signer: NoteSigner,
) -> Provider:
    trace = short_traces[0]
    commitment = commit(
        engine,
        tokenizer,
        prompt=trace["prompt"],
        reasoning=trace["reasoning"],
        answer=trace["answer"],
        request_id="req-audit-1",
        model=MODEL,
        reported_usage=None,
        signer=signer,
    )
    return Provider(trace["prompt"], trace["answer"], trace["reasoning"], commitment, signer.vkey)


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return Policy(spool_dir=tmp_path / "spool", retry_in_background=False, timeout_s=5)


def _begin(client: Client, provider: Provider, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "head_note": provider.commitment.head_note,
        "provider_vkey": provider.vkey,
        "prompt": provider.prompt,
        "answer": provider.answer,
        "sketch": provider.commitment.sketch,
    }
    fields.update(overrides)
    return client.begin_coin_audit(**fields)


def _bodies(sidecar: Sidecar, start: int) -> list[dict[str, Any]]:
    return [entry.body for entry in sidecar.entries(start)]


def _evidence_of(sidecar: Sidecar, verdict_index: int) -> bytes | None:
    entries = sidecar.entries(0)
    verdict = entries[verdict_index].body
    count = verdict["evidence_parts"]
    parts = [entry.body for entry in entries[verdict_index - count : verdict_index]]
    return join_evidence(verdict, parts)


# -- the honest round trip ----------------------------------------------------------------------


def test_honest_commitment_is_consistent_and_logged_in_order(
    sidecar: Sidecar, provider: Provider, policy: Policy, tmp_path: Path
) -> None:
    start = sidecar.daemon.log.size if sidecar.daemon else 0
    with Client(sidecar.address("alice"), policy=policy) as client:
        challenge = _begin(client, provider, call_request_id="call-7", domain="math")
        openings = provider.commitment.open(challenge.indices)
        verdict = client.finish_coin_audit(
            challenge.audit_id, openings, sketch_key=provider.commitment.sketch_key
        )

    assert verdict.consistent, verdict.flagged
    assert verdict.error_code is None and verdict.score is not None
    assert len(challenge.audit_id) == 32 and int(challenge.audit_id, 16) >= 0
    assert list(challenge.indices) == sorted(set(challenge.indices))
    assert challenge.indices[-1] == provider.commitment.head.reasoning_tokens - 1

    entries = sidecar.entries(start)
    assert {entry.kind.value for entry in entries} == {"audit"}
    assert {entry.agent for entry in entries} == {"alice"}  # from the socket
    head, chal, *parts, final = [entry.body for entry in entries]
    assert [head["coin"], chal["coin"], final["coin"]] == ["head", "challenge", "verdict"]
    assert challenge.head_entry_index == start
    assert challenge.challenge_entry_index == start + 1
    assert verdict.verdict_entry_index == start + len(entries) - 1
    # The logged head is the provider's note countersigned by the log key (coin.md §4.3).
    assert sidecar.daemon is not None
    log_key = NoteVerifier.from_vkey(sidecar.daemon.log.vkey)
    logged = SignedNote.from_text(head["head_note"])
    provided = SignedNote.from_text(provider.commitment.head_note)
    assert logged.text == provided.text
    assert logged.signatures[:-1] == provided.signatures
    assert logged.signatures[-1].name == sidecar.daemon.log.origin
    logged.verify([log_key], required=[log_key.name])
    assert head == {
        "coin": "head",
        "head_note": head["head_note"],
        "provider_vkey": provider.vkey,
        "call_request_id": "call-7",
    }
    assert chal == {
        "coin": "challenge",
        "head_entry": challenge.head_entry_index,
        "nonce": challenge.nonce.hex(),
        "k": json.loads(verdict.evidence)["challenge"]["k"],
        "indices_sha256": indices_sha256(challenge.indices),
    }
    assert len(challenge.nonce) == 32
    assert final == {
        "coin": "verdict",
        "challenge_entry": challenge.challenge_entry_index,
        "consistent": True,
        "error_code": None,
        "evidence_sha256": hashlib.sha256(verdict.evidence).hexdigest(),
        "evidence_parts": len(parts),
    }
    assert parts and all(part["coin"] == "evidence" for part in parts)
    # The logged evidence is exactly what the agent got, and it re-verifies offline.
    assert _evidence_of(sidecar, verdict.verdict_entry_index) == verdict.evidence
    assert verify_evidence(verdict.evidence, log_key=log_key).consistent
    evidence_file = tmp_path / "evidence.json"
    evidence_file.write_bytes(verdict.evidence)
    assert main(["audit", "verify", str(evidence_file), "--provider-key", provider.vkey]) == EXIT_OK
    tied = ["audit", "verify", str(evidence_file), "--log-key", sidecar.daemon.log.vkey]
    assert main(tied) == EXIT_OK

    # Neither prompt nor answer (nor, of course, the reasoning) reached the database.
    stored = b"".join(path.read_bytes() for path in sidecar.data_dir.glob("tallystick.sqlite3*"))
    assert stored
    for text in (provider.prompt, provider.answer, provider.reasoning):
        for form in (text, json.dumps(text)[1:-1]):
            assert form.encode("utf-8") not in stored


def test_audit_commitment_runs_begin_open_finish(
    sidecar: Sidecar, provider: Provider, policy: Policy
) -> None:
    asked: list[tuple[int, ...]] = []

    def opener(indices: tuple[int, ...]) -> tuple[list[Opening], bytes]:
        asked.append(indices)
        return provider.commitment.answer_challenge(indices)

    with Client(sidecar.address("bob"), policy=policy) as client:
        verdict = audit_commitment(
            client,
            head_note=provider.commitment.head_note,
            provider_vkey=provider.vkey,
            prompt=provider.prompt,
            answer=provider.answer,
            sketch=provider.commitment.sketch,
            opener=opener,
        )

    assert isinstance(verdict, CoinVerdict) and verdict.consistent
    assert len(asked) == 1 and len(asked[0]) == json.loads(verdict.evidence)["verdict"]["k"]
    assert sidecar.entries(verdict.verdict_entry_index)[0].agent == "bob"


def test_async_client_round_trip(sidecar: Sidecar, provider: Provider, policy: Policy) -> None:
    async def run() -> CoinVerdict:
        async with AsyncClient(sidecar.address("carol"), policy=policy) as client:
            challenge = await client.begin_coin_audit(
                head_note=provider.commitment.head_note,
                provider_vkey=provider.vkey,
                prompt=provider.prompt,
                answer=provider.answer,
                sketch=provider.commitment.sketch,
            )
            return await client.finish_coin_audit(
                challenge.audit_id,
                provider.commitment.open(challenge.indices),
                sketch_key=provider.commitment.sketch_key,
            )

    verdict = asyncio.run(run())

    assert verdict.consistent
    assert _evidence_of(sidecar, verdict.verdict_entry_index) == verdict.evidence


# -- attestation evidence (coin.md §4.9) ---------------------------------------------------------

#: Stands in for a ~5 KB TDX quote: the sidecar records it and never parses it.
QUOTE = b"\x04\x00\x02\x00" + bytes(range(256)) * 20


def _begin_attested(
    sidecar: Sidecar, provider: Provider, attestation: audit_pb2.Attestation
) -> audit_pb2.BeginAuditResponse:
    """BeginAudit as alice, carrying ``attestation``, straight over gRPC."""
    request = audit_pb2.BeginAuditRequest(
        head_note=provider.commitment.head_note,
        provider_vkey=provider.vkey,
        prompt=provider.prompt,
        answer=provider.answer,
        sketch=provider.commitment.sketch,
        call_request_id="call-attested",
    )
    request.attestation.CopyFrom(attestation)
    with grpc.insecure_channel(sidecar.address("alice")) as channel:
        reply: audit_pb2.BeginAuditResponse = audit_pb2_grpc.CoinAuditStub(channel).BeginAudit(
            request
        )
    return reply


def test_an_attestation_is_logged_by_its_digest_and_the_audit_still_verifies(
    sidecar: Sidecar, provider: Provider, policy: Policy
) -> None:
    assert sidecar.daemon is not None
    reply = _begin_attested(
        sidecar, provider, audit_pb2.Attestation(format="intel-tdx-quote", document=QUOTE)
    )
    with Client(sidecar.address("alice"), policy=policy) as client:
        verdict = client.finish_coin_audit(
            reply.audit_id,
            provider.commitment.open(reply.indices),
            sketch_key=provider.commitment.sketch_key,
        )

    head = sidecar.entries(reply.head_entry_index)[0]
    assert head.body == {
        "coin": "head",
        "head_note": head.body["head_note"],
        "provider_vkey": provider.vkey,
        "call_request_id": "call-attested",
        "attestation": {"format": "intel-tdx-quote", "sha256": hashlib.sha256(QUOTE).hexdigest()},
    }
    # The logged audit re-verifies offline with the member in its head entry.
    log_key = NoteVerifier.from_vkey(sidecar.daemon.log.vkey)
    audits = verify_audit_entries(
        sidecar.entries(0), log_keys=LogKeys.single(log_key.name, log_key.public_key)
    )
    (audit,) = [a for a in audits if a.verdict_entry == verdict.verdict_entry_index]
    assert verdict.consistent and audit.status == AuditStatus.CONSISTENT
    assert audit.head_entry == reply.head_entry_index
    assert audit.attestation == head.body["attestation"]
    # Only the digest is written: the document (in any encoding) never reaches the database.
    stored = b"".join(path.read_bytes() for path in sidecar.data_dir.glob("tallystick.sqlite3*"))
    for form in (QUOTE[:64], base64.b64encode(QUOTE)[:64], QUOTE[:64].hex().encode()):
        assert form not in stored


def test_a_head_without_attestation_has_no_such_member(
    sidecar: Sidecar, provider: Provider, policy: Policy
) -> None:
    with Client(sidecar.address("alice"), policy=policy) as client:
        challenge = _begin(client, provider)
    head = sidecar.entries(challenge.head_entry_index)[0]
    assert head.body["coin"] == "head" and "attestation" not in head.body


@pytest.mark.parametrize(
    "attestation",
    [
        pytest.param(audit_pb2.Attestation(), id="empty-message"),
        pytest.param(audit_pb2.Attestation(format="", document=QUOTE), id="format-empty"),
        pytest.param(audit_pb2.Attestation(format="Intel-TDX", document=QUOTE), id="uppercase"),
        pytest.param(audit_pb2.Attestation(format="tdx quote", document=QUOTE), id="space"),
        pytest.param(audit_pb2.Attestation(format="a" * 65, document=QUOTE), id="format-long"),
        pytest.param(audit_pb2.Attestation(format="intel-tdx-quote"), id="document-empty"),
        pytest.param(
            audit_pb2.Attestation(
                format="intel-tdx-quote", document=bytes(MAX_ATTESTATION_BYTES + 1)
            ),
            id="document-oversized",
        ),
    ],
)
def test_a_malformed_attestation_is_invalid_argument_and_writes_nothing(
    sidecar: Sidecar, provider: Provider, attestation: audit_pb2.Attestation
) -> None:
    assert sidecar.daemon is not None
    size = sidecar.daemon.log.size
    with pytest.raises(grpc.RpcError) as caught:
        _begin_attested(sidecar, provider, attestation)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(caught.value.trailing_metadata())[REASON_KEY] == "coin.request_malformed"
    assert caught.value.details().startswith("attestation: ")
    assert sidecar.daemon.log.size == size


# -- rejections ---------------------------------------------------------------------------------


def _tampered_note(provider: Provider) -> str:
    return provider.commitment.head_note.replace(f"model {MODEL}\n", f"model {MODEL}x\n")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        pytest.param(
            lambda p, other: {"provider_vkey": other.vkey},
            "coin.head_signature_invalid",
            id="wrong-vkey",
        ),
        pytest.param(
            lambda p, other: {"head_note": _tampered_note(p)},
            "coin.head_signature_invalid",
            id="tampered-note",
        ),
        pytest.param(
            lambda p, other: {"answer": p.answer + " (edited)"},
            "coin.answer_mismatch",
            id="answer-mismatch",
        ),
        pytest.param(
            lambda p, other: {"prompt": p.prompt + " (edited)"},
            "coin.prompt_mismatch",
            id="prompt-mismatch",
        ),
        pytest.param(
            lambda p, other: {"head_note": "not a note"}, "coin.head_malformed", id="not-a-note"
        ),
        pytest.param(
            lambda p, other: {"call_request_id": "r" * 257},
            "coin.request_malformed",
            id="long-request-id",
        ),
    ],
)
def test_a_bad_head_is_invalid_argument_and_writes_nothing(
    sidecar: Sidecar,
    provider: Provider,
    policy: Policy,
    make_signer: Any,
    change: Any,
    code: str,
) -> None:
    assert sidecar.daemon is not None
    size = sidecar.daemon.log.size
    with (
        Client(sidecar.address("alice"), policy=policy) as client,
        pytest.raises(SidecarRejected) as caught,
    ):
        _begin(client, provider, **change(provider, make_signer()))
    assert caught.value.code == code
    assert caught.value.status == "INVALID_ARGUMENT"
    assert sidecar.daemon.log.size == size


def test_a_tampered_opening_is_an_inconsistent_verdict_and_is_logged(
    sidecar: Sidecar, provider: Provider, policy: Policy
) -> None:
    with Client(sidecar.address("alice"), policy=policy) as client:
        challenge = _begin(client, provider)
        openings = provider.commitment.open(challenge.indices)
        openings[0] = dataclasses.replace(openings[0], token_id=openings[0].token_id + 1)
        verdict = client.finish_coin_audit(
            challenge.audit_id, openings, sketch_key=provider.commitment.sketch_key
        )

    assert not verdict.consistent
    assert verdict.error_code == "coin.token_commitment_mismatch"
    assert verdict.score is None and verdict.evidence == b"" and verdict.flagged == ()
    (logged,) = sidecar.entries(verdict.verdict_entry_index)
    assert logged.body == {
        "coin": "verdict",
        "challenge_entry": challenge.challenge_entry_index,
        "consistent": False,
        "error_code": "coin.token_commitment_mismatch",
        "evidence_sha256": None,
        "evidence_parts": 0,
    }
    assert verdict.verdict_entry_index == challenge.challenge_entry_index + 1
    assert _evidence_of(sidecar, verdict.verdict_entry_index) is None


def test_malformed_openings_write_nothing_and_the_audit_stays_pending(
    sidecar: Sidecar, provider: Provider, policy: Policy
) -> None:
    assert sidecar.daemon is not None
    with Client(sidecar.address("alice"), policy=policy) as client:
        challenge = _begin(client, provider)
        openings = provider.commitment.open(challenge.indices)
        request = audit_pb2.FinishAuditRequest(
            audit_id=challenge.audit_id,
            openings=[
                audit_pb2.LeafOpening(
                    index=opening.index,
                    leaf=opening.leaf.to_bytes()[:-1],  # one byte short
                    salt=opening.salt,
                    token_id=opening.token_id,
                    proof=list(opening.proof),
                )
                for opening in openings
            ],
        )
        size = sidecar.daemon.log.size
        with (
            grpc.insecure_channel(sidecar.address("alice")) as channel,
            pytest.raises(grpc.RpcError) as caught,
        ):
            audit_pb2_grpc.CoinAuditStub(channel).FinishAudit(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(caught.value.trailing_metadata())[REASON_KEY] == "coin.opening_malformed"
        assert sidecar.daemon.log.size == size
        verdict = client.finish_coin_audit(
            challenge.audit_id, openings, sketch_key=provider.commitment.sketch_key
        )
    assert verdict.consistent


def test_unknown_and_finished_audits_are_not_found(
    sidecar: Sidecar, provider: Provider, policy: Policy
) -> None:
    with Client(sidecar.address("alice"), policy=policy) as client:
        with pytest.raises(SidecarRejected) as unknown:
            client.finish_coin_audit("00" * 16, [])
        challenge = _begin(client, provider)
        openings = provider.commitment.open(challenge.indices)
        key = provider.commitment.sketch_key
        client.finish_coin_audit(challenge.audit_id, openings, sketch_key=key)
        with pytest.raises(SidecarRejected) as again:
            client.finish_coin_audit(challenge.audit_id, openings, sketch_key=key)
    for caught in (unknown, again):
        assert (caught.value.code, caught.value.status) == ("coin.audit_unknown", "NOT_FOUND")


def test_another_agent_cannot_finish_an_audit(
    sidecar: Sidecar, provider: Provider, policy: Policy
) -> None:
    with (
        Client(sidecar.address("alice"), policy=policy) as alice,
        Client(sidecar.address("bob"), policy=policy) as bob,
    ):
        challenge = _begin(alice, provider)
        openings = provider.commitment.open(challenge.indices)
        key = provider.commitment.sketch_key
        with pytest.raises(SidecarRejected) as caught:
            bob.finish_coin_audit(challenge.audit_id, openings, sketch_key=key)
        assert (caught.value.code, caught.value.status) == ("coin.audit_unknown", "NOT_FOUND")
        assert alice.finish_coin_audit(challenge.audit_id, openings, sketch_key=key).consistent


def test_the_shared_socket_cannot_audit(
    sidecar: Sidecar, provider: Provider, policy: Policy
) -> None:
    with (
        Client(sidecar.address(), policy=policy) as client,
        pytest.raises(SidecarRejected) as caught,
    ):
        _begin(client, provider)
    assert caught.value.code == "auth.no_agent_identity"


def test_openings_must_be_openings(sidecar: Sidecar, policy: Policy) -> None:
    with (
        Client(sidecar.address("alice"), policy=policy) as client,
        pytest.raises(TypeError, match="openings"),
    ):
        client.finish_coin_audit("00" * 16, [{"index": 0}])  # type: ignore[list-item]


# -- the pieces, without gRPC --------------------------------------------------------------------


def test_the_sdk_and_the_server_import_no_model() -> None:
    """torch loads only when an audit begins: the SDK never imports it, nor does the daemon's
    server module on its own."""
    code = (
        "import sys, tallystick.sdk, tallystick.sdk.coin, tallystick.daemon.server\n"
        "loaded = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', "
        "'tallystick.daemon.coin.'))]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_status_table_maps_the_coin_codes() -> None:
    assert status_for(AuditUnknown("x")) == grpc.StatusCode.NOT_FOUND
    assert status_for(AuditUnavailable("x")) == grpc.StatusCode.FAILED_PRECONDITION


def test_an_unavailable_engine_fails_every_call_without_retrying(tmp_path: Path) -> None:
    builds: list[int] = []

    def build() -> Any:
        builds.append(1)
        raise AuditUnavailable("coin audits need tallystick[coin]: no module named 'torch'")

    audits = CoinAudits(log=None, cache_dir=tmp_path, build_auditor=build)  # type: ignore[arg-type]
    service = CoinAuditService(audits, Caller("alice"))
    for _ in range(2):
        with pytest.raises(AuditUnavailable) as caught:
            service.begin_audit(audit_pb2.BeginAuditRequest(head_note="n"))
        assert caught.value.code == "coin.unavailable"
    assert builds == [1]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass(frozen=True)
class _Audit:
    """Stands in for a judge PendingAudit: only its texts' sizes are read."""

    prompt: str = "p"
    answer: str = "a"
    head_note: str = "h"
    sketch: bytes = b""


def test_pending_audits_expire_and_are_bounded() -> None:
    clock = _Clock()
    pending = PendingAudits(capacity=2, ttl_s=10, clock=clock)
    first = pending.add("alice", _Audit(), 1)  # type: ignore[arg-type]
    clock.now = 5
    second = pending.add("alice", _Audit(), 2)  # type: ignore[arg-type]
    third = pending.add("bob", _Audit(), 3)  # type: ignore[arg-type]  # drops the oldest
    with pytest.raises(AuditUnknown):
        pending.take(first, "alice")
    with pytest.raises(AuditUnknown):
        pending.take(third, "alice")  # bob's
    clock.now = 12
    item = pending.take(third, "bob")
    assert item.challenge_entry == 3
    pending.restore(third, item)  # a failed finish puts it back until it expires
    assert pending.take(third, "bob").challenge_entry == 3
    pending.restore(third, item)
    clock.now = 15
    for audit_id, agent in ((second, "alice"), (third, "bob")):
        with pytest.raises(AuditUnknown):
            pending.take(audit_id, agent)  # expired
    assert len(pending) == 0


def test_an_agent_that_floods_pending_audits_drops_its_own() -> None:
    pending = PendingAudits(capacity=3, ttl_s=10)
    bobs = pending.add("bob", _Audit(), 1)  # type: ignore[arg-type]  # the oldest of all
    floods = [pending.add("mallory", _Audit(), 2 + n) for n in range(5)]  # type: ignore[arg-type]
    assert len(pending) == 3
    assert pending.take(bobs, "bob").challenge_entry == 1  # still there
    for audit_id in floods[:3]:  # mallory's oldest went first
        with pytest.raises(AuditUnknown):
            pending.take(audit_id, "mallory")
    assert [pending.take(a, "mallory").challenge_entry for a in floods[3:]] == [5, 6]
    assert len(pending) == 0
    # Text: the agent holding the most text loses its oldest, whoever added last.
    texts = PendingAudits(capacity=10, max_text=12)
    small = texts.add("bob", _Audit(prompt="b" * 2), 1)  # type: ignore[arg-type]
    big = texts.add("mallory", _Audit(prompt="m" * 8), 2)  # type: ignore[arg-type]
    texts.add("bob", _Audit(prompt="c" * 2), 3)  # type: ignore[arg-type]  # 18 > 12
    with pytest.raises(AuditUnknown):
        texts.take(big, "mallory")
    assert texts.take(small, "bob").challenge_entry == 1


def test_pending_text_is_bounded() -> None:
    pending = PendingAudits(capacity=10, max_text=10)
    first = pending.add("alice", _Audit(prompt="x" * 6), 1)  # type: ignore[arg-type]
    second = pending.add("alice", _Audit(prompt="y" * 6), 2)  # type: ignore[arg-type]
    assert len(pending) == 1
    with pytest.raises(AuditUnknown):
        pending.take(first, "alice")
    assert pending.take(second, "alice").challenge_entry == 2


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"a":"' + "x" * 500 + '"}', id="ascii"),
        pytest.param('{"q":"' + '\\"' * 300 + '"}', id="escapes"),
        pytest.param('{"u":"' + "é漢🙂" * 120 + '"}', id="non-ascii"),
    ],
)
def test_evidence_parts_fit_and_join_back(text: str) -> None:
    raw = text.encode("utf-8")
    parts = evidence_parts(raw, budget=100)
    assert len(parts) > 1
    assert all(len(json.dumps(part, ensure_ascii=False).encode()) <= 100 for part in parts)
    verdict = {
        "coin": "verdict",
        "challenge_entry": 4,
        "evidence_sha256": hashlib.sha256(raw).hexdigest(),
        "evidence_parts": len(parts),
    }
    bodies = [
        {
            "coin": "evidence",
            "challenge_entry": 4,
            "part": i,
            "parts": len(parts),
            "evidence_json": p,
        }
        for i, p in enumerate(parts)
    ]
    assert join_evidence(verdict, bodies) == raw
    with pytest.raises(MalformedInput) as caught:
        join_evidence(verdict, bodies[::-1])
    assert caught.value.code == "coin.evidence_parts_invalid"
    with pytest.raises(MalformedInput):
        join_evidence({**verdict, "evidence_sha256": "00" * 32}, bodies)
