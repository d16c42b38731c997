"""HDP (Human Delegation Provenance) tokens: parse, issue, extend, verify and audit.

Wire-compatible with draft-helixar-hdp-agentic-delegation-03 and its Python
reference, hdp-autogen 0.2.0 (hdp.md): :func:`verify` runs draft-03 steps 0-5
in order and the first failure wins; every rejection carries ``code`` and
``step``. Tokens from SDK 0.1.x verify only with ``accept_legacy_hdp01=True``.

Plain HDP has three gaps (hdp.md §9): one issuer key signs every hop, so
``agent_id`` is a claim; ``signature.kid`` is unsigned; and a truncated chain
still verifies. The opt-in Tallystick profile (``tallystick-hdp/1``) closes
them without breaking plain verifiers, which still accept profile tokens:

- the root's ``scope.extensions["x-tallystick"]`` (covered by the root
  signature) names the issuer's key id and binds each agent id to its key;
- each hop carries ``"x-tallystick-agent": {"kid", "sig"}``, the agent key's
  signature over the domain-separated cumulative payload; the issuer's
  ``hop_signature`` then covers the hop including it;
- :func:`head_commitment` is what a log anchors; ``verify(...,
  anchored_head=...)`` rejects a chain cut short of it.

Those checks run after step 5, as step 6.

Example::

    token = issue_root(key=issuer, principal_id="alice", session_id="s1",
                       intent="summarise", issued_at_ms=now_ms)
    token = extend(token, key=issuer, agent_id="planner", action_summary="plan",
                   timestamp_ms=now_ms)
    verified = verify(token.to_json(), public_key=issuer.public_key)
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from ._internal.encoding import b64url_decode, b64url_encode
from ._internal.hdp_schema import SCHEMA_INVALID as _SCHEMA_INVALID
from ._internal.hdp_schema import fail, json_copy, validate_token
from .canonical import canonicalize, join_canonical_array, parse_json
from .errors import (
    ChainBroken,
    DepthExceeded,
    IdentityUnresolvable,
    MalformedInput,
    PolicyViolation,
    SignatureInvalid,
    TallystickError,
    UnsupportedVersion,
)
from .keys import PrivateKey, PublicKey

__all__ = [
    "HDP_VERSION",
    "HEADER_NAME",
    "LEGACY_HEADER_NAME",
    "PROFILE_ID",
    "REF_HEADER_NAME",
    "AgentBinding",
    "AuditReport",
    "Generation",
    "HdpToken",
    "HeadCommitment",
    "ProfileMode",
    "TallystickProfile",
    "VerifiedHdp",
    "audit",
    "error_class",
    "extend",
    "head_commitment",
    "issue_root",
    "verify",
]

#: The ``hdp`` member in every generation (hdp.md §1).
HDP_VERSION: Final = "0.1"
#: Header names: -02 and later emit ``HDP-Token``; -00/-01 used ``X-HDP-Token`` (hdp.md §8).
HEADER_NAME: Final = "HDP-Token"
LEGACY_HEADER_NAME: Final = "X-HDP-Token"
REF_HEADER_NAME: Final = "HDP-Token-Ref"
#: The Tallystick profile identifier, inside ``scope.extensions["x-tallystick"]``.
PROFILE_ID: Final = "tallystick-hdp/1"

_ALG = "Ed25519"
_DEFAULT_TTL_MS = 86_400_000  # 24 h, the reference default
_AGENT_TYPES = frozenset({"orchestrator", "sub-agent", "tool-executor", "custom"})
_PROFILE_EXTENSION = "x-tallystick"
_AGENT_MEMBER = "x-tallystick-agent"
# First element of every agent-signed payload, so an agent signature can never
# be replayed as an issuer hop signature or any other Tallystick signature.
_AGENT_DOMAIN = canonicalize("tallystick-hdp-hop/1")
_DRAFT03: Final = "draft-03"
_LEGACY: Final = "sdk-0.1"
_LEGACY_FINDING = "legacy 0.1.x payload accepted"
_HEAD = re.compile(r"sha256:[A-Za-z0-9_-]{43}")
_SIGNATURE_TEXT = re.compile(r"[A-Za-z0-9_-]{86}")
# Base64url characters whose low four bits are zero: the canonical last
# character of an 86-character (64-byte) value.
_CANONICAL_LAST_CHARACTERS = frozenset("AQgw")

_UNSUPPORTED_VERSION = "hdp.unsupported_version"
_VERSION_MISMATCH = "hdp.version_mismatch"
_SIGNATURE_INVALID = "hdp.signature_invalid"
_CHAIN_INTEGRITY = "hdp.chain_integrity"
_MAX_HOPS_EXCEEDED = "hdp.max_hops_exceeded"
_PROFILE_MISSING = "hdp.profile_missing"
_PROFILE_INVALID = "hdp.profile_invalid"
_KID_MISMATCH = "hdp.kid_mismatch"
_AGENT_NOT_BOUND = "hdp.agent_not_bound"
_AGENT_SIGNATURE_MISSING = "hdp.agent_signature_missing"
_AGENT_SIGNATURE_INVALID = "hdp.agent_signature_invalid"
_TRUNCATED = "hdp.truncated"
_ANCHOR_MISMATCH = "hdp.anchor_mismatch"
_HEAD_INVALID = "hdp.head_invalid"
_OPTION_INVALID = "hdp.option_invalid"
_HEADER_MISSING = "hdp.header_missing"

#: Our codes for draft-03 steps 0-5, mapped to the draft-03 error classes (hdp.md §4).
_ERROR_CLASSES: Final = {
    _SCHEMA_INVALID: "SCHEMA_INVALID",
    _UNSUPPORTED_VERSION: "UNSUPPORTED_VERSION",
    _VERSION_MISMATCH: "VERSION_MISMATCH",
    _SIGNATURE_INVALID: "SIGNATURE_INVALID",
    _CHAIN_INTEGRITY: "CHAIN_INTEGRITY",
    _MAX_HOPS_EXCEEDED: "MAX_HOPS_EXCEEDED",
}

Generation = Literal["draft-03", "sdk-0.1"]
ProfileMode = Literal["auto", "require", "off"]


def error_class(code: str) -> str | None:
    """The draft-03 error class of one of our codes (``"SCHEMA_INVALID"`` ...).

    Returns ``None`` for codes draft-03 has no class for (the step-6 profile checks).
    """
    return _ERROR_CLASSES.get(code)


# -- the token ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False, slots=True)
class HdpToken:
    """An HDP token that passed step 0. ``__init__`` is private: use the ``from_*`` constructors."""

    _data: dict[str, Any]

    @classmethod
    def from_json(cls, raw: str | bytes) -> HdpToken:
        """Parse JSON text strictly, then check step 0.

        :raises MalformedInput: code ``hdp.schema_invalid``, step 0.
        """
        try:
            data = parse_json(raw)
        except MalformedInput as exc:
            raise MalformedInput(f"hdp token: {exc}", code=_SCHEMA_INVALID, step=0) from exc
        return cls(validate_token(data))

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> HdpToken:
        """Copy a JSON-shaped mapping, then check step 0.

        :raises MalformedInput: code ``hdp.schema_invalid``, step 0.
        """
        if not isinstance(obj, Mapping):
            fail("token must be a JSON object")
        return cls(validate_token(json_copy(dict(obj))))

    @classmethod
    def from_header(cls, value: str) -> HdpToken:
        """Decode an ``HDP-Token`` / ``X-HDP-Token`` header value (base64url of the JSON text).

        :raises MalformedInput: code ``hdp.schema_invalid``, step 0.
        """
        if not isinstance(value, str):
            fail("header value must be text")
        try:
            text = b64url_decode(value.strip().rstrip("="), what="hdp header")
        except MalformedInput as exc:
            raise MalformedInput(f"hdp token: {exc}", code=_SCHEMA_INVALID, step=0) from exc
        return cls.from_json(text)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> HdpToken:
        """The token in ``HDP-Token`` or ``X-HDP-Token`` (names compared case-insensitively).

        :raises MalformedInput: code ``hdp.header_missing`` when neither is present;
            ``hdp.schema_invalid`` (step 0) when the value is bad or the two differ.
        """
        wanted = {HEADER_NAME.lower(), LEGACY_HEADER_NAME.lower()}
        values = {value for name, value in headers.items() if name.lower() in wanted}
        if not values:
            raise MalformedInput("hdp token: no HDP-Token header", code=_HEADER_MISSING)
        if len(values) > 1:
            fail("HDP-Token and X-HDP-Token headers differ")
        return cls.from_header(values.pop())

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the token as plain JSON-shaped Python objects."""
        copied: dict[str, Any] = json_copy(self._data)
        return copied

    def to_json(self) -> str:
        """The token as RFC 8785 canonical JSON text."""
        return canonicalize(self._data).decode("utf-8")

    def to_header(self) -> str:
        """The ``HDP-Token`` header value: unpadded base64url of the canonical JSON."""
        return b64url_encode(canonicalize(self._data))

    def to_headers(self) -> dict[str, str]:
        """``HDP-Token`` and ``HDP-Token-Ref`` (the content reference), the -02 names."""
        return {HEADER_NAME: self.to_header(), REF_HEADER_NAME: self.reference()}

    def reference(self) -> str:
        """The content reference ``sha256:<b64url of SHA-256(JCS(token))>`` (hdp.md §8)."""
        return _sha256_ref(canonicalize(self._data))

    def matches_reference(self, ref: str) -> bool:
        """True when ``ref`` (an ``HDP-Token-Ref`` value) names this token by UUID or content."""
        return ref.lower() == self.token_id.lower() or ref == self.reference()

    @property
    def token_id(self) -> str:
        """``header.token_id``."""
        value: str = self._data["header"]["token_id"]
        return value

    @property
    def session_id(self) -> str:
        """``header.session_id``."""
        value: str = self._data["header"]["session_id"]
        return value

    @property
    def issued_at_ms(self) -> int:
        """``header.issued_at``, milliseconds since the epoch."""
        value: int = self._data["header"]["issued_at"]
        return value

    @property
    def expires_at_ms(self) -> int:
        """``header.expires_at``, milliseconds since the epoch."""
        value: int = self._data["header"]["expires_at"]
        return value

    @property
    def parent_token_id(self) -> str | None:
        """``header.parent_token_id``, the token this one supersedes, if any."""
        value: str | None = self._data["header"].get("parent_token_id")
        return value

    @property
    def kid(self) -> str:
        """``signature.kid``. Unsigned in plain HDP: never pick a key by it alone."""
        value: str = self._data["signature"]["kid"]
        return value

    @property
    def max_hops(self) -> int | None:
        """``scope.max_hops``, if set."""
        value: int | None = self._data["scope"].get("max_hops")
        return value

    @property
    def hop_count(self) -> int:
        """Number of hops in ``chain``."""
        return len(self._data["chain"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HdpToken):
            return NotImplemented
        return canonicalize(self._data) == canonicalize(other._data)

    def __hash__(self) -> int:
        return hash(canonicalize(self._data))

    def __repr__(self) -> str:
        return f"HdpToken(token_id={self.token_id!r}, hop_count={self.hop_count})"


def _as_token(token: HdpToken | str | bytes | Mapping[str, Any]) -> HdpToken:
    if isinstance(token, HdpToken):
        return token
    if isinstance(token, str | bytes | bytearray):
        return HdpToken.from_json(bytes(token) if isinstance(token, bytearray) else token)
    if isinstance(token, Mapping):
        return HdpToken.from_dict(token)
    fail("token must be an HdpToken, JSON text or a mapping")


def _sha256_ref(data: bytes) -> str:
    return "sha256:" + b64url_encode(hashlib.sha256(data).digest())


# -- the Tallystick profile --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentBinding:
    """One agent id bound to the key that must co-sign its hops."""

    agent_id: str
    public_key: PublicKey

    @property
    def kid(self) -> str:
        """The agent key's key id."""
        return self.public_key.kid


@dataclass(frozen=True, slots=True)
class TallystickProfile:
    """Opt-in ``tallystick-hdp/1`` issuance: the agents allowed to sign hops, with their keys.

    :raises MalformedInput: duplicate agent ids (code ``hdp.profile_invalid``).
    """

    agents: tuple[AgentBinding, ...] = ()

    def __post_init__(self) -> None:
        ids = [agent.agent_id for agent in self.agents]
        if len(set(ids)) != len(ids):
            raise MalformedInput("tallystick profile: duplicate agent id", code=_PROFILE_INVALID)

    @classmethod
    def for_agents(cls, agents: Mapping[str, PublicKey]) -> TallystickProfile:
        """A profile binding each agent id to its public key."""
        return cls(tuple(AgentBinding(agent_id, key) for agent_id, key in agents.items()))

    def _extension(self, issuer_kid: str) -> dict[str, Any]:
        return {
            "profile": PROFILE_ID,
            "issuer_kid": issuer_kid,
            "agents": [
                {"agent_id": agent.agent_id, "kid": agent.kid, "pub": agent.public_key.to_b64url()}
                for agent in self.agents
            ],
        }


@dataclass(frozen=True, slots=True)
class _ProfileClaims:
    issuer_kid: str
    agents: dict[str, AgentBinding]


def _profile_invalid(message: str) -> MalformedInput:
    return MalformedInput(f"tallystick profile: {message}", code=_PROFILE_INVALID, step=6)


def _profile_claims(data: dict[str, Any]) -> _ProfileClaims | None:
    """The signed profile claims of a token, or ``None`` when it carries none."""
    extensions = data["scope"].get("extensions")
    if extensions is None or _PROFILE_EXTENSION not in extensions:
        return None
    claims = extensions[_PROFILE_EXTENSION]
    if not isinstance(claims, dict) or claims.keys() != {"profile", "issuer_kid", "agents"}:
        raise _profile_invalid("x-tallystick must hold exactly profile, issuer_kid and agents")
    if claims["profile"] != PROFILE_ID:
        raise _profile_invalid(f"unknown profile {claims['profile']!r}")
    if not isinstance(claims["issuer_kid"], str) or not isinstance(claims["agents"], list):
        raise _profile_invalid("issuer_kid must be a string and agents an array")
    agents: dict[str, AgentBinding] = {}
    for entry in claims["agents"]:
        if not isinstance(entry, dict) or entry.keys() != {"agent_id", "kid", "pub"}:
            raise _profile_invalid("each agent must hold exactly agent_id, kid and pub")
        agent_id, kid, pub = entry["agent_id"], entry["kid"], entry["pub"]
        if not isinstance(agent_id, str) or agent_id in agents or not isinstance(pub, str):
            raise _profile_invalid("agent ids must be distinct strings")
        try:
            public_key = PublicKey.from_raw(b64url_decode(pub, what="agent key"))
        except MalformedInput as exc:
            raise _profile_invalid(f"agent {agent_id!r}: {exc}") from exc
        if kid != public_key.kid:
            raise _profile_invalid(f"agent {agent_id!r}: kid does not match its key")
        agents[agent_id] = AgentBinding(agent_id, public_key)
    return _ProfileClaims(claims["issuer_kid"], agents)


def _agent_payload(elements: Sequence[bytes], hop: dict[str, Any], agent_kid: str) -> bytes:
    """What an agent signs: ``[domain, root_sig, *prefix, hop]``, the hop without
    ``hop_signature`` and with only ``kid`` in its agent member."""
    unsigned = {name: value for name, value in hop.items() if name != "hop_signature"}
    unsigned[_AGENT_MEMBER] = {"kid": agent_kid}
    return join_canonical_array([_AGENT_DOMAIN, *elements, canonicalize(unsigned)])


def _check_profile(
    data: dict[str, Any], claims: _ProfileClaims, public_key: PublicKey, elements: list[bytes]
) -> None:
    """Step 6: the signed issuer kid, and every hop co-signed by its bound agent."""
    for where, kid in (
        ("signature.kid", data["signature"]["kid"]),
        ("issuer_kid", claims.issuer_kid),
    ):
        if kid != public_key.kid:
            raise IdentityUnresolvable(
                f"tallystick profile: {where} {kid!r} is not the verifying key's {public_key.kid}",
                code=_KID_MISMATCH,
                step=6,
            )
    for index, hop in enumerate(data["chain"]):
        seq = index + 1
        member = hop.get(_AGENT_MEMBER)
        if member is None:
            raise SignatureInvalid(
                f"tallystick profile: hop {seq} carries no agent signature",
                code=_AGENT_SIGNATURE_MISSING,
                step=6,
            )
        if (
            not isinstance(member, dict)
            or member.keys() != {"kid", "sig"}
            or not isinstance(member["sig"], str)
            or _SIGNATURE_TEXT.fullmatch(member["sig"]) is None
        ):
            raise _profile_invalid(f"hop {seq}: {_AGENT_MEMBER} must hold kid and an 86-char sig")
        binding = claims.agents.get(hop["agent_id"])
        if binding is None or member["kid"] != binding.kid:
            raise IdentityUnresolvable(
                f"tallystick profile: hop {seq} agent {hop['agent_id']!r} is not bound to key "
                f"{member['kid']!r}",
                code=_AGENT_NOT_BOUND,
                step=6,
            )
        payload = _agent_payload(elements[: index + 1], hop, binding.kid)
        if not _signature_ok(binding.public_key, member["sig"], payload):
            raise SignatureInvalid(
                f"tallystick profile: hop {seq} agent signature does not verify",
                code=_AGENT_SIGNATURE_INVALID,
                step=6,
            )


# -- chain completeness ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeadCommitment:
    """What a log anchors for a chain: its token, hop count and head digest.

    ``head`` is ``sha256:`` + base64url of SHA-256 over ``JCS([root_sig, *chain])``.

    :raises MalformedInput: a field of the wrong form (code ``hdp.head_invalid``).
    """

    token_id: str
    hop_count: int
    head: str

    def __post_init__(self) -> None:
        if (
            not isinstance(self.token_id, str)
            or type(self.hop_count) is not int
            or self.hop_count < 0
            or not isinstance(self.head, str)
            or _HEAD.fullmatch(self.head) is None
        ):
            raise MalformedInput("hdp head commitment: malformed", code=_HEAD_INVALID)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> HeadCommitment:
        """From ``{"token_id", "hop_count", "head"}``.

        :raises MalformedInput: code ``hdp.head_invalid``.
        """
        if not isinstance(obj, Mapping) or set(obj) != {"token_id", "hop_count", "head"}:
            raise MalformedInput("hdp head commitment: wrong members", code=_HEAD_INVALID)
        return cls(obj["token_id"], obj["hop_count"], obj["head"])

    def to_dict(self) -> dict[str, Any]:
        """``{"token_id", "hop_count", "head"}``."""
        return {"token_id": self.token_id, "hop_count": self.hop_count, "head": self.head}


def head_commitment(token: HdpToken) -> HeadCommitment:
    """The head commitment of ``token`` as it stands (verify it first)."""
    return HeadCommitment(token.token_id, token.hop_count, _head(_chain_elements(token._data)))


def _head(elements: Sequence[bytes]) -> str:
    return _sha256_ref(join_canonical_array(elements))


def _chain_elements(data: dict[str, Any]) -> list[bytes]:
    """Canonical ``[root_sig, hop_1, ..., hop_n]``, each hop with its signature."""
    return [canonicalize(data["signature"]["value"]), *map(canonicalize, data["chain"])]


def _check_anchor(token: HdpToken, anchored: HeadCommitment, elements: list[bytes]) -> str | None:
    """Step 6: the chain reaches the anchored head; a finding when it goes past it."""
    if anchored.token_id.lower() != token.token_id.lower():
        raise ChainBroken(
            "hdp anchor: anchored head is for another token", code=_ANCHOR_MISMATCH, step=6
        )
    if token.hop_count < anchored.hop_count:
        raise ChainBroken(
            f"hdp anchor: chain has {token.hop_count} hops, {anchored.hop_count} were anchored",
            code=_TRUNCATED,
            step=6,
            hop=token.hop_count + 1,
        )
    if _head(elements[: anchored.hop_count + 1]) != anchored.head:
        raise ChainBroken(
            f"hdp anchor: first {anchored.hop_count} hops differ from the anchored head",
            code=_TRUNCATED,
            step=6,
            hop=anchored.hop_count,
        )
    if token.hop_count > anchored.hop_count:
        return (
            f"chain extends past the anchored head ({anchored.hop_count} of {token.hop_count} hops)"
        )
    return None


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedHdp:
    """A token that passed verification, and how."""

    token: HdpToken
    generation: Generation
    hop_count: int
    profile_verified: bool
    findings: tuple[str, ...] = ()


def _root_payload(data: dict[str, Any], generation: Generation) -> bytes:
    if generation == _LEGACY:
        return canonicalize({name: data[name] for name in ("header", "principal", "scope")})
    payload = {name: data[name] for name in ("hdp", "header", "principal", "scope")}
    payload["chain"] = []
    return canonicalize(payload)


def _hop_payload(elements: Sequence[bytes], unsigned_hop: bytes, generation: Generation) -> bytes:
    """Hop signing bytes: ``JCS([root_sig, *prefix, cur])``, or
    ``JCS({"chain": [*prefix, cur], "root_sig": root_sig})`` for SDK 0.1.x (hdp.md §3)."""
    if generation == _LEGACY:
        chain = join_canonical_array([*elements[1:], unsigned_hop])
        return b'{"chain":' + chain + b',"root_sig":' + elements[0] + b"}"
    return join_canonical_array([*elements, unsigned_hop])


def _hop_forms(hop: dict[str, Any]) -> tuple[bytes, bytes]:
    """Canonical bytes of a hop with and without ``hop_signature``, canonicalising once.

    In canonical order ``hop_signature`` is always followed by ``parent_hop``
    (required at step 0), so the member is the exact text below; when that text
    occurs once it can only be the top-level member, and cutting it out yields
    the canonical hop without it.
    """
    full = canonicalize(hop)
    member = b'"hop_signature":"' + hop["hop_signature"].encode("ascii") + b'",'
    if full.count(member) == 1:
        return full, full.replace(member, b"", 1)
    unsigned = {name: value for name, value in hop.items() if name != "hop_signature"}
    return full, canonicalize(unsigned)


def _signature_ok(public_key: PublicKey, text: str, message: bytes) -> bool:
    """Check a signature given as 86 base64url characters (as step 0 ensures).

    The last character carries four padding bits; a non-zero one is rejected
    here, while the reference's decoder ignores them (a malleability).
    """
    if text[-1] not in _CANONICAL_LAST_CHARACTERS:
        return False
    return public_key.is_valid_signature(base64.urlsafe_b64decode(text + "=="), message)


def _check_version(data: dict[str, Any]) -> None:
    """Step 1."""
    if data["hdp"] != HDP_VERSION:
        raise UnsupportedVersion(
            f"hdp verify: unsupported version {data['hdp']!r}", code=_UNSUPPORTED_VERSION, step=1
        )
    if data["header"]["version"] != data["hdp"]:
        raise UnsupportedVersion(
            "hdp verify: header.version does not match hdp", code=_VERSION_MISMATCH, step=1
        )


def _verify_root(data: dict[str, Any], public_key: PublicKey, accept_legacy: bool) -> Generation:
    """Step 2: -02/-03 payload first; the 0.1.x payload only when allowed (hdp.md §3)."""
    signature = data["signature"]
    if signature["alg"] == _ALG:
        if _signature_ok(public_key, signature["value"], _root_payload(data, _DRAFT03)):
            return _DRAFT03
        if accept_legacy and _signature_ok(
            public_key, signature["value"], _root_payload(data, _LEGACY)
        ):
            return _LEGACY
    raise SignatureInvalid("hdp verify: root signature invalid", code=_SIGNATURE_INVALID, step=2)


def _check_chain_structure(chain: list[dict[str, Any]]) -> None:
    """Step 3: contiguous seq, earlier parent_hop, non-decreasing timestamps."""
    previous = -1
    for index, hop in enumerate(chain):
        seq = index + 1
        if hop["seq"] != seq:
            problem = f"seq {hop['seq']} at position {index}, expected {seq}"
        elif hop["parent_hop"] >= seq:
            problem = f"parent_hop {hop['parent_hop']} is not an earlier hop"
        elif hop["timestamp"] < previous:
            problem = "timestamp decreases"
        else:
            previous = hop["timestamp"]
            continue
        raise ChainBroken(
            f"hdp verify: hop {seq}: {problem}", code=_CHAIN_INTEGRITY, step=3, hop=seq
        )


def _verify_hops(
    chain: list[dict[str, Any]], root_sig: str, public_key: PublicKey, generation: Generation
) -> list[bytes]:
    """Step 4, each hop against its cumulative payload and the issuer key.

    Returns the canonical ``[root_sig, *chain]`` elements for the later checks.
    """
    elements = [canonicalize(root_sig)]
    for index, hop in enumerate(chain):
        full, unsigned = _hop_forms(hop)
        if not _signature_ok(
            public_key, hop["hop_signature"], _hop_payload(elements, unsigned, generation)
        ):
            raise SignatureInvalid(
                f"hdp verify: hop {index + 1} ({hop['agent_id']!r}) signature invalid",
                code=_SIGNATURE_INVALID,
                step=4,
            )
        elements.append(full)
    return elements


def _findings(data: dict[str, Any], generation: Generation) -> list[str]:
    """What verified but deserves a note: legacy payloads, ``signed_fields``, and hop
    timestamps before ``issued_at`` (seconds written where milliseconds belong, hdp.md §9.6)."""
    findings: list[str] = []
    if generation == _LEGACY:
        findings.append(_LEGACY_FINDING)
    elif "signed_fields" in data["signature"]:
        findings.append("deprecated signature.signed_fields tolerated")
    issued_at = data["header"]["issued_at"]
    findings.extend(
        f"hop {hop['seq']} timestamp precedes issued_at (seconds instead of milliseconds?)"
        for hop in data["chain"]
        if hop["timestamp"] < issued_at
    )
    return findings


def verify(
    token: HdpToken | str | bytes | Mapping[str, Any],
    *,
    public_key: PublicKey,
    accept_legacy_hdp01: bool = False,
    profile: ProfileMode = "auto",
    anchored_head: HeadCommitment | None = None,
) -> VerifiedHdp:
    """Verify an HDP token's integrity: draft-03 steps 0-5, then Tallystick step 6.

    Step 6 checks the Tallystick profile when the token carries it (``"auto"``),
    insists on it (``"require"``) or skips it (``"off"``), and checks
    ``anchored_head`` when given. No clock and no session: see :func:`audit`.

    :raises MalformedInput: step 0, ``hdp.schema_invalid``; step 6, ``hdp.profile_invalid``.
    :raises UnsupportedVersion: step 1, ``hdp.unsupported_version`` / ``hdp.version_mismatch``.
    :raises SignatureInvalid: steps 2 and 4, ``hdp.signature_invalid``; step 6,
        ``hdp.agent_signature_missing`` / ``hdp.agent_signature_invalid``.
    :raises ChainBroken: step 3, ``hdp.chain_integrity``; step 6, ``hdp.truncated`` /
        ``hdp.anchor_mismatch``.
    :raises DepthExceeded: step 5, ``hdp.max_hops_exceeded``.
    :raises IdentityUnresolvable: step 6, ``hdp.kid_mismatch`` / ``hdp.agent_not_bound``.
    :raises PolicyViolation: step 6, ``hdp.profile_missing``.
    """
    if profile not in ("auto", "require", "off"):
        raise MalformedInput(f"hdp verify: unknown profile mode {profile!r}", code=_OPTION_INVALID)
    parsed = _as_token(token)  # step 0
    data = parsed._data
    _check_version(data)  # step 1
    generation = _verify_root(data, public_key, accept_legacy_hdp01)  # step 2
    chain: list[dict[str, Any]] = data["chain"]
    _check_chain_structure(chain)  # step 3
    elements = _verify_hops(chain, data["signature"]["value"], public_key, generation)  # step 4
    max_hops = data["scope"].get("max_hops")
    if max_hops is not None and len(chain) > max_hops:  # step 5
        raise DepthExceeded(
            f"hdp verify: {len(chain)} hops exceed max_hops {max_hops}",
            code=_MAX_HOPS_EXCEEDED,
            step=5,
        )
    findings = _findings(data, generation)
    profile_verified = False
    if profile != "off":  # step 6
        claims = _profile_claims(data)
        if claims is not None:
            _check_profile(data, claims, public_key, elements)
            profile_verified = True
        elif profile == "require":
            raise PolicyViolation(
                "tallystick profile: token does not carry tallystick-hdp/1",
                code=_PROFILE_MISSING,
                step=6,
            )
    if anchored_head is not None:
        finding = _check_anchor(parsed, anchored_head, elements)
        if finding is not None:
            findings.append(finding)
    return VerifiedHdp(parsed, generation, len(chain), profile_verified, tuple(findings))


# -- issuance ----------------------------------------------------------------------------------


def _new_token_id() -> str:
    """The one place issuance reads randomness."""
    return str(uuid.uuid4())


def issue_root(
    *,
    key: PrivateKey,
    principal_id: str,
    principal_id_type: str = "opaque",
    session_id: str,
    intent: str,
    data_classification: str = "internal",
    network_egress: bool = False,
    persistence: bool = False,
    authorized_tools: Sequence[str] | None = None,
    max_hops: int | None = None,
    issued_at_ms: int,
    ttl_ms: int = _DEFAULT_TTL_MS,
    token_id: str | None = None,
    kid: str | None = None,
    parent_token_id: str | None = None,
    profile: TallystickProfile | None = None,
) -> HdpToken:
    """Issue a root-only token, signed with the draft-02/-03 payload.

    ``token_id`` defaults to a random UUIDv4 and ``kid`` to ``key.kid``. With
    ``profile``, the root binds ``key.kid`` and the profile's agents.

    :raises MalformedInput: the result would fail step 0 (code ``hdp.schema_invalid``).
    :raises IdentityUnresolvable: ``profile`` with a ``kid`` other than ``key.kid``
        (code ``hdp.kid_mismatch``).
    """
    if type(issued_at_ms) is not int or type(ttl_ms) is not int:
        fail("issued_at_ms and ttl_ms must be integers")
    if isinstance(authorized_tools, str):
        fail("authorized_tools must be a sequence of tool names, not one string")
    signing_kid = key.kid if kid is None else kid
    scope: dict[str, Any] = {
        "intent": intent,
        "data_classification": data_classification,
        "network_egress": network_egress,
        "persistence": persistence,
    }
    if authorized_tools is not None:
        scope["authorized_tools"] = list(authorized_tools)
    if max_hops is not None:
        scope["max_hops"] = max_hops
    if profile is not None:
        if signing_kid != key.kid:
            raise IdentityUnresolvable(
                "hdp issue: the profile binds key.kid; kid must not differ", code=_KID_MISMATCH
            )
        scope["extensions"] = {_PROFILE_EXTENSION: profile._extension(key.kid)}
    header: dict[str, Any] = {
        "token_id": _new_token_id() if token_id is None else token_id,
        "issued_at": issued_at_ms,
        "expires_at": issued_at_ms + ttl_ms,
        "session_id": session_id,
        "version": HDP_VERSION,
    }
    if parent_token_id is not None:
        header["parent_token_id"] = parent_token_id
    placeholder = {"alg": _ALG, "kid": signing_kid, "value": "A" * 86}
    data = validate_token(
        json_copy(
            {
                "hdp": HDP_VERSION,
                "header": header,
                "principal": {"id": principal_id, "id_type": principal_id_type},
                "scope": scope,
                "chain": [],
                "signature": placeholder,
            }
        )
    )
    data["signature"]["value"] = b64url_encode(key.sign(_root_payload(data, _DRAFT03)))
    return HdpToken(data)


def extend(
    token: HdpToken,
    *,
    key: PrivateKey,
    agent_id: str,
    agent_type: str = "sub-agent",
    action_summary: str,
    timestamp_ms: int,
    parent_hop: int | None = None,
    agent_key: PrivateKey | None = None,
) -> HdpToken:
    """Append one hop signed by the issuer ``key`` over the cumulative payload.

    ``parent_hop`` defaults to the previous hop's seq (0 for the first hop). A
    profile token needs ``agent_key``, the key bound to ``agent_id``, which
    co-signs the hop. Earlier hops are not re-verified: verify before extending.

    :raises DepthExceeded: the chain is already at ``max_hops`` (``hdp.max_hops_exceeded``).
    :raises ChainBroken: a ``parent_hop`` or ``timestamp_ms`` that step 3 would
        reject (``hdp.chain_integrity``).
    :raises SignatureInvalid: ``key`` did not sign this token's root (``hdp.signature_invalid``).
    :raises MalformedInput: the hop would fail step 0 (``hdp.schema_invalid``), or the
        token's profile claims are malformed (``hdp.profile_invalid``).
    :raises IdentityUnresolvable: ``agent_key`` missing or not bound to ``agent_id``
        (``hdp.agent_not_bound``).
    :raises PolicyViolation: ``agent_key`` for a token without the profile
        (``hdp.profile_missing``).
    """
    data = token._data
    chain: list[dict[str, Any]] = data["chain"]
    seq = len(chain) + 1
    max_hops = data["scope"].get("max_hops")
    if max_hops is not None and seq > max_hops:
        raise DepthExceeded(
            f"hdp extend: max_hops {max_hops} reached", code=_MAX_HOPS_EXCEEDED, step=5
        )
    if not isinstance(agent_type, str) or agent_type not in _AGENT_TYPES:
        fail(f"agent_type must be one of {sorted(_AGENT_TYPES)}")
    hop: dict[str, Any] = json_copy(
        {
            "seq": seq,
            "agent_id": agent_id,
            "agent_type": agent_type,
            "timestamp": timestamp_ms,
            "action_summary": action_summary,
            "parent_hop": seq - 1 if parent_hop is None else parent_hop,
        }
    )
    validate_token({**data, "chain": [*chain, {**hop, "hop_signature": "A" * 86}]})
    if hop["parent_hop"] >= seq or (chain and timestamp_ms < chain[-1]["timestamp"]):
        raise ChainBroken(
            f"hdp extend: hop {seq} needs 0 <= parent_hop < {seq} and a non-decreasing timestamp",
            code=_CHAIN_INTEGRITY,
            step=3,
            hop=seq,
        )
    root_sig = data["signature"]["value"]
    if not _signature_ok(key.public_key, root_sig, _root_payload(data, _DRAFT03)):
        raise SignatureInvalid(
            "hdp extend: key did not sign this token's root", code=_SIGNATURE_INVALID, step=2
        )
    elements = _chain_elements(data)
    claims = _profile_claims(data)
    if claims is not None:
        binding = claims.agents.get(agent_id)
        if agent_key is None or binding is None or binding.kid != agent_key.kid:
            raise IdentityUnresolvable(
                f"hdp extend: agent {agent_id!r} is not bound to the given agent_key",
                code=_AGENT_NOT_BOUND,
                step=6,
            )
        agent_sig = agent_key.sign(_agent_payload(elements, hop, agent_key.kid))
        hop[_AGENT_MEMBER] = {"kid": agent_key.kid, "sig": b64url_encode(agent_sig)}
    elif agent_key is not None:
        raise PolicyViolation(
            "hdp extend: agent_key given for a token without the tallystick profile",
            code=_PROFILE_MISSING,
            step=6,
        )
    hop_payload = _hop_payload(elements, canonicalize(hop), _DRAFT03)
    hop["hop_signature"] = b64url_encode(key.sign(hop_payload))
    return HdpToken({**data, "chain": [*chain, hop]})


# -- audit -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The draft-03 audit report (hdp.md §5): integrity apart from time, session and links.

    If step 0 fails, every part but integrity is ``not_checked``.
    """

    token_id: str | None
    integrity: Literal["valid", "invalid", "unverified"]
    failed_step: int | None = None
    error_code: str | None = None
    generation: Generation | None = None
    recording_period: Literal["within_period", "recorded_after_period", "not_checked"] = (
        "not_checked"
    )
    hops_after_period: tuple[int, ...] = ()
    session: Literal["match", "mismatch", "not_checked"] = "not_checked"
    linked_records: Literal["none", "linked", "not_checked"] = "not_checked"
    parent_token_id: str | None = None
    relationship: str | None = None
    findings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped report: one object per part, each with a ``status``."""
        integrity: dict[str, Any] = {"status": self.integrity}
        if self.integrity == "invalid":
            integrity["failed_step"] = self.failed_step
            integrity["error"] = {
                "code": self.error_code,
                "class": error_class(self.error_code or ""),
            }
        elif self.integrity == "valid":
            integrity["generation"] = self.generation
        period: dict[str, Any] = {"status": self.recording_period}
        if self.recording_period == "recorded_after_period":
            period["hop_seqs"] = list(self.hops_after_period)
        linked: dict[str, Any] = {"status": self.linked_records}
        if self.linked_records == "linked":
            linked["parent_token_id"] = self.parent_token_id
            linked["relationship"] = self.relationship
        return {
            "token_id": self.token_id,
            "integrity": integrity,
            "recording_period": period,
            "session": {"status": self.session},
            "linked_records": linked,
            "findings": list(self.findings),
        }


def audit(
    token: HdpToken | str | bytes | Mapping[str, Any],
    *,
    public_key: PublicKey | None = None,
    session_id: str | None = None,
    relationship: str | None = None,
    accept_legacy_hdp01: bool = False,
    profile: ProfileMode = "auto",
) -> AuditReport:
    """Audit a token: integrity (``unverified`` without a key), recording period,
    session against ``session_id``, and the ``parent_token_id`` link.

    ``relationship`` is what the caller asserts about the link (default ``"unknown"``).
    Never raises for a bad token; the failure is in the report.
    """
    try:
        parsed = _as_token(token)
    except MalformedInput as exc:
        return AuditReport(None, "invalid", failed_step=0, error_code=exc.code)
    integrity: Literal["valid", "invalid", "unverified"] = "unverified"
    failed_step: int | None = None
    error_code: str | None = None
    generation: Generation | None = None
    findings: tuple[str, ...] = ()
    if public_key is not None:
        try:
            verified = verify(
                parsed,
                public_key=public_key,
                accept_legacy_hdp01=accept_legacy_hdp01,
                profile=profile,
            )
        except TallystickError as exc:
            integrity, failed_step, error_code = "invalid", exc.step, exc.code
        else:
            integrity, generation, findings = "valid", verified.generation, verified.findings
    late = tuple(
        hop["seq"] for hop in parsed._data["chain"] if hop["timestamp"] >= parsed.expires_at_ms
    )
    parent = parsed.parent_token_id
    return AuditReport(
        parsed.token_id,
        integrity,
        failed_step=failed_step,
        error_code=error_code,
        generation=generation,
        recording_period="recorded_after_period" if late else "within_period",
        hops_after_period=late,
        session="not_checked"
        if session_id is None
        else ("match" if session_id == parsed.session_id else "mismatch"),
        linked_records="none" if parent is None else "linked",
        parent_token_id=parent,
        relationship=None if parent is None else (relationship or "unknown"),
        findings=findings,
    )
