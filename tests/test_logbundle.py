"""Offline log bundle verification: valid logs verify, and every kind of damage is named.

Bundles are written here by a small writer built from verifier primitives only (LogEntry,
MerkleTree, NoteSigner, sign_checkpoint, canonicalize), independent of ``Bundle.to_bytes``.
A tampered log is modelled as the attacker would make it: rows of the log edited, deleted,
reordered or truncated, then exported again beside the checkpoints the log signed earlier.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tallystick.verifier import _cli, aip, hdp
from tallystick.verifier._internal.encoding import b64_encode, b64url_encode
from tallystick.verifier.canonical import canonicalize
from tallystick.verifier.checkpoint import (
    Checkpoint,
    NoteSigner,
    SignedNote,
    sign_checkpoint,
)
from tallystick.verifier.errors import MalformedInput, TallystickError
from tallystick.verifier.keys import DocumentSignature, KeyDocument, KeyEntry, PrivateKey
from tallystick.verifier.logbundle import (
    MAX_LINE_BYTES,
    Bundle,
    BundleReport,
    Damage,
    DamageKind,
    LogDamaged,
    verify_bundle,
)
from tallystick.verifier.logentry import GENESIS_PREV, DelegationBody, EntryKind, LogEntry
from tallystick.verifier.merkle import EMPTY_ROOT, MerkleTree, hash_leaf

ORIGIN = "tallystick.local/test"
LOG_KEY = PrivateKey.from_seed(bytes([1]) * 32)
SIGNER = NoteSigner(ORIGIN, LOG_KEY)
OTHER_KEY = PrivateKey.from_seed(bytes([2]) * 32)
ISSUER = PrivateKey.from_seed(bytes([3]) * 32)
AGENT = PrivateKey.from_seed(bytes([4]) * 32)
T0_MS = 1_700_000_000_000
CONSOLE_SCRIPT = Path(sys.executable).parent / "tallystick"

Body = tuple[EntryKind, dict[str, Any]]


# -- the in-test writer -------------------------------------------------------------------------


def call_body(i: int) -> Body:
    usage = {"input_tokens": 100 + i, "output_tokens": 10 + i}
    return EntryKind.CALL, {"provider": "openai", "model": "gpt-4o", "usage": usage}


def chain(bodies: list[Body], *, start: int = 0, prev: bytes = GENESIS_PREV) -> list[bytes]:
    """Entry bytes with correct indices and prev links, as an honest log writes them."""
    entries = []
    for offset, (kind, body) in enumerate(bodies):
        index = start + offset
        raw = LogEntry(index, prev, kind, T0_MS + 1000 * index, "agent-1", body).to_bytes()
        entries.append(raw)
        prev = hash_leaf(raw)
    return entries


def rechain(entries: list[bytes], start: int) -> list[bytes]:
    """Recompute index and prev from ``start`` on: what an attacker with the database does."""
    prev = GENESIS_PREV if start == 0 else hash_leaf(entries[start - 1])
    bodies = [(e.kind, e.body) for e in map(LogEntry.from_bytes, entries[start:])]
    return entries[:start] + chain(bodies, start=start, prev=prev)


def signed(
    entries: list[bytes], size: int, signer: NoteSigner = SIGNER, origin: str = ORIGIN
) -> str:
    tree = MerkleTree()
    tree.extend(hash_leaf(raw) for raw in entries[:size])
    return sign_checkpoint(Checkpoint(origin, size, tree.root()), signer)


def write(
    entries: list[bytes],
    checkpoints: list[str],
    *,
    origin: str = ORIGIN,
    vkey: str = SIGNER.vkey,
    size: int | None = None,
) -> bytes:
    header = {
        "format": "tallystick.bundle/v1",
        "origin": origin,
        "log_vkey": vkey,
        "size": len(entries) if size is None else size,
    }
    lines = [header, *({"entry": b64_encode(raw)} for raw in entries)]
    lines += [{"checkpoint": text} for text in checkpoints]
    return b"".join(canonicalize(line) + b"\n" for line in lines)


def check(data: bytes, **options: Any) -> BundleReport:
    return verify_bundle(Bundle.from_text(data), log_key=LOG_KEY.public_key, **options)


def damage_of(data: bytes, **options: Any) -> tuple[DamageKind, int | None]:
    report = check(data, **options)
    assert not report.valid
    assert report.damage is not None
    return report.damage.kind, report.damage.index


# -- logs ---------------------------------------------------------------------------------------


@cache
def delegation_bodies() -> dict[int, Body]:
    """Delegation entries by index: HDP issue and extend, AIP compact, chained, attenuated."""
    now_s = T0_MS // 1000
    root = hdp.issue_root(
        key=ISSUER,
        principal_id="alice@example.com",
        session_id="s1",
        intent="Summarise the report",
        issued_at_ms=T0_MS,
        token_id="123e4567-e89b-42d3-a456-426614174000",
    )
    hop = hdp.extend(
        root, key=ISSUER, agent_id="searcher", action_summary="search", timestamp_ms=T0_MS + 1
    )
    compact = aip.issue_compact(
        key=ISSUER, subject="agent-1", scopes=["tool:search"], issued_at=now_s
    )
    chained = aip.issue_chained(key=ISSUER, scopes=["tool:search", "tool:read"], issued_at=now_s)
    narrowed = aip.delegate_chained(
        chained,
        root_public_key=ISSUER.public_key,
        delegator_key=AGENT,
        delegate="agent-2",
        scopes=["tool:search"],
        context="search only",
    )

    def body(fmt: str, action: str, token: Any) -> Body:
        model = DelegationBody(
            format=fmt, action=action, token=token, issuer_key=ISSUER.public_key.to_b64url()
        )
        return EntryKind.DELEGATION, model.model_dump(mode="json")

    return {
        2: body("hdp", "issue", root.to_dict()),
        3: body("hdp", "extend", hop.to_dict()),
        5: body("aip-compact", "issue", compact),
        6: body("aip-chained", "issue", chained),
        9: body("aip-chained", "attenuate", narrowed),
    }


def bodies(n: int, *, delegations: bool = False) -> list[Body]:
    extra = delegation_bodies() if delegations else {}
    return [extra.get(i) or call_body(i) for i in range(n)]


@cache
def log20() -> tuple[list[bytes], list[str]]:
    """20 entries (five of them delegations) and checkpoints at sizes 8, 16 and 20."""
    entries = chain(bodies(20, delegations=True))
    return entries, [signed(entries, size) for size in (8, 16, 20)]


def bundle20() -> bytes:
    return write(*log20())


# -- valid bundles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "sizes"),
    [
        pytest.param(0, [0], id="empty"),
        pytest.param(1, [1], id="one"),
        pytest.param(7, [7], id="seven"),
        pytest.param(7, [0, 3, 7], id="seven-three-checkpoints"),
        pytest.param(100, [1, 37, 64, 100], id="hundred"),
    ],
)
def test_valid_bundle_verifies(n: int, sizes: list[int]) -> None:
    entries = chain(bodies(n))
    data = write(entries, [signed(entries, size) for size in sizes])
    report = check(data, origin=ORIGIN)
    assert report == BundleReport(size=n, origin=ORIGIN, checkpoints=len(sizes), damage=None)
    assert report.valid
    report.raise_for_damage()
    assert report.to_dict() == {
        "valid": True,
        "size": n,
        "origin": ORIGIN,
        "checkpoints": len(sizes),
        "damage": None,
    }


def test_empty_log_checkpoint_carries_the_empty_root() -> None:
    assert Bundle.from_text(write([], [signed([], 0)])).size == 0
    wrong = sign_checkpoint(Checkpoint(ORIGIN, 0, hash_leaf(b"")), SIGNER)
    assert damage_of(write([], [wrong])) == (DamageKind.ROOT_MISMATCH, 0)
    assert signed([], 0).split("\n")[2] == b64_encode(EMPTY_ROOT)


def test_valid_bundle_with_every_token_format_verifies() -> None:
    report = check(bundle20())
    assert report.valid, report.damage
    assert (report.size, report.checkpoints) == (20, 3)


def test_round_trip_through_to_bytes() -> None:
    data = bundle20()
    bundle = Bundle.from_text(data)
    assert bundle.to_bytes() == data
    assert Bundle.from_text(data.decode("utf-8")) == bundle
    assert bundle.entries == tuple(log20()[0])


def test_from_path(tmp_path: Path) -> None:
    path = tmp_path / "log.bundle"
    path.write_bytes(bundle20())
    assert Bundle.from_path(path) == Bundle.from_text(bundle20())
    with pytest.raises(MalformedInput) as exc:
        Bundle.from_path(tmp_path / "missing.bundle")
    assert exc.value.code == "bundle.unreadable"
    with pytest.raises(MalformedInput) as exc:
        Bundle.from_path(path, max_bytes=100)
    assert exc.value.code == "bundle.too_large"


# -- tampered logs ------------------------------------------------------------------------------


def _edit(entries: list[bytes], index: int) -> list[bytes]:
    """Entry ``index`` with one more output token, its own index and prev kept."""
    entry = LogEntry.from_bytes(entries[index])
    body = json.loads(json.dumps(entry.body))
    if entry.kind is EntryKind.CALL:
        body["usage"]["output_tokens"] += 1
    else:
        body["action"] = "extend" if body["action"] != "extend" else "issue"
    edited = LogEntry(entry.index, entry.prev, entry.kind, entry.time_ms, entry.agent, body)
    return [*entries[:index], edited.to_bytes(), *entries[index + 1 :]]


def _alter_hdp_token(entries: list[bytes], index: int) -> list[bytes]:
    entry = LogEntry.from_bytes(entries[index])
    body = json.loads(json.dumps(entry.body))
    body["token"]["chain"][0]["action_summary"] = "delete everything"
    edited = LogEntry(entry.index, entry.prev, entry.kind, entry.time_ms, entry.agent, body)
    return [*entries[:index], edited.to_bytes(), *entries[index + 1 :]]


def _swap(entries: list[bytes], i: int, j: int) -> list[bytes]:
    swapped = list(entries)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    return swapped


def _replace_signature(text: str) -> str:
    note = SignedNote.from_text(text)
    [signature] = note.signatures
    forged = type(signature)(signature.name, signature.key_id, bytes(64))
    return SignedNote(note.text, (forged,)).to_text()


def _other_history(size: int) -> list[bytes]:
    return chain([call_body(1000 + i) for i in range(size)])


E, C = log20()
Tamper = Callable[[list[bytes], list[str]], bytes]

TAMPERING: list[Any] = [
    pytest.param(
        lambda e, c: write(_edit(e, 12), c), (DamageKind.CHAIN_BROKEN, 13), id="edit-body"
    ),
    pytest.param(
        lambda e, c: write(rechain(_edit(e, 12), 12), c),
        (DamageKind.ROOT_MISMATCH, 8),
        id="edit-body-rechained",
    ),
    pytest.param(
        lambda e, c: write(rechain(_edit(e, 3), 3), c),
        (DamageKind.ROOT_MISMATCH, 0),
        id="edit-body-rechained-before-first-checkpoint",
    ),
    pytest.param(
        # The break follows entry 7, and the checkpoint at 8 already fails over entries 0..7.
        lambda e, c: write(_edit(e, 7), c),
        (DamageKind.ROOT_MISMATCH, 0),
        id="edit-last-entry-of-a-checkpoint",
    ),
    pytest.param(
        lambda e, c: write(_edit(e, 19), c), (DamageKind.ROOT_MISMATCH, 16), id="edit-last-entry"
    ),
    pytest.param(
        lambda e, c: write(e[:5] + e[6:], c), (DamageKind.INDEX_MISMATCH, 5), id="delete-entry"
    ),
    pytest.param(
        lambda e, c: write(_swap(e, 10, 11), c), (DamageKind.INDEX_MISMATCH, 10), id="reorder"
    ),
    pytest.param(
        lambda e, c: write(e[:7] + e[6:], c), (DamageKind.INDEX_MISMATCH, 7), id="duplicate-entry"
    ),
    pytest.param(
        lambda e, c: write(rechain(e[:5] + e[6:], 5), c),
        (DamageKind.ROOT_MISMATCH, 0),
        id="delete-entry-rechained",
    ),
    pytest.param(lambda e, c: write(e[:17], c), (DamageKind.TRUNCATED, 17), id="truncate-tail"),
    pytest.param(
        lambda e, c: write(e[:10], c), (DamageKind.TRUNCATED, 10), id="truncate-past-a-checkpoint"
    ),
    pytest.param(
        lambda e, c: write(e + chain([call_body(20)], start=20, prev=hash_leaf(e[-1])), c),
        (DamageKind.UNANCHORED_TAIL, 20),
        id="append-unsigned-entry",
    ),
    pytest.param(
        lambda e, c: write(e, c[:2]), (DamageKind.UNANCHORED_TAIL, 16), id="drop-last-checkpoint"
    ),
    pytest.param(
        lambda e, c: write(e, [c[0], _replace_signature(c[1]), c[2]]),
        (DamageKind.CHECKPOINT_INVALID, 16),
        id="replace-checkpoint-signature",
    ),
    pytest.param(
        lambda e, c: write(e, [c[0], signed(e, 16, NoteSigner(ORIGIN, OTHER_KEY)), c[2]]),
        (DamageKind.WRONG_KEY, 16),
        id="checkpoint-by-another-key",
    ),
    pytest.param(
        lambda e, c: write(
            e,
            [signed(e, s, NoteSigner(ORIGIN, OTHER_KEY)) for s in (8, 16, 20)],
            vkey=NoteSigner(ORIGIN, OTHER_KEY).vkey,
        ),
        (DamageKind.WRONG_KEY, None),
        id="bundle-of-another-log-key",
    ),
    pytest.param(
        lambda e, c: write(e, [c[0], c[1], signed(_other_history(16), 16), c[2]]),
        (DamageKind.FORK, 16),
        id="fork-same-size",
    ),
    pytest.param(
        lambda e, c: write(e, [signed(_other_history(8), 8), c[1], c[2]]),
        (DamageKind.FORK, 8),
        id="fork-earlier-checkpoint",
    ),
    pytest.param(
        lambda e, c: write(e, [c[0], c[1], c[1], c[2]]),
        (DamageKind.CHECKPOINT_INVALID, 16),
        id="repeated-checkpoint",
    ),
    pytest.param(
        lambda e, c: write(e, [c[0], c[2], c[1]]),
        (DamageKind.CHECKPOINT_INVALID, 16),
        id="checkpoints-out-of-order",
    ),
    pytest.param(
        lambda e, c: write(
            e, c, origin="evil.example/log", vkey=NoteSigner("evil.example/log", LOG_KEY).vkey
        ),
        (DamageKind.CHECKPOINT_INVALID, 8),
        id="origin-changed-with-vkey",
    ),
    pytest.param(
        lambda e, c: write(e, c, origin="evil.example/log"),
        (DamageKind.CHECKPOINT_INVALID, None),
        id="origin-changed-in-header-only",
    ),
    pytest.param(
        lambda e, c: write(e, [signed(e, s, origin="evil.example/log") for s in (8, 16, 20)]),
        (DamageKind.CHECKPOINT_INVALID, 8),
        id="checkpoints-of-another-origin",
    ),
    pytest.param(
        lambda e, c: write([e[0].replace(b",", b", ", 1), *e[1:]], c),
        (DamageKind.ENTRY_NOT_CANONICAL, 0),
        id="non-canonical-entry",
    ),
    pytest.param(
        lambda e, c: write([*e[:4], b"not an entry", *e[5:]], c),
        (DamageKind.ENTRY_MALFORMED, 4),
        id="malformed-entry",
    ),
    pytest.param(
        lambda e, c: write(rechain([chain([call_body(0)], prev=bytes([1]) * 32)[0], *e[1:]], 1), c),
        (DamageKind.CHAIN_BROKEN, 0),
        id="bad-genesis-prev",
    ),
    pytest.param(
        lambda e, c: write(_alter_hdp_token(e, 3), c),
        (DamageKind.TOKEN_INVALID, 3),
        id="hdp-token-altered",
    ),
    pytest.param(
        lambda e, c: write(rechain(_alter_hdp_token(e, 3), 3), c),
        (DamageKind.TOKEN_INVALID, 3),
        id="hdp-token-altered-rechained",
    ),
]


@pytest.mark.parametrize(("tamper", "expected"), TAMPERING)
def test_tampering_is_detected(tamper: Tamper, expected: tuple[DamageKind, int | None]) -> None:
    data = tamper(list(E), list(C))
    assert data != bundle20()
    assert damage_of(data) == expected


def test_origin_other_than_expected() -> None:
    assert damage_of(bundle20(), origin="other.example/log") == (
        DamageKind.CHECKPOINT_INVALID,
        None,
    )


def test_damage_report_and_raise() -> None:
    report = check(write(_edit(list(E), 12), C))
    assert report.damage is not None
    assert str(report.damage).startswith("chain_broken at entry 13: ")
    assert report.to_dict() == {
        "valid": False,
        "size": 20,
        "origin": ORIGIN,
        "checkpoints": 3,
        "damage": {"kind": "chain_broken", "index": 13, "detail": report.damage.detail},
    }
    with pytest.raises(LogDamaged) as exc:
        report.raise_for_damage()
    assert isinstance(exc.value, TallystickError)
    assert exc.value.code == "log.chain_broken"
    assert exc.value.damage == report.damage
    assert str(Damage(DamageKind.FORK, 8, "x")) == "fork at checkpoint of size 8: x"
    assert str(Damage(DamageKind.WRONG_KEY, None, "x")) == "wrong_key: x"


def test_damage_kinds_are_the_documented_set() -> None:
    assert {kind.value for kind in DamageKind} == {
        "entry_malformed",
        "entry_not_canonical",
        "index_mismatch",
        "chain_broken",
        "root_mismatch",
        "checkpoint_invalid",
        "fork",
        "truncated",
        "unanchored_tail",
        "token_invalid",
        "wrong_key",
        "key_document_invalid",
    }


# -- tokens the log itself signed ---------------------------------------------------------------


def _signed_log(extra: Body) -> bytes:
    entries = chain([call_body(0), extra, call_body(2)])
    return write(entries, [signed(entries, 3)])


def test_expired_aip_token_is_invalid_at_its_entry_time() -> None:
    # Issued an hour before the entry was written, valid for a minute.
    token = aip.issue_compact(
        key=ISSUER,
        subject="agent-1",
        scopes=["tool:search"],
        issued_at=T0_MS // 1000 - 3600,
        ttl_s=60,
    )
    body = DelegationBody(
        format="aip-compact", action="issue", token=token, issuer_key=ISSUER.public_key.to_b64url()
    )
    data = _signed_log((EntryKind.DELEGATION, body.model_dump(mode="json")))
    assert damage_of(data) == (DamageKind.TOKEN_INVALID, 1)
    report = check(data)
    assert report.damage is not None and "aip.token_expired" in report.damage.detail
    assert check(data, verify_tokens=False).valid


def test_token_under_another_issuer_key_is_invalid() -> None:
    _, body = delegation_bodies()[2]
    data = _signed_log((EntryKind.DELEGATION, {**body, "issuer_key": AGENT.public_key.to_b64url()}))
    assert damage_of(data) == (DamageKind.TOKEN_INVALID, 1)


def test_delegation_body_outside_the_model_is_malformed() -> None:
    data = _signed_log((EntryKind.DELEGATION, {"token_id": "t1"}))
    assert damage_of(data) == (DamageKind.ENTRY_MALFORMED, 1)
    assert damage_of(data, verify_tokens=False) == (DamageKind.ENTRY_MALFORMED, 1)


# -- malformed bundles --------------------------------------------------------------------------


def _lines() -> list[bytes]:
    return bundle20().split(b"\n")[:-1]


def _join(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _with_line(position: int, line: bytes) -> bytes:
    lines = _lines()
    lines[position] = line
    return _join(lines)


def _header(**changes: Any) -> bytes:
    header = json.loads(_lines()[0])
    header.update(changes)
    return _with_line(0, canonicalize({k: v for k, v in header.items() if v is not None}))


MALFORMED: list[Any] = [
    pytest.param(b"", "bundle.no_header", id="empty"),
    pytest.param(bundle20()[:-1], "bundle.no_final_newline", id="no-final-newline"),
    pytest.param(_with_line(3, b'{"entry":'), "bundle.bad_json", id="bad-json"),
    pytest.param(_with_line(3, b""), "bundle.bad_json", id="blank-line"),
    pytest.param(
        _with_line(3, b'{"entry":"AA==","entry":"AA=="}'), "bundle.bad_json", id="duplicate-members"
    ),
    pytest.param(_with_line(3, b'{"entry":"\xff"}'), "bundle.bad_json", id="not-utf8"),
    pytest.param(_with_line(3, b'{"entry": "AA=="}'), "bundle.not_canonical", id="space"),
    pytest.param(_with_line(3, b'{"entry":"\\u0041A=="}'), "bundle.not_canonical", id="escape"),
    pytest.param(_with_line(3, b'{"entry":"AA"}'), "bundle.bad_base64", id="unpadded-base64"),
    pytest.param(_with_line(3, b'{"entry":"AB=="}'), "bundle.bad_base64", id="non-canonical-bits"),
    pytest.param(_with_line(3, b'{"entry":"_-A="}'), "bundle.bad_base64", id="url-safe-base64"),
    pytest.param(_with_line(3, b'{"entry":7}'), "bundle.bad_line", id="entry-not-a-string"),
    pytest.param(
        _with_line(3, b'{"entry":"' + b"A" * MAX_LINE_BYTES + b'"}'),
        "bundle.line_too_large",
        id="huge-entry-line",
    ),
    pytest.param(
        _with_line(3, b"[" * (MAX_LINE_BYTES + 1)), "bundle.line_too_large", id="huge-line"
    ),
    pytest.param(_with_line(3, b"[]"), "bundle.bad_line", id="array-line"),
    pytest.param(_with_line(3, b'{"leaf":"AA=="}'), "bundle.bad_line", id="unknown-member"),
    pytest.param(
        _with_line(3, b'{"checkpoint":"x","entry":"AA=="}'), "bundle.bad_line", id="two-members"
    ),
    pytest.param(_with_line(-1, b'{"checkpoint":1}'), "bundle.bad_line", id="checkpoint-not-text"),
    pytest.param(_with_line(0, _lines()[1]), "bundle.no_header", id="no-header"),
    pytest.param(_join([_lines()[0], *_lines()]), "bundle.bad_line", id="two-headers"),
    pytest.param(_header(format="tallystick.bundle/v2"), "bundle.unsupported_format", id="v2"),
    pytest.param(_header(extra=1), "bundle.bad_header", id="header-extra-member"),
    pytest.param(_header(log_vkey=None), "bundle.bad_header", id="header-missing-member"),
    pytest.param(_header(size=-1), "bundle.bad_header", id="header-negative-size"),
    pytest.param(_header(size="20"), "bundle.bad_header", id="header-size-string"),
    pytest.param(_header(origin="has space"), "bundle.bad_header", id="header-origin-space"),
    pytest.param(_header(origin=7), "bundle.bad_header", id="header-origin-number"),
    pytest.param(_header(log_vkey="not a vkey"), "bundle.bad_header", id="header-bad-vkey"),
    pytest.param(_header(size=19), "bundle.size_mismatch", id="size-mismatch"),
    pytest.param(_join(_lines()[:21]), "bundle.no_checkpoint", id="no-checkpoint"),
    pytest.param(
        _join([*_lines()[:20], _lines()[-1], _lines()[20]]), "bundle.bad_order", id="entry-late"
    ),
]


@pytest.mark.parametrize(("data", "code"), MALFORMED)
def test_malformed_bundle_is_rejected_with_a_code(data: bytes, code: str) -> None:
    with pytest.raises(MalformedInput) as exc:
        Bundle.from_text(data)
    assert exc.value.code == code


def test_size_caps() -> None:
    with pytest.raises(MalformedInput) as exc:
        Bundle.from_text(bundle20(), max_bytes=1000)
    assert exc.value.code == "bundle.too_large"
    with pytest.raises(MalformedInput) as exc:
        Bundle.from_text(bundle20().decode(), max_bytes=1000)
    assert exc.value.code == "bundle.too_large"
    with pytest.raises(MalformedInput) as exc:
        Bundle.from_text("\ud800\n")
    assert exc.value.code == "bundle.bad_unicode"


def test_bundle_construction_is_checked() -> None:
    with pytest.raises(MalformedInput) as exc:
        Bundle(ORIGIN, SIGNER.vkey, (), ())
    assert exc.value.code == "bundle.no_checkpoint"
    with pytest.raises(MalformedInput) as exc:
        Bundle(ORIGIN, SIGNER.vkey, ("not bytes",), (signed([], 0),))  # type: ignore[arg-type]
    assert exc.value.code == "bundle.bad_line"


# -- random edits -------------------------------------------------------------------------------


@cache
def small_bundle() -> bytes:
    # One checkpoint: dropping an intermediate checkpoint of a longer bundle leaves a bundle
    # that is still true (the last checkpoint vouches for everything), so it is not an edit
    # that must fail.
    entries = chain(bodies(7, delegations=True))
    return write(entries, [signed(entries, 7)])


@st.composite
def edited_bundles(draw: st.DrawFn) -> bytes:
    lines = small_bundle().split(b"\n")[:-1]
    position = draw(st.integers(0, len(lines) - 1))
    edit = draw(st.sampled_from(["delete", "duplicate", "swap", "char", "insert", "cut"]))
    if edit == "delete":
        del lines[position]
    elif edit == "duplicate":
        lines.insert(draw(st.integers(0, len(lines))), lines[position])
    elif edit == "swap":
        other = draw(st.integers(0, len(lines) - 1).filter(lambda i: i != position))
        lines[position], lines[other] = lines[other], lines[position]
    elif edit == "char":
        line = lines[position]
        at = draw(st.integers(0, len(line) - 1))
        new = draw(st.binary(min_size=1, max_size=1).filter(lambda b: b != line[at : at + 1]))
        lines[position] = line[:at] + new + line[at + 1 :]
    elif edit == "insert":
        lines.insert(position, draw(st.binary(max_size=200)))
    else:
        cut = draw(st.integers(0, len(small_bundle()) - 1))
        return small_bundle()[:cut]
    return b"\n".join(lines) + b"\n"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited_bundles())
def test_random_line_edits_never_verify_and_never_crash(data: bytes) -> None:
    assert data != small_bundle()
    try:
        bundle = Bundle.from_text(data)
    except MalformedInput as exc:
        assert exc.code.startswith("bundle.")
        return
    report = verify_bundle(bundle, log_key=LOG_KEY.public_key)
    assert not report.valid
    assert report.damage is not None and report.damage.kind in DamageKind


def test_small_bundle_is_valid() -> None:
    assert check(small_bundle()).valid


# -- the CLI ------------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = _cli.main(list(argv))
    except SystemExit as exc:  # argparse and usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "good.bundle").write_bytes(bundle20())
    (tmp_path / "edited.bundle").write_bytes(write(_edit(list(E), 12), C))
    (tmp_path / "broken.bundle").write_bytes(bundle20()[:-1])
    (tmp_path / "log.pub").write_text(LOG_KEY.public_key.to_b64url() + "\n")
    return tmp_path


def test_cli_valid_bundle(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "log", "verify", str(files / "good.bundle"), "--log-key", str(files / "log.pub")
    )
    assert code == 0
    assert out == f"valid: log {ORIGIN}: 20 entries, 3 checkpoint(s) verified\n"
    code, out, _ = run(
        capsys,
        "log",
        "verify",
        str(files / "good.bundle"),
        "--log-key",
        LOG_KEY.public_key.to_hex(),
        "--origin",
        ORIGIN,
        "--json",
    )
    assert code == 0
    assert json.loads(out) == {
        "valid": True,
        "size": 20,
        "origin": ORIGIN,
        "checkpoints": 3,
        "damage": None,
    }


def test_cli_damage_names_the_first_bad_entry(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("log", "verify", str(files / "edited.bundle"), "--log-key", str(files / "log.pub"))
    code, out, _ = run(capsys, *args)
    assert code == 1
    assert out.startswith("invalid: chain_broken at entry 13: ")
    code, out, _ = run(capsys, *args, "--json")
    assert code == 1
    result = json.loads(out)
    assert set(result) == {"valid", "size", "origin", "checkpoints", "damage"}
    assert result["valid"] is False
    assert set(result["damage"]) == {"kind", "index", "detail"}
    assert (result["damage"]["kind"], result["damage"]["index"]) == ("chain_broken", 13)


def test_cli_wrong_key_and_origin(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = str(files / "good.bundle")
    code, out, _ = run(
        capsys, "log", "verify", good, "--log-key", OTHER_KEY.public_key.to_b64url(), "--json"
    )
    assert code == 1 and json.loads(out)["damage"]["kind"] == "wrong_key"
    code, out, _ = run(
        capsys,
        "log",
        "verify",
        good,
        "--log-key",
        str(files / "log.pub"),
        "--origin",
        "x.example/log",
    )
    assert code == 1 and out.startswith("invalid: checkpoint_invalid: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["broken.bundle", "--log-key", "log.pub"], "bundle.no_final_newline", id="malformed"
        ),
        pytest.param(
            ["missing.bundle", "--log-key", "log.pub"], "bundle.unreadable", id="missing-file"
        ),
        pytest.param(["good.bundle", "--log-key", "not-a-key"], "public key", id="bad-key"),
        pytest.param(["good.bundle"], "--log-key", id="no-key"),
    ],
)
def test_cli_usage_errors_exit_2(
    files: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(files)
    code, out, err = run(capsys, "log", "verify", *argv)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_cli_reads_standard_input(
    files: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(bundle20())))
    code, out, _ = run(capsys, "log", "verify", "-", "--log-key", str(files / "log.pub"), "--json")
    assert code == 0 and json.loads(out)["valid"] is True


def test_console_script_exit_codes(files: Path) -> None:
    def verify(data: bytes) -> subprocess.CompletedProcess[bytes]:
        argv = [str(CONSOLE_SCRIPT), "log", "verify", "-", "--log-key", str(files / "log.pub")]
        return subprocess.run(argv, input=data, capture_output=True, check=False, timeout=60)

    assert verify(bundle20()).returncode == 0
    damaged = verify(write(E[:17], C))
    assert damaged.returncode == 1
    assert damaged.stdout.startswith(b"invalid: truncated at entry 17: ")
    unreadable = verify(b"{}\n")
    assert unreadable.returncode == 2 and b"bundle.no_header" in unreadable.stderr


# -- the plugin hook ----------------------------------------------------------------------------


def _register_hello(groups: _cli.SubcommandGroups) -> None:
    hello = groups["log"].add_parser("hello", help="a plugin's command")
    hello.add_argument("--name", required=True)
    hello.set_defaults(handler=lambda args: print(f"hello {args.name}") or 0)
    top = groups[""].add_parser("greet")
    top.set_defaults(handler=lambda args: 3)


def test_plugins_add_subcommands_to_the_log_group_and_top_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = _cli._build_parser([_register_hello])
    args = parser.parse_args(["log", "hello", "--name", "auditor"])
    assert args.handler(args) == 0
    assert capsys.readouterr().out == "hello auditor\n"
    greet = parser.parse_args(["greet"])
    assert greet.handler(greet) == 3
    # The offline command is still there beside the plugin's.
    verify = parser.parse_args(["log", "verify", "b", "--log-key", "k"])
    assert verify.handler is _cli.cmd_log_verify


def test_plugin_whose_import_fails_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tallystick_test_plugin.py").write_text(
        "def register(groups):\n    groups['log'].add_parser('extra')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [
        EntryPoint("daemon", "tallystick_no_such_module_xyz:register", _cli.PLUGIN_GROUP),
        EntryPoint("extra", "tallystick_test_plugin:register", _cli.PLUGIN_GROUP),
    ]
    registers = _cli._load_plugins(points)
    assert [register.__module__ for register in registers] == ["tallystick_test_plugin"]
    parser = _cli._build_parser(registers)
    assert parser.parse_args(["log", "extra"]).log_command == "extra"


def test_build_parser_loads_the_installed_group() -> None:
    # Whatever is installed under tallystick.cli, the offline commands stay available.
    args = _cli.build_parser().parse_args(["log", "verify", "b", "--log-key", "k"])
    assert args.handler is _cli.cmd_log_verify


# -- rotated logs: key documents in the bundle --------------------------------------------------

NEW_KEY = PrivateKey.from_seed(bytes([5]) * 32)
NEW_SIGNER = NoteSigner(ORIGIN, NEW_KEY)
#: After entry 3 (T0 + 3000) and before entry 4 (T0 + 4000).
ROTATED_AT = T0_MS + 3500
V1 = KeyDocument.create(owner=ORIGIN, key=LOG_KEY, at_ms=0)
V2 = V1.rotate(old_key=LOG_KEY, new_key=NEW_KEY, at_ms=ROTATED_AT)


def sign_document(doc: KeyDocument, *keys: PrivateKey) -> KeyDocument:
    """``doc`` re-signed by exactly ``keys``: what a forger holding only those keys can make."""
    body = doc.signed_bytes()
    signatures = tuple(
        DocumentSignature(kid=key.kid, sig=b64url_encode(key.sign(body))) for key in keys
    )
    return doc.model_copy(update={"signatures": signatures})


def rotated_bundle(*, documents: list[KeyDocument] | None = None, last: str | None = None) -> bytes:
    """Six entries; checkpoints 2 and 4 by the original key, 6 by the new key and the old."""
    entries = chain([call_body(i) for i in range(6)])
    checkpoints = [
        signed(entries, 2),
        signed(entries, 4),
        last or sign_checkpoint(Checkpoint(ORIGIN, 6, root_of(entries, 6)), NEW_SIGNER, SIGNER),
    ]
    lines = write(entries, checkpoints, vkey=NEW_SIGNER.vkey).split(b"\n", 1)
    docs = [V1, V2] if documents is None else documents
    inserted = b"".join(
        canonicalize({"key_document": doc.model_dump(mode="json")}) + b"\n" for doc in docs
    )
    return lines[0] + b"\n" + inserted + lines[1]


def root_of(entries: list[bytes], size: int) -> bytes:
    tree = MerkleTree()
    tree.extend(hash_leaf(raw) for raw in entries[:size])
    return tree.root()


@pytest.mark.parametrize(
    "log_key",
    [
        pytest.param(LOG_KEY, id="anchor-key"),
        pytest.param(NEW_KEY, id="current-key"),
    ],
)
def test_a_rotated_bundle_verifies_with_the_anchor_or_a_later_key(log_key: PrivateKey) -> None:
    raw = rotated_bundle()
    bundle = Bundle.from_text(raw)
    assert bundle.key_documents == (V1, V2)
    assert bundle.to_bytes() == raw
    report = verify_bundle(bundle, log_key=log_key.public_key)
    assert report.damage is None
    assert report.checkpoints == 3


def test_a_rotated_bundle_from_the_cli_with_the_anchor_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rotated.bundle"
    path.write_bytes(rotated_bundle())
    key = LOG_KEY.public_key.to_b64url()
    assert _cli.main(["log", "verify", str(path), "--log-key", key, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True


def _damage(raw: bytes, log_key: PrivateKey = LOG_KEY) -> Damage:
    damage = verify_bundle(Bundle.from_text(raw), log_key=log_key.public_key).damage
    assert damage is not None
    return damage


def test_a_key_unknown_to_the_history_is_the_wrong_key() -> None:
    damage = _damage(rotated_bundle(), OTHER_KEY)
    assert (damage.kind, damage.index) == (DamageKind.WRONG_KEY, None)
    assert "key.not_in_history" in damage.detail


def test_a_rotated_bundle_without_its_key_documents_fails_with_the_anchor() -> None:
    assert _damage(rotated_bundle(documents=[])).kind is DamageKind.WRONG_KEY


FORGER = PrivateKey.from_seed(bytes([6]) * 32)


def _forged_v2() -> KeyDocument:
    """V2 adding the forger's key instead, signed only by that new key."""
    unsigned = V1.rotate(old_key=LOG_KEY, new_key=FORGER, at_ms=ROTATED_AT)
    return sign_document(unsigned, FORGER)


@pytest.mark.parametrize(
    ("documents", "code"),
    [
        pytest.param([V1, _forged_v2()], "key.document_unsigned", id="signed-only-by-new-key"),
        pytest.param(
            [V1, sign_document(V2.model_copy(update={"prev": V2.digest()}), LOG_KEY, NEW_KEY)],
            "key.document_chain",
            id="broken-prev-link",
        ),
        pytest.param([V2], "key.document_chain", id="history-without-version-1"),
        pytest.param([V2, V1], "key.document_chain", id="reordered"),
        pytest.param(
            [V1, V2, V2.rotate(old_key=NEW_KEY, new_key=FORGER, at_ms=ROTATED_AT)],
            "key.document_chain",
            id="not-issued-after-its-predecessor",
        ),
        pytest.param(
            [
                V1,
                V2,
                sign_document(
                    V2.model_copy(
                        update={
                            "version": 3,
                            "issued_at": ROTATED_AT + 1,
                            "prev": V2.digest(),
                            "keys": (
                                *V2.keys,
                                KeyEntry(
                                    kid=FORGER.kid,
                                    pub=FORGER.public_key.to_b64url(),
                                    valid_from=0,
                                ),
                            ),
                        }
                    ),
                    LOG_KEY,
                    FORGER,
                ),
            ],
            "key.document_unsigned",
            id="appended-by-the-retired-key",
        ),
    ],
)
def test_a_bad_key_history_is_key_document_invalid(documents: list[KeyDocument], code: str) -> None:
    damage = _damage(rotated_bundle(documents=documents))
    assert (damage.kind, damage.index) == (DamageKind.KEY_DOCUMENT_INVALID, None)
    assert damage.detail.startswith(code)


def test_a_checkpoint_by_a_retired_key_after_its_retirement_is_the_wrong_key() -> None:
    entries = chain([call_body(i) for i in range(6)])
    by_retired_key = sign_checkpoint(Checkpoint(ORIGIN, 6, root_of(entries, 6)), SIGNER)
    damage = _damage(rotated_bundle(last=by_retired_key))
    assert (damage.kind, damage.index) == (DamageKind.WRONG_KEY, 6)
    assert "checkpoint.retired_key" in damage.detail


def test_the_new_key_may_sign_entries_from_before_its_rotation() -> None:
    """A recovery checkpoint after a rotation covers old entries: the new key vouches for them."""
    entries = chain([call_body(i) for i in range(6)])
    bundle = Bundle.from_text(rotated_bundle())
    early = sign_checkpoint(Checkpoint(ORIGIN, 3, root_of(entries, 3)), NEW_SIGNER)
    rebuilt = Bundle(
        ORIGIN,
        bundle.log_vkey,
        bundle.entries,
        (bundle.checkpoints[0], early, *bundle.checkpoints[1:]),
        bundle.key_documents,
    )
    assert verify_bundle(rebuilt, log_key=LOG_KEY.public_key).damage is None


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        pytest.param(
            lambda raw: raw.replace(b'"tallystick.keys/v1"', b'"tallystick.keys/v9"', 1),
            "bundle.bad_key_document",
            id="unknown-document-type",
        ),
        pytest.param(
            lambda raw: (
                raw.split(b"\n", 2)[0]
                + b"\n"
                + raw.split(b"\n", 2)[2].replace(
                    b'{"checkpoint"', raw.split(b"\n", 2)[1] + b'\n{"checkpoint"', 1
                )
            ),
            "bundle.bad_order",
            id="after-an-entry",
        ),
    ],
)
def test_misplaced_or_malformed_key_document_lines_are_format_errors(
    mutate: Callable[[bytes], bytes], code: str
) -> None:
    with pytest.raises(MalformedInput) as exc:
        Bundle.from_text(mutate(rotated_bundle(documents=[V1])))
    assert exc.value.code == code
