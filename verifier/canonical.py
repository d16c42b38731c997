"""Strict JSON parsing and RFC 8785 (JCS) canonical JSON.

``parse_json`` is the one way untrusted JSON text enters Tallystick: it rejects
duplicate member names, ``NaN``/``Infinity``, integers outside the IEEE-754
safe range, invalid UTF-8, lone surrogates, excessive nesting and oversized
input, each as :class:`~tallystick.verifier.errors.MalformedInput`.

``canonicalize`` produces RFC 8785 bytes. The ``jcs`` package (the one the HDP
reference uses) is the implementation of record. For the common case of JSON
without floats and without object keys outside the Basic Multilingual Plane,
the standard library's C encoder produces byte-identical output (same escapes,
same integer form, and code-point order equals UTF-16 order), several times
faster; the property tests hold the two to equality.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

import jcs

from .errors import MalformedInput

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_SAFE_INTEGER",
    "canonicalize",
    "join_canonical_array",
    "parse_json",
]

#: Largest integer exactly representable as an IEEE-754 double (ECMAScript Number.MAX_SAFE_INTEGER).
MAX_SAFE_INTEGER = 2**53 - 1
#: Default input cap: a 1,000-hop HDP token is about 270 KB (hdp.md §8), so 1 MiB leaves room.
MAX_JSON_BYTES = 1 << 20
#: Nesting cap, well under the interpreter's recursion limit.
MAX_JSON_DEPTH = 64

_BMP_MAX = 0xFFFF


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise MalformedInput(f"json: duplicate member {key!r}", code="input.duplicate_member")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise MalformedInput(f"json: non-finite number {name}", code="input.non_finite_number")


def _safe_int(text: str) -> int:
    if len(text) > 17:  # longer than any safe integer; avoids int() on huge digit strings
        raise MalformedInput("json: integer outside the safe range", code="input.unsafe_integer")
    value = int(text)
    if abs(value) > MAX_SAFE_INTEGER:
        raise MalformedInput("json: integer outside the safe range", code="input.unsafe_integer")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):  # "1e999" overflows to infinity
        raise MalformedInput("json: number overflows to infinity", code="input.non_finite_number")
    return value


def _check_nesting_and_text(value: Any, depth: int) -> None:
    """Reject nesting beyond MAX_JSON_DEPTH and strings holding lone surrogates."""
    if depth > MAX_JSON_DEPTH:
        raise MalformedInput("json: nested too deeply", code="input.too_deep")
    kind = type(value)
    if kind is str:
        _check_text(value)
    elif kind is dict:
        for key, item in value.items():
            _check_text(key)
            _check_nesting_and_text(item, depth + 1)
    elif kind is list:
        for item in value:
            _check_nesting_and_text(item, depth + 1)


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedInput("json: string is not valid Unicode", code="input.bad_unicode") from exc


# Text that can hide what the post-parse walk looks for: a surrogate escape, or enough brackets
# to nest past MAX_JSON_DEPTH. Most inputs have neither, and skip the walk.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _needs_walk(text: str) -> bool:
    return (
        text.count("[") + text.count("{") > MAX_JSON_DEPTH
        or _SURROGATE_ESCAPE.search(text) is not None
    )


def parse_json(raw: str | bytes, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse untrusted JSON text strictly.

    :raises MalformedInput: for oversized, non-UTF-8, malformed or ambiguous input
        (duplicate members, non-finite numbers, unsafe integers, deep nesting).
    """
    if isinstance(raw, bytes | bytearray):
        if len(raw) > max_bytes:
            raise MalformedInput(
                f"json: input larger than {max_bytes} bytes", code="input.too_large"
            )
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedInput("json: input is not UTF-8", code="input.bad_unicode") from exc
    elif isinstance(raw, str):
        text = raw
        if len(text) > max_bytes:
            raise MalformedInput(
                f"json: input larger than {max_bytes} bytes", code="input.too_large"
            )
    else:
        raise MalformedInput("json: input must be text", code="input.malformed")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_reject_constant,
            parse_int=_safe_int,
            parse_float=_finite_float,
        )
    except MalformedInput:
        raise
    except RecursionError as exc:
        raise MalformedInput("json: nested too deeply", code="input.too_deep") from exc
    except ValueError as exc:
        raise MalformedInput(f"json: {exc}", code="input.bad_json") from exc
    if _needs_walk(text):
        _check_nesting_and_text(value, 0)
    return value


def _stdlib_matches_jcs(value: Any) -> bool:
    """True when json.dumps output is exactly RFC 8785 for this value.

    Dispatches on exact types (subclasses go to ``jcs``) because this walk runs on every
    signature check's payload.
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        # Beyond 2**53, ECMAScript (and so JCS) prints the nearest double, not the exact digits.
        return bool(-MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or max(map(ord, key)) <= _BMP_MAX):
                return False
            if type(item) is not str and not _stdlib_matches_jcs(item):
                return False
        return True
    if kind is list or kind is tuple:
        return all(type(item) is str or _stdlib_matches_jcs(item) for item in value)
    return False  # floats and anything else go to jcs


# ``json.dumps`` with these options builds a fresh encoder on every call; one shared encoder
# (stateless once built) produces the same text without that cost.
_STDLIB_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _stdlib_canonical(value: Any) -> bytes:
    """The stdlib encoder's UTF-8 bytes: RFC 8785 only where ``_stdlib_matches_jcs(value)``.

    :raises MalformedInput: a string holds a lone surrogate.
    """
    try:
        return _STDLIB_ENCODER.encode(value).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise MalformedInput(
            f"json: cannot canonicalize: {exc}", code="input.not_canonicalizable"
        ) from exc


def canonicalize(value: Any) -> bytes:
    """RFC 8785 canonical UTF-8 bytes of a JSON value.

    :raises MalformedInput: for values JSON cannot carry (non-finite floats,
        lone surrogates, non-string keys).
    """
    if _stdlib_matches_jcs(value):
        return _stdlib_canonical(value)
    try:
        result: bytes = jcs.canonicalize(value)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise MalformedInput(
            f"json: cannot canonicalize: {exc}", code="input.not_canonicalizable"
        ) from exc
    return result


def join_canonical_array(elements: Iterable[bytes]) -> bytes:
    """Canonical bytes of a JSON array from its elements' canonical bytes.

    RFC 8785 serialises an array as its elements' canonical forms joined by
    commas, so callers that already hold canonical elements (HDP hop payloads)
    avoid re-serialising the whole prefix for every hop.
    """
    return b"[" + b",".join(elements) + b"]"
