"""The writer's call-entry fast path gives exactly the public constructor's bytes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tallystick.verifier.canonical import MAX_SAFE_INTEGER
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.logentry import (
    CallBody,
    EntryKind,
    LogEntry,
    _validated_call,
)

counts = st.none() | st.integers(0, MAX_SAFE_INTEGER)
# Control characters, quotes, backslashes, non-BMP characters and lone surrogates: every
# escaping rule RFC 8785 has, and the one input it cannot carry.
texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)


@st.composite
def call_bodies(draw: st.DrawFn) -> dict[str, Any]:
    output = draw(counts)
    reasoning = draw(st.none() | st.integers(0, output if output is not None else 9))
    inp = draw(counts)
    read = draw(st.none() | st.integers(0, inp if inp is not None else 9))
    room = inp - (read or 0) if inp is not None else 9
    creation = draw(st.none() | st.integers(0, room))
    usage = {
        "input_tokens": inp,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": creation,
        "output_tokens": output,
        "reasoning_output_tokens": reasoning,
    }
    usage = {k: v for k, v in usage.items() if v is not None or draw(st.booleans())}
    body: dict[str, Any] = {
        "provider": draw(st.text(min_size=1, max_size=20)),
        "model": draw(st.text(min_size=1, max_size=20)),
        "usage": usage,
    }
    for name in ("request_id", "delegation_id", "principal", "session_id"):
        if draw(st.booleans()):
            body[name] = draw(st.none() | texts)
    if draw(st.booleans()):
        body["latency_ms"] = draw(counts)
    for name in ("request_sha256", "response_sha256"):
        if draw(st.booleans()):
            body[name] = draw(st.none() | st.text("0123456789abcdef", min_size=64, max_size=64))
    for name in ("operation", "tool_name", "service_tier"):
        if draw(st.booleans()):
            body[name] = draw(
                st.none() | st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
            )
    if draw(st.booleans()):
        recount = {
            "tokenizer": draw(st.text(min_size=1, max_size=20)),
            "visible_output_tokens": draw(st.integers(0, MAX_SAFE_INTEGER)),
        }
        body["recount"] = draw(st.none() | st.just(recount))
    if draw(st.booleans()):
        amount = st.from_regex(r"(0|[1-9][0-9]{0,15})(\.[0-9]{1,12})?", fullmatch=True)
        currency = st.from_regex(r"[A-Z]{3}", fullmatch=True)
        body["cost"] = draw(
            st.none() | st.fixed_dictionaries({"amount": amount, "currency": currency})
        )
    return body


@settings(max_examples=300, deadline=None)
@given(
    call_bodies(),
    st.integers(0, MAX_SAFE_INTEGER),
    st.binary(min_size=32, max_size=32),
    st.integers(0, MAX_SAFE_INTEGER),
    st.text(min_size=1, max_size=30),
)
def test_fast_bytes_equal_constructor(
    body: dict[str, Any], index: int, prev: bytes, t: int, agent: str
) -> None:
    try:
        model = CallBody.model_validate(body)
    except ValidationError:  # e.g. a lone surrogate: see test_lone_surrogates_never_validate
        reject()
    dumped = model.model_dump(mode="json")
    try:
        expected = LogEntry(index, prev, EntryKind.CALL, t, agent, dumped).to_bytes()
    except MalformedInput as exc:
        with pytest.raises(MalformedInput) as got:
            LogEntry._call_bytes(index, prev, t, agent, _validated_call(model))
        assert got.value.code == exc.code
        return
    assert LogEntry._call_bytes(index, prev, t, agent, _validated_call(model)) == expected
    assert LogEntry.from_bytes(expected).body == dumped


@pytest.mark.parametrize("name", ["provider", "model", "request_id", "session_id", "principal"])
def test_lone_surrogates_never_validate(name: str) -> None:
    # The fast path encodes without a guard because a CallBody cannot hold one.
    body: dict[str, Any] = {"provider": "p", "model": "m", "usage": {}, name: "a\ud800"}
    with pytest.raises(ValidationError):
        CallBody.model_validate(body)
