"""The current delegation follows asyncio tasks and, when asked, threads; authorize/delegate."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tallystick.sdk.client import AsyncClient, Client, Policy
from tallystick.sdk.context import (
    Delegation,
    authorize,
    authorize_async,
    current,
    delegate,
    delegate_async,
    run_in_context,
    use,
)
from tallystick.sdk.errors import NoDelegation, SidecarUnavailable
from tallystick.verifier import hdp
from tallystick.verifier.logentry import DelegationFormat

from .conftest import Sidecar

D1 = Delegation("t1", "id-1", DelegationFormat.AIP_CHAINED, principal="p", scopes=("tool:*",))
D2 = Delegation("t2", "id-2", DelegationFormat.AIP_COMPACT)


def test_use_nests_and_restores() -> None:
    assert current() is None
    with use(D1):
        assert current() is D1
        with use(D2):
            assert current() is D2
        assert current() is D1
    assert current() is None


def test_threads_see_it_only_through_run_in_context() -> None:
    seen: list[Delegation | None] = []
    with use(D1), ThreadPoolExecutor(1) as pool:
        plain = threading.Thread(target=lambda: seen.append(current()))
        plain.start()
        plain.join()
        assert run_in_context(pool, current).result() is D1
    assert seen == [None]


def test_asyncio_tasks_inherit_it_and_keep_their_own() -> None:
    async def scenario() -> None:
        async def inner() -> Delegation | None:
            await asyncio.sleep(0)
            return current()

        with use(D1):
            task = asyncio.create_task(inner())
        with use(D2):
            other = asyncio.create_task(inner())
        assert await task is D1 and await other is D2
        assert current() is None

    asyncio.run(scenario())


def test_authorize_then_delegate_extends_the_token_in_a_nested_scope(
    shared_sidecar: Sidecar, policy: Policy
) -> None:
    with (
        Client(shared_sidecar.address("alice"), policy=policy) as alice,
        Client(shared_sidecar.address("bob"), policy=policy) as bob,
    ):
        with authorize(
            alice,
            "human-a",
            "s1",
            "summarise",
            authorized_tools=["search"],
            agents=["alice", "bob"],
        ) as root:
            assert current() is root
            assert root.principal == "human-a" and root.session_id == "s1"
            assert root.scopes == ("search",) and root.format is DelegationFormat.HDP
            with delegate(bob, "search for sources") as hop:
                assert current() is hop and hop.token_id == root.token_id
                assert hdp.HdpToken.from_json(hop.token).hop_count == 1
                assert alice.verify_token(hop.token, tool="search").subject == "bob"
            assert current() is root
        assert current() is None


def test_delegate_needs_a_current_hdp_delegation(shared_sidecar: Sidecar, policy: Policy) -> None:
    with Client(shared_sidecar.address("bob"), policy=policy) as bob:
        with pytest.raises(NoDelegation) as caught, delegate(bob, "x"):
            pass
        assert caught.value.code == "sdk.no_delegation"
        with use(D1), pytest.raises(NoDelegation) as wrong, delegate(bob, "x"):
            pass
        assert wrong.value.code == "sdk.not_hdp"


def test_authorize_fails_closed_without_the_sidecar(short_dir: Path, policy: Policy) -> None:
    ran = False
    with (
        Client(f"unix:{short_dir / 'none.sock'}", policy=policy) as client,
        pytest.raises(SidecarUnavailable),
        authorize(client, "human-a", "s", "i"),
    ):
        ran = True
    assert not ran and current() is None


def test_async_authorize_and_delegate(shared_sidecar: Sidecar, policy: Policy) -> None:
    async def scenario() -> None:
        async with (
            AsyncClient(shared_sidecar.address("alice"), policy=policy) as alice,
            AsyncClient(shared_sidecar.address("bob"), policy=policy) as bob,
            authorize_async(alice, "human-a", "s2", "i", agents=["alice", "bob"]) as root,
        ):
            async with delegate_async(bob, "sub-task") as hop:
                assert current() is hop and hop.token_id == root.token_id
                assert (await bob.verify_token(hop.token)).depth == 1
            assert current() is root

    asyncio.run(scenario())
    assert current() is None
