"""Delegation headers over real HTTP (httpx, requests) to a real loopback server."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import requests
from tallystick.sdk.client import Client, Policy
from tallystick.sdk.context import Delegation, authorize, use
from tallystick.sdk.errors import NoDelegation, TokenRejected
from tallystick.sdk.http import DelegationAuth, from_headers, headers, token_from_headers
from tallystick.verifier import hdp
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.logentry import DelegationFormat

from .conftest import Sidecar


class _Echo(BaseHTTPRequestHandler):
    """Answers every GET with the request's headers as a JSON object."""

    def do_GET(self) -> None:
        body = json.dumps(dict(self.headers.items())).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def alice(shared_sidecar: Sidecar, policy: Policy) -> Iterator[Client]:
    with Client(shared_sidecar.address("alice"), policy=policy) as client:
        yield client


def test_no_delegation_no_headers(echo_url: str) -> None:
    assert headers() == {}
    seen = httpx.get(echo_url, auth=DelegationAuth()).json()
    assert not any(name.lower().startswith(("hdp", "x-aip")) for name in seen)


def test_hdp_token_travels_over_httpx_and_requests_and_verifies(
    echo_url: str, alice: Client
) -> None:
    with authorize(alice, "human-a", "s1", "i", authorized_tools=["search"]) as root:
        expected = hdp.HdpToken.from_json(root.token)
        via_requests = requests.get(echo_url, auth=DelegationAuth(), timeout=5).json()
        with httpx.Client(auth=DelegationAuth()) as session:
            via_httpx = session.get(echo_url).json()

        async def fetch() -> dict[str, str]:
            async with httpx.AsyncClient(auth=DelegationAuth()) as session:
                return (await session.get(echo_url)).json()  # type: ignore[no-any-return]

        via_async = asyncio.run(fetch())
    for seen in (via_requests, via_httpx, via_async):
        assert seen["HDP-Token"] == expected.to_header()  # base64url of the canonical JSON
        assert seen["HDP-Token-Ref"] == expected.reference()
        received = from_headers(alice, seen, tool="search")
        assert received.token_id == root.token_id and received.principal == "human-a"
        assert received.session_id == "s1" and received.format is DelegationFormat.HDP


def test_aip_tokens_use_x_aip_token_and_authorization_aip(echo_url: str, alice: Client) -> None:
    grant = alice.issue_aip(["tool:search"], principal="human-a")
    delegation = Delegation(grant.token, grant.token_id, grant.format)
    seen = httpx.get(echo_url, auth=DelegationAuth(delegation)).json()
    assert seen["X-AIP-Token"] == grant.token
    received = from_headers(alice, seen, tool="tool:search")
    assert received.scopes == ("tool:search",) and received.principal == "human-a"
    assert token_from_headers({"authorization": f"AIP {grant.token}"}) == grant.token
    compact = alice.issue_aip(["tool:*"], format=DelegationFormat.AIP_COMPACT)
    via_auth = from_headers(alice, {"Authorization": f"AIP {compact.token}"})
    assert via_auth.scopes == ("tool:*",) and via_auth.token_id == compact.token_id


def test_incoming_requests_without_a_valid_token_are_refused(alice: Client) -> None:
    with pytest.raises(NoDelegation):
        from_headers(alice, {"Authorization": "Bearer abc"})
    with pytest.raises(MalformedInput) as bad:
        from_headers(alice, {"HDP-Token": "!!!"})
    assert bad.value.code == "hdp.schema_invalid"
    with authorize(alice, "human-a", "s1", "i", authorized_tools=["search"]) as root:
        sent = headers()
    with pytest.raises(TokenRejected) as scope:
        from_headers(alice, sent, tool="shell")
    assert scope.value.code == "hdp.tool_not_authorized"
    alice.revoke_token(root.token_id)
    with pytest.raises(TokenRejected) as revoked:
        from_headers(alice, sent)
    assert revoked.value.code == "hdp.revoked"


def test_legacy_hdp_header_is_read(alice: Client) -> None:
    with authorize(alice, "human-a", "s9", "i") as root:
        value = headers()["HDP-Token"]
    with use(from_headers(alice, {"x-hdp-token": value})) as received:
        assert received.token_id == root.token_id
