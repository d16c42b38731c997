"""AIP compact tokens (``aip+jwt``): encoding and V1 parsing, wire-compatible with 0.6.0.

A compact token is a JWS with header ``{"alg":"EdDSA","typ":"aip+jwt"}`` and
the claims of ``aip_token.claims.AipClaims`` in that model's field order, so
that for the same key and claims this module and ``CompactToken.create``
produce the same bytes (Ed25519 is deterministic). ``aud`` and ``jti`` are
Tallystick additions, written after the reference's claims.

Parsing is stricter than PyJWT alone: every segment must be canonical
unpadded base64url (PyJWT's decoder ignores stray characters and trailing
bits, so a token with a flipped last character would otherwise still verify),
the header and claims go through :func:`parse_json` (duplicate members
rejected), ``typ`` is pinned, ``crit`` is refused, and the signature is
checked by a PyJWS that knows only ``EdDSA``, backed by libsodium through
:class:`PublicKey` (stricter than OpenSSL on RFC 8032 edge cases, and about
twice as fast here). Time claims are checked by the caller against an
explicit ``now``, not by PyJWT's clock, and PyJWT never sees a claim.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from ..canonical import parse_json
from ..errors import MalformedInput, SignatureInvalid
from ..keys import PrivateKey, PublicKey
from .aip_links import malformed
from .encoding import b64url_decode

__all__ = [
    "COMPACT_TYP",
    "MAX_TOKEN_CHARS",
    "CompactClaims",
    "decode_compact",
    "encode_compact",
]

COMPACT_TYP = "aip+jwt"
#: A depth-5 chained token is about 2.3 KB (aip.md §8); anything near this cap is not an AIP token.
MAX_TOKEN_CHARS = 64 * 1024

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
# The last character of an unpadded base64url segment may only carry data bits:
# with 2 characters left over it holds 2 bits (low 4 zero), with 3 it holds 4.
_LAST_CHAR_OF_2 = frozenset("AQgw")
_LAST_CHAR_OF_3 = frozenset("AEIMQUYcgkosw048")


class _LibsodiumEdDSA(OKPAlgorithm):
    """PyJWT's EdDSA, verifying through :meth:`PublicKey.verify` (libsodium)."""

    def prepare_key(self, key: Any) -> Any:
        if not isinstance(key, bytes) or len(key) != 32:
            raise jwt.InvalidKeyError("expected a raw 32-byte Ed25519 public key")
        return PublicKey(key)

    def verify(self, msg: Any, key: Any, sig: Any) -> bool:
        return isinstance(key, PublicKey) and key.is_valid_signature(bytes(sig), bytes(msg))


_JWS = jwt.PyJWS(algorithms=[])
_JWS.register_algorithm("EdDSA", _LibsodiumEdDSA())


def _is_canonical_b64url(segment: str) -> bool:
    if _SEGMENT.fullmatch(segment) is None:
        return False
    remainder = len(segment) % 4
    if remainder == 1:
        return False
    if remainder == 2:
        return segment[-1] in _LAST_CHAR_OF_2
    return remainder == 0 or segment[-1] in _LAST_CHAR_OF_3


@dataclass(frozen=True, slots=True)
class CompactClaims:
    """The claims of a compact token whose signature has been checked (V1 only)."""

    iss: str
    sub: str
    scope: tuple[str, ...]
    budget_usd: float | None
    max_depth: int
    iat: int
    exp: int
    nbf: int | None
    aud: tuple[str, ...] | None
    jti: str | None


def encode_compact(claims: Mapping[str, Any], key: PrivateKey) -> str:
    """Sign ``claims`` (already in wire order) as an ``aip+jwt`` JWS, as PyJWT does for 0.6.0."""
    signing_key = Ed25519PrivateKey.from_private_bytes(key.seed())
    return jwt.encode(dict(claims), signing_key, algorithm="EdDSA", headers={"typ": COMPACT_TYP})


def _int_claim(payload: Mapping[str, Any], name: str) -> int:
    value = payload.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise malformed(f"compact token: {name} must be an integer", step=1)
    return value


def _optional_int_claim(payload: Mapping[str, Any], name: str) -> int | None:
    return _int_claim(payload, name) if name in payload else None


def _str_claim(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise malformed(f"compact token: {name} must be a non-empty string", step=1)
    return value


def _scope_claim(payload: Mapping[str, Any]) -> tuple[str, ...]:
    scope = payload.get("scope")
    if not isinstance(scope, list) or not scope or not all(isinstance(s, str) for s in scope):
        raise malformed("compact token: scope must be a non-empty array of strings", step=1)
    return tuple(scope)


def _budget_claim(payload: Mapping[str, Any]) -> float | None:
    budget = payload.get("budget_usd")
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget):
        raise malformed("compact token: budget_usd must be a finite number", step=1)
    return float(budget)


def _aud_claim(payload: Mapping[str, Any]) -> tuple[str, ...] | None:
    aud = payload.get("aud")
    if aud is None:
        return None
    if isinstance(aud, str):
        aud = [aud]
    if not isinstance(aud, list) or not aud or not all(isinstance(a, str) and a for a in aud):
        raise malformed("compact token: aud must be a string or an array of strings", step=1)
    return tuple(aud)


def _claims(payload: object) -> CompactClaims:
    if not isinstance(payload, dict):
        raise malformed("compact token: claims are not a JSON object", step=1)
    max_depth = _optional_int_claim(payload, "max_depth")
    jti = payload.get("jti")
    if jti is not None and (not isinstance(jti, str) or not jti):
        raise malformed("compact token: jti must be a non-empty string", step=1)
    return CompactClaims(
        iss=_str_claim(payload, "iss"),
        sub=_str_claim(payload, "sub"),
        scope=_scope_claim(payload),
        budget_usd=_budget_claim(payload),
        # The reference's AipClaims defaults max_depth to 0 (no further delegation).
        max_depth=0 if max_depth is None else max_depth,
        iat=_int_claim(payload, "iat"),
        exp=_int_claim(payload, "exp"),
        nbf=_optional_int_claim(payload, "nbf"),
        aud=_aud_claim(payload),
        jti=jti,
    )


def decode_compact(token: str, public_key: PublicKey) -> CompactClaims:
    """V1 for a compact token: structure, header, signature, then the claims' types.

    :raises MalformedInput: ``aip.token_malformed``: not three canonical base64url
        segments, a header other than EdDSA/``aip+jwt`` (or with ``crit``), or claims
        missing or of the wrong type.
    :raises SignatureInvalid: ``aip.signature_invalid``: the signature does not verify.
    """
    segments = token.split(".")
    if len(segments) != 3 or not all(_is_canonical_b64url(s) for s in segments):
        raise malformed("compact token: not three canonical base64url segments", step=1)
    try:
        header = parse_json(b64url_decode(segments[0], what="compact token header"))
    except MalformedInput as exc:
        raise malformed(f"compact token header: {exc}", step=1) from exc
    if not isinstance(header, dict) or header.get("typ") != COMPACT_TYP:
        raise malformed("compact token: typ must be aip+jwt", step=1)
    if header.get("alg") != "EdDSA" or "crit" in header or "b64" in header:
        raise malformed("compact token: header must be alg EdDSA with no crit or b64", step=1)
    try:
        decoded = _JWS.decode_complete(token, public_key.raw, algorithms=["EdDSA"])
    except jwt.InvalidSignatureError as exc:
        raise SignatureInvalid(
            "compact token: signature does not verify", code="aip.signature_invalid", step=1
        ) from exc
    except jwt.PyJWTError as exc:
        raise malformed(f"compact token: {exc}", step=1) from exc
    try:
        payload = parse_json(decoded["payload"])
    except MalformedInput as exc:
        raise malformed(f"compact token claims: {exc}", step=1) from exc
    return _claims(payload)
