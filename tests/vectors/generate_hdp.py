"""Deterministic generator of Tallystick's HDP golden vectors (tests/vectors/hdp/*.json).

Run ``.venv/bin/python tests/vectors/generate_hdp.py`` to rewrite the files; the
tests rebuild them in memory with :func:`build_vectors` and require the checked-in
bytes to be identical. Everything is fixed: RFC 8032 §7.1 seeds for the keys,
fixed token ids and fixed millisecond times, and Ed25519 signatures are
deterministic. The helpers here also build the tampered tokens the tests use.

Negative vectors are re-signed wherever the point is a structural fault, so
that only the named step can fail: a seq gap, for example, carries valid hop
signatures over the gap.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tallystick.verifier import hdp
from tallystick.verifier._internal.encoding import b64url_encode
from tallystick.verifier.canonical import canonicalize, join_canonical_array
from tallystick.verifier.keys import PrivateKey

OUT_DIR = Path(__file__).resolve().parent / "hdp"

#: RFC 8032 §7.1 secret keys: TEST 1 is the issuer, the others are agents.
ISSUER = PrivateKey.from_seed(
    bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
)
PLANNER = PrivateKey.from_seed(
    bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
)
RESEARCHER = PrivateKey.from_seed(
    bytes.fromhex("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7")
)
WRITER = PrivateKey.from_seed(
    bytes.fromhex("f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5")
)
AGENTS = {"planner": PLANNER, "researcher": RESEARCHER, "writer": WRITER}

PLAIN_TOKEN_ID = "6f1c2a3b-9d4e-4f5a-8b6c-7d8e9f0a1b2c"
PROFILE_TOKEN_ID = "9a8b7c6d-5e4f-4a3b-b2c1-d0e9f8a7b6c5"
ISSUED_AT_MS = 1_700_000_000_000
HOP_INTERVAL_MS = 1_000
AGENT_DOMAIN = "tallystick-hdp-hop/1"


def root(*, profile: bool = False, max_hops: int | None = None) -> hdp.HdpToken:
    """The fixed root token, plain or with the Tallystick profile binding AGENTS."""
    return hdp.issue_root(
        key=ISSUER,
        principal_id="alice@example.com",
        principal_id_type="email",
        session_id="golden-session",
        intent="Summarise the quarterly report",
        data_classification="internal",
        authorized_tools=["web_search", "file_reader"],
        max_hops=max_hops,
        issued_at_ms=ISSUED_AT_MS,
        ttl_ms=3_600_000,
        token_id=PROFILE_TOKEN_ID if profile else PLAIN_TOKEN_ID,
        profile=hdp.TallystickProfile.for_agents(
            {name: key.public_key for name, key in AGENTS.items()}
        )
        if profile
        else None,
    )


def chain(hops: int, *, profile: bool = False, max_hops: int | None = None) -> hdp.HdpToken:
    """A root plus ``hops`` hops; agents take turns, one second apart."""
    token = root(profile=profile, max_hops=max_hops)
    names = list(AGENTS)
    for index in range(hops):
        name = names[index % len(names)]
        token = hdp.extend(
            token,
            key=ISSUER,
            agent_id=name,
            agent_type="orchestrator" if index == 0 else "sub-agent",
            action_summary=f"hop {index + 1}: {name} continues the task",
            timestamp_ms=ISSUED_AT_MS + HOP_INTERVAL_MS * (index + 1),
            agent_key=AGENTS[name] if profile else None,
        )
    return token


# -- signing helpers for tampered tokens (draft-03 payloads, written out independently) --------


def sign_hop(data: dict[str, Any], index: int, key: PrivateKey) -> None:
    """Re-sign hop ``index`` (0-based) in place over its draft-03 cumulative payload."""
    hop = {name: value for name, value in data["chain"][index].items() if name != "hop_signature"}
    payload = [data["signature"]["value"], *data["chain"][:index], hop]
    data["chain"][index]["hop_signature"] = b64url_encode(key.sign(canonicalize(payload)))


def sign_hops_from(data: dict[str, Any], index: int, key: PrivateKey = ISSUER) -> None:
    """Re-sign hop ``index`` and every later hop, in order."""
    for position in range(index, len(data["chain"])):
        sign_hop(data, position, key)


def sign_root(data: dict[str, Any], key: PrivateKey) -> None:
    """Re-sign the root in place over the draft-03 root payload."""
    payload = {name: data[name] for name in ("hdp", "header", "principal", "scope")}
    payload["chain"] = []
    data["signature"]["value"] = b64url_encode(key.sign(canonicalize(payload)))


def sign_agent(data: dict[str, Any], index: int, key: PrivateKey, kid: str) -> None:
    """Set hop ``index``'s ``x-tallystick-agent`` to ``kid`` and ``key``'s signature.

    The payload is ``[domain, root_sig, *prefix, hop]`` with the hop lacking
    ``hop_signature`` and its agent member holding only ``kid``.
    """
    hop = {name: value for name, value in data["chain"][index].items() if name != "hop_signature"}
    hop["x-tallystick-agent"] = {"kid": kid}
    elements = [
        canonicalize(AGENT_DOMAIN),
        canonicalize(data["signature"]["value"]),
        *(canonicalize(earlier) for earlier in data["chain"][:index]),
        canonicalize(hop),
    ]
    signature = b64url_encode(key.sign(join_canonical_array(elements)))
    data["chain"][index]["x-tallystick-agent"] = {"kid": kid, "sig": signature}


def sign_legacy_root(data: dict[str, Any], key: PrivateKey) -> None:
    """Re-sign the root in place with the SDK 0.1.x payload, as 0.1.x wrote it (hdp.md §3)."""
    root_payload = {name: data[name] for name in ("header", "principal", "scope")}
    data["signature"]["value"] = b64url_encode(key.sign(canonicalize(root_payload)))
    data["signature"]["signed_fields"] = ["header", "principal", "scope"]


def sign_legacy_hops(data: dict[str, Any], key: PrivateKey) -> None:
    """Re-sign every hop in place with the SDK 0.1.x payload ``{chain, root_sig}``."""
    for index, hop in enumerate(data["chain"]):
        unsigned = {name: value for name, value in hop.items() if name != "hop_signature"}
        payload = {
            "chain": [*data["chain"][:index], unsigned],
            "root_sig": data["signature"]["value"],
        }
        hop["hop_signature"] = b64url_encode(key.sign(canonicalize(payload)))


# -- the negative cases ------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _extra_member(data: dict[str, Any]) -> None:
    data["audit_note"] = "unsigned"


def _unsupported_version(data: dict[str, Any]) -> None:
    data["hdp"] = "0.2"


def _version_mismatch(data: dict[str, Any]) -> None:
    data["header"]["version"] = "0.2"


def _root_wrong_key(data: dict[str, Any]) -> None:
    sign_root(data, PLANNER)
    sign_hops_from(data, 0)


def _seq_gap(data: dict[str, Any]) -> None:
    data["chain"][2]["seq"] = 4
    sign_hops_from(data, 2)


def _parent_hop_not_earlier(data: dict[str, Any]) -> None:
    data["chain"][1]["parent_hop"] = 2
    sign_hops_from(data, 1)


def _timestamp_decreases(data: dict[str, Any]) -> None:
    data["chain"][2]["timestamp"] = data["chain"][1]["timestamp"] - 1
    sign_hops_from(data, 2)


def _tampered_hop(data: dict[str, Any]) -> None:
    data["chain"][1]["action_summary"] = "hop 2: wire the funds"


def _hop_signed_by_agent_key(data: dict[str, Any]) -> None:
    sign_hop(data, 2, PLANNER)


def _hop_signed_by_its_agent(data: dict[str, Any]) -> None:
    sign_hop(data, 2, WRITER)  # hop 3 is the writer's


def _kid_changed(data: dict[str, Any]) -> None:
    data["signature"]["kid"] = PLANNER.kid


def _agent_unbound(data: dict[str, Any]) -> None:
    data["chain"][1]["agent_id"] = "mallory"
    sign_hops_from(data, 1)


def _agent_wrong_key(data: dict[str, Any]) -> None:
    sign_agent(data, 1, WRITER, RESEARCHER.kid)  # claims the researcher, signed by the writer
    sign_hops_from(data, 1)


def _agent_signature_removed(data: dict[str, Any]) -> None:
    del data["chain"][1]["x-tallystick-agent"]
    sign_hops_from(data, 1)


#: name -> (description, profile?, mutation, failed step, our code); draft-03 class from the code.
NEGATIVE_CASES: dict[str, tuple[str, bool, Mutation, int, str]] = {
    "extra-member": ("an extra top-level member", False, _extra_member, 0, "hdp.schema_invalid"),
    "unsupported-version": (
        'hdp = "0.2"',
        False,
        _unsupported_version,
        1,
        "hdp.unsupported_version",
    ),
    "version-mismatch": (
        'header.version = "0.2"',
        False,
        _version_mismatch,
        1,
        "hdp.version_mismatch",
    ),
    "root-wrong-key": (
        "root signed by another key (hops re-signed over it by the issuer)",
        False,
        _root_wrong_key,
        2,
        "hdp.signature_invalid",
    ),
    "seq-gap": ("hop 3 has seq 4 (re-signed)", False, _seq_gap, 3, "hdp.chain_integrity"),
    "parent-hop-not-earlier": (
        "hop 2 has parent_hop 2 (re-signed)",
        False,
        _parent_hop_not_earlier,
        3,
        "hdp.chain_integrity",
    ),
    "timestamp-decreases": (
        "hop 3 is 1 ms older than hop 2 (re-signed)",
        False,
        _timestamp_decreases,
        3,
        "hdp.chain_integrity",
    ),
    "tampered-hop": (
        "hop 2 action_summary edited after signing",
        False,
        _tampered_hop,
        4,
        "hdp.signature_invalid",
    ),
    "hop-signed-by-agent-key": (
        "hop 3 hop_signature made with an agent's key instead of the issuer's",
        False,
        _hop_signed_by_agent_key,
        4,
        "hdp.signature_invalid",
    ),
    "profile-hop-signed-by-agent-key": (
        "profile chain; hop 3 hop_signature made with the bound agent's own key",
        True,
        _hop_signed_by_its_agent,
        4,
        "hdp.signature_invalid",
    ),
}

#: Profile weaknesses: valid for any draft-03 verifier, rejected by the profile at step 6.
PROFILE_CASES: dict[str, tuple[str, Mutation, str]] = {
    "kid-changed": (
        "signature.kid edited (unsigned in plain HDP)",
        _kid_changed,
        "hdp.kid_mismatch",
    ),
    "agent-unbound": (
        "hop 2 agent_id rewritten to an unbound agent by the issuer key holder",
        _agent_unbound,
        "hdp.agent_not_bound",
    ),
    "agent-wrong-key": (
        "hop 2 agent signature claims the researcher's kid but is made by the writer's key",
        _agent_wrong_key,
        "hdp.agent_signature_invalid",
    ),
    "agent-signature-removed": (
        "hop 2 agent signature removed, hop re-signed by the issuer",
        _agent_signature_removed,
        "hdp.agent_signature_missing",
    ),
}


def mutated(token: hdp.HdpToken, mutation: Mutation) -> dict[str, Any]:
    """A deep copy of ``token`` as a dict with ``mutation`` applied."""
    data = token.to_dict()
    mutation(data)
    return data


def max_hops_exceeded() -> dict[str, Any]:
    """``max_hops`` 2 with three properly signed hops (extend refuses a third)."""
    data = chain(2, max_hops=2).to_dict()
    data["chain"].append({**data["chain"][1], "seq": 3, "parent_hop": 2})
    sign_hop(data, 2, ISSUER)
    return data


def truncated() -> tuple[dict[str, Any], hdp.HeadCommitment]:
    """The 10-hop chain cut to 3 hops, and the head anchored for the full chain."""
    full = chain(10)
    data = full.to_dict()
    del data["chain"][3:]
    return data, hdp.head_commitment(full)


# -- single-member mutations, for the property tests -------------------------------------------

Path_ = tuple[str | int, ...]


def mutation_sites(value: Any, path: Path_ = ()) -> list[tuple[Path_, str]]:
    """Every single mutation of a token: edit each string, int and bool leaf, drop each member.

    Kinds: ``edit`` (string + "x", int + 1, bool negated), ``flip`` (first character of a
    signature changed) and ``drop`` (object member removed).
    """
    sites: list[tuple[Path_, str]] = []
    if isinstance(value, dict):
        for name, item in value.items():
            sites.append(((*path, name), "drop"))
            sites.extend(mutation_sites(item, (*path, name)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            sites.extend(mutation_sites(item, (*path, index)))
    elif path and path[-1] in ("value", "hop_signature", "sig") and isinstance(value, str):
        sites.append((path, "flip"))
    elif isinstance(value, str | int):
        sites.append((path, "edit"))
    return sites


def apply_site(data: dict[str, Any], path: Path_, kind: str) -> dict[str, Any]:
    """A deep copy of ``data`` with one mutation from :func:`mutation_sites` applied."""
    copied = json.loads(json.dumps(data))
    parent = copied
    for step in path[:-1]:
        parent = parent[step]
    leaf = path[-1]
    value = parent[leaf]
    if kind == "drop":
        del parent[leaf]
    elif kind == "flip":
        parent[leaf] = ("B" if value[0] == "A" else "A") + value[1:]
    elif isinstance(value, bool):
        parent[leaf] = not value
    elif isinstance(value, int):
        parent[leaf] = value + 1
    else:
        parent[leaf] = value + "x"
    return copied


def site_id(path: Path_, kind: str) -> str:
    """A readable test id for a mutation site."""
    return kind + ":" + ".".join(str(step) for step in path)


def apply_outcome_mutation(token: dict[str, Any], mutation: dict[str, Any] | None) -> Any:
    """Apply one ``expected-outcomes.json`` mutation (``set``, ``add_top_level``, ``raw_text``)."""
    if mutation is None:
        return json.loads(json.dumps(token))
    if mutation["op"] == "raw_text":
        return mutation["text"]
    copied = json.loads(json.dumps(token))
    if mutation["op"] == "add_top_level":
        copied[mutation["key"]] = mutation["value"]
        return copied
    assert mutation["op"] == "set", mutation
    parent = copied
    for step in mutation["path"][:-1]:
        parent = parent[step]
    parent[mutation["path"][-1]] = mutation["value"]
    return copied


# -- vector files ------------------------------------------------------------------------------


def _expected(valid: bool, step: int | None = None, code: str | None = None) -> dict[str, Any]:
    return {
        "valid": valid,
        "failed_step": step,
        "error_class": None if code is None else hdp.error_class(code),
        "code": code,
    }


def _vector(
    description: str,
    token: dict[str, Any],
    expected: dict[str, Any],
    expected_draft03: dict[str, Any] | None = None,
) -> dict[str, Any]:
    plain = expected_draft03 if expected_draft03 is not None else expected
    return {
        "description": description,
        "public_key_hex": ISSUER.public_key.to_hex(),
        "token": token,
        "expected": expected,
        "expected_draft03": {name: plain[name] for name in ("valid", "failed_step", "error_class")},
    }


def build_vectors() -> dict[str, dict[str, Any]]:
    """Every golden vector, by file name."""
    vectors: dict[str, dict[str, Any]] = {}
    for hops in (1, 3, 10):
        vectors[f"plain-{hops}-hops.json"] = _vector(
            f"valid plain draft-03 chain with {hops} hops", chain(hops).to_dict(), _expected(True)
        )
        vectors[f"profile-{hops}-hops.json"] = _vector(
            f"valid tallystick-hdp/1 chain with {hops} hops (plain verifiers accept it too)",
            chain(hops, profile=True).to_dict(),
            _expected(True),
        )
    for name, (description, profile, mutation, step, code) in NEGATIVE_CASES.items():
        data = mutated(chain(3, profile=profile), mutation)
        vectors[f"reject-{name}.json"] = _vector(description, data, _expected(False, step, code))
    vectors["reject-max-hops-exceeded.json"] = _vector(
        "max_hops 2 with 3 properly signed hops",
        max_hops_exceeded(),
        _expected(False, 5, "hdp.max_hops_exceeded"),
    )
    for name, (description, mutation, code) in PROFILE_CASES.items():
        data = mutated(chain(3, profile=True), mutation)
        vectors[f"profile-reject-{name}.json"] = _vector(
            f"profile chain: {description}", data, _expected(False, 6, code), _expected(True)
        )
    data, head = truncated()
    vector = _vector(
        "the 10-hop plain chain cut to 3 hops: valid (HDP weakness 3) until checked against "
        "the anchored head of the full chain",
        data,
        _expected(True),
    )
    vector["anchored_head"] = head.to_dict()
    vector["expected_anchored"] = _expected(False, 6, "hdp.truncated")
    vectors["weak-truncated.json"] = vector
    return vectors


def render(vector: dict[str, Any]) -> str:
    """The exact text of a vector file."""
    return json.dumps(vector, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    """Rewrite tests/vectors/hdp/*.json (README.md is kept)."""
    OUT_DIR.mkdir(exist_ok=True)
    vectors = build_vectors()
    for stale in OUT_DIR.glob("*.json"):
        if stale.name not in vectors:
            stale.unlink()
    for name, vector in vectors.items():
        (OUT_DIR / name).write_text(render(vector), encoding="utf-8")
    print(f"wrote {len(vectors)} vectors to {OUT_DIR}", file=sys.stderr)


if __name__ == "__main__":
    main()
