"""tallystick.verifier.aip: issuing, verifying, the replay profile, golden vectors, properties."""

from __future__ import annotations

import base64
import json
from typing import Any

import base58
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tallystick.verifier import aip
from tallystick.verifier._internal import aip_chained
from tallystick.verifier.errors import (
    ChainBroken,
    DepthExceeded,
    IdentityUnresolvable,
    MalformedInput,
    ReplayDetected,
    Revoked,
    ScopeInsufficient,
    TallystickError,
)
from vectors import generate_aip as golden

ISSUER, OTHER, AGENT_1, AGENT_2 = golden.ISSUER, golden.OTHER, golden.AGENT_1, golden.AGENT_2
ISSUER_ID, AGENT_1_ID, AGENT_2_ID = golden.ISSUER_ID, golden.AGENT_1_ID, golden.AGENT_2_ID
T0 = golden.ISSUED_AT
NOW = golden.NOW
EXPIRY = T0 + 3600


def compact(**overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "key": ISSUER,
        "subject": "aip:web:example.com/agent",
        "scopes": ["tool:search", "files:*"],
        "issued_at": T0,
    }
    return aip.issue_compact(**(arguments | overrides))


def signed_compact(claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A compact token correctly signed by ISSUER over arbitrary claims and header (forgeries)."""
    header = {"alg": "EdDSA", "typ": "aip+jwt"} | (header or {})
    encoded = [golden._b64url(json.dumps(part).encode()) for part in (header, claims)]
    signing_input = ".".join(encoded)
    return signing_input + "." + golden._b64url(ISSUER.sign(signing_input.encode()))


def base_claims(**overrides: Any) -> dict[str, Any]:
    claims = {
        "iss": ISSUER_ID,
        "sub": "aip:web:example.com/agent",
        "scope": ["tool:search"],
        "budget_usd": None,
        "max_depth": 0,
        "iat": T0,
        "exp": EXPIRY,
    }
    return claims | overrides


def without(name: str) -> dict[str, Any]:
    claims = base_claims()
    del claims[name]
    return claims


def chained(**overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "key": ISSUER,
        "scopes": ["tool:search", "tool:email", "files:*"],
        "issued_at": T0,
        "budget_cents": 1000,
        "principal": "aip:web:example.com/alice",
        "domains": ["example.com", "docs.example.com"],
    }
    return aip.issue_chained(**(arguments | overrides))


def delegate(token: str, **overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "root_public_key": ISSUER.public_key,
        "delegator": ISSUER_ID,
        "delegate": AGENT_1_ID,
        "scopes": ["tool:search"],
        "context": "summarise the report",
    }
    return aip.delegate_chained(token, **(arguments | overrides))


def check(token: str, **options: Any) -> aip.VerifiedAip:
    return aip.verify(token, **({"public_key": ISSUER.public_key, "now": NOW} | options))


def rejects(token: str, code: str, step: int | None, **options: Any) -> TallystickError:
    with pytest.raises(TallystickError) as caught:
        check(token, **options)
    assert (caught.value.code, caught.value.step) == (code, step), caught.value
    return caught.value


# -- identities ---------------------------------------------------------------------------------


def test_key_identity_round_trips() -> None:
    identity = aip.key_identity(ISSUER.public_key)
    assert identity.startswith("aip:key:ed25519:z")
    assert aip.resolve_key_identity(identity) == ISSUER.public_key
    assert base58.b58decode(identity.removeprefix("aip:key:ed25519:z")) == ISSUER.public_key.raw


@pytest.mark.parametrize(
    "identity",
    [
        pytest.param("aip:web:example.com/agent", id="web-needs-a-document"),
        pytest.param("aip:key:ed25519:" + ISSUER_ID.split(":z")[1], id="no-multibase-z"),
        pytest.param("aip:key:secp256r1:" + ISSUER_ID.split(":")[-1], id="other-algorithm"),
        pytest.param(ISSUER_ID[:-1] + "0", id="not-base58"),
        pytest.param(ISSUER_ID[:-2], id="short-key"),
        pytest.param("aip:key:ed25519:z1" + ISSUER_ID.split(":z")[1], id="non-canonical-leading-1"),
        pytest.param("", id="empty"),
        pytest.param(42, id="not-a-string"),
    ],
)
def test_resolve_key_identity_rejects(identity: Any) -> None:
    with pytest.raises(IdentityUnresolvable) as caught:
        aip.resolve_key_identity(identity)
    assert caught.value.code == "aip.identity_unresolvable"


# -- compact ------------------------------------------------------------------------------------


def test_compact_round_trip() -> None:
    result = check(compact(budget_usd=2.5, max_depth=1), tool="tool:search")
    assert result == aip.VerifiedAip(
        format="aip-compact",
        issuer=ISSUER_ID,
        subject="aip:web:example.com/agent",
        scopes=("files:*", "tool:search"),
        max_depth=1,
        depth=0,
        expires_at=EXPIRY,
        budget_usd=2.5,
        issued_at=T0,
        tool="tool:search",
    )


def _claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_compact_writes_the_reference_claims_in_order() -> None:
    claims = _claims_of(compact(budget_usd=5, audience="aip:web:rp.example", jti="id-1"))
    assert list(claims) == [
        "iss",
        "sub",
        "scope",
        "budget_usd",
        "max_depth",
        "iat",
        "exp",
        "aud",
        "jti",
    ]
    assert claims["budget_usd"] == 5.0 and isinstance(claims["budget_usd"], float)
    assert _claims_of(compact())["budget_usd"] is None


def test_compact_header_is_pinned() -> None:
    header = compact().split(".")[0]
    assert base64.urlsafe_b64decode(header + "==") == b'{"alg":"EdDSA","typ":"aip+jwt"}'


@pytest.mark.parametrize(
    ("tool", "granted"),
    [
        pytest.param("tool:search", True, id="exact"),
        pytest.param("files:read", True, id="wildcard"),
        pytest.param("files:", True, id="wildcard-empty-rest"),
        pytest.param("filesystem", False, id="wildcard-is-a-prefix-with-colon"),
        pytest.param("tool:search2", False, id="exact-is-not-a-prefix"),
        pytest.param("tool:email", False, id="other"),
    ],
)
def test_compact_tool_scopes(tool: str, granted: bool) -> None:
    token = compact()
    if granted:
        assert check(token, tool=tool).tool == tool
    else:
        rejects(token, "aip.scope_insufficient", 6, tool=tool)


@pytest.mark.parametrize(
    ("now", "code"),
    [
        pytest.param(T0, None, id="at-iat"),
        pytest.param(EXPIRY - 1, None, id="last-second"),
        pytest.param(EXPIRY, "aip.token_expired", id="at-exp"),
        pytest.param(EXPIRY + 60, "aip.token_expired", id="after-exp"),
        pytest.param(T0 - 1, "aip.token_not_yet_valid", id="before-iat"),
    ],
)
def test_compact_validity_window_has_no_leeway(now: int, code: str | None) -> None:
    if code is None:
        assert check(compact(), now=now).expires_at == EXPIRY
    else:
        rejects(compact(), code, 4, now=now)


def test_compact_nbf_is_honoured() -> None:
    token = signed_compact(base_claims(nbf=NOW + 1))
    rejects(token, "aip.token_not_yet_valid", 4)
    assert check(token, now=NOW + 1).issuer == ISSUER_ID


def _segments(header: bytes, payload: bytes, signature: bytes = b"x" * 64) -> str:
    return ".".join(golden._b64url(part) for part in (header, payload, signature))


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(signed_compact(base_claims(), {"typ": "JWT"}), id="typ-jwt"),
        pytest.param(signed_compact(base_claims(), {"typ": "aip-link+jwt"}), id="typ-link"),
        pytest.param(signed_compact(base_claims(), {"typ": None}), id="typ-missing"),
        pytest.param(signed_compact(base_claims(), {"typ": "aip+jwt", "crit": ["x"]}), id="crit"),
        pytest.param(
            _segments(b'{"alg":"none","typ":"aip+jwt"}', b"{}") + "x", id="alg-none-with-bytes"
        ),
        pytest.param(
            golden._b64url(b'{"alg":"none","typ":"aip+jwt"}') + "." + golden._b64url(b"{}") + ".",
            id="alg-none-unsigned",
        ),
        pytest.param(_segments(b'{"alg":"HS256","typ":"aip+jwt"}', b"{}"), id="alg-hs256"),
        pytest.param(
            _segments(b'{"alg":"EdDSA","typ":"aip+jwt","typ":"JWT"}', b"{}"), id="duplicate-typ"
        ),
        pytest.param(_segments(b"[]", b"{}"), id="header-not-object"),
        pytest.param(_segments(b"not json", b"{}"), id="header-not-json"),
        pytest.param("eyJ", id="one-segment"),
        pytest.param("eyJhbGciOiJFZERTQSJ9.e30", id="two-segments"),
        pytest.param(compact() + ".e30", id="four-segments"),
        pytest.param(compact().replace(".", "..", 1), id="empty-segment"),
        pytest.param(compact() + "=", id="padded-signature"),
        pytest.param(" " + compact(), id="leading-space"),
    ],
)
def test_compact_rejects_malformed_structure(token: str) -> None:
    rejects(token, "aip.token_malformed", 1)


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param(without("iss"), id="iss-missing"),
        pytest.param(without("scope"), id="scope-missing"),
        pytest.param(without("iat"), id="iat-missing"),
        pytest.param(base_claims(sub=""), id="sub-empty"),
        pytest.param(base_claims(scope="tool:search"), id="scope-string"),
        pytest.param(base_claims(scope=[]), id="scope-empty"),
        pytest.param(base_claims(scope=["tool:search", 7]), id="scope-number"),
        pytest.param(base_claims(iat=float(T0)), id="iat-float"),
        pytest.param(base_claims(exp=True), id="exp-bool"),
        pytest.param(without("exp"), id="exp-missing"),
        pytest.param(base_claims(iss=None), id="iss-null"),
        pytest.param(base_claims(budget_usd="5"), id="budget-string"),
        pytest.param(base_claims(max_depth=None), id="max-depth-null"),
        pytest.param(base_claims(max_depth=1.5), id="max-depth-float"),
        pytest.param(base_claims(aud=7), id="aud-number"),
        pytest.param(base_claims(aud=[]), id="aud-empty-list"),
        pytest.param(base_claims(jti=""), id="jti-empty"),
        pytest.param(base_claims(nbf="soon"), id="nbf-string"),
    ],
)
def test_compact_rejects_bad_claims(claims: dict[str, Any]) -> None:
    rejects(signed_compact(claims), "aip.token_malformed", 1)


def test_compact_rejects_claims_that_are_not_an_object() -> None:
    rejects(golden._jws_with_payload(b'["iss"]'), "aip.token_malformed", 1)


def test_compact_without_max_depth_means_zero_like_the_reference() -> None:
    assert check(signed_compact(without("max_depth"))).max_depth == 0


@pytest.mark.parametrize(
    ("claims", "code", "step"),
    [
        pytest.param(base_claims(max_depth=-1), "aip.token_malformed", 3, id="negative-depth"),
        pytest.param(base_claims(budget_usd=-0.01), "aip.budget_exceeded", 4, id="negative-budget"),
        pytest.param(base_claims(iat=EXPIRY + 1), "aip.token_malformed", 4, id="iat-after-exp"),
    ],
)
def test_compact_rejects_bad_values(claims: dict[str, Any], code: str, step: int) -> None:
    rejects(signed_compact(claims), code, step)


def test_compact_rejects_non_canonical_base64_that_pyjwt_would_accept() -> None:
    token = compact()
    # 64 signature bytes leave 4 unused bits in the last character: "A" and "B" decode alike.
    last = token[-1]
    sibling = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = sibling[sibling.index(last) ^ 1]
    assert base64.urlsafe_b64decode(token.split(".")[2][:-1] + twin + "==") == (
        base64.urlsafe_b64decode(token.split(".")[2] + "==")
    )
    rejects(token[:-1] + twin, "aip.token_malformed", 1)
    dash = token.index("-") if "-" in token else token.index("_")
    rejects(
        token[:dash] + ("+" if token[dash] == "-" else "/") + token[dash + 1 :],
        "aip.token_malformed",
        1,
    )


def test_compact_root_binding() -> None:
    web = signed_compact(base_claims(iss="aip:web:example.com/issuer"))
    assert check(web).issuer == "aip:web:example.com/issuer"  # the caller vouched for this key
    for issuer in (aip.key_identity(OTHER.public_key), "did:web:example.com", "aip:web:"):
        rejects(signed_compact(base_claims(iss=issuer)), "aip.identity_unresolvable", 2)
    for issuer in (aip.key_identity(OTHER.public_key), "did:web:example.com"):
        with pytest.raises(IdentityUnresolvable):
            aip.issue_compact(key=ISSUER, issuer=issuer, subject="s", scopes=["a"], issued_at=T0)
        with pytest.raises(IdentityUnresolvable):
            aip.issue_chained(key=ISSUER, issuer=issuer, scopes=["a"], issued_at=T0)


def test_compact_wrong_key() -> None:
    rejects(compact(), "aip.signature_invalid", 1, public_key=OTHER.public_key)


def test_compact_audience() -> None:
    token = compact(audience="aip:web:rp.example")
    assert check(token, audience="aip:web:rp.example").audience == "aip:web:rp.example"
    rejects(token, "aip.audience_mismatch", None)
    rejects(token, "aip.audience_mismatch", None, audience="aip:web:other.example")
    listed = signed_compact(base_claims(aud=["aip:web:a.example", "aip:web:b.example"]))
    assert check(listed, audience="aip:web:b.example").audience == "aip:web:b.example"
    assert check(compact(), audience="aip:web:rp.example").audience is None  # no aud: not bound


def test_compact_replay_cache() -> None:
    cache = aip.ReplayCache()
    token = compact(jti="once")
    assert check(token, replay_cache=cache).jti == "once"
    error = rejects(token, "aip.replay_detected", None, replay_cache=cache)
    assert isinstance(error, ReplayDetected)
    other_issuer = aip.issue_compact(key=OTHER, subject="s", scopes=["a"], issued_at=T0, jti="once")
    assert check(other_issuer, public_key=OTHER.public_key, replay_cache=cache).jti == "once"
    unnamed = compact()
    assert check(unnamed, replay_cache=cache) == check(unnamed, replay_cache=cache)


def test_compact_rejected_token_does_not_consume_its_jti() -> None:
    cache = aip.ReplayCache()
    token = compact(jti="kept", audience="aip:web:rp.example")
    rejects(token, "aip.audience_mismatch", None, replay_cache=cache)
    rejects(
        token,
        "aip.scope_insufficient",
        6,
        replay_cache=cache,
        tool="x",
        audience="aip:web:rp.example",
    )
    assert check(token, replay_cache=cache, audience="aip:web:rp.example").jti == "kept"


def test_replay_cache_forgets_expired_ids_and_fails_closed_when_full() -> None:
    cache = aip.ReplayCache(max_entries=2)
    assert not cache.seen("a", expires_at=100, now=50)
    assert cache.seen("a", expires_at=100, now=100)
    assert not cache.seen("b", expires_at=200, now=60)
    with pytest.raises(ReplayDetected) as caught:
        cache.seen("c", expires_at=300, now=60)
    assert caught.value.code == "aip.replay_cache_full"
    assert not cache.seen("c", expires_at=300, now=101)  # "a" expired, making room
    assert len(cache) == 2
    assert not cache.seen("a", expires_at=400, now=201)  # "a" is a fresh token id again
    with pytest.raises(MalformedInput) as caught:
        aip.ReplayCache(max_entries=0)
    assert caught.value.code == "aip.invalid_argument"


def test_compact_revocation() -> None:
    token = compact()
    for identity in (ISSUER_ID, "aip:web:example.com/agent"):
        rejects(token, "aip.key_revoked", 7, revoked={identity})
    assert check(token, revoked={"aip:web:someone-else"}).issuer == ISSUER_ID


def test_verify_now_reads_the_clock() -> None:
    import time

    token = aip.issue_compact(key=ISSUER, subject="s", scopes=["a"], issued_at=int(time.time()))
    assert aip.verify_now(token, public_key=ISSUER.public_key, tool="a").tool == "a"
    with pytest.raises(TallystickError) as caught:
        aip.verify_now(compact(), public_key=ISSUER.public_key)  # T0 is in 2027
    assert caught.value.code in ("aip.token_not_yet_valid", "aip.token_expired")


@pytest.mark.parametrize(
    ("token", "code"),
    [
        pytest.param("", "aip.token_missing", id="empty"),
        pytest.param(" \t\n", "aip.token_missing", id="whitespace"),
        pytest.param(None, "aip.token_malformed", id="none"),
        pytest.param(b"eyJ", "aip.token_malformed", id="bytes"),
        pytest.param("eyJ" + "A" * 70_000, "aip.token_malformed", id="oversized-compact"),
        pytest.param("A" * 70_000, "aip.token_malformed", id="oversized-chained"),
    ],
)
def test_missing_and_malformed_tokens(token: Any, code: str) -> None:
    rejects(token, code, 1)


@pytest.mark.parametrize("now", [-1, True, 10**20, 1.5])
def test_now_must_be_a_sane_integer(now: Any) -> None:
    with pytest.raises(MalformedInput) as caught:
        check(compact(), now=now)
    assert caught.value.code == "aip.invalid_argument"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        pytest.param({"scopes": "tool:search"}, "aip.invalid_argument", id="scopes-string"),
        pytest.param({"scopes": []}, "aip.token_malformed", id="scopes-empty"),
        pytest.param({"scopes": [""]}, "aip.token_malformed", id="scope-empty-string"),
        pytest.param({"scopes": ['a"b']}, "aip.token_malformed", id="scope-quote"),
        pytest.param({"ttl_s": 0}, "aip.invalid_argument", id="ttl-zero"),
        pytest.param({"max_depth": -1}, "aip.invalid_argument", id="negative-depth"),
        pytest.param({"budget_usd": -1.0}, "aip.budget_exceeded", id="negative-budget"),
        pytest.param({"budget_usd": float("nan")}, "aip.budget_exceeded", id="nan-budget"),
        pytest.param({"budget_usd": "5"}, "aip.invalid_argument", id="string-budget"),
        pytest.param({"issued_at": -5}, "aip.invalid_argument", id="negative-time"),
        pytest.param({"subject": "a\nb"}, "aip.token_malformed", id="subject-newline"),
        pytest.param({"audience": ""}, "aip.token_malformed", id="audience-empty"),
    ],
)
def test_issue_compact_refuses_bad_arguments(overrides: dict[str, Any], code: str) -> None:
    with pytest.raises(TallystickError) as caught:
        compact(**overrides)
    assert caught.value.code == code


# -- chained ------------------------------------------------------------------------------------


def test_chained_round_trip() -> None:
    result = check(chained(), tool="files:write")
    assert result == aip.VerifiedAip(
        format="aip-chained",
        issuer=ISSUER_ID,
        subject=None,
        scopes=("files:*", "tool:email", "tool:search"),
        max_depth=3,
        depth=0,
        expires_at=EXPIRY,
        budget_cents=1000,
        principal="aip:web:example.com/alice",
        domains=("docs.example.com", "example.com"),
        tool="files:write",
    )


def test_chained_block_zero_is_the_canonical_encoding() -> None:
    source = golden.biscuit_of(chained(), ISSUER.public_key).block_source(0)
    assert source == (
        f'identity("{ISSUER_ID}");\n'
        'principal("aip:web:example.com/alice");\n'
        'right("tool:search");\nright("tool:email");\nright("files:*");\n'
        'domain("example.com");\ndomain("docs.example.com");\n'
        "max_depth(3);\nbudget_ceiling(1000);\n"
        'check if tool($t), ["tool:search", "tool:email"].contains($t)'
        ' or tool($t), $t.starts_with("files:");\n'
        "check if time($t), $t <= 2027-01-15T09:00:00Z;\n"
    )


def test_delegation_attenuates_every_dimension() -> None:
    token = delegate(
        chained(),
        scopes=["tool:search", "files:*"],
        budget_cents=400,
        domains=["example.com"],
        principal="aip:web:example.com/alice",
    )
    token = delegate(
        token,
        delegator=AGENT_1_ID,
        delegate=AGENT_2_ID,
        scopes=["files:read"],
        context="read one file",
    )
    result = check(token, tool="files:read", domain="example.com")
    assert (result.depth, result.subject, result.scopes) == (2, AGENT_2_ID, ("files:read",))
    assert (result.budget_cents, result.domains) == (400, ("example.com",))
    assert result.hops == (
        aip.AipHop(ISSUER_ID, AGENT_1_ID, "summarise the report", authenticated=False),
        aip.AipHop(AGENT_1_ID, AGENT_2_ID, "read one file", authenticated=False),
    )
    rejects(token, "aip.scope_insufficient", 6, tool="tool:search")
    rejects(token, "aip.scope_insufficient", 6, tool="files:read", domain="docs.example.com")


def test_delegation_without_scopes_inherits() -> None:
    token = delegate(chained(), scopes=[])
    assert check(token, tool="tool:email").scopes == ("files:*", "tool:email", "tool:search")


@pytest.mark.parametrize(
    ("overrides", "error", "code"),
    [
        pytest.param(
            {"scopes": ["tool:other"]}, ScopeInsufficient, "aip.scope_insufficient", id="widen-tool"
        ),
        pytest.param(
            {"scopes": ["tool:*"]}, ScopeInsufficient, "aip.scope_insufficient", id="widen-wildcard"
        ),
        pytest.param(
            {"scopes": ["*"]}, ScopeInsufficient, "aip.scope_insufficient", id="widen-star"
        ),
        pytest.param(
            {"budget_cents": 1001}, TallystickError, "aip.budget_exceeded", id="budget-above"
        ),
        pytest.param(
            {"budget_cents": -1}, TallystickError, "aip.budget_exceeded", id="budget-negative"
        ),
        pytest.param({"context": ""}, MalformedInput, "aip.token_malformed", id="empty-context"),
        pytest.param(
            {"context": " \u3000 "}, MalformedInput, "aip.token_malformed", id="blank-context"
        ),
        pytest.param(
            {"context": "x\n"}, MalformedInput, "aip.token_malformed", id="context-newline"
        ),
        pytest.param(
            {"domains": ["evil.example"]},
            ScopeInsufficient,
            "aip.scope_insufficient",
            id="widen-domain",
        ),
        pytest.param({"domains": []}, MalformedInput, "aip.token_malformed", id="empty-domains"),
        pytest.param(
            {"principal": "aip:web:mallory"},
            MalformedInput,
            "aip.token_malformed",
            id="principal-swap",
        ),
        pytest.param(
            {"delegate": 'x");\ntool("y'},
            MalformedInput,
            "aip.token_malformed",
            id="delegate-injection",
        ),
        pytest.param(
            {"delegator": None}, MalformedInput, "aip.invalid_argument", id="no-delegator"
        ),
        pytest.param(
            {"delegator": AGENT_2_ID, "delegator_key": AGENT_1},
            MalformedInput,
            "aip.invalid_argument",
            id="delegator-not-the-key",
        ),
    ],
)
def test_delegate_refuses_to_mint(
    overrides: dict[str, Any], error: type[Exception], code: str
) -> None:
    with pytest.raises(error) as caught:
        delegate(chained(), **overrides)
    assert isinstance(caught.value, TallystickError) and caught.value.code == code


def test_delegate_refuses_beyond_max_depth() -> None:
    with pytest.raises(DepthExceeded) as caught:
        delegate(chained(max_depth=0))
    assert (caught.value.code, caught.value.step) == ("aip.depth_exceeded", 3)


def test_delegate_verifies_the_chain_first() -> None:
    token = chained()
    with pytest.raises(TallystickError) as caught:
        delegate(token, root_public_key=OTHER.public_key)
    assert caught.value.code == "aip.signature_invalid"
    with pytest.raises(TallystickError) as caught:
        delegate(token, now=EXPIRY + 1)
    assert caught.value.code == "aip.token_expired"
    assert check(delegate(token, now=NOW)).depth == 1


def test_authenticated_delegators() -> None:
    token = delegate(chained(), delegator=None, delegator_key=ISSUER)
    token = delegate(
        token, delegator=None, delegator_key=AGENT_1, delegate=AGENT_2_ID, context="hop 2"
    )
    result = check(token, tool="tool:search", require_authenticated_delegators=True)
    assert [hop.authenticated for hop in result.hops] == [True, True]
    assert [hop.delegator for hop in result.hops] == [ISSUER_ID, AGENT_1_ID]


def test_required_authentication_rejects_asserted_delegators() -> None:
    token = delegate(chained())
    assert check(token).hops[0].authenticated is False
    rejects(token, "aip.delegator_unauthenticated", 2, require_authenticated_delegators=True)


def test_required_authentication_demands_a_continuous_chain() -> None:
    token = delegate(chained(), delegator=None, delegator_key=ISSUER, delegate="aip:web:someone")
    token = delegate(token, delegator=None, delegator_key=AGENT_1, delegate=AGENT_2_ID)
    assert check(token).depth == 2  # the reference's profile does not link hops
    with pytest.raises(ChainBroken) as caught:
        check(token, require_authenticated_delegators=True)
    assert (caught.value.code, caught.value.hop) == ("aip.chain_broken", 2)


def test_a_third_party_block_must_name_its_signer() -> None:
    # Signed by AGENT_1's key but claiming AGENT_2 delegated: rejected in every profile.
    biscuit = golden.biscuit_of(chained(), ISSUER.public_key)
    block = aip_chained.delegation_builder(
        delegator=AGENT_2_ID,
        delegate="aip:web:x",
        context="c",
        scopes=[],
        domains=None,
        principal=None,
        budget_cents=None,
    )
    forged = str(aip_chained.append_delegation(biscuit, block, delegator_key=AGENT_1).to_base64())
    rejects(forged, "aip.delegator_unauthenticated", 2)


def test_chained_tool_and_domain_terms_are_validated() -> None:
    rejects(chained(), "aip.token_malformed", 6, tool='tool:search")')
    rejects(chained(), "aip.token_malformed", 6, tool="tool:search", domain="a\nb")


def test_chained_revocation() -> None:
    token = delegate(chained())
    for identity in (ISSUER_ID, AGENT_1_ID):
        rejects(token, "aip.key_revoked", 7, revoked=frozenset({identity}))


def test_unverified_root_key() -> None:
    assert aip.unverified_root_key(delegate(chained())) == ISSUER.public_key
    web = chained(issuer="aip:web:example.com/issuer")
    with pytest.raises(IdentityUnresolvable):
        aip.unverified_root_key(web)
    with pytest.raises(MalformedInput):
        aip.unverified_root_key("not a token")


@pytest.mark.parametrize(
    ("error", "wire"),
    [
        pytest.param(
            ScopeInsufficient("x", code="aip.scope_insufficient"),
            "aip_scope_insufficient",
            id="aip",
        ),
        pytest.param(Revoked("x", code="aip.key_revoked"), "aip_key_revoked", id="revoked"),
        pytest.param(MalformedInput("x"), "aip_token_malformed", id="family-malformed"),
        pytest.param(DepthExceeded("x"), "aip_depth_exceeded", id="family-depth"),
        pytest.param(TallystickError("x"), "aip_token_malformed", id="base"),
    ],
)
def test_wire_code(error: TallystickError, wire: str) -> None:
    assert aip.wire_code(error) == wire


# -- golden vectors -----------------------------------------------------------------------------


def test_golden_vectors_regenerate_byte_for_byte() -> None:
    rebuilt = golden.build_vectors()
    for name in golden.FILES:
        assert (golden.OUT_DIR / name).read_text() == rebuilt[name], name


def _vectors() -> list[Any]:
    cases = []
    for name in golden.FILES:
        for case in json.loads((golden.OUT_DIR / name).read_text())["vectors"]:
            cases.append(pytest.param(case, id=case["id"]))
    return cases


@pytest.mark.parametrize("case", _vectors())
def test_golden_vector_outcome(case: dict[str, Any]) -> None:
    got = golden.outcome(case)
    assert {name: got.get(name) for name in case["expect"]} == case["expect"]
    for index, block in enumerate(case.get("blocks", [])):
        raw = aip_chained.decode_token_text(case["token"])
        assert aip_chained.block_payloads(raw)[index].hex() == block["payload"]


def test_golden_vectors_cover_accepts_and_rejects_for_both_formats() -> None:
    ids = [param.values[0]["id"] for param in _vectors()]
    for prefix in ("compact-", "chained-", "reject-compact-", "reject-chained-"):
        assert sum(i.startswith(prefix) for i in ids) >= 3, prefix
    assert {f"chained-depth{n}" for n in range(4)} <= set(ids)


# -- properties ---------------------------------------------------------------------------------

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALID = {
    "compact": compact(jti="p", audience="aip:web:rp"),
    "chained": delegate(
        delegate(chained()), delegator_key=AGENT_1, delegator=None, delegate=AGENT_2_ID
    ),
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    token=st.one_of(
        st.text(),
        st.text(alphabet=_ALPHABET + "=.~+/"),
        st.text(alphabet=_ALPHABET).map(lambda t: "eyJ" + t),
        st.binary().map(lambda b: base64.urlsafe_b64encode(b).decode()),
    ),
    tool=st.one_of(st.none(), st.text(max_size=20)),
)
def test_arbitrary_input_only_raises_tallystick_errors(token: str, tool: str | None) -> None:
    with pytest.raises(TallystickError):
        check(token, tool=tool, audience="aip:web:rp")


@settings(max_examples=150, deadline=None)
@given(
    which=st.sampled_from(sorted(_VALID)),
    position=st.integers(min_value=0),
    replacement=st.sampled_from(_ALPHABET + "=.+/"),
)
def test_a_single_character_change_never_verifies(
    which: str, position: int, replacement: str
) -> None:
    token = _VALID[which]
    position %= len(token)
    if token[position] == replacement:
        replacement = "A" if replacement != "A" else "B"
    with pytest.raises(TallystickError):
        check(token[:position] + replacement + token[position + 1 :], audience="aip:web:rp")


def test_the_property_tokens_are_valid() -> None:
    for token in _VALID.values():
        assert check(token, audience="aip:web:rp").issuer == ISSUER_ID
