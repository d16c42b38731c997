"""Generator of Tallystick's AIP golden vectors (tests/vectors/aip/*.json).

Run ``.venv/bin/python tests/vectors/generate_aip.py`` to rewrite the files; the
tests rebuild them in memory with :func:`build_vectors` and require the checked-in
bytes to be identical. See ``aip/README.md`` for the recipe.

Keys come from fixed seeds (SHA-256 of a label), times are fixed, and Ed25519
is deterministic, so compact tokens are reproduced exactly. A Biscuit token is
not: every block carries a fresh random ephemeral key. What each block *signs*
(its payload) is deterministic, so chained vectors record every block's source
and payload; a stored token is kept whenever a fresh build has the same
payloads, which makes a rerun reproduce the files byte for byte. Tampered
tokens are derived from the stored ones by a recorded character flip.

Every expectation below is written by hand, from the draft's rules, and the
generator refuses to write a vector whose outcome differs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import biscuit_auth as ba
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tallystick.verifier import aip
from tallystick.verifier._internal import aip_chained
from tallystick.verifier.errors import TallystickError
from tallystick.verifier.keys import PrivateKey, PublicKey

OUT_DIR = Path(__file__).resolve().parent / "aip"
FILES = ("compact.json", "chained.json")

ISSUED_AT = 1_800_000_000  # 2027-01-15T08:00:00Z
NOW = ISSUED_AT + 60
TTL = 3600


def seeded_key(label: str) -> PrivateKey:
    """The vector key named ``label``: its seed is SHA-256 of ``tallystick/aip-vectors/<label>``."""
    return PrivateKey.from_seed(hashlib.sha256(f"tallystick/aip-vectors/{label}".encode()).digest())


ISSUER = seeded_key("issuer")
OTHER = seeded_key("other")
AGENT_1 = seeded_key("agent-1")
AGENT_2 = seeded_key("agent-2")
ISSUER_ID = aip.key_identity(ISSUER.public_key)
AGENT_1_ID = aip.key_identity(AGENT_1.public_key)
AGENT_2_ID = aip.key_identity(AGENT_2.public_key)
LEAF_ID = "aip:web:example.com/agents/leaf"
PRINCIPAL = "aip:web:example.com/users/alice"


def flip(token: str, position: int) -> str:
    """``token`` with the character at ``position`` replaced by another base64url character."""
    replacement = "A" if token[position] != "A" else "B"
    return token[:position] + replacement + token[position + 1 :]


def biscuit_of(token: str, root: PublicKey) -> ba.Biscuit:
    """Parse (and verify) a chained token with biscuit-python directly."""
    return ba.Biscuit.from_base64(token, ba.PublicKey.from_bytes(root.raw, ba.Algorithm.Ed25519))


def forge_block(token: str, source: str, parameters: Mapping[str, Any]) -> str:
    """Append a first-party block built directly with biscuit-python, bypassing minting checks."""
    forged = biscuit_of(token, ISSUER.public_key).append(ba.BlockBuilder(source, dict(parameters)))
    return str(forged.to_base64())


def outcome(case: Mapping[str, Any]) -> dict[str, Any]:
    """What :func:`aip.verify` says about a vector, in the vectors' ``expect`` vocabulary."""
    try:
        result = aip.verify(
            case["token"],
            public_key=PublicKey.from_text(case["public_key"]),
            now=case["now"],
            tool=case.get("tool"),
            audience=case.get("audience"),
            require_authenticated_delegators=case.get("require_authenticated_delegators", False),
        )
    except TallystickError as exc:
        return {"valid": False, "code": exc.code, "step": exc.step}
    summary: dict[str, Any] = {
        "valid": True,
        "format": result.format,
        "issuer": result.issuer,
        "subject": result.subject,
        "scopes": list(result.scopes),
        "depth": result.depth,
        "max_depth": result.max_depth,
        "expires_at": result.expires_at,
    }
    for name in ("budget_usd", "budget_cents", "principal", "jti", "audience"):
        if getattr(result, name) is not None:
            summary[name] = getattr(result, name)
    if result.domains is not None:
        summary["domains"] = list(result.domains)
    if result.hops:
        summary["authenticated"] = [hop.authenticated for hop in result.hops]
    return summary


def _case(
    case_id: str,
    token: str,
    expect: dict[str, Any],
    *,
    key: PrivateKey = ISSUER,
    now: int = NOW,
    **options: Any,
) -> dict[str, Any]:
    case: dict[str, Any] = {
        "id": case_id,
        "token": token,
        "public_key": key.public_key.to_hex(),
        "now": now,
        **{name: value for name, value in options.items() if value is not None},
        "expect": expect,
    }
    got = outcome(case)
    mismatched = {name: got.get(name) for name in expect if got.get(name) != expect[name]}
    if mismatched:
        raise AssertionError(f"vector {case_id}: expected {expect}, verify says {got}")
    return case


def _reject(code: str, step: int | None) -> dict[str, Any]:
    return {"valid": False, "code": code, "step": step}


# -- compact ------------------------------------------------------------------------------------


def _compact_with(header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_key = Ed25519PrivateKey.from_private_bytes(ISSUER.seed())
    return jwt.encode(claims, signing_key, algorithm="EdDSA", headers=header)


def compact_cases() -> list[dict[str, Any]]:
    """Compact vectors: fully deterministic."""
    minimal = aip.issue_compact(
        key=ISSUER,
        subject="aip:web:example.com/agents/search",
        scopes=["tool:search"],
        issued_at=ISSUED_AT,
        ttl_s=TTL,
    )
    full = aip.issue_compact(
        key=ISSUER,
        subject=AGENT_1_ID,
        scopes=["tool:search", "files:*"],
        max_depth=2,
        budget_usd=12.5,
        issued_at=ISSUED_AT,
        ttl_s=TTL,
        audience="aip:web:tools.example.com",
        jti="vector-jti-0001",
    )
    claims = {
        "iss": ISSUER_ID,
        "sub": "aip:web:example.com/agents/search",
        "scope": ["tool:search"],
        "budget_usd": None,
        "max_depth": 0,
        "iat": ISSUED_AT,
        "exp": ISSUED_AT + TTL,
    }
    ok_minimal = {
        "valid": True,
        "format": "aip-compact",
        "issuer": ISSUER_ID,
        "scopes": ["tool:search"],
        "depth": 0,
        "max_depth": 0,
        "expires_at": ISSUED_AT + TTL,
    }
    return [
        _case("compact-minimal", minimal, ok_minimal, tool="tool:search"),
        _case("compact-minimal-no-tool", minimal, ok_minimal),
        _case("compact-minimal-last-second", minimal, ok_minimal, now=ISSUED_AT + TTL - 1),
        _case(
            "reject-compact-other-tool",
            minimal,
            _reject("aip.scope_insufficient", 6),
            tool="tool:email",
        ),
        _case(
            "reject-compact-expired", minimal, _reject("aip.token_expired", 4), now=ISSUED_AT + TTL
        ),
        _case(
            "reject-compact-not-yet-valid",
            minimal,
            _reject("aip.token_not_yet_valid", 4),
            now=ISSUED_AT - 1,
        ),
        _case("reject-compact-wrong-key", minimal, _reject("aip.signature_invalid", 1), key=OTHER),
        _case(
            "reject-compact-tampered-claims", flip(minimal, 60), _reject("aip.signature_invalid", 1)
        ),
        _case(
            "reject-compact-tampered-signature",
            flip(minimal, len(minimal) - 20),
            _reject("aip.signature_invalid", 1),
        ),
        _case(
            "compact-full",
            full,
            {
                "valid": True,
                "scopes": ["files:*", "tool:search"],
                "max_depth": 2,
                "budget_usd": 12.5,
                "jti": "vector-jti-0001",
                "audience": "aip:web:tools.example.com",
                "subject": AGENT_1_ID,
            },
            tool="files:read",
            audience="aip:web:tools.example.com",
        ),
        _case(
            "reject-compact-full-no-audience",
            full,
            _reject("aip.audience_mismatch", None),
            tool="files:read",
        ),
        _case(
            "reject-compact-full-other-audience",
            full,
            _reject("aip.audience_mismatch", None),
            audience="aip:web:other.example.com",
        ),
        _case(
            "reject-compact-typ-jwt",
            _compact_with({"typ": "JWT"}, claims),
            _reject("aip.token_malformed", 1),
        ),
        _case(
            "reject-compact-issuer-is-another-key",
            _compact_with(
                {"typ": "aip+jwt"}, {**claims, "iss": aip.key_identity(OTHER.public_key)}
            ),
            _reject("aip.identity_unresolvable", 2),
        ),
        _case(
            "reject-compact-duplicate-claim",
            _jws_with_payload(
                b'{"iss":"' + ISSUER_ID.encode() + b'","sub":"a","scope":["tool:search"],'
                b'"scope":["*"],"max_depth":0,"iat":1800000000,"exp":1800003600}'
            ),
            _reject("aip.token_malformed", 1),
        ),
    ]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jws_with_payload(payload: bytes) -> str:
    """A correctly signed aip+jwt over exactly ``payload`` (to carry JSON a dict cannot)."""
    signing_input = _b64url(b'{"alg":"EdDSA","typ":"aip+jwt"}') + "." + _b64url(payload)
    return signing_input + "." + _b64url(ISSUER.sign(signing_input.encode()))


# -- chained ------------------------------------------------------------------------------------


def _chains() -> dict[str, str]:
    """Fresh honest and forged chained tokens (random ephemeral keys), by vector id."""
    root = aip.issue_chained(
        key=ISSUER,
        scopes=["tool:search", "tool:email", "files:*"],
        max_depth=3,
        budget_cents=1000,
        issued_at=ISSUED_AT,
        ttl_s=TTL,
        principal=PRINCIPAL,
        domains=["example.com", "docs.example.com"],
    )
    depth1 = aip.delegate_chained(
        root,
        root_public_key=ISSUER.public_key,
        delegator=ISSUER_ID,
        delegate=AGENT_1_ID,
        scopes=["tool:search", "files:*"],
        context="research the quarterly report",
        budget_cents=500,
        principal=PRINCIPAL,
        domains=["example.com"],
    )
    depth2 = aip.delegate_chained(
        depth1,
        root_public_key=ISSUER.public_key,
        delegator_key=AGENT_1,
        delegate=AGENT_2_ID,
        scopes=["tool:search"],
        context="search for the revenue figures",
        budget_cents=200,
    )
    depth3 = aip.delegate_chained(
        depth2,
        root_public_key=ISSUER.public_key,
        delegator_key=AGENT_2,
        delegate=LEAF_ID,
        scopes=["tool:search"],
        context="one query for Q3 revenue",
    )
    authenticated = aip.delegate_chained(
        aip.delegate_chained(
            root,
            root_public_key=ISSUER.public_key,
            delegator_key=ISSUER,
            delegate=AGENT_1_ID,
            scopes=["tool:search"],
            context="authenticated hop 1",
        ),
        root_public_key=ISSUER.public_key,
        delegator_key=AGENT_1,
        delegate=AGENT_2_ID,
        scopes=["tool:search"],
        context="authenticated hop 2",
    )
    shallow = aip.issue_chained(
        key=ISSUER, scopes=["tool:search"], max_depth=1, issued_at=ISSUED_AT, ttl_s=TTL
    )
    hop = "delegator({a});\ndelegate({b});\ncontext({c});\ncheck if tool($t), {s}.contains($t);\n"
    shallow1 = forge_block(
        shallow, hop, {"a": ISSUER_ID, "b": AGENT_1_ID, "c": "hop 1", "s": ["tool:search"]}
    )
    return {
        "chained-depth0": root,
        "chained-depth1": depth1,
        "chained-depth2": depth2,
        "chained-depth3": depth3,
        "chained-authenticated-depth2": authenticated,
        "reject-chained-depth-over-max": forge_block(
            shallow1, hop, {"a": AGENT_1_ID, "b": AGENT_2_ID, "c": "hop 2", "s": ["tool:search"]}
        ),
        "reject-chained-widened-tools": forge_block(
            depth1, hop, {"a": AGENT_1_ID, "b": AGENT_2_ID, "c": "widen", "s": ["tool:email"]}
        ),
        "reject-chained-empty-context": forge_block(
            depth1, hop, {"a": AGENT_1_ID, "b": AGENT_2_ID, "c": " ", "s": ["tool:search"]}
        ),
    }


def _blocks(token: str) -> list[dict[str, str]]:
    raw = aip_chained.decode_token_text(token)
    biscuit = biscuit_of(token, ISSUER.public_key)
    return [
        {"source": biscuit.block_source(index), "payload": payload.hex()}
        for index, payload in enumerate(aip_chained.block_payloads(raw))
    ]


def _kept_tokens(stored: Mapping[str, str], fresh: Mapping[str, str]) -> dict[str, str]:
    """The stored token for each id whose blocks still match a fresh build, else the fresh one."""
    kept = {}
    for case_id, token in fresh.items():
        previous = stored.get(case_id)
        same = previous is not None and _blocks(previous) == _blocks(token)
        kept[case_id] = previous if same and previous is not None else token
    return kept


def chained_cases(stored: Mapping[str, str]) -> list[dict[str, Any]]:
    """Chained vectors, reusing ``stored`` tokens whose block payloads are unchanged."""
    tokens = _kept_tokens(stored, _chains())
    expiry = ISSUED_AT + TTL
    depth0 = {
        "valid": True,
        "format": "aip-chained",
        "issuer": ISSUER_ID,
        "subject": None,
        "scopes": ["files:*", "tool:email", "tool:search"],
        "depth": 0,
        "max_depth": 3,
        "expires_at": expiry,
        "budget_cents": 1000,
        "principal": PRINCIPAL,
        "domains": ["docs.example.com", "example.com"],
    }
    depth1 = {**depth0, "subject": AGENT_1_ID, "scopes": ["files:*", "tool:search"], "depth": 1}
    depth1 |= {"budget_cents": 500, "domains": ["example.com"], "authenticated": [False]}
    depth2 = {**depth1, "subject": AGENT_2_ID, "scopes": ["tool:search"], "depth": 2}
    depth2 |= {"budget_cents": 200, "authenticated": [False, True]}
    depth3 = {**depth2, "subject": LEAF_ID, "depth": 3, "authenticated": [False, True, True]}
    cases = [
        _case("chained-depth0", tokens["chained-depth0"], depth0, tool="tool:email"),
        _case("chained-depth1", tokens["chained-depth1"], depth1, tool="files:read"),
        _case("chained-depth2", tokens["chained-depth2"], depth2, tool="tool:search"),
        _case("chained-depth3", tokens["chained-depth3"], depth3, tool="tool:search"),
        _case(
            "chained-authenticated-depth2",
            tokens["chained-authenticated-depth2"],
            {"valid": True, "subject": AGENT_2_ID, "depth": 2, "authenticated": [True, True]},
            tool="tool:search",
            require_authenticated_delegators=True,
        ),
        _case(
            "reject-chained-depth2-unauthenticated",
            tokens["chained-depth2"],
            _reject("aip.delegator_unauthenticated", 2),
            require_authenticated_delegators=True,
        ),
        _case(
            "reject-chained-depth1-other-tool",
            tokens["chained-depth1"],
            _reject("aip.scope_insufficient", 6),
            tool="tool:email",
        ),
        _case(
            "reject-chained-depth3-other-tool",
            tokens["chained-depth3"],
            _reject("aip.scope_insufficient", 6),
            tool="files:read",
        ),
        _case(
            "reject-chained-depth0-expired",
            tokens["chained-depth0"],
            _reject("aip.token_expired", 4),
            now=expiry + 1,
        ),
        _case("chained-depth0-last-second", tokens["chained-depth0"], {"valid": True}, now=expiry),
        _case(
            "reject-chained-depth2-wrong-key",
            tokens["chained-depth2"],
            _reject("aip.signature_invalid", 1),
            key=OTHER,
        ),
        _case(
            "reject-chained-depth1-tampered",
            flip(tokens["chained-depth1"], 200),
            _reject("aip.signature_invalid", 1),
        ),
        _case(
            "reject-chained-depth-over-max",
            tokens["reject-chained-depth-over-max"],
            _reject("aip.depth_exceeded", 3),
        ),
        _case(
            "reject-chained-widened-tools",
            tokens["reject-chained-widened-tools"],
            _reject("aip.scope_insufficient", 4),
        ),
        _case(
            "reject-chained-empty-context",
            tokens["reject-chained-empty-context"],
            _reject("aip.token_malformed", 5),
        ),
    ]
    described: set[str] = set()
    for case in cases:  # each built token's blocks, recorded once, on its first vector
        if case["token"] in tokens.values() and case["token"] not in described:
            described.add(case["token"])
            case["blocks"] = _blocks(case["token"])
    return cases


# -- files --------------------------------------------------------------------------------------


def _render(cases: list[dict[str, Any]]) -> str:
    return json.dumps({"vectors": cases}, indent=2, ensure_ascii=False) + "\n"


def stored_chained_tokens(directory: Path = OUT_DIR) -> dict[str, str]:
    """Tokens of the checked-in chained vectors, by id (empty if there is no file yet)."""
    path = directory / "chained.json"
    if not path.exists():
        return {}
    return {case["id"]: case["token"] for case in json.loads(path.read_text())["vectors"]}


def build_vectors(directory: Path = OUT_DIR) -> dict[str, str]:
    """File name to file text for every vector file, reusing stored chained tokens."""
    return {
        "compact.json": _render(compact_cases()),
        "chained.json": _render(chained_cases(stored_chained_tokens(directory))),
    }


def main() -> int:
    OUT_DIR.mkdir(exist_ok=True)
    for name, text in build_vectors().items():
        (OUT_DIR / name).write_text(text)
        print(f"wrote {OUT_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
