"""CoIn leaf encoding v1 (coin.md §4.2): quantized fingerprints, per-leaf salts, token commitments.

Unstable machinery behind :mod:`tallystick.verifier.coin`.

::

    leaf_input = 0x01 || u32be token_index || u32be block_index || token_commitment[32]
                 || u16be dim (384) || int8[dim] block_fp || int8[dim] token_fp
    leaf_hash  = SHA-256(0x00 || leaf_input)                  (RFC 9162 leaf hash)
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .. import merkle
from ..errors import MalformedInput, UnsupportedVersion

#: all-MiniLM-L6-v2, the embedder CoIn uses, outputs 384 floats.
EMBEDDING_DIM = 384
#: The first byte of every v1 leaf input.
LEAF_VERSION = 1
#: Salts are the first 16 bytes of an HMAC-SHA256 (coin.md §4.2).
SALT_BYTES = 16
#: Token commitments are SHA-256 digests.
COMMITMENT_BYTES = 32
_HEADER_BYTES = 1 + 4 + 4 + COMMITMENT_BYTES + 2
#: Bytes of one v1 leaf input: 811.
LEAF_BYTES = _HEADER_BYTES + 2 * EMBEDDING_DIM
#: int8 fingerprints are round_half_even(x * 127) of a unit vector's components.
_SCALE = 127
_UINT32_LIMIT = 1 << 32
#: A trace secret shorter than this could be guessed; 32 random bytes is the expected size.
MIN_SECRET_BYTES = 16


def require_uint(value: object, what: str, *, limit: int = _UINT32_LIMIT, low: int = 0) -> int:
    """``value`` when it is an int (not bool) in ``[low, limit)``.

    :raises MalformedInput: otherwise (``coin.bad_int``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < limit:
        raise MalformedInput(f"{what}: must be an integer in [{low}, {limit})", code="coin.bad_int")
    return value


def quantize(vector: Sequence[float]) -> bytes:
    """The canonical int8 fingerprint of an embedding (coin.md §4.2), as signed bytes.

    Exact arithmetic, in Python floats (IEEE-754 binary64) whatever the input's dtype:

    1. ``norm = sqrt(math.fsum(x * x))`` over the components as binary64 (``fsum`` is
       correctly rounded, so the order of summation cannot change it);
    2. a zero vector gives all zeros; otherwise each ``x / norm``, clamped to ``[-1, 1]``;
    3. ``q = round(x * 127)``: Python's ``round`` is round-half-to-even; ``q`` is in
       ``[-127, 127]``, written as two's-complement int8.

    :raises MalformedInput: an empty vector, a component that is not a finite real number, or
        more than 65,535 components (``coin.bad_vector``).
    """
    try:
        values = [float(x) for x in vector]
    except (TypeError, ValueError) as exc:
        raise MalformedInput(
            "quantize: components must be numbers", code="coin.bad_vector"
        ) from exc
    if not values or len(values) > 0xFFFF:
        raise MalformedInput("quantize: need 1 to 65535 components", code="coin.bad_vector")
    if not all(math.isfinite(x) for x in values):
        raise MalformedInput("quantize: components must be finite", code="coin.bad_vector")
    norm = math.sqrt(math.fsum(x * x for x in values))
    if norm == 0.0:
        return bytes(len(values))
    return bytes(round(_clamp(x / norm) * _SCALE) & 0xFF for x in values)


def _clamp(x: float) -> float:
    return max(-1.0, min(1.0, x))


def _as_int8(raw: bytes) -> list[int]:
    return [b - 256 if b > 127 else b for b in raw]


def within_tolerance(committed: bytes, recomputed: bytes, tolerance: int = 1) -> bool:
    """True when both fingerprints have the same length and every int8 component differs by at
    most ``tolerance`` (coin.md §4.2: ±1 absorbs CPU/GPU float differences).

    Fails closed: anything that is not two equal-length byte strings gives ``False``.
    """
    if not isinstance(committed, bytes) or not isinstance(recomputed, bytes):
        return False
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        return False
    if len(committed) != len(recomputed) or not committed:
        return False
    return all(
        abs(a - b) <= tolerance
        for a, b in zip(_as_int8(committed), _as_int8(recomputed), strict=True)
    )


def leaf_salt(trace_secret: bytes, index: int) -> bytes:
    """``HMAC-SHA256(trace_secret, "coin/salt" || u32be index)[:16]``: the salt of leaf ``index``.

    :raises MalformedInput: a secret under 16 bytes, or an index outside uint32
        (``coin.bad_secret``, ``coin.bad_int``).
    """
    if not isinstance(trace_secret, bytes) or len(trace_secret) < MIN_SECRET_BYTES:
        raise MalformedInput(
            f"salt: trace secret must be at least {MIN_SECRET_BYTES} bytes", code="coin.bad_secret"
        )
    position = require_uint(index, "salt: index")
    message = b"coin/salt" + position.to_bytes(4, "big")
    return hmac.new(trace_secret, message, hashlib.sha256).digest()[:SALT_BYTES]


def token_commitment(salt: bytes, token_id: int) -> bytes:
    """``SHA-256("coin/tok/v1" || salt[16] || u32be token_id)``.

    :raises MalformedInput: a salt that is not 16 bytes, or a token id outside uint32
        (``coin.bad_salt``, ``coin.bad_int``).
    """
    if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
        raise MalformedInput(f"commitment: salt must be {SALT_BYTES} bytes", code="coin.bad_salt")
    token = require_uint(token_id, "commitment: token id")
    return hashlib.sha256(b"coin/tok/v1" + salt + token.to_bytes(4, "big")).digest()


def _leaf_error(message: str) -> MalformedInput:
    return MalformedInput(f"leaf: {message}", code="coin.leaf_malformed")


@dataclass(frozen=True, slots=True)
class Leaf:
    """One v1 leaf: a reasoning token's position, its block, its salted token commitment and the
    quantized block and token fingerprints. Building one checks every field."""

    token_index: int
    block_index: int
    token_commitment: bytes
    block_fp: bytes
    token_fp: bytes

    def __post_init__(self) -> None:
        for position, what in ((self.token_index, "token index"), (self.block_index, "block")):
            if isinstance(position, bool) or not isinstance(position, int):
                raise _leaf_error(f"{what} must be a uint32")
            if not 0 <= position < _UINT32_LIMIT:
                raise _leaf_error(f"{what} must be a uint32")
        if not isinstance(self.token_commitment, bytes) or len(self.token_commitment) != 32:
            raise _leaf_error("token commitment must be 32 bytes")
        for fingerprint, what in ((self.block_fp, "block"), (self.token_fp, "token")):
            if not isinstance(fingerprint, bytes) or len(fingerprint) != EMBEDDING_DIM:
                raise _leaf_error(f"{what} fingerprint must be {EMBEDDING_DIM} bytes")
            # 0x80 (-128) is never produced by quantize: round(x * 127) stays in [-127, 127].
            if b"\x80" in fingerprint:
                raise _leaf_error(f"{what} fingerprint holds -128, which quantize never writes")

    def to_bytes(self) -> bytes:
        """The exact leaf input bytes (811 of them)."""
        return b"".join(
            (
                bytes([LEAF_VERSION]),
                self.token_index.to_bytes(4, "big"),
                self.block_index.to_bytes(4, "big"),
                self.token_commitment,
                EMBEDDING_DIM.to_bytes(2, "big"),
                self.block_fp,
                self.token_fp,
            )
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Leaf:
        """Parse leaf input bytes; the exact inverse of :meth:`to_bytes`.

        :raises UnsupportedVersion: a first byte other than 1 (``coin.leaf_version``).
        :raises MalformedInput: any other length, a dimension other than 384, or a fingerprint
            byte of -128 (``coin.leaf_malformed``).
        """
        if not isinstance(raw, bytes | bytearray) or not raw:
            raise _leaf_error("must be non-empty bytes")
        raw = bytes(raw)
        if raw[0] != LEAF_VERSION:
            raise UnsupportedVersion(f"leaf: version {raw[0]} is not 1", code="coin.leaf_version")
        if len(raw) != LEAF_BYTES:
            raise _leaf_error(f"{len(raw)} bytes, expected {LEAF_BYTES}")
        if int.from_bytes(raw[41:43], "big") != EMBEDDING_DIM:
            raise _leaf_error(f"dimension must be {EMBEDDING_DIM}")
        return cls(
            token_index=int.from_bytes(raw[1:5], "big"),
            block_index=int.from_bytes(raw[5:9], "big"),
            token_commitment=raw[9:41],
            block_fp=raw[_HEADER_BYTES : _HEADER_BYTES + EMBEDDING_DIM],
            token_fp=raw[_HEADER_BYTES + EMBEDDING_DIM :],
        )

    def hash(self) -> bytes:
        """The RFC 9162 leaf hash, ``SHA-256(0x00 || to_bytes())``."""
        return merkle.hash_leaf(self.to_bytes())
