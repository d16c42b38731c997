"""HDP: draft-03 conformance, the legacy generation, the token type, issuance, audit,
golden vectors and property tests. Profile checks: test_hdp_profile.py; the reference
implementation side by side: test_hdp_interop.py."""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
from typing import Any

import jcs
import pytest
from conftest import OWN_VECTORS, vector_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tallystick.verifier import hdp
from tallystick.verifier._internal.encoding import b64url_encode
from tallystick.verifier.canonical import MAX_SAFE_INTEGER, canonicalize
from tallystick.verifier.errors import (
    ChainBroken,
    DepthExceeded,
    MalformedInput,
    PolicyViolation,
    SignatureInvalid,
    TallystickError,
    UnsupportedVersion,
)
from tallystick.verifier.keys import PublicKey
from vectors import generate_hdp as golden

SECTION3 = json.loads(vector_path("hdp", "section3-validation.json").read_text(encoding="utf-8"))
OUTCOMES = json.loads(vector_path("hdp", "expected-outcomes.json").read_text(encoding="utf-8"))
SECTION3_KEY = PublicKey.from_text(SECTION3["public_key_hex"])
ISSUER = golden.ISSUER
ISSUER_PUB = golden.ISSUER.public_key
NOW_MS = golden.ISSUED_AT_MS


def outcome(token: Any, public_key: PublicKey = ISSUER_PUB, **options: Any) -> dict[str, Any]:
    """Our verdict in the vector files' shape."""
    try:
        hdp.verify(token, public_key=public_key, **options)
    except TallystickError as exc:
        return {
            "valid": False,
            "failed_step": exc.step,
            "error_class": hdp.error_class(exc.code),
            "code": exc.code,
        }
    return {"valid": True, "failed_step": None, "error_class": None, "code": None}


def rejects(token: Any, code: str, step: int, **options: Any) -> TallystickError:
    with pytest.raises(TallystickError) as info:
        hdp.verify(token, public_key=options.pop("public_key", ISSUER_PUB), **options)
    assert (info.value.code, info.value.step) == (code, step), info.value
    return info.value


# -- upstream vectors --------------------------------------------------------------------------


def test_expected_outcomes_has_the_23_cases() -> None:
    assert len(OUTCOMES["cases"]) == 23


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case["name"]) for case in OUTCOMES["cases"]]
)
def test_expected_outcome(case: dict[str, Any]) -> None:
    token = golden.apply_outcome_mutation(SECTION3["token"], case["mutation"])
    got = outcome(token, SECTION3_KEY)
    expected = case["expected"]
    assert got["valid"] is expected["valid"]
    if not expected["valid"]:
        assert (got["failed_step"], got["error_class"]) == (
            expected["failed_step"],
            expected["error_class"],
        )


@pytest.mark.parametrize(
    ("generation", "fields"),
    [
        pytest.param("draft02_03", ("hdp", "header", "principal", "scope"), id="draft-03"),
        pytest.param("sdk_0_1_x_draft00", ("header", "principal", "scope"), id="sdk-0.1"),
    ],
)
def test_root_payload_bytes_and_digests(generation: str, fields: tuple[str, ...]) -> None:
    spec = OUTCOMES["root_signing_payload"][generation]
    token = SECTION3["token"]
    payload: dict[str, Any] = {name: token[name] for name in fields}
    if "hdp" in fields:
        payload["chain"] = []
    ours = canonicalize(payload)
    assert ours == spec["jcs_utf8"].encode("utf-8")
    assert hashlib.sha256(ours).hexdigest() == spec["sha256_hex"]
    signature = base64.urlsafe_b64decode(token["signature"]["value"] + "==")
    assert SECTION3_KEY.is_valid_signature(signature, ours) is spec["signature_verifies"]


def test_section3_verifies_as_draft03_even_with_legacy_allowed() -> None:
    verified = hdp.verify(SECTION3["token"], public_key=SECTION3_KEY, accept_legacy_hdp01=True)
    assert (verified.generation, verified.hop_count, verified.findings) == ("draft-03", 0, ())


@pytest.mark.parametrize(
    ("id_type", "passes_step_0"),
    [
        pytest.param(SECTION3["id_type_cases"]["accepted"], True, id="accepted"),
        pytest.param(SECTION3["id_type_cases"]["rejected"], False, id="rejected"),
        pytest.param("x-", False, id="x-dash-only"),
        pytest.param("x-a\u2028", False, id="line-separator"),
        pytest.param("X-custom", False, id="upper-case-x"),
        pytest.param("did", True, id="did"),
    ],
)
def test_id_type_cases(id_type: str, passes_step_0: bool) -> None:
    token = copy.deepcopy(SECTION3["token"])
    token["principal"]["id_type"] = id_type
    got = outcome(token, SECTION3_KEY)
    assert got["failed_step"] == (2 if passes_step_0 else 0)


# -- the SDK 0.1.x generation ------------------------------------------------------------------


def legacy_token(hops: int) -> dict[str, Any]:
    data = golden.chain(hops).to_dict()
    golden.sign_legacy_root(data, ISSUER)
    golden.sign_legacy_hops(data, ISSUER)
    return data


@pytest.mark.parametrize("hops", [0, 1, 3])
def test_legacy_payload_rejected_by_default(hops: int) -> None:
    error = rejects(legacy_token(hops), "hdp.signature_invalid", 2)
    assert isinstance(error, SignatureInvalid)


@pytest.mark.parametrize("hops", [0, 1, 3])
def test_legacy_payload_accepted_behind_the_option(hops: int) -> None:
    verified = hdp.verify(legacy_token(hops), public_key=ISSUER_PUB, accept_legacy_hdp01=True)
    assert verified.generation == "sdk-0.1"
    assert verified.hop_count == hops
    assert "legacy 0.1.x payload accepted" in verified.findings


def test_legacy_root_with_draft03_hops_is_rejected() -> None:
    data = legacy_token(3)
    golden.sign_hops_from(data, 0)  # draft-03 hop payloads over the legacy root
    rejects(data, "hdp.signature_invalid", 4, accept_legacy_hdp01=True)


def test_draft03_root_with_legacy_hops_is_rejected() -> None:
    data = golden.chain(3).to_dict()
    golden.sign_legacy_hops(data, ISSUER)
    rejects(data, "hdp.signature_invalid", 4, accept_legacy_hdp01=True)


def test_legacy_token_still_needs_the_version() -> None:
    data = legacy_token(1)
    data["hdp"] = "0.2"
    rejects(data, "hdp.unsupported_version", 1, accept_legacy_hdp01=True)


# -- the token type ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_hops() -> hdp.HdpToken:
    return golden.chain(3)


def test_token_properties(three_hops: hdp.HdpToken) -> None:
    assert three_hops.token_id == golden.PLAIN_TOKEN_ID
    assert three_hops.session_id == "golden-session"
    assert three_hops.hop_count == 3
    assert three_hops.issued_at_ms == NOW_MS
    assert three_hops.expires_at_ms == NOW_MS + 3_600_000
    assert three_hops.kid == ISSUER.kid
    assert three_hops.parent_token_id is None
    assert three_hops.max_hops is None
    assert repr(three_hops) == f"HdpToken(token_id='{golden.PLAIN_TOKEN_ID}', hop_count=3)"


def test_token_is_frozen_and_to_dict_is_a_deep_copy(three_hops: hdp.HdpToken) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        three_hops._data = {}  # type: ignore[misc]
    data = three_hops.to_dict()
    data["chain"][0]["agent_id"] = "mallory"
    data["scope"]["authorized_tools"].append("shell")
    assert three_hops.to_dict()["chain"][0]["agent_id"] == "planner"
    assert three_hops.to_dict()["scope"]["authorized_tools"] == ["web_search", "file_reader"]
    assert hdp.verify(three_hops, public_key=ISSUER_PUB).hop_count == 3


def test_from_dict_copies_its_input(three_hops: hdp.HdpToken) -> None:
    data = three_hops.to_dict()
    token = hdp.HdpToken.from_dict(data)
    data["chain"][0]["agent_id"] = "mallory"
    assert hdp.verify(token, public_key=ISSUER_PUB).hop_count == 3


def test_to_json_is_jcs_and_round_trips(three_hops: hdp.HdpToken) -> None:
    text = three_hops.to_json()
    assert text.encode("utf-8") == jcs.canonicalize(three_hops.to_dict())
    assert hdp.HdpToken.from_json(text) == three_hops
    assert hdp.HdpToken.from_json(text.encode("utf-8")) == three_hops
    assert hash(hdp.HdpToken.from_json(text)) == hash(three_hops)
    assert three_hops != golden.chain(2)
    assert three_hops != text


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(lambda t: t, id="token"),
        pytest.param(lambda t: t.to_json(), id="str"),
        pytest.param(lambda t: t.to_json().encode(), id="bytes"),
        pytest.param(lambda t: bytearray(t.to_json().encode()), id="bytearray"),
        pytest.param(lambda t: t.to_dict(), id="dict"),
    ],
)
def test_verify_accepts_every_input_form(three_hops: hdp.HdpToken, form: Any) -> None:
    verified = hdp.verify(form(three_hops), public_key=ISSUER_PUB)
    assert verified.token == three_hops
    assert (verified.generation, verified.hop_count, verified.profile_verified) == (
        "draft-03",
        3,
        False,
    )


def test_reference_is_sha256_of_the_jcs_text(three_hops: hdp.HdpToken) -> None:
    digest = hashlib.sha256(jcs.canonicalize(three_hops.to_dict())).digest()
    assert three_hops.reference() == "sha256:" + b64url_encode(digest)
    assert len(three_hops.reference()) == len("sha256:") + 43
    assert three_hops.matches_reference(three_hops.reference())
    assert three_hops.matches_reference(golden.PLAIN_TOKEN_ID.upper())
    assert not three_hops.matches_reference(golden.chain(2).reference())
    assert not three_hops.matches_reference(golden.PROFILE_TOKEN_ID)


@pytest.mark.parametrize(
    "name", ["HDP-Token", "X-HDP-Token", "hdp-token", "x-hdp-token", "HDP-TOKEN"]
)
def test_header_round_trip_under_both_spellings(three_hops: hdp.HdpToken, name: str) -> None:
    value = three_hops.to_header()
    assert hdp.HdpToken.from_headers({name: value, "Accept": "*/*"}) == three_hops


def test_header_value_forms(three_hops: hdp.HdpToken) -> None:
    value = three_hops.to_header()
    assert "=" not in value
    assert value == b64url_encode(three_hops.to_json().encode("utf-8"))
    assert hdp.HdpToken.from_header(value) == three_hops
    assert hdp.HdpToken.from_header(value + "=" * (-len(value) % 4) + " ") == three_hops
    # a non-canonical (pretty-printed) JSON text is acceptable in the header
    pretty = json.dumps(three_hops.to_dict(), indent=2).encode("utf-8")
    assert hdp.HdpToken.from_header(b64url_encode(pretty)) == three_hops
    headers = three_hops.to_headers()
    assert headers == {"HDP-Token": value, "HDP-Token-Ref": three_hops.reference()}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"HDP-Token": "not base64!"}, id="bad-base64"),
        pytest.param({"HDP-Token": b64url_encode(b"{}")}, id="not-a-token"),
        pytest.param({"HDP-Token": b64url_encode(b"\xff\xfe")}, id="not-utf8"),
        pytest.param({"HDP-Token": "A"}, id="one-char"),
    ],
)
def test_bad_header_values(headers: dict[str, str]) -> None:
    with pytest.raises(MalformedInput) as info:
        hdp.HdpToken.from_headers(headers)
    assert (info.value.code, info.value.step) == ("hdp.schema_invalid", 0)


def test_conflicting_and_missing_headers(three_hops: hdp.HdpToken) -> None:
    other = golden.chain(2).to_header()
    with pytest.raises(MalformedInput) as conflict:
        hdp.HdpToken.from_headers({"HDP-Token": three_hops.to_header(), "X-HDP-Token": other})
    assert conflict.value.code == "hdp.schema_invalid"
    same = three_hops.to_header()
    assert hdp.HdpToken.from_headers({"HDP-Token": same, "X-HDP-Token": same}) == three_hops
    with pytest.raises(MalformedInput) as missing:
        hdp.HdpToken.from_headers({"Authorization": "Bearer x"})
    assert missing.value.code == "hdp.header_missing"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="none"),
        pytest.param(5, id="int"),
        pytest.param(["hdp"], id="list"),
        pytest.param("null", id="json-null"),
        pytest.param("[]", id="json-array"),
        pytest.param("{", id="truncated-json"),
        pytest.param(b"\xff", id="not-utf8"),
        pytest.param("[" * 100 + "]" * 100, id="deep"),
        pytest.param(" " * (2 << 20), id="too-large"),
    ],
)
def test_step_0_rejects_non_tokens(value: Any) -> None:
    error = rejects(value, "hdp.schema_invalid", 0)
    assert isinstance(error, MalformedInput)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        pytest.param(("principal", "metadata"), {"n": (1, 2)}, id="tuple"),
        pytest.param(("principal", "metadata"), {1: "x"}, id="int-key"),
        pytest.param(("principal", "metadata"), {"n": float("nan")}, id="nan"),
        pytest.param(("principal", "metadata"), {"n": float("inf")}, id="inf"),
        pytest.param(("principal", "metadata"), {"n": MAX_SAFE_INTEGER + 1}, id="unsafe-int"),
        pytest.param(("principal", "metadata"), {"n": "\ud800"}, id="lone-surrogate"),
        pytest.param(("principal", "metadata"), {"\udfff": 1}, id="surrogate-key"),
        pytest.param(("principal", "metadata"), {"n": object()}, id="object"),
        pytest.param(("principal", "metadata"), {"n": b"x"}, id="bytes"),
        pytest.param(("header", "issued_at"), True, id="bool-as-int"),
        pytest.param(("header", "issued_at"), float(NOW_MS), id="float-as-int"),
        pytest.param(("scope", "max_hops"), 0, id="max-hops-zero"),
        pytest.param(("scope", "data_classification"), ["internal"], id="unhashable-class"),
        pytest.param(("scope", "authorized_tools"), "web_search", id="tools-string"),
        pytest.param(("scope", "constraints"), {}, id="constraints-object"),
        pytest.param(("scope", "extensions"), [], id="extensions-array"),
        pytest.param(("header", "parent_token_id"), "nope", id="parent-not-uuid"),
        pytest.param(("header", "token_id"), "{6f1c2a3b-9d4e-4f5a-8b6c-7d8e9f0a1b2c}", id="braces"),
        pytest.param(("header", "token_id"), "6f1c2a3b9d4e4f5a8b6c7d8e9f0a1b2c", id="no-hyphens"),
        pytest.param(("header", "token_id"), "6f1c2a3b-9d4e-4f5a-cb6c-7d8e9f0a1b2c", id="variant"),
        pytest.param(("header", "session_id"), "", id="empty-session"),
        pytest.param(("signature", "kid"), "", id="empty-kid"),
        pytest.param(("chain", 0, "timestamp"), -1, id="negative-timestamp"),
        pytest.param(("chain", 0, "parent_hop"), None, id="null-parent-hop"),
        pytest.param(("chain", 0, "seq"), 0, id="seq-zero"),
        pytest.param(("chain", 0, "agent_fingerprint"), 7, id="fingerprint-int"),
        pytest.param(("chain", 0, "hop_signature"), "A" * 86 + "=", id="padded-signature"),
        pytest.param(("chain", 0), "hop", id="hop-not-object"),
    ],
)
def test_step_0_member_rules(
    three_hops: hdp.HdpToken, where: tuple[str | int, ...], value: Any
) -> None:
    data = three_hops.to_dict()
    parent: Any = data
    for step in where[:-1]:
        parent = parent[step]
    parent[where[-1]] = value
    rejects(data, "hdp.schema_invalid", 0)


def test_step_0_accepts_either_case_uuid_and_unknown_members(three_hops: hdp.HdpToken) -> None:
    data = three_hops.to_dict()
    data["header"]["token_id"] = data["header"]["token_id"].upper()
    data["header"]["x-note"] = "unsigned-looking but covered by the root signature"
    hdp.HdpToken.from_dict(data)  # step 0 passes; the signature now fails
    rejects(data, "hdp.signature_invalid", 2)


def test_error_class_mapping() -> None:
    assert {code: hdp.error_class(code) for code in _DRAFT03_CODES} == {
        "hdp.schema_invalid": "SCHEMA_INVALID",
        "hdp.unsupported_version": "UNSUPPORTED_VERSION",
        "hdp.version_mismatch": "VERSION_MISMATCH",
        "hdp.signature_invalid": "SIGNATURE_INVALID",
        "hdp.chain_integrity": "CHAIN_INTEGRITY",
        "hdp.max_hops_exceeded": "MAX_HOPS_EXCEEDED",
    }
    assert hdp.error_class("hdp.kid_mismatch") is None
    assert hdp.error_class("merkle.root_mismatch") is None


_DRAFT03_CODES = (
    "hdp.schema_invalid",
    "hdp.unsupported_version",
    "hdp.version_mismatch",
    "hdp.signature_invalid",
    "hdp.chain_integrity",
    "hdp.max_hops_exceeded",
)


@pytest.mark.parametrize(
    ("name", "error_type"),
    [
        pytest.param("reject-extra-member.json", MalformedInput, id="0"),
        pytest.param("reject-unsupported-version.json", UnsupportedVersion, id="1"),
        pytest.param("reject-root-wrong-key.json", SignatureInvalid, id="2"),
        pytest.param("reject-seq-gap.json", ChainBroken, id="3"),
        pytest.param("reject-tampered-hop.json", SignatureInvalid, id="4"),
        pytest.param("reject-max-hops-exceeded.json", DepthExceeded, id="5"),
    ],
)
def test_each_step_raises_its_exception_type(name: str, error_type: type[Exception]) -> None:
    vector = json.loads((OWN_VECTORS / "hdp" / name).read_text(encoding="utf-8"))
    with pytest.raises(error_type) as info:
        hdp.verify(vector["token"], public_key=ISSUER_PUB)
    assert isinstance(info.value, TallystickError)
    assert info.value.step == vector["expected"]["failed_step"]


def test_chain_broken_names_the_hop(three_hops: hdp.HdpToken) -> None:
    data = golden.mutated(three_hops, golden._seq_gap)
    error = rejects(data, "hdp.chain_integrity", 3)
    assert isinstance(error, ChainBroken)
    assert error.hop == 3


def test_verify_rejects_an_unknown_profile_mode(three_hops: hdp.HdpToken) -> None:
    with pytest.raises(MalformedInput) as info:
        hdp.verify(three_hops, public_key=ISSUER_PUB, profile="maybe")  # type: ignore[arg-type]
    assert info.value.code == "hdp.option_invalid"


def test_findings_for_tolerated_oddities(three_hops: hdp.HdpToken) -> None:
    data = three_hops.to_dict()
    data["signature"]["signed_fields"] = ["header", "principal", "scope"]
    verified = hdp.verify(data, public_key=ISSUER_PUB)
    assert verified.findings == ("deprecated signature.signed_fields tolerated",)


# -- issuance ----------------------------------------------------------------------------------


def test_issue_root_defaults() -> None:
    first = hdp.issue_root(
        key=ISSUER, principal_id="alice", session_id="s", intent="i", issued_at_ms=NOW_MS
    )
    second = hdp.issue_root(
        key=ISSUER, principal_id="alice", session_id="s", intent="i", issued_at_ms=NOW_MS
    )
    assert first.token_id != second.token_id
    data = first.to_dict()
    assert data["header"] == {
        "token_id": first.token_id,
        "issued_at": NOW_MS,
        "expires_at": NOW_MS + 86_400_000,
        "session_id": "s",
        "version": "0.1",
    }
    assert data["principal"] == {"id": "alice", "id_type": "opaque"}
    assert data["scope"] == {
        "intent": "i",
        "data_classification": "internal",
        "network_egress": False,
        "persistence": False,
    }
    assert data["chain"] == []
    assert set(data["signature"]) == {"alg", "kid", "value"}
    assert (data["signature"]["alg"], data["signature"]["kid"]) == ("Ed25519", ISSUER.kid)
    assert hdp.verify(first, public_key=ISSUER_PUB).generation == "draft-03"


def test_issue_root_all_options() -> None:
    parent = golden.chain(0)
    token = hdp.issue_root(
        key=ISSUER,
        principal_id="did:example:alice",
        principal_id_type="x-tallystick-user",
        session_id="s",
        intent="i",
        data_classification="restricted",
        network_egress=True,
        persistence=True,
        authorized_tools=("a", "b"),
        max_hops=2,
        issued_at_ms=0,
        ttl_ms=1,
        token_id="6F1C2A3B-9D4E-4F5A-8B6C-7D8E9F0A1B2C",
        kid="issuer-2026",
        parent_token_id=parent.token_id,
    )
    assert token.kid == "issuer-2026"
    assert token.parent_token_id == parent.token_id
    assert token.max_hops == 2
    assert token.to_dict()["scope"]["authorized_tools"] == ["a", "b"]
    assert (token.issued_at_ms, token.expires_at_ms) == (0, 1)
    assert hdp.verify(token.to_json(), public_key=ISSUER_PUB).hop_count == 0


@pytest.mark.parametrize(
    "override",
    [
        pytest.param({"session_id": ""}, id="empty-session"),
        pytest.param({"principal_id_type": "x-a\n"}, id="id-type-newline"),
        pytest.param({"principal_id_type": "user"}, id="id-type-unknown"),
        pytest.param({"data_classification": "secret"}, id="classification"),
        pytest.param({"authorized_tools": "web_search"}, id="tools-as-string"),
        pytest.param({"authorized_tools": ["a", 1]}, id="tools-non-string"),
        pytest.param({"ttl_ms": 0}, id="ttl-zero"),
        pytest.param({"ttl_ms": MAX_SAFE_INTEGER}, id="expires-unsafe"),
        pytest.param({"issued_at_ms": 1.5}, id="issued-at-float"),
        pytest.param({"issued_at_ms": True}, id="issued-at-bool"),
        pytest.param({"issued_at_ms": -1}, id="issued-at-negative"),
        pytest.param({"max_hops": 0}, id="max-hops-zero"),
        pytest.param({"token_id": "123e4567-e89b-12d3-a456-426614174000"}, id="uuid-v1"),
        pytest.param({"kid": ""}, id="empty-kid"),
        pytest.param({"parent_token_id": "parent"}, id="parent-not-uuid"),
        pytest.param({"intent": 5}, id="intent-int"),
        pytest.param({"principal_id": "\ud800"}, id="lone-surrogate"),
        pytest.param({"network_egress": 1}, id="egress-int"),
    ],
)
def test_issue_root_refuses_what_step_0_would_reject(override: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {
        "key": ISSUER,
        "principal_id": "alice",
        "session_id": "s",
        "intent": "i",
        "issued_at_ms": NOW_MS,
        **override,
    }
    with pytest.raises(MalformedInput) as info:
        hdp.issue_root(**arguments)
    assert (info.value.code, info.value.step) == ("hdp.schema_invalid", 0)


def test_extend_defaults_and_explicit_parent() -> None:
    token = golden.chain(2)
    token = hdp.extend(
        token,
        key=ISSUER,
        agent_id="auditor",
        agent_type="tool-executor",
        action_summary="check",
        timestamp_ms=golden.ISSUED_AT_MS + 2_000,  # equal timestamps are allowed
        parent_hop=1,
    )
    hops = token.to_dict()["chain"]
    assert [(hop["seq"], hop["parent_hop"]) for hop in hops] == [(1, 0), (2, 1), (3, 1)]
    assert hops[2]["agent_type"] == "tool-executor"
    assert set(hops[2]) == {
        "seq",
        "agent_id",
        "agent_type",
        "timestamp",
        "action_summary",
        "parent_hop",
        "hop_signature",
    }
    assert hdp.verify(token, public_key=ISSUER_PUB).hop_count == 3


def test_extend_leaves_the_original_token_alone() -> None:
    token = golden.chain(1)
    before = token.to_json()
    longer = hdp.extend(
        token, key=ISSUER, agent_id="a", action_summary="x", timestamp_ms=NOW_MS * 2
    )
    assert token.to_json() == before
    assert (token.hop_count, longer.hop_count) == (1, 2)


def test_extend_refuses_past_max_hops() -> None:
    token = golden.chain(2, max_hops=2)
    with pytest.raises(DepthExceeded) as info:
        hdp.extend(token, key=ISSUER, agent_id="a", action_summary="x", timestamp_ms=NOW_MS * 2)
    assert (info.value.code, info.value.step) == ("hdp.max_hops_exceeded", 5)


@pytest.mark.parametrize(
    ("override", "error_type", "code", "step"),
    [
        pytest.param({"timestamp_ms": NOW_MS}, ChainBroken, "hdp.chain_integrity", 3, id="older"),
        pytest.param({"parent_hop": 3}, ChainBroken, "hdp.chain_integrity", 3, id="parent-self"),
        pytest.param({"parent_hop": -1}, MalformedInput, "hdp.schema_invalid", 0, id="parent-neg"),
        pytest.param({"agent_type": "robot"}, MalformedInput, "hdp.schema_invalid", 0, id="type"),
        pytest.param({"agent_type": ["x"]}, MalformedInput, "hdp.schema_invalid", 0, id="type2"),
        pytest.param({"agent_id": None}, MalformedInput, "hdp.schema_invalid", 0, id="agent-none"),
        pytest.param({"timestamp_ms": 1.0}, MalformedInput, "hdp.schema_invalid", 0, id="ts-float"),
        pytest.param(
            {"key": golden.PLANNER}, SignatureInvalid, "hdp.signature_invalid", 2, id="wrong-key"
        ),
        pytest.param(
            {"agent_key": golden.PLANNER}, PolicyViolation, "hdp.profile_missing", 6, id="no-prof"
        ),
    ],
)
def test_extend_refuses_bad_hops(
    override: dict[str, Any], error_type: type[TallystickError], code: str, step: int
) -> None:
    arguments: dict[str, Any] = {
        "key": ISSUER,
        "agent_id": "a",
        "action_summary": "x",
        "timestamp_ms": NOW_MS + 10_000,
        **override,
    }
    with pytest.raises(error_type) as info:
        hdp.extend(golden.chain(2), **arguments)
    assert (info.value.code, info.value.step) == (code, step)


@pytest.mark.parametrize("hops", [0, 1, 5, 10])
def test_issued_chains_verify(hops: int) -> None:
    token = golden.chain(hops)
    verified = hdp.verify(token.to_json(), public_key=ISSUER_PUB)
    assert verified.hop_count == hops
    rejects(token, "hdp.signature_invalid", 2, public_key=golden.PLANNER.public_key)


# -- audit -------------------------------------------------------------------------------------


def test_audit_valid_record(three_hops: hdp.HdpToken) -> None:
    report = hdp.audit(three_hops, public_key=ISSUER_PUB, session_id="golden-session")
    assert report.to_dict() == {
        "token_id": golden.PLAIN_TOKEN_ID,
        "integrity": {"status": "valid", "generation": "draft-03"},
        "recording_period": {"status": "within_period"},
        "session": {"status": "match"},
        "linked_records": {"status": "none"},
        "findings": [],
    }


def test_audit_without_key_is_unverified_and_session_mismatch_is_separate(
    three_hops: hdp.HdpToken,
) -> None:
    report = hdp.audit(three_hops.to_json(), session_id="other")
    assert (report.integrity, report.session, report.linked_records) == (
        "unverified",
        "mismatch",
        "none",
    )
    keyed = hdp.audit(three_hops, public_key=ISSUER_PUB, session_id="other")
    assert (keyed.integrity, keyed.session) == ("valid", "mismatch")
    assert hdp.audit(three_hops).session == "not_checked"


def test_audit_step_0_failure_checks_nothing_else() -> None:
    report = hdp.audit('{"hdp": "0.1"}', public_key=ISSUER_PUB, session_id="s")
    assert report.to_dict() == {
        "token_id": None,
        "integrity": {
            "status": "invalid",
            "failed_step": 0,
            "error": {"code": "hdp.schema_invalid", "class": "SCHEMA_INVALID"},
        },
        "recording_period": {"status": "not_checked"},
        "session": {"status": "not_checked"},
        "linked_records": {"status": "not_checked"},
        "findings": [],
    }


def test_audit_reports_a_failed_step_and_still_audits_the_record(three_hops: hdp.HdpToken) -> None:
    data = golden.mutated(three_hops, golden._tampered_hop)
    report = hdp.audit(data, public_key=ISSUER_PUB, session_id="golden-session")
    assert report.to_dict()["integrity"] == {
        "status": "invalid",
        "failed_step": 4,
        "error": {"code": "hdp.signature_invalid", "class": "SIGNATURE_INVALID"},
    }
    assert (report.session, report.recording_period) == ("match", "within_period")


def test_audit_lists_hops_recorded_after_the_period() -> None:
    token = hdp.issue_root(
        key=ISSUER, principal_id="a", session_id="s", intent="i", issued_at_ms=NOW_MS, ttl_ms=1000
    )
    for offset in (999, 1000, 5000):
        token = hdp.extend(
            token, key=ISSUER, agent_id="a", action_summary="x", timestamp_ms=NOW_MS + offset
        )
    report = hdp.audit(token, public_key=ISSUER_PUB)
    assert report.integrity == "valid"  # an expired record still verifies
    assert report.to_dict()["recording_period"] == {
        "status": "recorded_after_period",
        "hop_seqs": [2, 3],
    }


@pytest.mark.parametrize(
    ("relationship", "expected"),
    [
        pytest.param(None, "unknown", id="unasserted"),
        pytest.param("supersession", "supersession", id="asserted"),
    ],
)
def test_audit_linked_records(relationship: str | None, expected: str) -> None:
    parent = golden.chain(0)
    token = hdp.issue_root(
        key=ISSUER,
        principal_id="a",
        session_id="s",
        intent="i",
        issued_at_ms=NOW_MS,
        parent_token_id=parent.token_id,
    )
    report = hdp.audit(token, relationship=relationship)
    assert report.to_dict()["linked_records"] == {
        "status": "linked",
        "parent_token_id": parent.token_id,
        "relationship": expected,
    }


def test_audit_legacy_generation() -> None:
    report = hdp.audit(legacy_token(1), public_key=ISSUER_PUB, accept_legacy_hdp01=True)
    assert report.to_dict()["integrity"] == {"status": "valid", "generation": "sdk-0.1"}
    assert report.findings == ("legacy 0.1.x payload accepted",)
    assert hdp.audit(legacy_token(1), public_key=ISSUER_PUB).failed_step == 2


# -- golden vectors ----------------------------------------------------------------------------

GOLDEN = golden.build_vectors()
GOLDEN_DIR = OWN_VECTORS / "hdp"


def test_golden_vector_files_are_exactly_what_the_generator_makes() -> None:
    on_disk = {path.name for path in GOLDEN_DIR.glob("*.json")}
    assert on_disk == set(GOLDEN)
    for name, vector in GOLDEN.items():
        assert (GOLDEN_DIR / name).read_text(encoding="utf-8") == golden.render(vector), name


def test_golden_vectors_cover_the_plan() -> None:
    steps = {vector["expected"]["failed_step"] for vector in GOLDEN.values()}
    assert steps == {None, 0, 1, 2, 3, 4, 5, 6}
    hop_counts = {
        len(vector["token"]["chain"]) for vector in GOLDEN.values() if vector["expected"]["valid"]
    }
    assert {1, 3, 10} <= hop_counts


@pytest.mark.parametrize(
    "name", [pytest.param(path.name, id=path.stem) for path in sorted(GOLDEN_DIR.glob("*.json"))]
)
def test_golden_vector_verdicts(name: str) -> None:
    vector = json.loads((GOLDEN_DIR / name).read_text(encoding="utf-8"))
    key = PublicKey.from_text(vector["public_key_hex"])
    assert outcome(vector["token"], key) == vector["expected"]
    plain = outcome(vector["token"], key, profile="off")
    assert {name: plain[name] for name in vector["expected_draft03"]} == vector["expected_draft03"]
    if "anchored_head" in vector:
        anchored = hdp.HeadCommitment.from_dict(vector["anchored_head"])
        assert outcome(vector["token"], key, anchored_head=anchored) == vector["expected_anchored"]


# -- properties --------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats()
    | st.text(max_size=10)
)
safe_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
PLAIN = golden.chain(3)
PLAIN_DICT = PLAIN.to_dict()
PLAIN_TEXT = PLAIN.to_json()


def _verify_or_reject(token: Any) -> bool:
    """True when ``token`` verifies; a rejection must be a TallystickError with a step."""
    try:
        hdp.verify(token, public_key=ISSUER_PUB)
    except TallystickError as exc:
        assert exc.code.startswith("hdp.")
        assert exc.step is not None
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_property_arbitrary_text_is_rejected_cleanly(raw: str | bytes) -> None:
    assert not _verify_or_reject(raw)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_property_arbitrary_json_is_rejected_cleanly(value: Any) -> None:
    assert not _verify_or_reject(value)
    if isinstance(value, dict | list):
        assert not _verify_or_reject(json.dumps(value))


SITES = golden.mutation_sites(PLAIN_DICT)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SITES), json_values)
def test_property_any_member_replaced_by_any_json_is_handled(
    site: tuple[tuple[str | int, ...], str], value: Any
) -> None:
    path, _ = site
    data = copy.deepcopy(PLAIN_DICT)
    parent: Any = data
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    if _verify_or_reject(data):
        assert _same_record_or_known_weakness(data)


def _same_record_or_known_weakness(data: dict[str, Any]) -> bool:
    """Equal to PLAIN but for an edited kid (unsigned) or a dropped tail of hops (truncation)."""
    edited = copy.deepcopy(data)
    edited["signature"]["kid"] = PLAIN_DICT["signature"]["kid"]
    hops = edited.pop("chain")
    expected = {name: value for name, value in PLAIN_DICT.items() if name != "chain"}
    return edited == expected and hops == PLAIN_DICT["chain"][: len(hops)]


@pytest.mark.parametrize(
    ("path", "kind"), [pytest.param(*site, id=golden.site_id(*site)) for site in SITES]
)
def test_property_every_single_mutation_is_rejected(path: tuple[str | int, ...], kind: str) -> None:
    data = golden.apply_site(PLAIN_DICT, path, kind)
    if path == ("signature", "kid") and kind == "edit":
        # kid is unsigned in plain HDP (hdp.md §9.2); the profile catches it (test_hdp_profile)
        assert _verify_or_reject(data)
    else:
        assert not _verify_or_reject(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(PLAIN_TEXT) - 1), st.characters(codec="utf-8"))
def test_property_character_edits_never_verify_except_the_kid(index: int, char: str) -> None:
    text = PLAIN_TEXT[:index] + char + PLAIN_TEXT[index + 1 :]
    if _verify_or_reject(text):
        assert _same_record_or_known_weakness(hdp.HdpToken.from_json(text).to_dict())


def _shuffled(value: Any, draw: Any) -> Any:
    if isinstance(value, dict):
        names = draw(st.permutations(list(value)))
        return {name: _shuffled(value[name], draw) for name in names}
    if isinstance(value, list):
        return [_shuffled(item, draw) for item in value]
    return value


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_property_jcs_is_stable_under_member_reordering(data: st.DataObject) -> None:
    shuffled = _shuffled(PLAIN_DICT, data.draw)
    token = hdp.HdpToken.from_dict(shuffled)
    assert token.to_json() == PLAIN_TEXT
    assert token.reference() == PLAIN.reference()
    assert hdp.head_commitment(token) == hdp.head_commitment(PLAIN)
    assert hdp.verify(json.dumps(shuffled), public_key=ISSUER_PUB).hop_count == 3


def _objects(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found: list[tuple[str | int, ...]] = []
    if isinstance(value, dict):
        found.append(path)
        for name, item in value.items():
            found.extend(_objects(item, (*path, name)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_objects(item, (*path, index)))
    return found


def _dump_with_duplicate(
    value: Any, target: tuple[str | int, ...], name: str, extra: Any, path: tuple[str | int, ...]
) -> str:
    if isinstance(value, dict):
        members = [
            json.dumps(key) + ":" + _dump_with_duplicate(item, target, name, extra, (*path, key))
            for key, item in value.items()
        ]
        if path == target:
            members.append(json.dumps(name) + ":" + json.dumps(extra))
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        items = [
            _dump_with_duplicate(item, target, name, extra, (*path, index))
            for index, item in enumerate(value)
        ]
        return "[" + ",".join(items) + "]"
    return json.dumps(value)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_property_duplicate_members_are_always_rejected(data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(_objects(PLAIN_DICT)))
    parent: Any = PLAIN_DICT
    for step in target:
        parent = parent[step]
    name = data.draw(st.sampled_from(sorted(parent)))
    same_value = data.draw(st.booleans())
    extra = parent[name] if same_value else data.draw(safe_scalars)
    text = _dump_with_duplicate(PLAIN_DICT, target, name, extra, ())
    with pytest.raises(MalformedInput) as info:
        hdp.HdpToken.from_json(text)
    assert (info.value.code, info.value.step) == ("hdp.schema_invalid", 0)
    assert "duplicate" in str(info.value)
