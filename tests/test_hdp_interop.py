"""HDP side by side with the draft-03 reference, hdp-autogen 0.2.0 (a development-only oracle).

Tokens flow both ways, and every rejection must happen at the same draft-03 step in
both verifiers (the reference reports ``violations[0]`` as ``"Step N: ..."``). The
two places where we are deliberately stricter are pinned at the end.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from conftest import OWN_VECTORS, vector_path
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hdp_autogen import HdpMiddleware, HdpPrincipal, ScopePolicy
from hdp_autogen._crypto import sign_hop, sign_root
from hdp_autogen.verify import verify_chain
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tallystick.verifier import hdp
from tallystick.verifier.canonical import MAX_SAFE_INTEGER
from tallystick.verifier.errors import TallystickError
from tallystick.verifier.keys import PublicKey
from vectors import generate_hdp as golden

pytestmark = pytest.mark.interop

ISSUER = golden.ISSUER
ISSUER_PUB = ISSUER.public_key
REFERENCE_KEY = Ed25519PublicKey.from_public_bytes(ISSUER_PUB.raw)
NOW_MS = golden.ISSUED_AT_MS
_STEP = re.compile(r"Step (\d):")


def reference_step(token: Any, public_key: PublicKey = ISSUER_PUB) -> int | None:
    """The reference's failed step, or None when it accepts."""
    result = verify_chain(token, Ed25519PublicKey.from_public_bytes(public_key.raw))
    if result.valid:
        return None
    match = _STEP.match(result.violations[0])
    assert match is not None, result.violations
    return int(match.group(1))


def our_step(token: Any, public_key: PublicKey = ISSUER_PUB, **options: Any) -> int | None:
    """Our failed step, or None when we accept."""
    try:
        hdp.verify(token, public_key=public_key, **options)
    except TallystickError as exc:
        assert exc.step is not None
        return exc.step
    return None


# -- reference tokens verify here --------------------------------------------------------------


class _Agent:
    def __init__(self, name: str) -> None:
        self.name = name


@pytest.mark.parametrize("hops", [0, 1, 5])
def test_reference_middleware_tokens_verify_here(hops: int) -> None:
    middleware = HdpMiddleware(
        signing_key=ISSUER.seed(),
        session_id="session-abc123",
        principal=HdpPrincipal(id="user@example.com", id_type="email", metadata={"team": "a"}),
        scope=ScopePolicy(intent="Coordinate research agents", authorized_tools=["web_search"]),
        key_id="issuer-key",
    )
    middleware.before_kickoff()
    for index in range(hops):
        middleware.on_message_send(_Agent(f"agent-{index}"), f"message {index}", None)
    token = middleware.export_token()
    assert token is not None and len(token["chain"]) == hops
    verified = hdp.verify(token, public_key=ISSUER_PUB)
    assert (verified.generation, verified.hop_count) == ("draft-03", hops)
    assert hdp.verify(middleware.export_token_json(), public_key=ISSUER_PUB).hop_count == hops


def reference_issued(hops: int) -> dict[str, Any]:
    """A token built with the reference's own signing functions, using optional members."""
    unsigned: dict[str, Any] = {
        "hdp": "0.1",
        "header": {
            "token_id": "0d4c2b1a-8f7e-4d6c-a5b4-c3d2e1f0a9b8",
            "issued_at": NOW_MS,
            "expires_at": NOW_MS + 60_000,
            "session_id": "interop",
            "version": "0.1",
            "parent_token_id": golden.PLAIN_TOKEN_ID,
        },
        "principal": {
            "id": "Zoë <zoe@example.com>",
            "id_type": "x-corporate-sso",
            "display_name": "Zoë 🦊",
            "metadata": {"score": 0.5, "ratio": 1e-7, "big": 1e21, "tags": ["a", "b"]},
        },
        "scope": {
            "intent": "Read one report \u2028 and summarise",
            "data_classification": "confidential",
            "network_egress": True,
            "persistence": False,
            "authorized_resources": ["s3://bucket/report.pdf"],
            "max_hops": 8,
            "constraints": [{"type": "time_window", "start": NOW_MS, "end": NOW_MS + 1}],
            "extensions": {"x-vendor": {"nested": [1, 2.5, None]}},
        },
        "chain": [],
    }
    token = {**unsigned, "signature": sign_root(unsigned, ISSUER.seed(), "issuer-key")}
    chain: list[dict[str, Any]] = []
    for index in range(hops):
        hop = {
            "seq": index + 1,
            "agent_id": f"agent-{index}",
            "agent_type": "custom",
            "agent_fingerprint": f"fp-{index}",
            "timestamp": NOW_MS + index,
            "action_summary": f'step {index} \u00e9\t"quoted"',
            "parent_hop": 0,
            "x-trace": {"span": index},
        }
        hop["hop_signature"] = sign_hop([*chain, hop], token["signature"]["value"], ISSUER.seed())
        chain.append(hop)
    return {**token, "chain": chain}


@pytest.mark.parametrize("hops", [0, 1, 5])
def test_reference_signed_tokens_with_optional_members_verify_here(hops: int) -> None:
    token = reference_issued(hops)
    assert reference_step(token) is None
    verified = hdp.verify(token, public_key=ISSUER_PUB)
    assert verified.hop_count == hops
    parsed = hdp.HdpToken.from_dict(token)
    assert hdp.verify(parsed.to_json(), public_key=ISSUER_PUB).hop_count == hops
    assert hdp.verify(json.dumps(token, indent=2), public_key=ISSUER_PUB).hop_count == hops


def test_extending_a_reference_token() -> None:
    token = hdp.HdpToken.from_dict(reference_issued(2))
    token = hdp.extend(
        token, key=ISSUER, agent_id="ours", action_summary="continue", timestamp_ms=NOW_MS + 10
    )
    assert hdp.verify(token, public_key=ISSUER_PUB).hop_count == 3
    assert reference_step(token.to_dict()) is None


# -- our tokens verify there -------------------------------------------------------------------


@pytest.mark.parametrize("profile", [False, True], ids=["plain", "profile"])
@pytest.mark.parametrize("hops", [0, 1, 5, 10])
def test_our_tokens_verify_with_the_reference(hops: int, profile: bool) -> None:
    token = golden.chain(hops, profile=profile)
    assert reference_step(token.to_dict()) is None
    assert reference_step(token.to_json()) is None
    assert verify_chain(token.to_json(), REFERENCE_KEY).hop_count == hops


# -- the same rejections at the same steps -----------------------------------------------------


def _negative_tokens() -> list[Any]:
    params = [
        pytest.param(golden.mutated(golden.chain(3, profile=profile), mutation), step, id=name)
        for name, (_, profile, mutation, step, _) in golden.NEGATIVE_CASES.items()
    ]
    params.append(pytest.param(golden.max_hops_exceeded(), 5, id="max-hops-exceeded"))
    return params


@pytest.mark.parametrize(("token", "step"), _negative_tokens())
def test_tampered_tokens_fail_at_the_same_step(token: dict[str, Any], step: int) -> None:
    assert reference_step(token) == step
    assert our_step(token) == step
    assert reference_step(json.dumps(token)) == our_step(json.dumps(token)) == step


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in golden.PROFILE_CASES])
def test_profile_weaknesses_pass_plain_verifiers(name: str) -> None:
    _, mutation, _ = golden.PROFILE_CASES[name]
    token = golden.mutated(golden.chain(3, profile=True), mutation)
    assert reference_step(token) is None
    assert our_step(token, profile="off") is None
    assert our_step(token) == 6


def test_truncated_chain_verifies_in_both_until_anchored() -> None:
    token, anchored = golden.truncated()
    assert reference_step(token) is None
    assert our_step(token) is None
    assert our_step(token, anchored_head=anchored) == 6


SECTION3 = json.loads(vector_path("hdp", "section3-validation.json").read_text(encoding="utf-8"))
OUTCOMES = json.loads(vector_path("hdp", "expected-outcomes.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case["name"]) for case in OUTCOMES["cases"]]
)
def test_expected_outcomes_agree_with_the_reference(case: dict[str, Any]) -> None:
    key = PublicKey.from_text(SECTION3["public_key_hex"])
    token = golden.apply_outcome_mutation(SECTION3["token"], case["mutation"])
    expected = case["expected"].get("failed_step")
    assert reference_step(token, key) == expected
    assert our_step(token, key) == expected


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(path.name, id=path.stem)
        for path in sorted((OWN_VECTORS / "hdp").glob("*.json"))
    ],
)
def test_golden_vectors_against_the_reference(name: str) -> None:
    vector = json.loads((OWN_VECTORS / "hdp" / name).read_text(encoding="utf-8"))
    key = PublicKey.from_text(vector["public_key_hex"])
    assert reference_step(vector["token"], key) == vector["expected_draft03"]["failed_step"]
    assert (
        our_step(vector["token"], key, profile="off") == vector["expected_draft03"]["failed_step"]
    )


def _legacy(hops: int) -> dict[str, Any]:
    data = golden.chain(hops).to_dict()
    golden.sign_legacy_root(data, ISSUER)
    golden.sign_legacy_hops(data, ISSUER)
    return data


@pytest.mark.parametrize("hops", [0, 2])
def test_legacy_tokens_fail_step_2_in_both_by_default(hops: int) -> None:
    token = _legacy(hops)
    assert reference_step(token) == our_step(token) == 2
    assert our_step(token, accept_legacy_hdp01=True) is None


# -- every single mutation, and random member replacements, in both -----------------------------

PLAIN_DICT = golden.chain(3).to_dict()
SITES = golden.mutation_sites(PLAIN_DICT)


@pytest.mark.parametrize(
    ("path", "kind"), [pytest.param(*site, id=golden.site_id(*site)) for site in SITES]
)
def test_every_single_mutation_fails_at_the_same_step(
    path: tuple[str | int, ...], kind: str
) -> None:
    token = golden.apply_site(PLAIN_DICT, path, kind)
    assert our_step(token) == reference_step(token)


safe_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
safe_values = st.recursive(
    safe_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SITES), safe_values)
def test_property_member_replacements_fail_at_the_same_step(
    site: tuple[tuple[str | int, ...], str], value: Any
) -> None:
    path, _ = site
    token = json.loads(json.dumps(PLAIN_DICT))
    parent: Any = token
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    assert our_step(token) == reference_step(token)
    text = json.dumps(token)
    assert our_step(text) == reference_step(text)


# -- where we are stricter, on purpose ---------------------------------------------------------


def test_stricter_non_canonical_signature_padding_bits() -> None:
    """The reference's base64 decoder ignores the 4 padding bits of an 86-character value,
    so a second spelling of the same signature verifies there; we reject it at step 2."""
    token = golden.chain(0).to_dict()
    value = token["signature"]["value"]
    token["signature"]["value"] = value[:-1] + chr(ord(value[-1]) + 1)
    assert reference_step(token) is None
    assert our_step(token) == 2


def test_stricter_unsafe_integer_in_an_unchecked_member() -> None:
    """The reference accepts any integer a double holds exactly in free-form members;
    we reject every integer outside the IEEE-754 safe range at step 0 (hdp.md §2)."""
    token = golden.chain(0).to_dict()
    token["principal"]["metadata"] = {"n": 2**60}
    token["signature"] = sign_root(token, ISSUER.seed(), ISSUER.kid)  # JCS writes 2**60 as ES6 does
    assert reference_step(token) is None
    assert our_step(token) == 0
