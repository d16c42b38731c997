"""The n-gram sketch: which stretches of the hidden reasoning repeat, checkable by sampling.

A Tallystick extension of coin.md §4 (head line ``sketch``). Openings alone cannot show that a
provider padded its reasoning with copies of itself, of the prompt or of the answer: the copy
and its source are rarely both opened. So the provider also commits, in the signed head, to
one keyed hash per position ``i >= n - 1`` of the token n-gram ending there::

    sketch_key = HMAC-SHA256(trace_secret, "coin/sketch-key/v1")
    entry_i    = HMAC-SHA256(sketch_key, "coin/ngram/v1" || u32be ids[i-n+1..i])[:8]
    sketch     = entry_{n-1} || ... || entry_{m-1}       (8 bytes each; empty when m < n)
    head line  = "sketch sha256:" || hex(SHA-256(sketch))

The key is revealed only with the openings, after the challenge. Then the auditor sees the
equality structure of the whole reasoning (which n-grams occur twice) and, hashing the prompt
and answer under the same key, which stretches were copied from them, without seeing the text.
A provider that hides copies by writing other entries fails wherever an opened run covers a
whole n-gram (:func:`verify_sketch`), so hiding a forged fraction ``f`` of positions is caught
like any forged leaf: ``1 - (1 - f)^runs``.

What the key exposes: anyone holding it can test a guessed n-gram against every position (a
dictionary attack on common phrases); n = 8 tokens keeps guesses hard for anything but
boilerplate. The key is derived from, but does not reveal, the trace secret (the salts stay
closed).

Unstable machinery behind :mod:`tallystick.verifier.coin`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Final

from ..errors import MalformedInput
from .coin_head import CommitmentHead, CommitmentMismatch
from .coin_leaf import require_uint

#: Tokens per sketched n-gram.
SKETCH_NGRAM: Final = 8
#: Bytes per sketch entry.
SKETCH_ENTRY_BYTES: Final = 8
#: Bytes of a sketch key.
SKETCH_KEY_BYTES: Final = 32

_KEY_LABEL: Final = b"coin/sketch-key/v1"
_NGRAM_LABEL: Final = b"coin/ngram/v1"


class SketchMismatch(CommitmentMismatch):
    """A sketch that is not the one the head binds, or whose entries disagree with the openings."""

    default_code = "coin.sketch_mismatch"


def sketch_key(trace_secret: bytes) -> bytes:
    """The provider's sketch key for a trace (revealed with the openings)."""
    if not isinstance(trace_secret, bytes) or not trace_secret:
        raise MalformedInput("sketch: trace secret must be bytes", code="coin.bad_secret")
    return hmac.new(trace_secret, _KEY_LABEL, hashlib.sha256).digest()


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes) or len(key) != SKETCH_KEY_BYTES:
        raise MalformedInput(
            f"sketch: key must be {SKETCH_KEY_BYTES} bytes", code="coin.sketch_malformed"
        )
    return key


def ngram_entries(key: bytes, token_ids: Sequence[int]) -> list[bytes]:
    """``entry_i`` for every position ``i >= n - 1`` of ``token_ids`` (any token sequence: the
    reasoning, or the prompt and answer an auditor compares it with)."""
    mac = hmac.new(_check_key(key), _NGRAM_LABEL, hashlib.sha256)
    packed = [require_uint(token, "sketch: token id").to_bytes(4, "big") for token in token_ids]
    out = []
    for end in range(SKETCH_NGRAM, len(packed) + 1):
        entry = mac.copy()
        entry.update(b"".join(packed[end - SKETCH_NGRAM : end]))
        out.append(entry.digest()[:SKETCH_ENTRY_BYTES])
    return out


def ngram_sketch(key: bytes, token_ids: Sequence[int]) -> bytes:
    """The sketch of a whole reasoning: its entries, concatenated."""
    return b"".join(ngram_entries(key, token_ids))


def sketch_sha256(sketch: bytes) -> str:
    """The hex SHA-256 the head's ``sketch`` line carries."""
    return hashlib.sha256(sketch).hexdigest()


def split_sketch(head: CommitmentHead, sketch: bytes) -> list[bytes]:
    """The entries of ``sketch`` once it is the sketch ``head`` binds, of the size its count needs.

    :raises SketchMismatch: the head binds no sketch or another one, or the size is wrong.
    """
    if head.sketch_sha256 is None:
        raise SketchMismatch("sketch: the head binds no sketch")
    if not isinstance(sketch, bytes) or not hmac.compare_digest(
        sketch_sha256(sketch), head.sketch_sha256
    ):
        raise SketchMismatch("sketch: not the sketch the head binds")
    entries = max(0, head.reasoning_tokens - SKETCH_NGRAM + 1)
    if len(sketch) != entries * SKETCH_ENTRY_BYTES:
        raise SketchMismatch(
            f"sketch: {len(sketch)} bytes, {entries} entries of {SKETCH_ENTRY_BYTES} expected"
        )
    return [
        sketch[offset : offset + SKETCH_ENTRY_BYTES]
        for offset in range(0, len(sketch), SKETCH_ENTRY_BYTES)
    ]


def verify_sketch(
    head: CommitmentHead, sketch: bytes, key: bytes, opened: Iterable[tuple[int, int]]
) -> int:
    """Check the sketch against opened tokens; return how many entries the openings covered.

    :param opened: ``(index, token_id)`` of openings that already verified.
    :raises SketchMismatch: the sketch is not the head's, or an entry whose whole n-gram was
        opened differs from the keyed hash of those tokens.
    :raises MalformedInput: a key that is not 32 bytes (``coin.sketch_malformed``).
    """
    _check_key(key)
    entries = split_sketch(head, sketch)
    tokens = dict(opened)
    checked = 0
    for end in sorted(tokens):
        start = end - SKETCH_NGRAM + 1
        if start < 0 or any(index not in tokens for index in range(start, end)):
            continue
        (expected,) = ngram_entries(key, [tokens[index] for index in range(start, end + 1)])
        if not hmac.compare_digest(entries[start], expected):
            raise SketchMismatch(f"sketch: entry for tokens {start}..{end} differs from them")
        checked += 1
    return checked
