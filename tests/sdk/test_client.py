"""The sidecar client against a REAL tallystickd: records, delegation calls, outages, mTLS."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tallystick.daemon.config import load_config
from tallystick.daemon.server import REASON_KEY as DAEMON_REASON_KEY
from tallystick.daemon.server import Daemon
from tallystick.daemon.tls import CA_CERT, SERVER_CERT, SERVER_KEY, agent_files, init_test_setup
from tallystick.sdk.client import AsyncClient, Client, Policy, call_record
from tallystick.sdk.errors import (
    REASON_KEY,
    ClientClosed,
    ClientConfigError,
    SidecarRejected,
    SidecarUnavailable,
)
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.logentry import CallBody, Cost, DelegationFormat, Recount

from .conftest import Sidecar, make_call


def test_reason_key_is_the_daemons() -> None:
    assert REASON_KEY == DAEMON_REASON_KEY


def test_call_record_carries_every_field_but_principal() -> None:
    call = make_call(
        cost=Cost(amount="0.0042", currency="USD"),
        recount=Recount(tokenizer="cl100k_base", visible_output_tokens=28),
        service_tier="default",
        principal="human-a",
    )
    record = call_record(call)
    assert record.model == call.model and record.cost.amount == "0.0042"
    assert record.recount.visible_output_tokens == 28
    assert record.usage.HasField("cache_read_input_tokens")
    assert not record.usage.HasField("reasoning_output_tokens")  # unknown stays unset, never 0
    assert not record.HasField("delegation_id")


def test_record_returns_the_durable_index_and_the_log_holds_the_call(
    shared_sidecar: Sidecar, policy: Policy
) -> None:
    call = make_call(cost=Cost(amount="0.01", currency="USD"))
    with Client(shared_sidecar.address("alice"), policy=policy) as client:
        index = client.record(call)
        indexes = client.record_many([make_call("m1"), make_call("m2")])
    assert isinstance(index, int)
    assert indexes == [index + 1, index + 2]
    entry = shared_sidecar.entries(index)[0]
    assert entry.agent == "alice"  # from the socket, never from the request
    assert CallBody.model_validate(entry.body) == call


def test_shared_socket_with_agent_id_uses_the_agents_socket(
    shared_sidecar: Sidecar, policy: Policy
) -> None:
    with Client(shared_sidecar.address(), agent_id="bob", policy=policy) as client:
        index = client.record(make_call())
    assert index is not None
    assert shared_sidecar.entries(index)[0].agent == "bob"


def test_a_refused_record_raises_with_the_daemons_code_and_is_not_spooled(
    shared_sidecar: Sidecar, policy: Policy
) -> None:
    with Client(shared_sidecar.address(), policy=policy) as client:  # the shared socket
        with pytest.raises(SidecarRejected) as caught:
            client.record(make_call())
        assert caught.value.code == "auth.no_agent_identity"
        assert caught.value.status == "PERMISSION_DENIED"
        assert client.pending == 0


@pytest.mark.parametrize(
    ("address", "kwargs"),
    [
        ("nonsense", {}),
        ("127.0.0.1:7000", {}),  # TCP without mutual TLS
        ("unix:", {}),
        ("unix:/tmp/x.sock", {"tls_cert": Path("/nonexistent")}),  # some TLS files, not all
    ],
)
def test_bad_addresses_are_refused_before_any_connection(
    address: str, kwargs: dict[str, Path], policy: Policy
) -> None:
    with pytest.raises(ClientConfigError) as caught:
        Client(address, policy=policy, **kwargs)  # type: ignore[arg-type]
    assert caught.value.code == "sdk.bad_address"


def test_bad_policy_values_are_refused() -> None:
    with pytest.raises(ClientConfigError) as caught:
        Policy(max_buffered=0)
    assert caught.value.code == "sdk.bad_policy"


def test_closed_client_refuses_calls(shared_sidecar: Sidecar, policy: Policy) -> None:
    client = Client(shared_sidecar.address("alice"), policy=policy)
    client.close()
    client.close()  # idempotent
    with pytest.raises(ClientClosed):
        client.record(make_call())


def test_delegation_calls_return_typed_results(shared_sidecar: Sidecar, policy: Policy) -> None:
    with (
        Client(shared_sidecar.address("alice"), policy=policy) as alice,
        Client(shared_sidecar.address("bob"), policy=policy) as bob,
    ):
        root = alice.issue_hdp_root(
            "human-a", "s1", "summarise", authorized_tools=["search"], agents=["alice", "bob"]
        )
        assert root.hop_count == 0 and root.head.startswith("sha256:")
        hop = bob.extend_hdp(root.token, "search the web")
        assert hop.token_id == root.token_id and hop.hop_count == 1 and hop.index > root.index
        verdict = alice.verify_token(hop.token, tool="search")
        assert verdict.valid and verdict.format is DelegationFormat.HDP
        assert verdict.principal == "human-a" and verdict.subject == "bob" and verdict.depth == 1
        refused = alice.verify_token(hop.token, tool="shell")
        assert not refused.valid and refused.code == "hdp.tool_not_authorized"
        revoked = alice.revoke_token(root.token_id, reason="done")
        assert not revoked.already_revoked
        assert alice.revoke_token(root.token_id).already_revoked
        assert alice.verify_token(hop.token).code == "hdp.revoked"

        compact = alice.issue_aip(
            ["tool:search"], format=DelegationFormat.AIP_COMPACT, audience="svc"
        )
        assert compact.format is DelegationFormat.AIP_COMPACT and compact.token.startswith("eyJ")
        assert alice.verify_token(compact.token, tool="tool:search", audience="svc").valid
        chained = alice.issue_aip(["tool:*"], principal="human-a")
        narrower = alice.attenuate_aip(chained.token, "bob", scopes=["tool:search"], context="c")
        assert narrower.format is DelegationFormat.AIP_CHAINED
        assert bob.verify_token(narrower.token, tool="tool:search").valid
        assert not bob.verify_token(narrower.token, tool="tool:shell").valid


def test_delegation_refusals_carry_the_daemons_reason(
    shared_sidecar: Sidecar, policy: Policy
) -> None:
    with Client(shared_sidecar.address("carol"), policy=policy) as carol:
        with pytest.raises(SidecarRejected) as caught:
            carol.issue_hdp_root("human-a", "s1", "x")
        assert caught.value.code == "delegation.principal_not_permitted"
        with pytest.raises(SidecarRejected) as unknown:
            carol.revoke_token("no-such-token")
        assert unknown.value.code == "delegation.unknown_token"
    with pytest.raises(MalformedInput):
        Client(shared_sidecar.address("carol"), policy=policy).issue_aip(
            ["tool:x"], format=DelegationFormat.HDP
        )


def test_delegation_calls_fail_closed_when_the_sidecar_is_down(
    short_dir: Path, policy: Policy
) -> None:
    with Client(f"unix:{short_dir / 'none.sock'}", policy=policy) as client:
        with pytest.raises(SidecarUnavailable) as caught:
            client.verify_token("{}")
        assert caught.value.code == "sdk.sidecar_unavailable"
        with pytest.raises(SidecarUnavailable):
            client.issue_hdp_root("human-a", "s", "i")


def _models(sidecar: Sidecar) -> list[str]:
    return [entry.body["model"] for entry in sidecar.calls()]


def test_outage_spools_durably_and_replays_in_order_after_restart(
    sidecar: Sidecar, policy: Policy
) -> None:
    client = Client(sidecar.address("alice"), policy=policy)
    assert client.record(make_call("m0")) == 0
    assert client.record_many([make_call("m1")]) == [1]
    sidecar.stop()  # drains, signs a final checkpoint, exits: as on SIGTERM
    assert client.record(make_call("m2")) is None
    assert client.record_many([make_call("m3"), make_call("m4")]) is None
    assert client.pending == 3
    with pytest.raises(SidecarUnavailable):
        client.flush()
    client.close()  # the spooled records stay on disk

    spool_files = list((policy.spool_dir or Path()).glob("spool-*.sqlite3"))
    assert len(spool_files) == 1 and spool_files[0].stat().st_mode & 0o777 == 0o600

    sidecar.start()  # same data directory
    with Client(sidecar.address("alice"), policy=policy) as again:
        assert again.pending == 3
        # The backlog goes first: the new record lands after the spooled ones.
        assert again.record(make_call("m5")) == 5
        assert again.pending == 0
        assert again.flush() == 0
    assert _models(sidecar) == ["m0", "m1", "m2", "m3", "m4", "m5"]


def test_flush_replays_and_reports_how_many(sidecar: Sidecar, policy: Policy) -> None:
    with Client(sidecar.address("alice"), policy=policy) as client:
        sidecar.stop()
        for n in range(5):
            assert client.record(make_call(f"m{n}")) is None
        sidecar.start()
        assert client.flush() == 5
    assert _models(sidecar) == [f"m{n}" for n in range(5)]


def test_background_retry_delivers_without_a_new_call(sidecar: Sidecar, short_dir: Path) -> None:
    policy = Policy(spool_dir=short_dir / "spool", retry_initial_s=0.05, retry_max_s=0.2)
    with Client(sidecar.address("alice"), policy=policy) as client:
        sidecar.stop()
        assert client.record(make_call("late")) is None
        sidecar.start()
        for _ in range(200):
            if client.pending == 0:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert client.pending == 0
    assert _models(sidecar) == ["late"]


def test_records_refused_on_replay_are_set_aside_not_lost(sidecar: Sidecar, policy: Policy) -> None:
    shared = sidecar.address()  # records on the shared socket are refused once it is back
    with Client(shared, policy=policy) as client:
        sidecar.stop()
        assert client.record(make_call("refused")) is None
        sidecar.start()
        with pytest.raises(SidecarRejected) as caught:
            client.flush()
        assert caught.value.code == "auth.no_agent_identity"
        (kept,) = client.rejected()
        assert kept.code == "auth.no_agent_identity"
        assert CallBody.model_validate_json(kept.body).model == "refused"
        assert client.pending == 0
        assert client.flush() == 0


def test_raise_policy_buffers_in_memory_up_to_its_bound(sidecar: Sidecar) -> None:
    policy = Policy(
        on_unavailable_usage="raise", max_buffered=2, retry_in_background=False, connect_wait_s=1.5
    )
    with Client(sidecar.address("alice"), policy=policy) as client:
        sidecar.stop()
        assert client.record(make_call("a")) is None
        assert client.record(make_call("b")) is None
        with pytest.raises(SidecarUnavailable) as caught:
            client.record(make_call("c"))
        assert caught.value.code == "sdk.buffer_full"
        sidecar.start()
        assert client.flush() == 2
    assert _models(sidecar) == ["a", "b"]


def test_async_client_has_the_same_surface_and_outage_handling(
    sidecar: Sidecar, policy: Policy
) -> None:
    async def scenario() -> None:
        async with AsyncClient(sidecar.address("alice"), policy=policy) as client:
            assert await client.record(make_call("a0")) == 0
            root = await client.issue_hdp_root("human-a", "s1", "i", agents=["alice"])
            assert (await client.verify_token(root.token)).valid
            sidecar.stop()
            assert await client.record(make_call("a1")) is None
            assert await client.record_many([make_call("a2")]) is None
            with pytest.raises(SidecarUnavailable):
                await client.verify_token(root.token)
            sidecar.start()
            assert await client.flush() == 2
            with pytest.raises(SidecarRejected) as caught:
                await client.revoke_token("nope")
            assert caught.value.code == "delegation.unknown_token"

    asyncio.run(scenario())
    assert _models(sidecar) == ["a0", "a1", "a2"]
    for name in dir(Client):
        if not name.startswith("_"):
            assert hasattr(AsyncClient, name), name


def test_tcp_with_mutual_tls_records_as_the_certificates_agent(
    short_dir: Path, policy: Policy
) -> None:
    certs = short_dir / "certs"
    init_test_setup(certs, agents=["alice"], now=datetime.now(UTC))
    flags = {
        "data_dir": short_dir / "t",
        "agents": {"alice": {}},
        "listen_tcp": "127.0.0.1:0",
        "tls_cert": certs / SERVER_CERT,
        "tls_key": certs / SERVER_KEY,
        "tls_client_ca": certs / CA_CERT,
    }
    daemon = Daemon.start(load_config(flags=flags, environ={}))
    try:
        assert daemon.tcp_address is not None
        cert, key = agent_files(certs, "alice")
        with Client(
            daemon.tcp_address, tls_cert=cert, tls_key=key, tls_ca=certs / CA_CERT, policy=policy
        ) as client:
            index = client.record(make_call())
        assert index == 0
    finally:
        daemon.stop(grace=0)
