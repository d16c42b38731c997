"""Attacks on AIP verification: the paper's six categories, aip.md §9, and encoding tricks.

Offending blocks are forged directly with biscuit-python, bypassing the honest
minting checks in ``aip.delegate_chained``: the verifier must stand on its own.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import biscuit_auth as ba
import pytest
from tallystick.verifier import aip
from tallystick.verifier._internal import aip_chained
from tallystick.verifier.errors import DepthExceeded, TallystickError
from tallystick.verifier.keys import PrivateKey
from vectors import generate_aip as golden

ISSUER, OTHER, AGENT_1 = golden.ISSUER, golden.OTHER, golden.AGENT_1
ISSUER_ID, AGENT_1_ID, AGENT_2_ID = golden.ISSUER_ID, golden.AGENT_1_ID, golden.AGENT_2_ID
T0, NOW = golden.ISSUED_AT, golden.NOW
EXPIRY = T0 + 3600
HOP = "delegator({a});\ndelegate({b});\ncontext({c});\n"
SEARCH_ONLY = "check if tool($t), {s}.contains($t);\n"


def check(token: str, **options: Any) -> aip.VerifiedAip:
    return aip.verify(token, **({"public_key": ISSUER.public_key, "now": NOW} | options))


def rejects(token: str, code: str, step: int | None, **options: Any) -> None:
    with pytest.raises(TallystickError) as caught:
        check(token, **options)
    assert (caught.value.code, caught.value.step) == (code, step), caught.value


def root(**overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "key": ISSUER,
        "scopes": ["tool:search", "tool:email"],
        "issued_at": T0,
        "budget_cents": 1000,
        "principal": "aip:web:example.com/alice",
        "domains": ["example.com"],
    }
    return aip.issue_chained(**(arguments | overrides))


def hop(token: str, extra: str = SEARCH_ONLY, **parameters: Any) -> str:
    """Forge a delegation block: the canonical facts plus ``extra`` statements."""
    values = {"a": ISSUER_ID, "b": AGENT_1_ID, "c": "forged hop", "s": ["tool:search"]}
    values |= parameters
    source = HOP + extra
    used = {name: value for name, value in values.items() if "{" + name + "}" in source}
    return golden.forge_block(token, source, used)


def authority(source: str, **parameters: Any) -> str:
    """Forge block 0, signed by the real issuer key, from arbitrary statements."""
    builder = ba.BiscuitBuilder(source, parameters)
    return str(builder.build(aip_chained.biscuit_private_key(ISSUER)).to_base64())


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


CANONICAL_AUTHORITY = (
    "identity({id});\nmax_depth(3);\ncheck if tool($t), {s}.contains($t);\n"
    "check if time($t), $t <= {exp};\n"
)


def good_authority(**parameters: Any) -> str:
    return authority(
        CANONICAL_AUTHORITY,
        **({"id": ISSUER_ID, "s": ["tool:search"], "exp": at(EXPIRY)} | parameters),
    )


# -- the six evaluation categories (aip.md §8) --------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(
            aip.issue_compact(key=ISSUER, subject="s", scopes=["tool:search"], issued_at=T0),
            id="compact",
        ),
        pytest.param(root(scopes=["tool:search"]), id="chained-depth0"),
        pytest.param(
            aip.delegate_chained(
                root(),
                root_public_key=ISSUER.public_key,
                delegator=ISSUER_ID,
                delegate=AGENT_1_ID,
                scopes=["tool:search"],
                context="search only",
            ),
            id="chained-narrowed",
        ),
        pytest.param(
            hop(root(scopes=["tool:search"]), extra=""), id="chained-no-check-still-bound-by-root"
        ),
    ],
)
def test_scope_widening(token: str) -> None:
    assert check(token, tool="tool:search").tool == "tool:search"
    for tool in ("tool:email", "tool:admin", "tool:search2"):
        rejects(token, "aip.scope_insufficient", 6, tool=tool)


def test_scope_widening_narrowed_chain_refuses_the_dropped_tool() -> None:
    narrowed = hop(root())
    assert check(root(), tool="tool:email").tool == "tool:email"
    rejects(narrowed, "aip.scope_insufficient", 6, tool="tool:email")


@pytest.mark.parametrize(
    ("max_depth", "hops"),
    [
        pytest.param(1, 2, id="max1-two-hops"),
        pytest.param(0, 1, id="max0-one-hop"),
        pytest.param(2, 5, id="max2-five-hops"),
    ],
)
def test_depth_violation(max_depth: int, hops: int) -> None:
    token = root(max_depth=max_depth)
    for _ in range(max_depth):
        token = aip.delegate_chained(
            token,
            root_public_key=ISSUER.public_key,
            delegator=ISSUER_ID,
            delegate=AGENT_1_ID,
            scopes=["tool:search"],
            context="honest hop",
        )
    assert check(token).depth == max_depth
    with pytest.raises(DepthExceeded):  # the honest SDK refuses to mint ...
        aip.delegate_chained(
            token,
            root_public_key=ISSUER.public_key,
            delegator=ISSUER_ID,
            delegate=AGENT_2_ID,
            scopes=["tool:search"],
            context="one too many",
        )
    for _ in range(hops - max_depth):  # ... so forge the blocks; the verifier still refuses
        token = hop(token)
    rejects(token, "aip.depth_exceeded", 3, tool="tool:search")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(
            aip.issue_compact(
                key=ISSUER, subject="s", scopes=["t"], issued_at=NOW - 3660, ttl_s=3600
            ),
            id="compact",
        ),
        pytest.param(
            aip.issue_compact(key=ISSUER, subject="s", scopes=["t"], issued_at=NOW - 3660, jti="j"),
            id="compact-with-jti",
        ),
        pytest.param(root(issued_at=NOW - 3660), id="chained"),
        pytest.param(hop(root(issued_at=NOW - 3660)), id="chained-delegated"),
    ],
)
def test_expired_token_replay(token: str) -> None:
    rejects(token, "aip.token_expired", 4, replay_cache=aip.ReplayCache())
    assert check(token, now=NOW - 61).expires_at == NOW - 60


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(
            aip.issue_compact(key=ISSUER, subject="s", scopes=["t"], issued_at=T0), id="compact"
        ),
        pytest.param(
            aip.issue_compact(
                key=ISSUER, issuer="aip:web:example.com", subject="s", scopes=["t"], issued_at=T0
            ),
            id="compact-web-issuer",
        ),
        pytest.param(root(), id="chained"),
        pytest.param(hop(root()), id="chained-delegated"),
    ],
)
def test_wrong_key_verification(token: str) -> None:
    rejects(token, "aip.signature_invalid", 1, public_key=OTHER.public_key)


@pytest.mark.parametrize(
    ("context", "step"),
    [
        pytest.param("", 5, id="empty"),
        pytest.param("   ", 5, id="spaces"),
        pytest.param("\u3000\u2003", 5, id="unicode-spaces"),
        pytest.param("\t", 1, id="tab-is-a-control-character"),
        pytest.param(None, 5, id="no-context-fact"),
    ],
)
def test_empty_context_audit_evasion(context: str | None, step: int) -> None:
    with pytest.raises(TallystickError):  # refused at mint ...
        aip.delegate_chained(
            root(),
            root_public_key=ISSUER.public_key,
            delegator=ISSUER_ID,
            delegate=AGENT_1_ID,
            scopes=["tool:search"],
            context=context or "",
        )
    if context is None:
        forged = golden.forge_block(
            root(), "delegator({a});\ndelegate({b});\n", {"a": ISSUER_ID, "b": AGENT_1_ID}
        )
    else:
        forged = hop(root(), c=context)
    rejects(forged, "aip.token_malformed", step, tool="tool:search")  # ... and at verification


_COMPACT = aip.issue_compact(key=ISSUER, subject="s", scopes=["tool:search"], issued_at=T0)
_CHAINED = hop(root())


@pytest.mark.parametrize(
    ("token", "position"),
    [
        *(pytest.param(_COMPACT, p, id=f"compact-{p}") for p in (5, 40, 100, len(_COMPACT) - 10)),
        *(
            pytest.param(_CHAINED, p, id=f"chained-{p}")
            for p in (10, 150, 400, 700, len(_CHAINED) - 8)
        ),
    ],
)
def test_tampered_token_forgery(token: str, position: int) -> None:
    with pytest.raises(TallystickError) as caught:
        check(golden.flip(token, position), tool="tool:search")
    assert caught.value.code in ("aip.signature_invalid", "aip.token_malformed")
    assert caught.value.step == 1


# -- aip.md §9: each must be rejected -----------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param('check if tool($t), $t.starts_with("tool:");\n', id="prefix-wildcard"),
        pytest.param("check if tool($t);\n", id="bare-star"),
        pytest.param('check if tool($t), $t.starts_with("");\n', id="empty-prefix"),
        pytest.param(
            'check if tool($t), ["tool:search"].contains($t)'
            ' or tool($t), $t.starts_with("tool:s");\n',
            id="prefix-beside-exact",
        ),
    ],
)
def test_widening_by_a_wildcard(extra: str) -> None:
    rejects(hop(root(), extra=extra), "aip.scope_insufficient", 4)


def test_a_wildcard_may_narrow() -> None:
    broad = root(scopes=["tool:*"])
    narrowed = hop(broad, extra='check if tool($t), $t.starts_with("tool:se");\n')
    assert check(narrowed, tool="tool:search").scopes == ("tool:se*",)
    rejects(narrowed, "aip.scope_insufficient", 6, tool="tool:email")


@pytest.mark.parametrize(
    ("chain", "code"),
    [
        pytest.param([1001], "aip.budget_exceeded", id="above-root"),
        pytest.param([500, 600], "aip.budget_exceeded", id="above-nearest-ancestor"),
        pytest.param([-1], "aip.budget_exceeded", id="negative"),
        pytest.param([500, 500, 100], None, id="narrowing-is-valid"),
    ],
)
def test_budget_above_the_ancestors(chain: list[int], code: str | None) -> None:
    token = root()
    for budget in chain:
        token = hop(token, extra="budget_ceiling({budget});\n" + SEARCH_ONLY, budget=budget)
    if code is None:
        assert check(token).budget_cents == chain[-1]
    else:
        rejects(token, code, 4)


def test_principal_swap() -> None:
    swapped = hop(root(), extra="principal({p});\n" + SEARCH_ONLY, p="aip:web:example.com/mallory")
    rejects(swapped, "aip.token_malformed", 4)
    same = hop(root(), extra="principal({p});\n" + SEARCH_ONLY, p="aip:web:example.com/alice")
    assert check(same).principal == "aip:web:example.com/alice"


@pytest.mark.parametrize(
    ("expiry", "code"),
    [
        pytest.param(EXPIRY + 1, "aip.token_expired", id="after-parent"),
        pytest.param(NOW - 1, "aip.token_expired", id="in-the-past"),
        pytest.param(NOW + 10, None, id="narrower-is-valid"),
    ],
)
def test_expiry_after_the_parents(expiry: int, code: str | None) -> None:
    token = hop(root(), extra=SEARCH_ONLY + "check if time($t), $t <= {exp};\n", exp=at(expiry))
    if code is None:
        assert check(token, tool="tool:search").expires_at == expiry
        rejects(token, "aip.token_expired", 4, now=expiry + 1)
    else:
        rejects(token, code, 4)


@pytest.mark.parametrize(
    ("extra", "parameters"),
    [
        pytest.param("delegate({b2});\n", {"b2": AGENT_2_ID}, id="two-delegates"),
        pytest.param("delegator({a2});\n", {"a2": AGENT_2_ID}, id="two-delegators"),
        pytest.param("context({c2});\n", {"c2": "second"}, id="two-contexts"),
        pytest.param("budget_ceiling(5);\nbudget_ceiling(6);\n", {}, id="two-budgets"),
        pytest.param(
            "principal({p});\nprincipal({p2});\n", {"p": "x", "p2": "y"}, id="two-principals"
        ),
        pytest.param(SEARCH_ONLY, {}, id="two-tool-checks"),
    ],
)
def test_repeated_single_valued_fact(extra: str, parameters: dict[str, Any]) -> None:
    rejects(hop(root(), extra=SEARCH_ONLY + extra, **parameters), "aip.token_malformed", 4)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("identity({id});\n" + CANONICAL_AUTHORITY, id="two-identities"),
        pytest.param("max_depth(1);\n" + CANONICAL_AUTHORITY, id="two-max-depths"),
        pytest.param(CANONICAL_AUTHORITY.replace("identity({id});\n", ""), id="no-identity"),
        pytest.param(CANONICAL_AUTHORITY.replace("max_depth(3);\n", ""), id="no-max-depth"),
        pytest.param(
            CANONICAL_AUTHORITY.replace("check if time($t), $t <= {exp};\n", ""), id="no-expiry"
        ),
        pytest.param(
            CANONICAL_AUTHORITY.replace("check if tool($t), {s}.contains($t);\n", ""), id="no-tools"
        ),
        pytest.param(CANONICAL_AUTHORITY + "right($x) <- identity($x);\n", id="a-rule"),
        pytest.param(CANONICAL_AUTHORITY + "admin(true);\n", id="unknown-fact"),
        pytest.param(
            CANONICAL_AUTHORITY + "check if tool($t), [].contains($t);\n", id="empty-contains"
        ),
        pytest.param(
            CANONICAL_AUTHORITY + 'check if tool($t), ["tool:*"].contains($t);\n', id="star-in-list"
        ),
        pytest.param(
            CANONICAL_AUTHORITY + "check all tool($t), {s}.contains($t);\n", id="check-all"
        ),
        pytest.param(CANONICAL_AUTHORITY + 'delegator("x");\n', id="delegator-in-authority"),
    ],
)
def test_forged_authority_blocks_are_malformed(source: str) -> None:
    rejects(
        authority(source, **{"id": ISSUER_ID, "s": ["tool:search"], "exp": at(EXPIRY)}),
        "aip.token_malformed",
        4,
    )


def test_the_canonical_forged_authority_is_accepted() -> None:
    assert check(good_authority(), tool="tool:search").scopes == ("tool:search",)
    web = good_authority(id="aip:web:example.com/issuer")
    assert check(web).issuer == "aip:web:example.com/issuer"


@pytest.mark.parametrize(
    ("source", "parameters"),
    [
        pytest.param("delegate({b});\ncontext({c});\n", {}, id="no-delegator"),
        pytest.param("delegator({a});\ncontext({c});\n", {}, id="no-delegate"),
        pytest.param(HOP + "max_depth(9);\n", {}, id="max-depth-in-delegation"),
        pytest.param(HOP + "identity({a});\n", {}, id="identity-in-delegation"),
        pytest.param(HOP + 'right("tool:email");\n', {}, id="right-in-delegation"),
        pytest.param(HOP + 'reject if tool("tool:email");\n', {}, id="reject-if"),
        pytest.param(HOP + "tool($t) <- delegate($t);\n", {}, id="a-rule"),
        pytest.param(HOP + "check if tool($t), $t.length() > 0;\n", {}, id="non-canonical-check"),
    ],
)
def test_forged_delegation_blocks_are_malformed(source: str, parameters: dict[str, Any]) -> None:
    values = {"a": ISSUER_ID, "b": AGENT_1_ID, "c": "ctx"} | parameters
    used = {name: value for name, value in values.items() if "{" + name + "}" in source}
    rejects(golden.forge_block(root(), source, used), "aip.token_malformed", 4)


def test_domain_widening() -> None:
    rejects(
        hop(root(), extra="domain({d});\n" + SEARCH_ONLY, d="evil.example"),
        "aip.scope_insufficient",
        4,
    )


INJECTED_TOOLS = [
    pytest.param('evil");\ntool("tool:search', id="reference-advisory"),
    pytest.param('tool:search");\nallow if true;\n//', id="allow-if-true"),
    pytest.param('tool:email"); tool("tool:search', id="same-line"),
    pytest.param("tool:search\n", id="trailing-newline"),
    pytest.param("tool:search\\", id="backslash"),
    pytest.param("tool:search\x00", id="nul"),
    pytest.param('tool:search"', id="lone-quote"),
]


@pytest.mark.parametrize("tool", INJECTED_TOOLS)
def test_an_injected_tool_name_never_authorises(tool: str) -> None:
    token = root(scopes=["tool:search"])
    assert check(token, tool="tool:search").tool == "tool:search"
    rejects(token, "aip.token_malformed", 6, tool=tool)
    compact = aip.issue_compact(key=ISSUER, subject="s", scopes=["tool:search"], issued_at=T0)
    rejects(compact, "aip.token_malformed", 6, tool=tool)


def test_the_authorizer_binds_the_tool_as_a_parameter() -> None:
    # Below the term validator: a quote-bearing tool still cannot escape its parameter.
    biscuit = golden.biscuit_of(root(scopes=["tool:search"]), ISSUER.public_key)
    with pytest.raises(TallystickError) as caught:
        aip_chained.authorize_tool(biscuit, tool='x");\ntool("tool:search', now=NOW, depth=0)
    assert caught.value.code == "aip.scope_insufficient"
    aip_chained.authorize_tool(biscuit, tool="tool:search", now=NOW, depth=0)


def test_wrong_typ() -> None:
    token = golden._compact_with(
        {"typ": "JWT"}, {"iss": ISSUER_ID, "sub": "s", "scope": ["t"], "iat": T0, "exp": EXPIRY}
    )
    rejects(token, "aip.token_malformed", 1)


# -- encoding tricks ----------------------------------------------------------------------------


def test_a_string_that_prints_as_extra_statements_is_rejected() -> None:
    # biscuit prints terms unescaped: this one context fact prints as two facts.
    forged = hop(root(), c='ok");\nprincipal("aip:web:example.com/mallory')
    printed = golden.biscuit_of(forged, ISSUER.public_key).block_source(1)
    assert 'principal("aip:web:example.com/mallory");\n' in printed
    rejects(forged, "aip.token_malformed", 1)


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token)


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def test_a_re_tagged_next_key_algorithm_is_rejected() -> None:
    # Re-tag nextKey.algorithm (field 1) as unknown field 14: biscuit-auth 6 skips the
    # unknown field and defaults the missing enum to Ed25519, and the tag lies outside
    # the signature, so this one-byte change still verifies in the library.
    raw = _raw(hop(root()))
    marker = b"\x12\x24\x08\x00\x12\x20"  # nextKey: 36 bytes, algorithm 0, 32-byte key
    assert raw.count(marker) == 2
    altered = raw.replace(marker, b"\x12\x24\x70\x00\x12\x20", 1)
    biscuit = ba.Biscuit.from_bytes(
        altered, ba.PublicKey.from_bytes(ISSUER.public_key.raw, ba.Algorithm.Ed25519)
    )
    assert biscuit.block_count() == 2  # the library accepts it
    rejects(_text(altered), "aip.token_malformed", 1)


@pytest.mark.parametrize(
    "suffix",
    [
        pytest.param(b"\x78\x01", id="unknown-varint-field"),
        pytest.param(b"\x22\x00", id="empty-second-proof"),
    ],
)
def test_extra_protobuf_fields_are_rejected(suffix: bytes) -> None:
    with pytest.raises(TallystickError) as caught:
        check(_text(_raw(root()) + suffix))
    assert caught.value.code in ("aip.token_malformed", "aip.signature_invalid")


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda t: t.replace("-", "+").replace("_", "/"), id="standard-alphabet"),
        pytest.param(lambda t: t + "==", id="extra-padding"),
        pytest.param(lambda t: " " + t, id="leading-space"),
        pytest.param(lambda t: t[:100] + "\n" + t[100:], id="line-break"),
    ],
)
def test_non_canonical_chained_text(mutate: Any) -> None:
    # Root tokens are random and about 1 in 200 holds no "-" or "_", which the alphabet swap
    # would leave unchanged: take the first root the mutation really changes.
    token = next(t for t in (root() for _ in range(50)) if mutate(t) != t)
    rejects(mutate(token), "aip.token_malformed", 1)


def test_unpadded_chained_text_is_accepted() -> None:
    padded = (root(principal="aip:web:p/" + "x" * n) for n in range(3))
    token = next(t for t in padded if t.endswith("="))
    assert check(token.rstrip("=")).issuer == ISSUER_ID


def test_a_third_party_block_cannot_be_moved_to_another_token() -> None:
    first, second = root(), root(budget_cents=999)
    delegator = PrivateKey.from_seed(bytes(32))
    block = aip_chained.delegation_builder(
        delegator=aip.key_identity(delegator.public_key),
        delegate="aip:web:x",
        context="c",
        scopes=[],
        domains=None,
        principal=None,
        budget_cents=None,
    )
    signed = (
        golden.biscuit_of(first, ISSUER.public_key)
        .third_party_request()
        .create_block(aip_chained.biscuit_private_key(delegator), block)
    )
    target = golden.biscuit_of(second, ISSUER.public_key)
    with pytest.raises(ba.BiscuitBuildError):
        target.append_third_party(
            ba.PublicKey.from_bytes(delegator.public_key.raw, ba.Algorithm.Ed25519), signed
        )
