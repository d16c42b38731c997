"""Offline provenance from a bundle exported by a REAL tallystickd that issued real delegations.

The offline answer must equal the daemon's own (Query.GetProvenance): same principal, token and
entries with the same roles; and every proof must verify against the signed checkpoint.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from tallystick.verifier.checkpoint import NoteVerifier, verify_checkpoint
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.keys import load_public_key
from tallystick.verifier.logbundle import Bundle
from tallystick.verifier.merkle import hash_leaf
from tallystick.verifier.provenance import AuditedLog, ProvenanceStatus, provenance
from tallystick.verifier.report import render

AGENTS: dict[str, dict[str, Any]] = {
    "alice": {"principals": ["human-a"]},
    "bob": {"principals": ["human-a"]},
    "carol": {"read_all": True},
}


@dataclass
class Scenario:
    """A daemon's log of delegations and calls, exported; the entry indexes by name."""

    daemon: Daemon
    data_dir: Path
    at: dict[str, int] = field(default_factory=dict)
    token_id: str = ""
    channels: list[grpc.Channel] = field(default_factory=list)

    def channel(self, agent: str | None) -> grpc.Channel:
        listener = next(item for item in self.daemon.listeners if item.caller.agent == agent)
        channel = grpc.insecure_channel(listener.address)
        self.channels.append(channel)
        return channel

    def record(self, agent: str, **fields: Any) -> int:
        values: dict[str, Any] = {
            "provider": "openai",
            "model": "gpt-4o",
            "usage": ledger_pb2.Usage(),
        }
        values.update(fields)
        stub = ledger_pb2_grpc.LedgerStub(self.channel(agent))
        request = ledger_pb2.RecordCallRequest(call=ledger_pb2.CallRecord(**values))
        return int(stub.RecordCall(request).index)

    def delegation(self, agent: str) -> delegation_pb2_grpc.DelegationStub:
        return delegation_pb2_grpc.DelegationStub(self.channel(agent))


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    with tempfile.TemporaryDirectory(prefix="tsp-") as name:
        data_dir = Path(name) / "d"
        flags = {
            "data_dir": data_dir,
            "agents": AGENTS,
            "checkpoint_every_ms": 3_600_000,
            "checkpoint_every_entries": 10_000_000,
        }
        run = Scenario(Daemon.start(load_config(flags=flags, environ={})), data_dir)
        try:
            root = run.delegation("alice").IssueHdpRoot(
                delegation_pb2.IssueHdpRootRequest(
                    principal_id="human-a",
                    session_id="sess-1",
                    intent="summarise the Q3 report",
                    authorized_tools=["web_search"],
                    agents=["alice", "bob"],
                )
            )
            hop = run.delegation("bob").ExtendHdp(
                delegation_pb2.ExtendHdpRequest(token=root.token, action_summary="search the web")
            )
            run.token_id = root.token_id
            run.at = {
                "issue": root.index,
                "extend": hop.index,
                "call": run.record("bob", delegation_id=root.token_id, request_id="r1"),
                "tool": run.record(
                    "bob",
                    delegation_id=root.token_id,
                    operation="execute_tool",
                    tool_name="web_search",
                ),
                "off_scope": run.record(
                    "bob", delegation_id=root.token_id, operation="execute_tool", tool_name="rm_rf"
                ),
                "bare": run.record("bob"),
                "stranger": run.record("carol", delegation_id=root.token_id),
                "unknown": run.record("bob", delegation_id="no-such-token"),
            }
            revoked = run.delegation("alice").RevokeToken(
                delegation_pb2.RevokeTokenRequest(token_id=root.token_id, reason="done")
            )
            run.at["revocation"] = revoked.index
            run.at["late"] = run.record("bob", delegation_id=root.token_id)
            yield run
        finally:
            for channel in run.channels:
                channel.close()
            run.daemon.stop(grace=0)


@pytest.fixture(scope="module")
def log(scenario: Scenario) -> AuditedLog:
    out = scenario.data_dir.parent / "log.bundle"
    scenario.daemon.log.export(out)
    key = load_public_key(str(scenario.data_dir / "log.pub"))
    return AuditedLog.open(Bundle.from_path(out), log_key=key)


def test_a_delegated_call_goes_back_to_the_principal_as_the_daemon_says(
    scenario: Scenario, log: AuditedLog
) -> None:
    at = scenario.at
    found = provenance(log, at["call"])
    assert found.verified and found.status is ProvenanceStatus.VERIFIED
    assert (found.principal, found.token_id, found.format) == ("human-a", scenario.token_id, "hdp")
    assert (found.intent, found.scopes, found.session_id) == (
        "summarise the Q3 report",
        ("web_search",),
        "sess-1",
    )
    assert [(hop.agent_id, hop.action_summary, hop.status) for hop in found.hops] == [
        ("bob", "search the web", "valid")
    ]
    assert [(item.index, item.role) for item in found.entries] == [
        (at["call"], "subject"),
        (at["extend"], "extend"),
        (at["issue"], "issue"),
    ]
    online = query_pb2_grpc.QueryStub(scenario.channel("carol")).GetProvenance(
        query_pb2.GetProvenanceRequest(index=at["call"])
    )
    assert (online.principal, online.token_id) == (found.principal, found.token_id)
    assert [(e.index, e.role) for e in online.entries] == [(e.index, e.role) for e in found.entries]


def test_every_proof_verifies_against_the_signed_checkpoint(
    scenario: Scenario, log: AuditedLog
) -> None:
    key = load_public_key(str(scenario.data_dir / "log.pub"))
    found = provenance(log, scenario.at["late"])
    for item in found.entries:
        proof = item.proof
        origin = proof.checkpoint.split("\n", 1)[0]
        checkpoint = verify_checkpoint(
            proof.checkpoint, verifiers=[NoteVerifier.from_public_key(origin, key)], origin=origin
        )
        assert (checkpoint.size, checkpoint.root_hash) == (proof.tree_size, proof.root_hash)
        assert proof.leaf_hash == hash_leaf(log.bundle.entries[item.index])
        proof.verify()


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("tool", ProvenanceStatus.VERIFIED),
        ("off_scope", ProvenanceStatus.OUT_OF_SCOPE),
        ("bare", ProvenanceStatus.NO_DELEGATION),
        ("stranger", ProvenanceStatus.UNATTRIBUTED),
        ("unknown", ProvenanceStatus.UNKNOWN_TOKEN),
        ("late", ProvenanceStatus.REVOKED),
        ("extend", ProvenanceStatus.VERIFIED),
    ],
)
def test_each_status(
    scenario: Scenario, log: AuditedLog, name: str, status: ProvenanceStatus
) -> None:
    found = provenance(log, scenario.at[name])
    assert found.status is status, found.detail
    assert found.verified == (status is ProvenanceStatus.VERIFIED)
    if status is ProvenanceStatus.UNATTRIBUTED:
        assert found.principal == ""  # naming another principal's token claims nothing


def test_a_revoked_tokens_later_call_lists_the_revocation_as_the_daemon_does(
    scenario: Scenario, log: AuditedLog
) -> None:
    found = provenance(log, scenario.at["late"])
    assert [item.role for item in found.entries] == ["subject", "extend", "issue", "revocation"]
    assert found.entries[-1].index == scenario.at["revocation"]
    online = query_pb2_grpc.QueryStub(scenario.channel("carol")).GetProvenance(
        query_pb2.GetProvenanceRequest(index=scenario.at["late"])
    )
    assert [(e.index, e.role) for e in online.entries] == [(e.index, e.role) for e in found.entries]


def test_entries_that_are_not_actions_or_out_of_range_are_refused(
    scenario: Scenario, log: AuditedLog
) -> None:
    with pytest.raises(MalformedInput) as caught:
        provenance(log, scenario.at["revocation"])
    assert caught.value.code == "provenance.unsupported_entry"
    with pytest.raises(MalformedInput) as caught:
        provenance(log, log.size)
    assert caught.value.code == "provenance.index_out_of_range"


def test_the_report_draws_the_sessions_delegation_graph(log: AuditedLog) -> None:
    page = render(log)
    assert "<h3>Session sess-1</h3>" in page and 'id="graph-0"' in page
    graph = page.split('id="graph-0"', 1)[1].split("</svg>", 1)[0]
    assert graph.count('class="edge"') == 2  # human-a -> alice (issue), alice -> bob (hop 1)
    assert ">human-a</text>" in graph and ">bob</text>" in graph and "1: search the web" in graph
