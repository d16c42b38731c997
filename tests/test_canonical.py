"""Strict JSON parsing and RFC 8785 canonicalisation."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import jcs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tallystick.verifier.canonical import (
    MAX_SAFE_INTEGER,
    canonicalize,
    join_canonical_array,
    parse_json,
)
from tallystick.verifier.errors import MalformedInput, TallystickError

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def _no_surrogates(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonicalize_equals_the_jcs_package(value: Any) -> None:
    if _no_surrogates(value):
        assert canonicalize(value) == jcs.canonicalize(value)
    else:
        with pytest.raises(MalformedInput):
            canonicalize(value)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=6), st.integers(0, 10), min_size=2, max_size=6))
def test_canonical_form_ignores_member_order(value: dict[str, int]) -> None:
    reordered = dict(reversed(list(value.items())))
    assert canonicalize(value) == canonicalize(reordered)


def test_keys_outside_the_bmp_sort_by_utf16() -> None:
    # U+1F600 is a surrogate pair (0xD83D...) in UTF-16, so it sorts before U+FF21.
    value = {"\uff21": 1, "\U0001f600": 2}
    assert canonicalize(value) == jcs.canonicalize(value)
    assert canonicalize(value).startswith('{"\U0001f600"'.encode())


def test_join_canonical_array_matches_whole_canonicalisation() -> None:
    parts = ["sig", {"b": 1, "a": [True, None]}, {"z": "\n"}]
    assert join_canonical_array(canonicalize(p) for p in parts) == canonicalize(parts)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param('{"a":1,"a":2}', "input.duplicate_member", id="duplicate-member"),
        pytest.param('{"a":{"b":1,"b":1}}', "input.duplicate_member", id="nested-duplicate"),
        pytest.param("[NaN]", "input.non_finite_number", id="nan"),
        pytest.param("[-Infinity]", "input.non_finite_number", id="infinity"),
        pytest.param("[9007199254740992]", "input.unsafe_integer", id="above-2^53"),
        pytest.param("[-9007199254740992]", "input.unsafe_integer", id="below-minus-2^53"),
        pytest.param("[" + "9" * 5000 + "]", "input.unsafe_integer", id="huge-digits"),
        pytest.param('["\\ud800"]', "input.bad_unicode", id="lone-surrogate"),
        pytest.param("[" * 100 + "]" * 100, "input.too_deep", id="deep-nesting"),
        pytest.param("[" * 100000, "input.too_deep", id="very-deep-nesting"),
        pytest.param("{", "input.bad_json", id="truncated"),
        pytest.param("", "input.bad_json", id="empty"),
        pytest.param(b"\xff\xfe", "input.bad_unicode", id="not-utf8"),
        pytest.param(b" " * ((1 << 20) + 1), "input.too_large", id="too-large"),
    ],
)
def test_bad_json_is_rejected_with_a_code(raw: str | bytes, code: str) -> None:
    with pytest.raises(MalformedInput) as exc:
        parse_json(raw)
    assert exc.value.code == code


def test_safe_integers_and_floats_parse() -> None:
    assert parse_json("[9007199254740991, -9007199254740991, 1.5]") == [
        MAX_SAFE_INTEGER,
        -MAX_SAFE_INTEGER,
        1.5,
    ]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_parse_json_never_raises_anything_else(raw: bytes | str) -> None:
    with contextlib.suppress(TallystickError):
        parse_json(raw)


@pytest.mark.parametrize("value", [2**53, -(2**53), 2**60, 10**21])
def test_integers_beyond_the_safe_range_use_the_jcs_number_form(value: int) -> None:
    assert canonicalize([value]) == jcs.canonicalize([value])
