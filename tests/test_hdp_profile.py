"""The Tallystick HDP profile (tallystick-hdp/1), chain completeness, and the plain-HDP
weaknesses it closes (hdp.md §9), each shown with and without the profile."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from tallystick.verifier import hdp
from tallystick.verifier._internal.encoding import b64url_encode
from tallystick.verifier.canonical import canonicalize
from tallystick.verifier.errors import (
    ChainBroken,
    IdentityUnresolvable,
    MalformedInput,
    PolicyViolation,
    SignatureInvalid,
    TallystickError,
)
from vectors import generate_hdp as golden

ISSUER = golden.ISSUER
ISSUER_PUB = ISSUER.public_key
NOW_MS = golden.ISSUED_AT_MS
PROFILE = golden.chain(3, profile=True)
PROFILE_DICT = PROFILE.to_dict()
PLAIN = golden.chain(3)


def rejects(token: Any, code: str, step: int, **options: Any) -> TallystickError:
    with pytest.raises(TallystickError) as info:
        hdp.verify(token, public_key=options.pop("public_key", ISSUER_PUB), **options)
    assert (info.value.code, info.value.step) == (code, step), info.value
    return info.value


def resigned_root(mutate: Any) -> dict[str, Any]:
    """The 0-hop profile root with ``mutate`` applied to its data, re-signed by the issuer."""
    data = golden.root(profile=True).to_dict()
    mutate(data)
    golden.sign_root(data, ISSUER)
    return data


# -- the profile on the wire -------------------------------------------------------------------


def test_profile_claims_are_in_the_signed_root() -> None:
    extension = PROFILE_DICT["scope"]["extensions"]["x-tallystick"]
    assert extension == {
        "profile": "tallystick-hdp/1",
        "issuer_kid": ISSUER.kid,
        "agents": [
            {"agent_id": name, "kid": key.kid, "pub": key.public_key.to_b64url()}
            for name, key in golden.AGENTS.items()
        ],
    }
    for hop in PROFILE_DICT["chain"]:
        assert set(hop["x-tallystick-agent"]) == {"kid", "sig"}
        assert hop["x-tallystick-agent"]["kid"] == golden.AGENTS[hop["agent_id"]].kid


def test_agent_signature_covers_the_domain_separated_cumulative_payload() -> None:
    hop = PROFILE_DICT["chain"][1]
    unsigned = {name: value for name, value in hop.items() if name != "hop_signature"}
    unsigned["x-tallystick-agent"] = {"kid": hop["x-tallystick-agent"]["kid"]}
    payload = canonicalize(
        [
            "tallystick-hdp-hop/1",
            PROFILE_DICT["signature"]["value"],
            PROFILE_DICT["chain"][0],
            unsigned,
        ]
    )
    signature = golden.RESEARCHER.sign(payload)
    assert b64url_encode(signature) == hop["x-tallystick-agent"]["sig"]


@pytest.mark.parametrize("hops", [0, 1, 3, 10])
def test_profile_tokens_verify(hops: int) -> None:
    token = golden.chain(hops, profile=True)
    for mode, verified_profile in (("auto", True), ("require", True), ("off", False)):
        verified = hdp.verify(token.to_json(), public_key=ISSUER_PUB, profile=mode)
        assert (verified.hop_count, verified.profile_verified) == (hops, verified_profile)


def test_plain_tokens_and_the_profile_modes() -> None:
    assert not hdp.verify(PLAIN, public_key=ISSUER_PUB).profile_verified
    assert not hdp.verify(PLAIN, public_key=ISSUER_PUB, profile="off").profile_verified
    error = rejects(PLAIN, "hdp.profile_missing", 6, profile="require")
    assert isinstance(error, PolicyViolation)


def test_profile_with_no_agents_binds_the_kid_only() -> None:
    token = hdp.issue_root(
        key=ISSUER,
        principal_id="a",
        session_id="s",
        intent="i",
        issued_at_ms=NOW_MS,
        profile=hdp.TallystickProfile(),
    )
    assert hdp.verify(token, public_key=ISSUER_PUB, profile="require").profile_verified
    with pytest.raises(IdentityUnresolvable) as info:
        hdp.extend(
            token,
            key=ISSUER,
            agent_id="a",
            action_summary="x",
            timestamp_ms=NOW_MS,
            agent_key=golden.PLANNER,
        )
    assert info.value.code == "hdp.agent_not_bound"


def test_profile_issuance_refuses_a_kid_other_than_the_key() -> None:
    with pytest.raises(IdentityUnresolvable) as info:
        hdp.issue_root(
            key=ISSUER,
            principal_id="a",
            session_id="s",
            intent="i",
            issued_at_ms=NOW_MS,
            kid="issuer-2026",
            profile=hdp.TallystickProfile(),
        )
    assert info.value.code == "hdp.kid_mismatch"


def test_profile_rejects_duplicate_agents() -> None:
    binding = hdp.AgentBinding("planner", golden.PLANNER.public_key)
    with pytest.raises(MalformedInput) as info:
        hdp.TallystickProfile((binding, binding))
    assert info.value.code == "hdp.profile_invalid"
    assert binding.kid == golden.PLANNER.kid


@pytest.mark.parametrize(
    ("agent_id", "agent_key"),
    [
        pytest.param("planner", None, id="no-agent-key"),
        pytest.param("planner", golden.RESEARCHER, id="another-agents-key"),
        pytest.param("mallory", golden.PLANNER, id="unbound-agent-id"),
    ],
)
def test_profile_extend_needs_the_bound_agent_key(agent_id: str, agent_key: Any) -> None:
    with pytest.raises(IdentityUnresolvable) as info:
        hdp.extend(
            PROFILE,
            key=ISSUER,
            agent_id=agent_id,
            action_summary="x",
            timestamp_ms=NOW_MS + 10_000,
            agent_key=agent_key,
        )
    assert (info.value.code, info.value.step) == ("hdp.agent_not_bound", 6)


# -- malformed profile claims (signed by the issuer, so steps 0-5 pass) -------------------------


def _set_claim(name: str, value: Any) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        data["scope"]["extensions"]["x-tallystick"][name] = value

    return mutate


def _set_agent(name: str, value: Any) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        data["scope"]["extensions"]["x-tallystick"]["agents"][0][name] = value

    return mutate


def _replace_claims(value: Any) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        data["scope"]["extensions"]["x-tallystick"] = value

    return mutate


def _duplicate_agent(data: dict[str, Any]) -> None:
    agents = data["scope"]["extensions"]["x-tallystick"]["agents"]
    agents.append(dict(agents[0]))


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_replace_claims("tallystick-hdp/1"), id="not-an-object"),
        pytest.param(_set_claim("profile", "tallystick-hdp/2"), id="unknown-profile"),
        pytest.param(_set_claim("issuer_kid", None), id="issuer-kid-null"),
        pytest.param(_set_claim("agents", {}), id="agents-object"),
        pytest.param(_set_claim("note", "x"), id="extra-claim"),
        pytest.param(_set_agent("pub", "not-base64!"), id="pub-not-base64"),
        pytest.param(_set_agent("pub", b64url_encode(b"\x01" * 31)), id="pub-31-bytes"),
        pytest.param(_set_agent("kid", golden.WRITER.kid), id="kid-not-of-pub"),
        pytest.param(_set_agent("agent_id", 7), id="agent-id-int"),
        pytest.param(_set_agent("role", "x"), id="extra-agent-member"),
        pytest.param(_duplicate_agent, id="duplicate-agent"),
    ],
)
def test_malformed_profile_claims(mutate: Any) -> None:
    data = resigned_root(mutate)
    assert hdp.verify(data, public_key=ISSUER_PUB, profile="off").hop_count == 0
    error = rejects(data, "hdp.profile_invalid", 6)
    assert isinstance(error, MalformedInput)


@pytest.mark.parametrize(
    "member",
    [
        pytest.param("x", id="string"),
        pytest.param({"kid": golden.PLANNER.kid}, id="no-sig"),
        pytest.param({"kid": golden.PLANNER.kid, "sig": "A" * 85}, id="short-sig"),
        pytest.param({"kid": golden.PLANNER.kid, "sig": "A" * 86, "x": 1}, id="extra-member"),
    ],
)
def test_malformed_agent_member(member: Any) -> None:
    data = PROFILE.to_dict()
    data["chain"][0]["x-tallystick-agent"] = member
    golden.sign_hops_from(data, 0)
    assert hdp.verify(data, public_key=ISSUER_PUB, profile="off").hop_count == 3
    rejects(data, "hdp.profile_invalid", 6)


def test_agent_signature_with_non_canonical_padding_bits_is_rejected() -> None:
    data = PROFILE.to_dict()
    member = data["chain"][0]["x-tallystick-agent"]
    last = member["sig"][-1]
    member["sig"] = member["sig"][:-1] + chr(ord(last) + 1)  # same bytes to a lax decoder
    golden.sign_hops_from(data, 0)
    error = rejects(data, "hdp.agent_signature_invalid", 6)
    assert isinstance(error, SignatureInvalid)


# -- weakness 2: kid is unsigned ---------------------------------------------------------------


def test_kid_changed_plain_is_valid_profile_is_caught() -> None:
    plain = golden.mutated(PLAIN, golden._kid_changed)
    assert hdp.verify(plain, public_key=ISSUER_PUB).hop_count == 3
    profiled = golden.mutated(PROFILE, golden._kid_changed)
    assert hdp.verify(profiled, public_key=ISSUER_PUB, profile="off").hop_count == 3
    error = rejects(profiled, "hdp.kid_mismatch", 6)
    assert isinstance(error, IdentityUnresolvable)


def test_issuer_kid_claim_must_name_the_verifying_key() -> None:
    data = resigned_root(_set_claim("issuer_kid", golden.PLANNER.kid))
    rejects(data, "hdp.kid_mismatch", 6)


def test_profile_token_checked_under_another_issuer_key_fails_at_the_root() -> None:
    token = golden.chain(1, profile=True)
    rejects(token, "hdp.signature_invalid", 2, public_key=golden.PLANNER.public_key)


# -- weakness 1: agent_id is a claim -----------------------------------------------------------


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in golden.PROFILE_CASES])
def test_profile_weaknesses(name: str) -> None:
    _, mutation, code = golden.PROFILE_CASES[name]
    data = golden.mutated(PROFILE, mutation)
    verified = hdp.verify(data, public_key=ISSUER_PUB, profile="off")
    assert verified.hop_count == 3  # a plain verifier cannot tell
    rejects(data, code, 6)
    rejects(data, code, 6, profile="require")


def test_agent_id_spoof_in_plain_hdp_verifies() -> None:
    data = PLAIN.to_dict()
    data["chain"][1]["agent_id"] = "mallory"
    golden.sign_hops_from(data, 1)
    assert hdp.verify(data, public_key=ISSUER_PUB).hop_count == 3


def test_agent_id_swapped_to_another_bound_agent_is_caught() -> None:
    data = PROFILE.to_dict()
    data["chain"][1]["agent_id"] = "planner"  # the researcher's hop, relabelled
    golden.sign_hops_from(data, 1)
    assert hdp.verify(data, public_key=ISSUER_PUB, profile="off").hop_count == 3
    rejects(data, "hdp.agent_not_bound", 6)
    data["chain"][1]["x-tallystick-agent"]["kid"] = golden.PLANNER.kid  # and the kid too
    golden.sign_hops_from(data, 1)
    rejects(data, "hdp.agent_signature_invalid", 6)


@pytest.mark.parametrize("profile", [False, True], ids=["plain", "profile"])
def test_hop_signed_with_an_agent_key_fails_step_4(profile: bool) -> None:
    data = golden.chain(3, profile=profile).to_dict()
    golden.sign_hop(data, 2, golden.WRITER)
    for mode in ("auto", "off"):
        rejects(data, "hdp.signature_invalid", 4, profile=mode)


def test_agent_signature_cannot_stand_in_for_the_hop_signature() -> None:
    data = PROFILE.to_dict()
    agent_sig = data["chain"][0]["x-tallystick-agent"]["sig"]
    data["chain"][0]["hop_signature"] = agent_sig
    rejects(data, "hdp.signature_invalid", 4)


def test_hop_signature_cannot_stand_in_for_the_agent_signature() -> None:
    # Even when issuer and agent share a key, the domain string keeps the payloads apart.
    token = hdp.issue_root(
        key=ISSUER,
        principal_id="a",
        session_id="s",
        intent="i",
        issued_at_ms=NOW_MS,
        profile=hdp.TallystickProfile.for_agents({"self": ISSUER_PUB}),
    )
    token = hdp.extend(
        token,
        key=ISSUER,
        agent_id="self",
        action_summary="x",
        timestamp_ms=NOW_MS,
        agent_key=ISSUER,
    )
    assert hdp.verify(token, public_key=ISSUER_PUB).profile_verified
    data = token.to_dict()
    hop = data["chain"][0]
    unsigned = {name: value for name, value in hop.items() if name != "hop_signature"}
    unsigned["x-tallystick-agent"] = {"kid": ISSUER.kid}
    plain_payload = canonicalize([data["signature"]["value"], unsigned])
    hop["x-tallystick-agent"]["sig"] = b64url_encode(ISSUER.sign(plain_payload))
    golden.sign_hops_from(data, 0)
    rejects(data, "hdp.agent_signature_invalid", 6)


# -- weakness 3: truncation, and the anchored head ---------------------------------------------


def test_head_commitment_formula() -> None:
    head = hdp.head_commitment(PROFILE)
    payload = canonicalize([PROFILE_DICT["signature"]["value"], *PROFILE_DICT["chain"]])
    digest = b64url_encode(hashlib.sha256(payload).digest())
    assert head == hdp.HeadCommitment(golden.PROFILE_TOKEN_ID, 3, "sha256:" + digest)
    assert hdp.HeadCommitment.from_dict(head.to_dict()) == head


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"token_id": "t", "hop_count": 1}, id="missing-head"),
        pytest.param({"token_id": "t", "hop_count": -1, "head": "sha256:" + "A" * 43}, id="neg"),
        pytest.param({"token_id": "t", "hop_count": True, "head": "sha256:" + "A" * 43}, id="bool"),
        pytest.param({"token_id": "t", "hop_count": 1, "head": "sha512:" + "A" * 43}, id="alg"),
        pytest.param({"token_id": 1, "hop_count": 1, "head": "sha256:" + "A" * 43}, id="id-int"),
        pytest.param(["t", 1, "h"], id="not-a-mapping"),
    ],
)
def test_head_commitment_rejects_malformed_input(value: Any) -> None:
    with pytest.raises(MalformedInput) as info:
        hdp.HeadCommitment.from_dict(value)
    assert info.value.code == "hdp.head_invalid"


@pytest.mark.parametrize("profile", [False, True], ids=["plain", "profile"])
def test_truncated_chain_verifies_until_checked_against_the_anchor(profile: bool) -> None:
    full = golden.chain(10, profile=profile)
    anchored = hdp.head_commitment(full)
    data = full.to_dict()
    del data["chain"][4:]
    assert hdp.verify(data, public_key=ISSUER_PUB).hop_count == 4  # any prefix verifies
    error = rejects(data, "hdp.truncated", 6, anchored_head=anchored)
    assert isinstance(error, ChainBroken)
    assert error.hop == 5


def test_anchor_at_the_same_length_and_shorter() -> None:
    anchored = hdp.head_commitment(golden.chain(3))
    assert hdp.verify(golden.chain(3), public_key=ISSUER_PUB, anchored_head=anchored).findings == ()
    longer = hdp.verify(golden.chain(5), public_key=ISSUER_PUB, anchored_head=anchored)
    assert longer.findings == ("chain extends past the anchored head (3 of 5 hops)",)


def test_anchor_detects_a_rewritten_prefix() -> None:
    anchored = hdp.head_commitment(golden.chain(3))
    data = golden.chain(3).to_dict()
    data["chain"][2]["action_summary"] = "a different third hop"
    golden.sign_hops_from(data, 2)
    assert hdp.verify(data, public_key=ISSUER_PUB).hop_count == 3
    error = rejects(data, "hdp.truncated", 6, anchored_head=anchored)
    assert isinstance(error, ChainBroken)


def test_anchor_for_another_token() -> None:
    anchored = hdp.head_commitment(golden.chain(1, profile=True))
    rejects(PLAIN, "hdp.anchor_mismatch", 6, anchored_head=anchored)


# -- weakness 6: seconds instead of milliseconds -----------------------------------------------


def test_issued_at_in_seconds_is_caught_only_by_the_signature() -> None:
    data = PLAIN.to_dict()
    data["header"]["issued_at"] = NOW_MS // 1000
    hdp.HdpToken.from_dict(data)  # passes step 0
    rejects(data, "hdp.signature_invalid", 2)


def test_hop_in_seconds_after_hops_in_milliseconds_breaks_the_order() -> None:
    data = PLAIN.to_dict()
    data["chain"][2]["timestamp"] = (NOW_MS + 3_000) // 1000
    golden.sign_hops_from(data, 2)
    rejects(data, "hdp.chain_integrity", 3)


def test_signed_hops_in_seconds_verify_with_a_finding() -> None:
    token = golden.root()
    for index in range(2):
        token = hdp.extend(
            token, key=ISSUER, agent_id="a", action_summary="x", timestamp_ms=NOW_MS // 1000 + index
        )
    verified = hdp.verify(token, public_key=ISSUER_PUB)
    assert verified.findings == (
        "hop 1 timestamp precedes issued_at (seconds instead of milliseconds?)",
        "hop 2 timestamp precedes issued_at (seconds instead of milliseconds?)",
    )


# -- every single mutation of a profile token --------------------------------------------------

SITES = golden.mutation_sites(PROFILE_DICT)


@pytest.mark.parametrize(
    ("path", "kind"), [pytest.param(*site, id=golden.site_id(*site)) for site in SITES]
)
def test_every_single_mutation_of_a_profile_token_is_rejected(
    path: tuple[str | int, ...], kind: str
) -> None:
    data = golden.apply_site(PROFILE_DICT, path, kind)
    with pytest.raises(TallystickError) as info:
        hdp.verify(data, public_key=ISSUER_PUB)
    if path == ("signature", "kid") and kind == "edit":
        assert (info.value.code, info.value.step) == ("hdp.kid_mismatch", 6)
    else:
        assert info.value.step is not None and info.value.step <= 4
