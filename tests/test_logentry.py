"""Log entries: one exact encoding, strict parsing, and the `call` and `delegation` bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tallystick.verifier import aip, hdp
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.keys import PrivateKey
from tallystick.verifier.logentry import (
    GENESIS_PREV,
    DelegationAction,
    DelegationBody,
    DelegationFormat,
    EntryKind,
    LogEntry,
)
from tallystick.verifier.merkle import hash_leaf

ISSUER = PrivateKey.from_seed(bytes([3]) * 32)
ISSUER_KEY = ISSUER.public_key.to_b64url()
T0_MS = 1_700_000_000_000
CALL_BODY = {"provider": "openai", "model": "gpt-4o", "usage": {"input_tokens": 12}}


def _entry(index: int = 0, *, prev: bytes = GENESIS_PREV, body: Any = None) -> LogEntry:
    return LogEntry(index, prev, EntryKind.CALL, T0_MS, "agent-1", body or CALL_BODY)


# -- the exact bytes ----------------------------------------------------------------------------


def test_entry_bytes_are_pinned() -> None:
    # Golden bytes: any change here changes every leaf hash of every existing log.
    assert _entry().to_bytes() == (
        b'{"agent":"agent-1","body":{"model":"gpt-4o","provider":"openai",'
        b'"usage":{"input_tokens":12}},"index":0,"kind":"call","prev":"' + b"0" * 64 + b'",'
        b'"time_ms":1700000000000,"v":1}'
    )


def test_entry_round_trips_and_chains() -> None:
    first = _entry()
    second = _entry(1, prev=first.leaf_hash)
    assert first.leaf_hash == hash_leaf(first.to_bytes())
    assert LogEntry.from_bytes(second.to_bytes()) == second
    assert LogEntry.from_bytes(second.to_bytes()).prev == hash_leaf(first.to_bytes())


def _reencoded(**changes: Any) -> bytes:
    data = json.loads(_entry().to_bytes())
    data.update(changes)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param(b"not json", "input.bad_json", id="not-json"),
        pytest.param(b"[]", "log.entry_malformed", id="array"),
        pytest.param(_reencoded(extra=1), "log.entry_malformed", id="extra-member"),
        pytest.param(_reencoded(v=2), "log.entry_malformed", id="version-2"),
        pytest.param(_reencoded(prev="A" * 64), "log.entry_malformed", id="prev-uppercase"),
        pytest.param(_reencoded(prev="0" * 62), "log.entry_malformed", id="prev-short"),
        pytest.param(_reencoded(kind="gossip"), "log.entry_malformed", id="unknown-kind"),
        pytest.param(_reencoded(index=-1), "log.entry_malformed", id="negative-index"),
        pytest.param(_reencoded(agent=""), "log.entry_malformed", id="empty-agent"),
        pytest.param(_reencoded(body=[]), "log.entry_malformed", id="body-array"),
        pytest.param(
            _reencoded(body={**CALL_BODY, "usage": {"input_tokens": -1}}),
            "log.entry_malformed",
            id="negative-tokens",
        ),
        pytest.param(
            _reencoded(
                body={**CALL_BODY, "usage": {"output_tokens": 1, "reasoning_output_tokens": 2}}
            ),
            "log.entry_malformed",
            id="reasoning-exceeds-output",
        ),
        pytest.param(
            _entry().to_bytes().replace(b",", b", ", 1), "log.entry_not_canonical", id="space"
        ),
        pytest.param(
            json.dumps(json.loads(_entry().to_bytes())).encode(),
            "log.entry_not_canonical",
            id="default-json-dumps",
        ),
    ],
)
def test_from_bytes_rejects(raw: bytes, code: str) -> None:
    with pytest.raises(MalformedInput) as exc:
        LogEntry.from_bytes(raw)
    assert exc.value.code == code


def test_from_bytes_accepts_its_own_encoding() -> None:
    raw = _entry().to_bytes()
    assert LogEntry.from_bytes(raw).to_bytes() == raw


# -- delegation bodies --------------------------------------------------------------------------


def _hdp_token() -> dict[str, Any]:
    token = hdp.issue_root(
        key=ISSUER,
        principal_id="alice@example.com",
        session_id="s1",
        intent="Summarise the report",
        issued_at_ms=T0_MS,
        token_id="123e4567-e89b-42d3-a456-426614174000",
    )
    return token.to_dict()


COMPACT = aip.issue_compact(
    key=ISSUER, subject="agent-1", scopes=["tool:search"], issued_at=T0_MS // 1000
)
CHAINED = aip.issue_chained(key=ISSUER, scopes=["tool:search"], issued_at=T0_MS // 1000)


def _non_canonical(key: str) -> str:
    """The same 32 bytes with one of the two unused trailing bits set."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return key[:-1] + alphabet[alphabet.index(key[-1]) + 1]


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "format": "hdp",
        "action": "issue",
        "token": _hdp_token(),
        "issuer_key": ISSUER_KEY,
    }
    body.update(changes)
    return body


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_body(), id="hdp-issue"),
        pytest.param(_body(action="extend"), id="hdp-extend"),
        pytest.param(_body(format="aip-compact", token=COMPACT), id="aip-compact"),
        pytest.param(
            _body(format="aip-compact", token=COMPACT, audience="tallystickd"),
            id="aip-compact-audience",
        ),
        pytest.param(_body(format="aip-chained", token=CHAINED), id="aip-chained"),
        pytest.param(
            _body(format="aip-chained", token=CHAINED, action="attenuate"), id="aip-attenuate"
        ),
    ],
)
def test_delegation_body_accepts(body: dict[str, Any]) -> None:
    parsed = DelegationBody.from_body(body)
    assert parsed.format is DelegationFormat(body["format"])
    assert parsed.action is DelegationAction(body["action"])
    assert parsed.public_key == ISSUER.public_key
    # A delegation entry carrying it round-trips through its exact bytes.
    entry = LogEntry(0, GENESIS_PREV, EntryKind.DELEGATION, T0_MS, "tallystickd", body)
    assert DelegationBody.from_body(LogEntry.from_bytes(entry.to_bytes()).body) == parsed


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([], id="not-an-object"),
        pytest.param(_body(format="jwt"), id="unknown-format"),
        pytest.param(_body(action="revoke"), id="unknown-action"),
        pytest.param(_body(extra=1), id="extra-member"),
        pytest.param({k: v for k, v in _body().items() if k != "token"}, id="no-token"),
        pytest.param(_body(token=COMPACT), id="hdp-token-as-string"),
        pytest.param(_body(format="aip-compact"), id="aip-token-as-object"),
        pytest.param(_body(format="aip-compact", token=""), id="aip-empty-token"),
        pytest.param(_body(format="aip-compact", token=CHAINED), id="compact-is-chained"),
        pytest.param(_body(format="aip-chained", token=COMPACT), id="chained-is-compact"),
        pytest.param(_body(audience="tallystickd"), id="audience-on-hdp"),
        pytest.param(_body(issuer_key=ISSUER.public_key.to_hex()), id="key-as-hex"),
        pytest.param(_body(issuer_key=ISSUER_KEY + "="), id="key-padded"),
        pytest.param(_body(issuer_key=ISSUER_KEY[:-1]), id="key-short"),
        pytest.param(_body(issuer_key=_non_canonical(ISSUER_KEY)), id="key-non-canonical-bits"),
        pytest.param(_body(issuer_key=7), id="key-not-a-string"),
    ],
)
def test_delegation_body_rejects(body: Any) -> None:
    with pytest.raises(MalformedInput) as exc:
        DelegationBody.from_body(body)
    assert exc.value.code == "log.entry_malformed"
    assert str(exc.value).startswith("log entry: delegation body")
