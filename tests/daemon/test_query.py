"""The Query service over real Unix sockets: provenance with proofs, totals, who may read what."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tallystick.daemon.config import load_config
from tallystick.daemon.server import Daemon
from tallystick.proto import (
    delegation_pb2,
    delegation_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from tallystick.verifier import hdp
from tallystick.verifier.checkpoint import NoteVerifier, verify_checkpoint
from tallystick.verifier.keys import load_public_key
from tallystick.verifier.logentry import DelegationBody, LogEntry
from tallystick.verifier.merkle import hash_leaf, verify_inclusion

from .conftest import QUIET_CHECKPOINTS, RunningDaemon, reason

Code = grpc.StatusCode

AGENTS: dict[str, dict[str, Any]] = {
    "alice": {"principals": ["human-a"]},
    "bob": {"principals": ["human-b"]},
    "carol": {"read_all": True},
    "dave": {},
}


@pytest.fixture(scope="module")
def tsd() -> Iterator[RunningDaemon]:
    """A daemon whose shared socket may read totals; agents alice, bob, carol and dave."""
    with tempfile.TemporaryDirectory(prefix="tsd-") as name:
        flags = {
            "data_dir": Path(name) / "d",
            "agents": AGENTS,
            "shared_totals": True,
            **QUIET_CHECKPOINTS,
        }
        daemon = RunningDaemon(Daemon.start(load_config(flags=flags, environ={})), Path(name) / "d")
        yield daemon
        daemon.close()


def query(tsd: RunningDaemon, agent: str | None) -> query_pb2_grpc.QueryStub:
    return query_pb2_grpc.QueryStub(tsd.channel(tsd.shared if agent is None else tsd.agent(agent)))


def delegation(tsd: RunningDaemon, agent: str) -> delegation_pb2_grpc.DelegationStub:
    return delegation_pb2_grpc.DelegationStub(tsd.channel(tsd.agent(agent)))


def record(tsd: RunningDaemon, agent: str, **fields: Any) -> int:
    values: dict[str, Any] = {"provider": "openai", "model": "m1", "usage": ledger_pb2.Usage()}
    values.update(fields)
    stub = ledger_pb2_grpc.LedgerStub(tsd.channel(tsd.agent(agent)))
    return stub.RecordCall(ledger_pb2.RecordCallRequest(call=ledger_pb2.CallRecord(**values))).index


def chain_for(tsd: RunningDaemon, owner: str, principal: str, helper: str) -> tuple[str, int]:
    """A root by ``owner`` for ``principal`` extended by ``helper``: (token id, hop entry)."""
    root = delegation(tsd, owner).IssueHdpRoot(
        delegation_pb2.IssueHdpRootRequest(
            principal_id=principal, session_id="s", intent="work", agents=[owner, helper]
        )
    )
    hop = delegation(tsd, helper).ExtendHdp(
        delegation_pb2.ExtendHdpRequest(token=root.token, action_summary="help")
    )
    return root.token_id, hop.index


def refused(
    tsd: RunningDaemon, call: Any, request: Any, status: grpc.StatusCode, code: str
) -> None:
    before = tsd.daemon.log.size
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    assert (caught.value.code(), reason(caught.value)) == (status, code)
    assert tsd.daemon.log.size == before


# --- provenance ---------------------------------------------------------------------------------


def test_provenance_of_a_call_goes_back_to_the_principal_with_proofs(tsd: RunningDaemon) -> None:
    token_id, hop_index = chain_for(tsd, "alice", "human-a", "bob")
    call = record(tsd, "bob", delegation_id=token_id)
    reply = query(tsd, "alice").GetProvenance(query_pb2.GetProvenanceRequest(index=call))
    assert (reply.principal, reply.token_id) == ("human-a", token_id)
    assert [(item.index, item.role) for item in reply.entries] == [
        (call, "subject"),
        (hop_index, "extend"),
        (hop_index - 1, "issue"),
    ]
    # Everything checks offline against log.pub.
    origin = reply.checkpoint.split("\n", 1)[0]
    log_key = load_public_key(str(tsd.data_dir / "log.pub"))
    checkpoint = verify_checkpoint(
        reply.checkpoint, verifiers=[NoteVerifier.from_public_key(origin, log_key)], origin=origin
    )
    assert checkpoint.size == reply.tree_size > call
    for item in reply.entries:
        verify_inclusion(
            leaf_index=item.index,
            tree_size=checkpoint.size,
            leaf_hash=hash_leaf(item.entry),
            proof=list(item.inclusion_proof),
            root_hash=checkpoint.root_hash,
        )
    entries = [LogEntry.from_bytes(item.entry) for item in reply.entries]
    assert entries[0].body["delegation_id"] == token_id
    root = hdp.HdpToken.from_dict(DelegationBody.from_body(entries[2].body).token)  # type: ignore[arg-type]
    assert root.to_dict()["principal"]["id"] == "human-a"


def test_provenance_of_a_revoked_tokens_later_entry_shows_the_revocation(
    tsd: RunningDaemon,
) -> None:
    token_id, _ = chain_for(tsd, "alice", "human-a", "bob")
    revoked = delegation(tsd, "alice").RevokeToken(
        delegation_pb2.RevokeTokenRequest(token_id=token_id)
    )
    call = record(tsd, "bob", delegation_id=token_id)
    reply = query(tsd, "bob").GetProvenance(query_pb2.GetProvenanceRequest(index=call))
    assert [item.role for item in reply.entries] == ["subject", "extend", "issue", "revocation"]
    assert reply.entries[-1].index == revoked.index


def test_provenance_is_limited_to_the_principals_an_agent_acts_for(tsd: RunningDaemon) -> None:
    token_b, _ = chain_for(tsd, "bob", "human-b", "dave")
    call_b = record(tsd, "dave", delegation_id=token_b)
    request = query_pb2.GetProvenanceRequest(index=call_b)
    refused(
        tsd,
        query(tsd, "alice").GetProvenance,
        request,
        Code.PERMISSION_DENIED,
        "auth.not_permitted",
    )
    for reader in ("bob", "dave", "carol"):  # the principal's agents, and a read_all agent
        assert query(tsd, reader).GetProvenance(request).principal == "human-b"
    refused(
        tsd,
        query(tsd, None).GetProvenance,
        request,
        Code.PERMISSION_DENIED,
        "auth.no_agent_identity",
    )
    beyond = query_pb2.GetProvenanceRequest(index=10**9)
    refused(
        tsd,
        query(tsd, "carol").GetProvenance,
        beyond,
        Code.OUT_OF_RANGE,
        "query.index_out_of_range",
    )


def test_claiming_another_principals_token_attributes_nothing(tsd: RunningDaemon) -> None:
    token_b, _ = chain_for(tsd, "bob", "human-b", "dave")
    # alice is not named in human-b's token: her call names it, but counts for no one.
    call = record(tsd, "alice", delegation_id=token_b)
    reply = query(tsd, "alice").GetProvenance(query_pb2.GetProvenanceRequest(index=call))
    assert (reply.principal, reply.token_id, len(reply.entries)) == ("", "", 1)
    refused(
        tsd,
        query(tsd, "bob").GetProvenance,
        query_pb2.GetProvenanceRequest(index=call),
        Code.PERMISSION_DENIED,
        "auth.not_permitted",
    )


# --- totals -------------------------------------------------------------------------------------


def _groups(reply: query_pb2.GetTotalsResponse) -> dict[str, query_pb2.GroupTotals]:
    return {group.key: group for group in reply.groups}


def test_totals_keep_unknown_counts_apart_and_sum_costs_exactly(short_dir: Path) -> None:
    flags = {"data_dir": short_dir / "d", "agents": AGENTS, **QUIET_CHECKPOINTS}
    tsd = RunningDaemon(Daemon.start(load_config(flags=flags, environ={})), short_dir / "d")
    try:
        token_a, _ = chain_for(tsd, "alice", "human-a", "bob")
        usage = ledger_pb2.Usage(input_tokens=100, cache_read_input_tokens=40, output_tokens=7)
        usd = ledger_pb2.Cost(amount="0.1", currency="USD")
        record(tsd, "bob", delegation_id=token_a, usage=usage, cost=usd, session_id="s1")
        record(
            tsd,
            "bob",
            delegation_id=token_a,
            usage=ledger_pb2.Usage(input_tokens=1, output_tokens=5, reasoning_output_tokens=2),
            cost=ledger_pb2.Cost(amount="0.2", currency="USD"),
            session_id="s1",
            model="m2",
        )
        record(tsd, "alice", usage=usage, cost=ledger_pb2.Cost(amount="3", currency="EUR"))
        record(tsd, "alice")  # nothing known: no counts, no cost
        stub = query(tsd, "carol")
        by_principal = _groups(
            stub.GetTotals(query_pb2.GetTotalsRequest(group_by=query_pb2.GROUP_BY_PRINCIPAL))
        )
        human = by_principal["human-a"]
        assert human.calls == 2
        assert (human.input_tokens.sum, human.input_tokens.unknown_calls) == (101, 0)
        assert (human.cache_read_input_tokens.sum, human.cache_read_input_tokens.unknown_calls) == (
            40,
            1,
        )
        assert (human.reasoning_output_tokens.sum, human.reasoning_output_tokens.unknown_calls) == (
            2,
            1,
        )
        assert [(c.currency, c.amount, c.calls) for c in human.costs] == [("USD", "0.3", 2)]
        nobody = by_principal[""]  # alice's calls carry no token
        assert (nobody.calls, nobody.unpriced_calls, nobody.output_tokens.unknown_calls) == (
            2,
            1,
            1,
        )
        assert [(c.currency, c.amount) for c in nobody.costs] == [("EUR", "3")]
        by_model = _groups(
            stub.GetTotals(query_pb2.GetTotalsRequest(group_by=query_pb2.GROUP_BY_MODEL))
        )
        assert {key: group.calls for key, group in by_model.items()} == {"m1": 3, "m2": 1}
        by_session = _groups(
            stub.GetTotals(
                query_pb2.GetTotalsRequest(group_by=query_pb2.GROUP_BY_SESSION, model="m1")
            )
        )
        assert {key: group.calls for key, group in by_session.items()} == {"": 2, "s1": 1}
        by_agent = _groups(
            stub.GetTotals(
                query_pb2.GetTotalsRequest(group_by=query_pb2.GROUP_BY_AGENT, principal="human-a")
            )
        )
        assert {key: group.calls for key, group in by_agent.items()} == {"bob": 2}
    finally:
        tsd.close()


def test_totals_by_time_range(tsd: RunningDaemon) -> None:
    first = record(tsd, "dave", model="timed", usage=ledger_pb2.Usage(input_tokens=1))
    last = record(tsd, "dave", model="timed", usage=ledger_pb2.Usage(input_tokens=2))
    times = [
        LogEntry.from_bytes(tsd.daemon.log.entries(i, i + 1)[0]).time_ms for i in (first, last)
    ]
    stub = query(tsd, "dave")

    def total(**window: int) -> int:
        request = query_pb2.GetTotalsRequest(
            group_by=query_pb2.GROUP_BY_MODEL, model="timed", **window
        )
        groups = _groups(stub.GetTotals(request))
        return groups["timed"].input_tokens.sum if groups else 0

    assert total() == 3
    assert total(from_ms=times[1]) == (2 if times[0] < times[1] else 3)
    assert total(to_ms=times[0]) == 0
    assert total(from_ms=times[1] + 1) == 0


def test_totals_are_limited_to_what_the_caller_may_read(tsd: RunningDaemon) -> None:
    token_b, _ = chain_for(tsd, "bob", "human-b", "dave")
    record(tsd, "dave", delegation_id=token_b, usage=ledger_pb2.Usage(output_tokens=9))
    by_principal = query_pb2.GetTotalsRequest(group_by=query_pb2.GROUP_BY_PRINCIPAL)
    alice_sees = set(_groups(query(tsd, "alice").GetTotals(by_principal)))
    assert "human-b" not in alice_sees
    assert "human-b" in _groups(query(tsd, "bob").GetTotals(by_principal))
    assert "human-b" in _groups(query(tsd, None).GetTotals(by_principal))  # shared_totals = true
    refused(
        tsd,
        query(tsd, "alice").GetTotals,
        query_pb2.GetTotalsRequest(group_by=query_pb2.GROUP_BY_AGENT, principal="human-b"),
        Code.PERMISSION_DENIED,
        "auth.not_permitted",
    )
    refused(
        tsd,
        query(tsd, "alice").GetTotals,
        query_pb2.GetTotalsRequest(),
        Code.INVALID_ARGUMENT,
        "query.invalid_argument",
    )


def test_the_shared_socket_reads_totals_only_when_configured(short_dir: Path) -> None:
    flags = {"data_dir": short_dir / "d", "agents": AGENTS, **QUIET_CHECKPOINTS}
    tsd = RunningDaemon(Daemon.start(load_config(flags=flags, environ={})), short_dir / "d")
    try:
        refused(
            tsd,
            query(tsd, None).GetTotals,
            query_pb2.GetTotalsRequest(group_by=query_pb2.GROUP_BY_MODEL),
            Code.PERMISSION_DENIED,
            "auth.not_permitted",
        )
    finally:
        tsd.close()


def test_malformed_query_requests_get_a_reason(tsd: RunningDaemon) -> None:
    channel = tsd.channel(tsd.agent("alice"))
    for method in ("GetProvenance", "GetTotals"):
        call = channel.unary_unary(f"/tallystick.v1.Query/{method}")
        refused(tsd, call, b"\x0a\xff", Code.INVALID_ARGUMENT, "input.malformed_message")
