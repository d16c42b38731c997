"""``@tool``: refused outside the delegation's scope, checked by the sidecar, recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from tallystick.sdk.client import AsyncClient, Client, Policy
from tallystick.sdk.context import Delegation, authorize, use
from tallystick.sdk.errors import ClientConfigError, SidecarUnavailable, ToolNotAuthorized
from tallystick.sdk.tools import configure, permits, tool
from tallystick.verifier.logentry import CallBody, DelegationFormat

from .conftest import Sidecar


class ListRecorder:
    """A recorder that keeps what it is given (the decorator's only dependency)."""

    def __init__(self) -> None:
        self.calls: list[CallBody] = []

    def record(self, call: CallBody) -> int | None:
        self.calls.append(call)
        return None


@pytest.fixture
def alice(shared_sidecar: Sidecar, policy: Policy) -> Iterator[Client]:
    with Client(shared_sidecar.address("alice"), policy=policy) as client:
        yield client
    configure(None)


def test_an_authorised_tool_runs_and_is_recorded_in_the_log(
    shared_sidecar: Sidecar, alice: Client
) -> None:
    @tool("search", client=alice)
    def search(query: str) -> str:
        return f"results for {query}"

    before = len(shared_sidecar.calls())
    with authorize(alice, "human-a", "s1", "i", authorized_tools=["search"]) as root:
        assert search("cats") == "results for cats"
    (entry,) = shared_sidecar.calls()[before:]
    body = CallBody.model_validate(entry.body)
    assert (body.provider, body.model, body.operation, body.tool_name) == (
        "tool",
        "search",
        "execute_tool",
        "search",
    )
    assert body.delegation_id == root.token_id and body.session_id == "s1"
    assert body.usage.input_tokens is None and body.latency_ms is not None
    assert entry.agent == "alice"


def test_unauthorised_or_undelegated_calls_never_run(alice: Client) -> None:
    ran: list[str] = []
    recorder = ListRecorder()

    @tool("shell", client=alice, recorder=recorder)
    def shell() -> None:
        ran.append("shell")

    with pytest.raises(ToolNotAuthorized) as none:
        shell()
    assert none.value.code == "sdk.no_delegation"
    with (
        authorize(alice, "human-a", "s1", "i", authorized_tools=["search"]),
        pytest.raises(ToolNotAuthorized) as scope,
    ):
        shell()
    assert scope.value.code == "sdk.tool_not_authorized"
    assert ran == [] and recorder.calls == []


def test_the_sidecar_refuses_a_revoked_token_that_looks_fine_locally(alice: Client) -> None:
    recorder = ListRecorder()

    @tool("search", recorder=recorder)
    def search() -> str:
        return "ran"

    configure(alice, recorder=recorder)
    with authorize(alice, "human-a", "s1", "i", authorized_tools=["search"]) as root:
        assert search() == "ran"
        alice.revoke_token(root.token_id)
        assert permits(root, "search")
        with pytest.raises(ToolNotAuthorized) as caught:
            search()
    assert caught.value.code == "hdp.revoked"
    assert len(recorder.calls) == 1


def test_aip_scopes_match_tool_patterns() -> None:
    aip = Delegation("t", "id", DelegationFormat.AIP_CHAINED, scopes=("tool:search*",))
    assert permits(aip, "search") and permits(aip, "search_web") and not permits(aip, "shell")
    assert not permits(Delegation("t", "id", DelegationFormat.AIP_COMPACT), "search")


def test_an_unreachable_sidecar_refuses_unless_the_policy_allows(
    short_dir: Path, alice: Client
) -> None:
    recorder = ListRecorder()
    down = Client(f"unix:{short_dir / 'none.sock'}", policy=Policy(spool_dir=short_dir / "sp"))
    allowing = Client(
        f"unix:{short_dir / 'none2.sock'}",
        policy=Policy(spool_dir=short_dir / "sp2", on_unavailable_delegation="allow"),
    )

    @tool("search", client=down, recorder=recorder)
    def strict() -> str:
        return "ran"

    @tool("search", client=allowing, recorder=recorder)
    def lenient() -> str:
        return "ran"

    with authorize(alice, "human-a", "s1", "i", authorized_tools=["search"]):
        with pytest.raises(SidecarUnavailable):
            strict()
        assert lenient() == "ran"
    assert [call.tool_name for call in recorder.calls] == ["search"]
    down.close()
    allowing.close()


def test_async_tools_with_an_async_client(shared_sidecar: Sidecar, policy: Policy) -> None:
    async def scenario() -> None:
        async with AsyncClient(shared_sidecar.address("alice"), policy=policy) as client:

            @tool("fetch", client=client)
            async def fetch(url: str) -> str:
                await asyncio.sleep(0)
                return url

            root = await client.issue_aip(["tool:fetch"], principal="human-a")
            with use(Delegation(root.token, root.token_id, root.format, scopes=("tool:fetch",))):
                assert await fetch("u") == "u"
            with pytest.raises(ToolNotAuthorized):
                await fetch("u")

    before = len(shared_sidecar.calls())
    asyncio.run(scenario())
    (entry,) = shared_sidecar.calls()[before:]
    assert entry.body["tool_name"] == "fetch"


def test_a_tool_without_a_recorder_is_a_configuration_error() -> None:
    @tool("search")
    def search() -> None:
        pass

    with pytest.raises(ClientConfigError) as caught:
        search()
    assert caught.value.code == "sdk.not_configured"
