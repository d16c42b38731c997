"""The Delegation service over real Unix sockets: keys, tokens in the log, refusals, revocation."""

from __future__ import annotations

import json
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tallystick.daemon.config import load_config
from tallystick.daemon.server import Daemon
from tallystick.proto import (
    delegation_pb2,
    delegation_pb2_grpc,
    query_pb2,
)
from tallystick.verifier import aip, hdp
from tallystick.verifier.keys import PrivateKey, load_private_key, load_public_key
from tallystick.verifier.logbundle import Bundle, verify_bundle
from tallystick.verifier.logentry import (
    DelegationBody,
    EntryKind,
    LogEntry,
    RevocationBody,
)

from .conftest import QUIET_CHECKPOINTS, RunningDaemon, reason

Code = grpc.StatusCode
Request = delegation_pb2

#: alice acts for human-a, bob for human-b; carol reads everything and issues nothing.
AGENTS: dict[str, dict[str, Any]] = {
    "alice": {"principals": ["human-a"]},
    "bob": {"principals": ["human-b"]},
    "carol": {"read_all": True},
}


def start(data_dir: Path, **settings: Any) -> RunningDaemon:
    flags = {"data_dir": data_dir, "agents": AGENTS, **QUIET_CHECKPOINTS, **settings}
    return RunningDaemon(Daemon.start(load_config(flags=flags, environ={})), data_dir)


@pytest.fixture(scope="module")
def tsd() -> Iterator[RunningDaemon]:
    """One daemon for the module: agents alice, bob and carol."""
    with tempfile.TemporaryDirectory(prefix="tsd-") as name:
        daemon = start(Path(name) / "d")
        yield daemon
        daemon.close()


def stub(tsd: RunningDaemon, agent: str | None) -> delegation_pb2_grpc.DelegationStub:
    address = tsd.shared if agent is None else tsd.agent(agent)
    return delegation_pb2_grpc.DelegationStub(tsd.channel(address))


def issuer_key(tsd: RunningDaemon) -> PrivateKey:
    return load_private_key(tsd.data_dir / "issuer.key")


def agent_key(tsd: RunningDaemon, agent: str) -> PrivateKey:
    return load_private_key(tsd.data_dir / "agents" / f"{agent}.key")


def entry(tsd: RunningDaemon, index: int) -> LogEntry:
    (raw,) = tsd.daemon.log.entries(index, index + 1)
    return LogEntry.from_bytes(raw)


def root(
    tsd: RunningDaemon, agent: str = "alice", principal: str = "human-a", **fields: Any
) -> delegation_pb2.HdpTokenResponse:
    request = Request.IssueHdpRootRequest(
        principal_id=principal, session_id="sess-1", intent="summarise the report", **fields
    )
    return stub(tsd, agent).IssueHdpRoot(request)


def compact(tsd: RunningDaemon, subject: str = "bob", **fields: Any) -> str:
    request = Request.IssueAipRequest(
        format=Request.TOKEN_FORMAT_AIP_COMPACT,
        subject_agent=subject,
        scopes=["tool:search"],
        **fields,
    )
    return stub(tsd, "alice").IssueAip(request).token


def chained(tsd: RunningDaemon, subject: str = "alice") -> delegation_pb2.AipTokenResponse:
    request = Request.IssueAipRequest(
        format=Request.TOKEN_FORMAT_AIP_CHAINED,
        principal="human-a",
        subject_agent=subject,
        scopes=["tool:*"],
        budget_cents=500,
    )
    return stub(tsd, "alice").IssueAip(request)


def refused(
    tsd: RunningDaemon, call: Callable[[], object], status: grpc.StatusCode, code: str | None
) -> None:
    """``call`` fails with ``status`` and reason ``code``, writes nothing, the daemon serves on."""
    before = tsd.daemon.log.size
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert (caught.value.code(), reason(caught.value)) == (status, code)
    assert tsd.daemon.log.size == before
    assert stub(tsd, "carol").VerifyToken(Request.VerifyTokenRequest(token="{}")).code


# --- keys ---------------------------------------------------------------------------------------


def test_keys_are_private_files_and_stay_in_the_data_dir(tsd: RunningDaemon) -> None:
    root(tsd)  # the issuer key is created on first use
    for path in [tsd.data_dir / "issuer.key", *(tsd.data_dir / "agents").glob("*.key")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sorted(p.stem for p in (tsd.data_dir / "agents").glob("*.key")) == sorted(AGENTS)
    published = load_public_key(str(tsd.data_dir / "issuer.pub"))
    assert published == issuer_key(tsd).public_key


# --- HDP ----------------------------------------------------------------------------------------


def test_root_is_a_profile_token_in_a_delegation_entry(tsd: RunningDaemon) -> None:
    reply = root(tsd, agents=["alice", "bob"], max_hops=3)
    token = hdp.HdpToken.from_json(reply.token)
    verified = hdp.verify(token, public_key=issuer_key(tsd).public_key, profile="require")
    assert verified.profile_verified and reply.token_id == token.token_id
    bound = token.to_dict()["scope"]["extensions"]["x-tallystick"]["agents"]
    assert {b["agent_id"]: b["pub"] for b in bound} == {
        name: agent_key(tsd, name).public_key.to_b64url() for name in ("alice", "bob")
    }
    logged = entry(tsd, reply.index)
    assert (logged.kind, logged.agent) == (EntryKind.DELEGATION, "alice")
    body = DelegationBody.from_body(logged.body)
    assert (body.format.value, body.action.value) == ("hdp", "issue")
    assert body.token == token.to_dict()
    assert body.public_key == issuer_key(tsd).public_key
    assert reply.head == hdp.head_commitment(token).head


def test_a_hop_is_signed_as_the_calling_agent_with_its_own_key(tsd: RunningDaemon) -> None:
    first = root(tsd, agents=["alice", "bob"])
    hop = stub(tsd, "bob").ExtendHdp(
        Request.ExtendHdpRequest(token=first.token, action_summary="x")
    )
    token = hdp.HdpToken.from_json(hop.token)
    (added,) = token.to_dict()["chain"]
    assert added["agent_id"] == "bob"
    assert added["x-tallystick-agent"]["kid"] == agent_key(tsd, "bob").public_key.kid
    anchor = hdp.HeadCommitment(hop.token_id, hop.hop_count, hop.head)
    hdp.verify(
        token, public_key=issuer_key(tsd).public_key, profile="require", anchored_head=anchor
    )
    logged = entry(tsd, hop.index)
    assert logged.agent == "bob" and logged.body["action"] == "extend"
    # Naming itself is allowed and changes nothing.
    again = stub(tsd, "alice").ExtendHdp(
        Request.ExtendHdpRequest(token=hop.token, action_summary="y", agent_id="alice")
    )
    assert hdp.HdpToken.from_json(again.token).to_dict()["chain"][-1]["agent_id"] == "alice"


def test_an_agent_cannot_sign_a_hop_as_another_agent(tsd: RunningDaemon) -> None:
    first = root(tsd, agents=["alice", "bob"])
    request = Request.ExtendHdpRequest(token=first.token, action_summary="x", agent_id="alice")
    refused(
        tsd,
        lambda: stub(tsd, "bob").ExtendHdp(request),
        Code.PERMISSION_DENIED,
        "auth.agent_mismatch",
    )


def test_an_agent_the_root_does_not_bind_cannot_extend_it(tsd: RunningDaemon) -> None:
    first = root(tsd, agents=["alice"])
    request = Request.ExtendHdpRequest(token=first.token, action_summary="x")
    refused(
        tsd,
        lambda: stub(tsd, "bob").ExtendHdp(request),
        Code.PERMISSION_DENIED,
        "delegation.agent_not_bound",
    )


def test_only_the_latest_logged_version_can_be_extended(tsd: RunningDaemon) -> None:
    first = root(tsd, agents=["alice", "bob"])
    request = Request.ExtendHdpRequest(token=first.token, action_summary="x")
    stub(tsd, "alice").ExtendHdp(request)
    # The root again: a fork of a chain the log has moved on from.
    refused(
        tsd, lambda: stub(tsd, "bob").ExtendHdp(request), Code.INVALID_ARGUMENT, "hdp.truncated"
    )


def test_an_earlier_logged_version_still_verifies_but_a_forged_one_does_not(
    tsd: RunningDaemon,
) -> None:
    # An orchestrator hands work to two sub-agents: the second extends the first's version, and
    # the first keeps acting under its own (shorter) version, which the log holds exactly.
    first = root(tsd, agents=["alice", "bob"])
    alice = stub(tsd, "alice").ExtendHdp(
        Request.ExtendHdpRequest(token=first.token, action_summary="plan")
    )
    bob = stub(tsd, "bob").ExtendHdp(
        Request.ExtendHdpRequest(token=alice.token, action_summary="search", parent_hop=1)
    )
    assert (alice.hop_count, bob.hop_count) == (1, 2)
    verify = stub(tsd, "carol").VerifyToken
    for token in (first.token, alice.token, bob.token):
        assert verify(Request.VerifyTokenRequest(token=token)).valid
    forged = json.loads(alice.token)
    forged["chain"][0]["action_summary"] = "plan, and also pay"
    verdict = verify(Request.VerifyTokenRequest(token=json.dumps(forged)))
    assert not verdict.valid
    assert verdict.code.startswith("hdp.")
    # Extending still needs the latest version.
    refused(
        tsd,
        lambda: stub(tsd, "alice").ExtendHdp(
            Request.ExtendHdpRequest(token=alice.token, action_summary="again")
        ),
        Code.INVALID_ARGUMENT,
        "hdp.truncated",
    )


def test_concurrent_extends_of_one_version_let_exactly_one_through(tsd: RunningDaemon) -> None:
    first = root(tsd, agents=["alice", "bob"])
    outcomes: list[str] = []

    def extend(agent: str) -> None:
        request = Request.ExtendHdpRequest(token=first.token, action_summary=agent)
        try:
            stub(tsd, agent).ExtendHdp(request)
            outcomes.append("ok")
        except grpc.RpcError as error:
            outcomes.append(reason(error) or "?")

    threads = [threading.Thread(target=extend, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["hdp.truncated", "ok"]


# --- AIP ----------------------------------------------------------------------------------------


def test_compact_token_has_a_jti_and_names_the_subject_agent_key(tsd: RunningDaemon) -> None:
    reply = stub(tsd, "alice").IssueAip(
        Request.IssueAipRequest(
            format=Request.TOKEN_FORMAT_AIP_COMPACT,
            subject_agent="bob",
            scopes=["tool:search"],
            audience="svc",
        )
    )
    verified = aip.verify(
        reply.token, public_key=issuer_key(tsd).public_key, now=int(time.time()), audience="svc"
    )
    assert verified.jti == reply.token_id and verified.jti
    assert verified.subject == aip.key_identity(agent_key(tsd, "bob").public_key) == reply.subject
    body = DelegationBody.from_body(entry(tsd, reply.index).body)
    assert (body.format.value, body.audience, body.token) == ("aip-compact", "svc", reply.token)


def test_attenuation_is_signed_by_the_holding_agent(tsd: RunningDaemon) -> None:
    issued = chained(tsd, subject="alice")
    narrower = stub(tsd, "alice").AttenuateAip(
        Request.AttenuateAipRequest(
            token=issued.token, delegate_agent="bob", scopes=["tool:search"], context="search"
        )
    )
    verified = aip.verify(
        narrower.token,
        public_key=issuer_key(tsd).public_key,
        now=int(time.time()),
        require_authenticated_delegators=True,
    )
    alice = aip.key_identity(agent_key(tsd, "alice").public_key)
    assert [(hop.delegator, hop.authenticated) for hop in verified.hops][-1] == (alice, True)
    assert verified.scopes == ("tool:search",) and verified.principal == "human-a"
    assert narrower.subject == aip.key_identity(agent_key(tsd, "bob").public_key)
    assert entry(tsd, narrower.index).body["action"] == "attenuate"
    # bob holds it now; alice no longer does.
    request = Request.AttenuateAipRequest(token=narrower.token, delegate_agent="carol", context="c")
    refused(
        tsd,
        lambda: stub(tsd, "alice").AttenuateAip(request),
        Code.PERMISSION_DENIED,
        "delegation.not_holder",
    )
    stub(tsd, "bob").AttenuateAip(request)


def test_verify_token_reports_every_format_and_writes_nothing(tsd: RunningDaemon) -> None:
    tokens = [root(tsd).token, compact(tsd), chained(tsd).token]
    before = tsd.daemon.log.size
    replies = [
        stub(tsd, None).VerifyToken(Request.VerifyTokenRequest(token=token)) for token in tokens
    ]
    assert [reply.valid for reply in replies] == [True, True, True]
    assert [reply.format for reply in replies] == [
        Request.TOKEN_FORMAT_HDP,
        Request.TOKEN_FORMAT_AIP_COMPACT,
        Request.TOKEN_FORMAT_AIP_CHAINED,
    ]
    assert replies[0].principal == replies[2].principal == "human-a"
    assert all(len(reply.entries) >= 1 for reply in replies)
    forged = tokens[1][:-3] + ("AAA" if not tokens[1].endswith("AAA") else "BBB")
    bad = stub(tsd, None).VerifyToken(Request.VerifyTokenRequest(token=forged))
    assert (bad.valid, bad.code, bad.step) == (False, "aip.signature_invalid", 1)
    assert tsd.daemon.log.size == before


# --- refusals -----------------------------------------------------------------------------------


def _raw(tsd: RunningDaemon, agent: str, method: str) -> Callable[[bytes], object]:
    channel = tsd.channel(tsd.agent(agent))
    return channel.unary_unary(f"/tallystick.v1.Delegation/{method}")


def _tampered_hdp(tsd: RunningDaemon) -> str:
    data = json.loads(root(tsd, agents=["alice", "bob"]).token)
    data["scope"]["intent"] = "wire the money"
    return json.dumps(data)


def _foreign_chained(tsd: RunningDaemon) -> str:
    other = PrivateKey.generate()
    token = aip.issue_chained(
        key=other, scopes=["tool:*"], issued_at=int(time.time()), principal="human-a"
    )
    return aip.delegate_chained(
        token,
        root_public_key=other.public_key,
        delegator_key=other,
        delegate=aip.key_identity(agent_key(tsd, "alice").public_key),
        scopes=[],
        context="forged",
    )


def _expired_compact(tsd: RunningDaemon) -> str:
    return aip.issue_compact(
        key=issuer_key(tsd),
        subject=aip.key_identity(agent_key(tsd, "bob").public_key),
        scopes=["tool:search"],
        issued_at=int(time.time()) - 7200,
        ttl_s=60,
        jti="expired-1",
    )


def _expired_hdp(tsd: RunningDaemon) -> str:
    token = root(tsd, agents=["alice", "bob"], ttl_ms=1).token
    time.sleep(0.01)
    return token


def _revoked(tsd: RunningDaemon, token: str, token_id: str) -> str:
    stub(tsd, "alice").RevokeToken(Request.RevokeTokenRequest(token_id=token_id))
    return token


def _revoked_hdp(tsd: RunningDaemon) -> str:
    reply = root(tsd, agents=["alice", "bob"])
    return _revoked(tsd, reply.token, reply.token_id)


def _revoked_compact(tsd: RunningDaemon) -> str:
    reply = stub(tsd, "alice").IssueAip(
        Request.IssueAipRequest(
            format=Request.TOKEN_FORMAT_AIP_COMPACT, subject_agent="bob", scopes=["tool:x"]
        )
    )
    return _revoked(tsd, reply.token, reply.token_id)


def _replayed_compact(tsd: RunningDaemon) -> str:
    token = compact(tsd)
    stub(tsd, "bob").AcceptToken(Request.VerifyTokenRequest(token=token))
    return token


def _unlogged_hdp(tsd: RunningDaemon) -> str:
    token = hdp.issue_root(
        key=issuer_key(tsd),
        principal_id="human-a",
        session_id="s",
        intent="never logged",
        issued_at_ms=int(time.time() * 1000),
        profile=hdp.TallystickProfile.for_agents({"bob": agent_key(tsd, "bob").public_key}),
    )
    return token.to_json()


Thunk = Callable[[], object]
Prepare = Callable[[RunningDaemon], Thunk]


def _extend(make: Callable[[RunningDaemon], str]) -> Prepare:
    def prepare(tsd: RunningDaemon) -> Thunk:
        request = Request.ExtendHdpRequest(token=make(tsd), action_summary="x")
        return lambda: stub(tsd, "bob").ExtendHdp(request)

    return prepare


def _accept(make: Callable[[RunningDaemon], str]) -> Prepare:
    def prepare(tsd: RunningDaemon) -> Thunk:
        request = Request.VerifyTokenRequest(token=make(tsd))
        return lambda: stub(tsd, "bob").AcceptToken(request)

    return prepare


def _attenuate(make: Callable[[RunningDaemon], str], delegate: str = "bob") -> Prepare:
    def prepare(tsd: RunningDaemon) -> Thunk:
        request = Request.AttenuateAipRequest(token=make(tsd), delegate_agent=delegate, context="c")
        return lambda: stub(tsd, "alice").AttenuateAip(request)

    return prepare


def _call(method: str, request: Any, agent: str | None = "alice") -> Prepare:
    return lambda tsd: lambda: getattr(stub(tsd, agent), method)(request)


def _raw_call(method: str, raw: bytes) -> Prepare:
    def prepare(tsd: RunningDaemon) -> Thunk:
        channel = tsd.channel(tsd.agent("alice"))
        call = channel.unary_unary(f"/tallystick.v1.Delegation/{method}")
        return lambda: call(raw)

    return prepare


_UNKNOWN_FIELD = bytes([0x98, 0x06, 0x01])  # field 99, varint 1
_ROOT = Request.IssueHdpRootRequest(principal_id="human-a", session_id="s", intent="i")
_COMPACT_FOR = Request.TOKEN_FORMAT_AIP_COMPACT

REFUSALS = [
    pytest.param(
        _raw_call("IssueHdpRoot", b"\xff\xff\xff"),
        Code.INVALID_ARGUMENT,
        "input.malformed_message",
        id="malformed-protobuf",
    ),
    pytest.param(
        _raw_call("ExtendHdp", _UNKNOWN_FIELD),
        Code.INVALID_ARGUMENT,
        "input.unknown_field",
        id="unknown-field",
    ),
    pytest.param(
        _raw_call(
            "VerifyToken", Request.VerifyTokenRequest(token="x" * (1 << 20)).SerializeToString()
        ),
        Code.RESOURCE_EXHAUSTED,
        None,  # refused by gRPC before any handler runs: no reason trailer possible
        id="oversized-message",
    ),
    pytest.param(
        _call("VerifyToken", Request.VerifyTokenRequest(token="   ")),
        Code.INVALID_ARGUMENT,
        "delegation.invalid_argument",
        id="empty-token",
    ),
    pytest.param(
        _call(
            "IssueHdpRoot",
            Request.IssueHdpRootRequest(
                principal_id="human-a", session_id="s", intent="i", agents=["mallory"]
            ),
        ),
        Code.NOT_FOUND,
        "delegation.unknown_agent",
        id="unknown-agent-bound",
    ),
    pytest.param(
        _call(
            "IssueAip",
            Request.IssueAipRequest(format=_COMPACT_FOR, subject_agent="mallory", scopes=["t"]),
        ),
        Code.NOT_FOUND,
        "delegation.unknown_agent",
        id="unknown-agent-subject",
    ),
    pytest.param(
        _attenuate(lambda tsd: chained(tsd).token, delegate="mallory"),
        Code.NOT_FOUND,
        "delegation.unknown_agent",
        id="unknown-agent-delegate",
    ),
    pytest.param(
        _call("IssueHdpRoot", _ROOT, agent="bob"),
        Code.PERMISSION_DENIED,
        "delegation.principal_not_permitted",
        id="principal-not-permitted",
    ),
    pytest.param(
        _call("IssueAip", Request.IssueAipRequest(format=_COMPACT_FOR, scopes=["t"]), "carol"),
        Code.PERMISSION_DENIED,
        "delegation.principal_not_permitted",
        id="issuer-without-principals",
    ),
    pytest.param(
        _call("IssueHdpRoot", _ROOT, agent=None),
        Code.PERMISSION_DENIED,
        "auth.no_agent_identity",
        id="shared-socket-writes",
    ),
    pytest.param(
        _call("IssueAip", Request.IssueAipRequest(scopes=["t"])),
        Code.INVALID_ARGUMENT,
        "delegation.wrong_format",
        id="no-format",
    ),
    pytest.param(
        _call(
            "IssueAip",
            Request.IssueAipRequest(format=_COMPACT_FOR, scopes=["t"], ttl_s=1),
        ),
        Code.INVALID_ARGUMENT,
        "delegation.invalid_argument",
        id="aip-ttl-too-short",
    ),
    pytest.param(
        _extend(_tampered_hdp), Code.UNAUTHENTICATED, "hdp.signature_invalid", id="forged-hdp"
    ),
    pytest.param(
        _accept(lambda tsd: compact(tsd)[:-4] + "AAAA"),
        Code.UNAUTHENTICATED,
        "aip.signature_invalid",
        id="forged-aip-compact",
    ),
    pytest.param(
        _attenuate(_foreign_chained),
        Code.UNAUTHENTICATED,
        "aip.signature_invalid",
        id="forged-aip-chained",
    ),
    pytest.param(
        _extend(_unlogged_hdp), Code.NOT_FOUND, "delegation.unknown_token", id="hdp-never-logged"
    ),
    pytest.param(
        _extend(_expired_hdp), Code.UNAUTHENTICATED, "hdp.token_expired", id="expired-hdp"
    ),
    pytest.param(
        _accept(_expired_compact), Code.UNAUTHENTICATED, "aip.token_expired", id="expired-aip"
    ),
    pytest.param(
        _accept(_replayed_compact), Code.PERMISSION_DENIED, "aip.replay_detected", id="replayed-jti"
    ),
    pytest.param(_extend(_revoked_hdp), Code.PERMISSION_DENIED, "hdp.revoked", id="revoked-hdp"),
    pytest.param(
        _accept(_revoked_compact), Code.PERMISSION_DENIED, "aip.revoked", id="revoked-aip"
    ),
    pytest.param(
        _attenuate(compact),
        Code.INVALID_ARGUMENT,
        "delegation.wrong_format",
        id="attenuate-compact",
    ),
    pytest.param(
        _call("RevokeToken", Request.RevokeTokenRequest(token_id="no-such-token")),
        Code.NOT_FOUND,
        "delegation.unknown_token",
        id="revoke-unknown",
    ),
]


@pytest.mark.parametrize(("prepare", "status", "code"), REFUSALS)
def test_bad_input_is_refused_with_a_reason_and_nothing_is_written(
    tsd: RunningDaemon, prepare: Prepare, status: grpc.StatusCode, code: str | None
) -> None:
    refused(tsd, prepare(tsd), status, code)


def test_revoking_needs_a_token_that_names_the_caller(tsd: RunningDaemon) -> None:
    reply = root(tsd, agents=["alice"])
    request = Request.RevokeTokenRequest(token_id=reply.token_id, reason="lost laptop")
    refused(
        tsd,
        lambda: stub(tsd, "bob").RevokeToken(request),
        Code.PERMISSION_DENIED,
        "auth.not_permitted",
    )
    first = stub(tsd, "alice").RevokeToken(request)
    logged = entry(tsd, first.index)
    assert logged.kind is EntryKind.REVOCATION
    assert RevocationBody.from_body(logged.body).token_id == reply.token_id
    before = tsd.daemon.log.size
    again = stub(tsd, "alice").RevokeToken(request)
    assert (again.index, again.already_revoked) == (first.index, True)
    assert tsd.daemon.log.size == before


def test_revoking_a_chained_token_revokes_its_attenuations_not_its_parent(
    tsd: RunningDaemon,
) -> None:
    issued = chained(tsd, subject="alice")
    child = stub(tsd, "alice").AttenuateAip(
        Request.AttenuateAipRequest(token=issued.token, delegate_agent="bob", context="c")
    )
    grandchild = stub(tsd, "bob").AttenuateAip(
        Request.AttenuateAipRequest(token=child.token, delegate_agent="carol", context="d")
    )
    stub(tsd, "bob").RevokeToken(Request.RevokeTokenRequest(token_id=child.token_id))
    verify = stub(tsd, "carol").VerifyToken
    codes = [
        verify(Request.VerifyTokenRequest(token=t)).code
        for t in (issued.token, child.token, grandchild.token)
    ]
    assert codes == ["", "aip.revoked", "aip.revoked"]


# --- restart, export, service plumbing ----------------------------------------------------------


def test_revocations_survive_a_restart_and_the_log_verifies_offline(short_dir: Path) -> None:
    data_dir = short_dir / "d"
    first = start(data_dir)
    try:
        hdp_reply = root(first, agents=["alice", "bob"])
        hop = stub(first, "bob").ExtendHdp(
            Request.ExtendHdpRequest(token=hdp_reply.token, action_summary="x")
        )
        token = compact(first)
        token_id = aip.verify(
            token, public_key=issuer_key(first).public_key, now=int(time.time())
        ).jti
        narrowed = stub(first, "alice").AttenuateAip(
            Request.AttenuateAipRequest(
                token=chained(first).token, delegate_agent="bob", context="c"
            )
        )
        for revoked in (hdp_reply.token_id, token_id):
            stub(first, "alice").RevokeToken(Request.RevokeTokenRequest(token_id=revoked or ""))
    finally:
        first.close()
    second = start(data_dir)
    try:
        verify = stub(second, "carol").VerifyToken
        assert verify(Request.VerifyTokenRequest(token=hop.token)).code == "hdp.revoked"
        assert verify(Request.VerifyTokenRequest(token=token)).code == "aip.revoked"
        assert verify(Request.VerifyTokenRequest(token=narrowed.token)).valid
        out = short_dir / "bundle.jsonl"
        second.daemon.log.export(out)
    finally:
        second.close()
    report = verify_bundle(
        Bundle.from_path(out), log_key=load_public_key(str(data_dir / "log.pub"))
    )
    assert report.valid, report.damage
    kinds = [LogEntry.from_bytes(raw).kind.value for raw in Bundle.from_path(out).entries]
    assert kinds.count("delegation") == 5 and kinds.count("revocation") == 2


def test_new_services_are_healthy_reflected_and_answer_every_method(tsd: RunningDaemon) -> None:
    health = health_pb2_grpc.HealthStub(tsd.channel(tsd.shared))
    for service in ("tallystick.v1.Delegation", "tallystick.v1.Query"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    channel = tsd.channel(tsd.agent("alice"))
    for descriptor in (delegation_pb2.DESCRIPTOR, query_pb2.DESCRIPTOR):
        for service in descriptor.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                try:
                    channel.unary_unary(path)(b"")
                except grpc.RpcError as error:
                    assert error.code() != Code.UNIMPLEMENTED, path
                    assert reason(error) is not None, path
