"""Cross-checks with the reference, agent-identity-protocol 0.6.0, and the Biscuit samples.

The reference reads the wall clock, so tokens exchanged with it are issued now.
Where the two disagree on purpose (we are stricter), the test says so and pins
both behaviours.
"""

from __future__ import annotations

import base64
import calendar
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aip_core.crypto import KeyPair
from aip_token import AipClaims, ChainedToken, CompactToken, JwtChain, TokenError
from conftest import load_vectors, vector_path
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tallystick.verifier import aip
from tallystick.verifier._internal import aip_chained
from tallystick.verifier.errors import TallystickError
from tallystick.verifier.keys import PrivateKey, PublicKey
from vectors import generate_aip as golden

ISSUER, OTHER, AGENT_1, AGENT_2 = golden.ISSUER, golden.OTHER, golden.AGENT_1, golden.AGENT_2
ISSUER_ID, AGENT_1_ID, AGENT_2_ID = golden.ISSUER_ID, golden.AGENT_1_ID, golden.AGENT_2_ID
ROOT = ISSUER.public_key.raw
NOW = int(time.time())


def pair(key: PrivateKey) -> KeyPair:
    return KeyPair(Ed25519PrivateKey.from_private_bytes(key.seed()))


def ours(token: str, **options: Any) -> aip.VerifiedAip:
    return aip.verify(token, **({"public_key": ISSUER.public_key, "now": NOW} | options))


def our_code(token: str, **options: Any) -> str | None:
    try:
        ours(token, **options)
    except TallystickError as exc:
        return aip.wire_code(exc)
    return None


def reference_chained_code(token: str, tool: str) -> str | None:
    try:
        ChainedToken.from_base64(token, ROOT).authorize(tool, ROOT)
    except TokenError as exc:
        return exc.wire_code
    return None


def reference_compact_code(token: str) -> str | None:
    try:
        CompactToken.verify(token, ROOT)
    except TokenError as exc:
        return exc.wire_code
    return None


# -- compact ------------------------------------------------------------------------------------

COMPACT_CLAIMS = [
    pytest.param({}, id="minimal"),
    pytest.param({"budget_usd": 12.5, "max_depth": 2}, id="budget-depth"),
    pytest.param({"scope": ["tool:search", "files:*"]}, id="wildcard"),
    pytest.param({"iss": "aip:web:example.com/issuer"}, id="web-issuer"),
]


def _claims(**overrides: Any) -> dict[str, Any]:
    claims = {
        "iss": ISSUER_ID,
        "sub": "aip:web:example.com/agent",
        "scope": ["tool:search"],
        "iat": NOW,
        "exp": NOW + 3600,
    }
    return claims | overrides


@pytest.mark.interop
@pytest.mark.parametrize("overrides", COMPACT_CLAIMS)
def test_compact_is_byte_identical_to_the_reference(overrides: dict[str, Any]) -> None:
    claims = _claims(**overrides)
    reference = CompactToken.create(AipClaims(**claims), pair(ISSUER))
    mine = aip.issue_compact(
        key=ISSUER,
        issuer=claims["iss"],
        subject=claims["sub"],
        scopes=claims["scope"],
        max_depth=claims.get("max_depth", 0),
        budget_usd=claims.get("budget_usd"),
        issued_at=NOW,
    )
    assert mine == reference
    assert CompactToken.verify(mine, ROOT).claims == AipClaims(**claims)
    assert JwtChain.verify(mine, ROOT).issuer() == claims["iss"]
    result = ours(reference, tool=claims["scope"][0])
    assert (result.issuer, result.scopes) == (claims["iss"], tuple(sorted(claims["scope"])))


@pytest.mark.interop
def test_the_reference_accepts_jti_but_refuses_aud() -> None:
    with_jti = aip.issue_compact(key=ISSUER, subject="s", scopes=["a"], issued_at=NOW, jti="j-1")
    assert CompactToken.verify(with_jti, ROOT).claims.sub == "s"  # unknown claim ignored
    with_aud = aip.issue_compact(
        key=ISSUER, subject="s", scopes=["a"], issued_at=NOW, audience="aip:web:rp", jti="j-2"
    )
    with pytest.raises(TokenError) as caught:  # PyJWT refuses an audience it was not told of
        CompactToken.verify(with_aud, ROOT)
    assert caught.value.wire_code == "aip_token_malformed"
    assert ours(with_aud, audience="aip:web:rp").jti == "j-2"


@pytest.mark.interop
@pytest.mark.parametrize("source", ["reference", "ours"])
def test_tampered_compact_tokens_get_the_reference_code(source: str) -> None:
    token = (
        CompactToken.create(AipClaims(**_claims()), pair(ISSUER))
        if source == "reference"
        else aip.issue_compact(key=ISSUER, subject="s", scopes=["tool:search"], issued_at=NOW)
    )
    agreed = stricter = 0
    for position in range(0, len(token), 3):
        tampered = golden.flip(token, position)
        reference, mine = reference_compact_code(tampered), our_code(tampered)
        assert mine is not None, f"flip at {position} verified"
        if reference is None:
            # PyJWT ignores unused trailing bits; the flip did not change the bytes.
            stricter += 1
            assert mine == "aip_token_malformed"
        else:
            agreed += 1
            assert mine == reference, f"flip at {position}"
    assert agreed > 50


@pytest.mark.interop
def test_compact_reference_rejections_match() -> None:
    expired = CompactToken.create(AipClaims(**_claims(iat=NOW - 7200, exp=NOW - 60)), pair(ISSUER))
    assert reference_compact_code(expired) == our_code(expired) == "aip_token_expired"
    other = CompactToken.create(AipClaims(**_claims()), pair(OTHER))
    assert reference_compact_code(other) == our_code(other) == "aip_signature_invalid"


@pytest.mark.interop
def test_compact_root_binding_is_ours_alone() -> None:
    # V2 is the caller's job in the reference: it accepts an issuer that names another key.
    lying = CompactToken.create(
        AipClaims(**_claims(iss=aip.key_identity(OTHER.public_key))), pair(ISSUER)
    )
    assert reference_compact_code(lying) is None
    assert our_code(lying) == "aip_identity_unresolvable"


# -- chained ------------------------------------------------------------------------------------


def reference_chain(depth: int, **authority: Any) -> ChainedToken:
    arguments: dict[str, Any] = {
        "issuer": ISSUER_ID,
        "scopes": ["tool:search", "tool:email", "files:*"],
        "budget_cents": 1000,
        "max_depth": 3,
        "ttl_seconds": 3600,
        "keypair": pair(ISSUER),
    }
    token = ChainedToken.create_authority(**(arguments | authority))
    delegations = [
        (ISSUER_ID, AGENT_1_ID, ["tool:search", "files:*"], 500),
        (AGENT_1_ID, AGENT_2_ID, ["files:*"], None),
        (AGENT_2_ID, "aip:web:example.com/leaf", ["files:read"], 100),
    ]
    for delegator, delegate, scopes, budget in delegations[:depth]:
        token = token.delegate(delegator, delegate, scopes, budget, f"work for {delegate}")
    return token


@pytest.mark.interop
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_reference_chains_verify_here_with_the_same_effective_authority(depth: int) -> None:
    reference = reference_chain(depth, principal="aip:web:example.com/alice", domains=["a.example"])
    token = reference.to_base64()
    reference.authorize("files:read", ROOT)
    effective = reference.effective
    result = ours(token, tool="files:read")
    assert result.scopes == tuple(sorted(effective.tools))
    assert (result.budget_cents, result.expires_at) == (effective.budget_cents, effective.expiry)
    assert (result.principal, result.domains) == (effective.principal, ("a.example",))
    assert result.depth == depth
    assert our_code(token, tool="tool:admin") == reference_chained_code(token, "tool:admin")


def _payloads(token: str) -> list[bytes]:
    return aip_chained.block_payloads(aip_chained.decode_token_text(token))


@pytest.mark.interop
@pytest.mark.parametrize(
    "authority",
    [
        pytest.param({}, id="plain"),
        pytest.param(
            {"principal": "aip:web:example.com/alice", "domains": ["a.example", "b.example"]},
            id="principal-domains",
        ),
        pytest.param({"scopes": ["*"], "budget_cents": None, "max_depth": 0}, id="star"),
        pytest.param({"scopes": ["x:*", "y", "z:*"], "issuer": "aip:web:example.com"}, id="mixed"),
    ],
)
def test_blocks_are_byte_identical_to_the_reference(authority: dict[str, Any]) -> None:
    reference = reference_chain(0, **authority)
    expiry_text = reference.block_source(0).rsplit("<= ", 1)[1].split(";")[0]
    expiry = calendar.timegm(time.strptime(expiry_text, "%Y-%m-%dT%H:%M:%SZ"))
    mine = aip.issue_chained(
        key=ISSUER,
        scopes=authority.get("scopes", ["tool:search", "tool:email", "files:*"]),
        issuer=authority.get("issuer"),
        max_depth=authority.get("max_depth", 3),
        budget_cents=authority.get("budget_cents", 1000),
        issued_at=expiry - 3600,
        principal=authority.get("principal"),
        domains=authority.get("domains"),
    )
    assert _payloads(mine) == _payloads(reference.to_base64())
    if authority.get("max_depth", 3) == 0:
        return
    delegation: dict[str, Any] = {"scopes": ["y"] if "issuer" in authority else ["tool:search"]}
    delegation |= {"budget_cents": 10, "context": "one; two (three) // four"}
    reference_next = reference.delegate(ISSUER_ID, AGENT_1_ID, **delegation)
    mine_next = aip.delegate_chained(
        mine,
        root_public_key=ISSUER.public_key,
        delegator=ISSUER_ID,
        delegate=AGENT_1_ID,
        **delegation,
    )
    assert _payloads(mine_next) == _payloads(reference_next.to_base64())


@pytest.mark.interop
def test_our_chains_verify_with_the_reference() -> None:
    token = aip.issue_chained(key=ISSUER, scopes=["tool:search", "tool:email"], issued_at=NOW)
    token = aip.delegate_chained(
        token,
        root_public_key=ISSUER.public_key,
        delegator_key=ISSUER,  # authenticated: a third-party block
        delegate=AGENT_1_ID,
        scopes=["tool:search"],
        context="first hop",
        budget_cents=None,
    )
    token = aip.delegate_chained(
        token,
        root_public_key=ISSUER.public_key,
        delegator_key=AGENT_1,
        delegate=AGENT_2_ID,
        scopes=["tool:search"],
        context="second hop",
    )
    reference = ChainedToken.from_base64(token, ROOT)
    reference.authorize("tool:search", ROOT)
    assert [link.issuer for link in reference.links()] == [ISSUER_ID, ISSUER_ID, AGENT_1_ID]
    assert reference_chained_code(token, "tool:email") == "aip_scope_insufficient"
    # The reference can extend our authenticated chain, and we still verify it.
    extended = reference.delegate(AGENT_2_ID, "aip:web:leaf", ["tool:search"], None, "third hop")
    result = ours(extended.to_base64(), tool="tool:search")
    assert [hop.authenticated for hop in result.hops] == [True, True, False]


@pytest.mark.interop
@pytest.mark.parametrize("source", ["reference", "ours"])
def test_tampered_chained_tokens_get_the_reference_code(source: str) -> None:
    if source == "reference":
        token = reference_chain(2).to_base64()
    else:
        token = aip.issue_chained(key=ISSUER, scopes=["files:*"], issued_at=NOW)
        token = aip.delegate_chained(
            token,
            root_public_key=ISSUER.public_key,
            delegator_key=AGENT_1,
            delegate=AGENT_2_ID,
            scopes=["files:read"],
            context="c",
        )
    agreed = 0
    for position in range(0, len(token), 11):
        tampered = golden.flip(token, position)
        reference, mine = reference_chained_code(tampered, "files:read"), our_code(tampered)
        assert mine is not None, f"flip at {position} verified"
        if reference is None:
            # Only a flip that leaves the signed content alone may pass the reference,
            # e.g. re-tagging a nextKey field; we insist on the canonical bytes.
            assert mine == "aip_token_malformed", f"flip at {position}"
        else:
            agreed += 1
            assert mine == reference, f"flip at {position}"
    assert agreed > 40


def _forge(token: str, extra: str, **parameters: Any) -> str:
    values = {"a": ISSUER_ID, "b": AGENT_1_ID, "c": "forged"} | parameters
    source = "delegator({a});\ndelegate({b});\ncontext({c});\n" + extra
    return golden.forge_block(
        token, source, {k: v for k, v in values.items() if "{" + k + "}" in source}
    )


def _now_root(**overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "key": ISSUER,
        "scopes": ["tool:search", "tool:email"],
        "issued_at": NOW,
        "budget_cents": 1000,
        "principal": "aip:web:alice",
        "max_depth": 2,
    }
    return aip.issue_chained(**(arguments | overrides))


SEARCH = "check if tool($t), {s}.contains($t);\n"
ONLY_SEARCH = {"s": ["tool:search"]}
LATER = "check if time($t), $t <= {e};\n"
FORGERIES = [
    pytest.param(
        'check if tool($t), $t.starts_with("tool:");\n',
        {},
        2,
        1,
        "aip_scope_insufficient",
        id="wildcard-widening",
    ),
    pytest.param(
        "budget_ceiling(5000);\n" + SEARCH, ONLY_SEARCH, 2, 1, "aip_budget_exceeded", id="budget"
    ),
    pytest.param(
        "principal({p});\n" + SEARCH,
        ONLY_SEARCH | {"p": "aip:web:mallory"},
        2,
        1,
        "aip_token_malformed",
        id="principal-swap",
    ),
    pytest.param(
        SEARCH + LATER,
        ONLY_SEARCH | {"e": datetime.fromtimestamp(NOW + 7200, UTC)},
        2,
        1,
        "aip_token_expired",
        id="expiry-after-parent",
    ),
    pytest.param(SEARCH, ONLY_SEARCH | {"c": "  "}, 2, 1, "aip_token_malformed", id="blank-ctx"),
    pytest.param(SEARCH, ONLY_SEARCH, 1, 2, "aip_depth_exceeded", id="depth"),
    pytest.param(
        "delegate({b});\n" + SEARCH, ONLY_SEARCH, 2, 1, "aip_token_malformed", id="repeated-fact"
    ),
    pytest.param("domain({d});\n" + SEARCH, ONLY_SEARCH | {"d": "x"}, 2, 1, None, id="domain-ok"),
    pytest.param(SEARCH, ONLY_SEARCH, 2, 2, None, id="two-hops-ok"),
]


@pytest.mark.interop
@pytest.mark.parametrize(("extra", "parameters", "max_depth", "hops", "code"), FORGERIES)
def test_forged_blocks_get_the_reference_code(
    extra: str, parameters: dict[str, Any], max_depth: int, hops: int, code: str | None
) -> None:
    token = _now_root(max_depth=max_depth)
    for _ in range(hops):
        token = _forge(token, extra, **parameters)
    assert our_code(token, tool="tool:search") == code
    assert reference_chained_code(token, "tool:search") == code


@pytest.mark.interop
@pytest.mark.parametrize(
    "tool",
    ['evil");\ntool("tool:search', 'tool:search");\nallow if true;\n//', "tool:search\n", "a\\b"],
)
def test_injected_tool_names_are_refused_by_both(tool: str) -> None:
    token = _now_root(scopes=["tool:search"])
    assert (
        reference_chained_code(token, tool) == our_code(token, tool=tool) == "aip_token_malformed"
    )


@pytest.mark.interop
def test_divergence_printing_ambiguity() -> None:
    # One context fact whose text prints as a second, principal-swapping fact. The
    # reference reads the printed text and sees a principal swap it calls malformed;
    # with a matching principal it would display a delegator that no fact names.
    # We refuse any such term before reading the source.
    forged = _forge(_now_root(), SEARCH, s=["tool:search"], c='x");\ndelegator("aip:web:victim')
    assert reference_chained_code(forged, "tool:search") == "aip_token_malformed"  # repeated fact
    forged = _forge(_now_root(), SEARCH, s=["tool:search"], c='x");\nprincipal("aip:web:alice')
    assert reference_chained_code(forged, "tool:search") is None
    assert our_code(forged, tool="tool:search") == "aip_token_malformed"


@pytest.mark.interop
def test_divergence_non_canonical_bytes() -> None:
    raw = base64.urlsafe_b64decode(_now_root())
    marker = b"\x12\x24\x08\x00\x12\x20"
    altered = base64.urlsafe_b64encode(raw.replace(marker, b"\x12\x24\x70\x00\x12\x20")).decode()
    assert reference_chained_code(altered, "tool:search") is None
    assert our_code(altered, tool="tool:search") == "aip_token_malformed"


@pytest.mark.interop
def test_chained_root_binding_is_ours_alone() -> None:
    lying = aip.issue_chained(key=ISSUER, issuer="aip:web:example.com", scopes=["t"], issued_at=NOW)
    assert reference_chained_code(lying, "t") is None
    assert ours(lying).issuer == "aip:web:example.com"  # the caller vouched for the key
    # A block 0 naming another key, signed by ISSUER:
    builder = aip_chained.authority_builder(
        issuer=aip.key_identity(OTHER.public_key),
        principal=None,
        scopes=["t"],
        domains=None,
        max_depth=1,
        budget_cents=None,
        expiry=NOW + 3600,  # the reference checks expiry against the wall clock
    )
    token = str(builder.build(aip_chained.biscuit_private_key(ISSUER)).to_base64())
    assert reference_chained_code(token, "t") is None
    assert our_code(token, tool="t") == "aip_identity_unresolvable"


@pytest.mark.interop
def test_golden_vectors_agree_with_the_reference_parser() -> None:
    vectors = json.loads((golden.OUT_DIR / "chained.json").read_text())["vectors"]
    for case in vectors:
        if not case["expect"]["valid"] or case["now"] != golden.NOW:
            continue
        key = PublicKey.from_text(case["public_key"])
        reference = ChainedToken.from_base64(case["token"], key.raw)
        links = reference.links()
        result = golden.outcome(case)
        assert len(links) - 1 == result["depth"], case["id"]
        assert links[0].issuer == result["issuer"]
    for case in json.loads((golden.OUT_DIR / "compact.json").read_text())["vectors"]:
        if case["id"] == "compact-minimal":
            claims = json.loads(base64.urlsafe_b64decode(case["token"].split(".")[1] + "=="))
            assert CompactToken.create(AipClaims(**claims), pair(golden.ISSUER)) == case["token"]


# -- Biscuit samples (eclipse-biscuit/biscuit samples/current) ----------------------------------


def _sample(path: Path) -> tuple[bytes, dict[str, Any]]:
    listing = json.loads((path.parent / "samples.json").read_text())
    case = next(c for c in listing["testcases"] if c["filename"] == path.name)
    return path.read_bytes(), case


def _format_error(case: dict[str, Any]) -> bool:
    results = [validation["result"] for validation in case["validations"].values()]
    return any("Format" in result.get("Err", {}) for result in results)


SAMPLE_ROOT = PublicKey.from_text(
    json.loads(vector_path("biscuit", "samples/current/samples.json").read_text())[
        "root_public_key"
    ]
)


@pytest.mark.parametrize("sample", load_vectors("biscuit", "samples/current/*.bc", _sample))
def test_biscuit_samples_parse_or_fail_on_signature_as_expected(
    sample: tuple[bytes, dict[str, Any]],
) -> None:
    raw, case = sample
    if _format_error(case):
        with pytest.raises(TallystickError) as caught:
            aip_chained.verify_biscuit(raw, SAMPLE_ROOT)
        assert caught.value.code == "aip.signature_invalid"
        return
    biscuit = aip_chained.verify_biscuit(raw, SAMPLE_ROOT)  # also: canonical bytes
    blocks = case["token"]
    assert biscuit.block_count() == len(blocks)
    assert aip_chained.block_symbols(raw) == [block["symbols"] for block in blocks]
    for index, block in enumerate(blocks):
        assert biscuit.block_source(index) == block["code"]
        external = biscuit.block_external_key(index)
        assert (None if external is None else str(external)) == block["external_key"]
    with pytest.raises(TallystickError) as caught:
        aip_chained.verify_biscuit(raw, golden.OTHER.public_key)
    assert caught.value.code == "aip.signature_invalid"


def test_biscuit_samples_cover_both_outcomes() -> None:
    samples = [
        param.values[0] for param in load_vectors("biscuit", "samples/current/*.bc", _sample)
    ]
    failing = sum(_format_error(case) for _, case in samples)
    assert len(samples) == 38 and failing == 5
