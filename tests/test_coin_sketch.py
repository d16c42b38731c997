"""The n-gram sketch and run-widened challenges (a Tallystick extension of coin.md §4.3-§4.4).

Pure: no engine, no model. Sketch entries are recomputed here from the formula with ``hmac``
and ``hashlib`` alone; heads and evidence come from the golden generator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tallystick.verifier import _cli, coin
from tallystick.verifier._internal.encoding import b64_decode, b64_encode
from tallystick.verifier.checkpoint import sign_note
from tallystick.verifier.errors import CheckpointInvalid, MalformedInput
from vectors import generate_coin as golden

VECTORS = Path(__file__).resolve().parent / "vectors" / "coin"
KEY = coin.sketch_key(b"sketch test secret")
OTHER_KEY = coin.sketch_key(b"another secret")
#: 40 distinct token ids, the extremes of uint32 among them.
IDS = (0, 2**32 - 1, *range(1000, 1038))
N = coin.SKETCH_NGRAM


def _vector(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def _reference_entries(key: bytes, ids: Sequence[int]) -> list[bytes]:
    """``HMAC-SHA256(key, "coin/ngram/v1" || u32be ids[i-7..i])[:8]`` for each ``i >= 7``."""
    return [
        hmac.new(
            key,
            b"coin/ngram/v1" + b"".join(t.to_bytes(4, "big") for t in ids[end - 7 : end + 1]),
            hashlib.sha256,
        ).digest()[:8]
        for end in range(7, len(ids))
    ]


_BASE_HEAD = golden.commit(golden.TOKEN_IDS).head


def _head_binding(ids: Sequence[int], sketch: bytes | None) -> coin.CommitmentHead:
    """A head over ``len(ids)`` tokens binding ``sketch`` (verify_sketch reads only the count
    and the sketch line; nothing here is signed)."""
    return dataclasses.replace(
        _BASE_HEAD,
        reasoning_tokens=len(ids),
        reported_usage=coin.ReportedUsage(None, None, len(ids), None),
        sketch_sha256=None if sketch is None else coin.sketch_sha256(sketch),
    )


def _pairs(ids: Sequence[int], indices: Iterable[int]) -> list[tuple[int, int]]:
    return [(index, ids[index]) for index in indices]


def _run(start: int, length: int) -> range:
    return range(start, start + length)


# -- the formula ---------------------------------------------------------------------------


def test_constants() -> None:
    assert (coin.SKETCH_NGRAM, coin.SKETCH_ENTRY_BYTES, coin.SKETCH_KEY_BYTES) == (8, 8, 32)
    assert coin.MAX_RUN_LENGTH == 256


def test_sketch_key_is_the_documented_hmac() -> None:
    secret = b"sketch test secret"
    assert hmac.new(secret, b"coin/sketch-key/v1", hashlib.sha256).digest() == KEY
    assert len(KEY) == coin.SKETCH_KEY_BYTES and KEY != OTHER_KEY
    # The key is derived from the trace secret, and is not a salt (coin/salt).
    assert coin.sketch_key(golden.TRACE_SECRET) == golden.SKETCH_KEY
    assert golden.SKETCH_KEY not in {coin.leaf_salt(golden.TRACE_SECRET, i) for i in range(10)}
    for bad in (b"", "secret", None):
        with pytest.raises(MalformedInput) as caught:
            coin.sketch_key(bad)  # type: ignore[arg-type]
        assert caught.value.code == "coin.bad_secret"


def test_entries_match_an_independent_computation() -> None:
    entries = coin.ngram_entries(KEY, IDS)
    assert entries == _reference_entries(KEY, IDS)
    assert len(entries) == len(IDS) - 7
    assert all(len(entry) == coin.SKETCH_ENTRY_BYTES for entry in entries)
    assert coin.ngram_sketch(KEY, IDS) == b"".join(entries)
    assert coin.sketch_sha256(b"".join(entries)) == hashlib.sha256(b"".join(entries)).hexdigest()
    # Keyed: another key gives other entries.
    assert set(coin.ngram_entries(OTHER_KEY, IDS)).isdisjoint(entries)


def test_golden_sketch_and_head_line() -> None:
    vector = _vector("head.json")
    sketch = b"".join(_reference_entries(golden.SKETCH_KEY, golden.TOKEN_IDS))
    assert vector["sketch_key_hex"] == golden.SKETCH_KEY.hex()
    assert vector["sketch_hex"] == sketch.hex() and len(sketch) == 3 * 8
    head = coin.verify_head(vector["head_note"], golden.PROVIDER.verifier)
    assert head.sketch_sha256 == hashlib.sha256(sketch).hexdigest()
    assert f"\nsketch sha256:{head.sketch_sha256}\ntime " in vector["head_note"]


@pytest.mark.parametrize("m", range(8))
def test_fewer_tokens_than_an_ngram_give_an_empty_sketch(m: int) -> None:
    assert coin.ngram_entries(KEY, IDS[:m]) == []
    assert coin.ngram_sketch(KEY, IDS[:m]) == b""


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=40))
def test_sketch_length_is_exactly_eight_bytes_per_full_ngram(ids: list[int]) -> None:
    sketch = coin.ngram_sketch(KEY, ids)
    assert len(sketch) == 8 * max(0, len(ids) - 7)
    assert sketch == b"".join(_reference_entries(KEY, ids))


@pytest.mark.parametrize("position", [0, 5, 7, 20, 39])
def test_a_token_moves_exactly_the_entries_whose_window_holds_it(position: int) -> None:
    changed = list(IDS)
    changed[position] += 1
    before, after = coin.ngram_entries(KEY, IDS), coin.ngram_entries(KEY, changed)
    differ = {i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}
    # Entry i covers tokens i..i+7.
    assert differ == set(range(max(0, position - 7), min(position, len(IDS) - 8) + 1))


@pytest.mark.parametrize(
    "ids", [[-1], [2**32], [True], ["1"], [1.0]], ids=["negative", "over-u32", "bool", "str", "f"]
)
def test_entries_refuse_token_ids_that_are_not_uint32(ids: list[Any]) -> None:
    with pytest.raises(MalformedInput) as caught:
        coin.ngram_entries(KEY, [*IDS[:7], *ids])
    assert caught.value.code == "coin.bad_int"


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33), "k" * 32, None], ids=repr)
def test_entries_refuse_a_key_that_is_not_32_bytes(key: Any) -> None:
    for ids in (IDS, IDS[:3]):  # also when there is nothing to hash
        with pytest.raises(MalformedInput) as caught:
            coin.ngram_entries(key, ids)
        assert caught.value.code == "coin.sketch_malformed"


# -- the head's sketch line ----------------------------------------------------------------


def _text(note: str) -> str:
    return note.split("\n\n")[0] + "\n"


def test_head_with_and_without_a_sketch_round_trips() -> None:
    sketched = golden.commit(golden.TOKEN_IDS)
    plain = golden.commit(golden.TOKEN_IDS, sketched=False)
    assert plain.sketch is None and plain.head.sketch_sha256 is None
    assert sketched.sketch is not None
    assert sketched.head.sketch_sha256 == coin.sketch_sha256(sketched.sketch)
    for synthetic, lines in ((sketched, 14), (plain, 13)):
        text = synthetic.head.to_text()
        assert text == _text(synthetic.head_note)
        assert text.count("\n") == lines
        assert coin.CommitmentHead.from_text(text) == synthetic.head
        assert coin.verify_head(synthetic.head_note, golden.PROVIDER.verifier) == synthetic.head
    assert "sketch" not in plain.head.to_text()
    sketched_lines = sketched.head.to_text().splitlines()
    assert sketched_lines[-2] == f"sketch sha256:{sketched.head.sketch_sha256}"
    assert sketched_lines[-1].startswith("time ")
    # Dropping the line is the head without it: the other fields are untouched.
    assert [line for line in sketched_lines if not line.startswith("sketch ")] == (
        plain.head.to_text().splitlines()
    )


def test_the_signature_covers_the_sketch_line() -> None:
    note = golden.commit(golden.TOKEN_IDS).head_note
    digest = coin.sketch_sha256(b"another sketch")
    altered = note.replace(note.split("sketch sha256:")[1][:64], digest)
    assert altered != note
    with pytest.raises(CheckpointInvalid) as caught:
        coin.verify_head(altered, golden.PROVIDER.verifier)
    assert caught.value.code == "coin.head_signature_invalid"


def _sketch_mutations() -> list[Any]:
    text = _text(golden.commit(golden.TOKEN_IDS).head_note)
    lines = text[:-1].split("\n")
    sketch_line = lines[-2]
    digest = sketch_line.removeprefix("sketch sha256:")
    without = [line for line in lines if line != sketch_line]

    def joined(parts: list[str]) -> str:
        return "\n".join(parts) + "\n"

    cases = {
        "upper-hex": text.replace(digest, digest.upper()),
        "short-hex": text.replace(digest, digest[:-2]),
        "long-hex": text.replace(digest, digest + "00"),
        "no-sha256-prefix": text.replace("sketch sha256:", "sketch "),
        "other-algorithm": text.replace("sketch sha256:", "sketch sha512:"),
        "double-space": text.replace("sketch sha256:", "sketch  sha256:"),
        "key-renamed": text.replace("sketch sha256:", "Sketch sha256:"),
        "empty-value": text.replace(sketch_line, "sketch "),
        "bare-key": text.replace(sketch_line, "sketch"),
        "after-time": joined([*without, sketch_line]),
        "before-root": joined([*without[:-2], sketch_line, *without[-2:]]),
        "after-format": joined([without[0], sketch_line, *without[1:]]),
        "twice": joined([*lines[:-1], sketch_line, lines[-1]]),
        "blank-instead": text.replace(sketch_line + "\n", "\n"),
    }
    return [pytest.param(value, id=key) for key, value in cases.items()]


@pytest.mark.parametrize("text", _sketch_mutations())
def test_a_malformed_or_misplaced_sketch_line_is_refused(text: str) -> None:
    with pytest.raises(MalformedInput) as caught:
        coin.CommitmentHead.from_text(text)
    assert caught.value.code == "coin.head_malformed"


@pytest.mark.parametrize("value", ["", "ab" * 31, "AB" * 32, "g" * 64, b"\x00" * 32, 1], ids=repr)
def test_head_refuses_a_bad_sketch_digest(value: Any) -> None:
    with pytest.raises(MalformedInput) as caught:
        dataclasses.replace(_BASE_HEAD, sketch_sha256=value)
    assert caught.value.code == "coin.head_malformed"


# -- split_sketch ----------------------------------------------------------------------------


def test_split_sketch_returns_the_entries_of_the_bound_sketch() -> None:
    sketch = coin.ngram_sketch(KEY, IDS)
    assert coin.split_sketch(_head_binding(IDS, sketch), sketch) == coin.ngram_entries(KEY, IDS)
    short = IDS[:5]
    assert coin.split_sketch(_head_binding(short, b""), b"") == []


def _split_mismatch(head: coin.CommitmentHead, sketch: Any) -> None:
    with pytest.raises(coin.SketchMismatch) as caught:
        coin.split_sketch(head, sketch)
    assert caught.value.code == "coin.sketch_mismatch"
    assert isinstance(caught.value, coin.CommitmentMismatch)


def test_split_sketch_refuses_a_head_without_one_and_other_bytes() -> None:
    sketch = coin.ngram_sketch(KEY, IDS)
    _split_mismatch(_head_binding(IDS, None), sketch)
    _split_mismatch(_head_binding(IDS, None), b"")
    head = _head_binding(IDS, sketch)
    flipped = bytes([sketch[0] ^ 1]) + sketch[1:]
    for other in (flipped, sketch[:-8], sketch + bytes(8), b"", coin.ngram_sketch(OTHER_KEY, IDS)):
        _split_mismatch(head, other)
    _split_mismatch(head, bytearray(sketch))
    _split_mismatch(head, sketch.hex())


@pytest.mark.parametrize("delta", [-16, -8, -1, 1, 8], ids=lambda d: f"{d:+d}-bytes")
def test_split_sketch_refuses_a_bound_sketch_of_the_wrong_size(delta: int) -> None:
    sketch = coin.ngram_sketch(KEY, IDS)
    wrong = sketch[:delta] if delta < 0 else sketch + bytes(delta)
    # The head binds exactly these bytes; only the count says they are the wrong size.
    _split_mismatch(_head_binding(IDS, wrong), wrong)


def test_split_sketch_refuses_entries_for_a_trace_shorter_than_an_ngram() -> None:
    padding = bytes(8)
    _split_mismatch(_head_binding(IDS[:7], padding), padding)


# -- verify_sketch ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def honest() -> tuple[coin.CommitmentHead, bytes]:
    sketch = coin.ngram_sketch(KEY, IDS)
    return _head_binding(IDS, sketch), sketch


@pytest.mark.parametrize(
    ("indices", "covered"),
    [
        pytest.param([], 0, id="nothing"),
        pytest.param(_run(3, 7), 0, id="run-of-7"),
        pytest.param(_run(3, 8), 1, id="run-of-8"),
        pytest.param(_run(0, 8), 1, id="run-of-8-at-start"),
        pytest.param(_run(32, 8), 1, id="run-of-8-at-end"),
        pytest.param(_run(5, 10), 3, id="run-of-10"),
        pytest.param([*_run(0, 8), *_run(20, 10)], 4, id="8-and-10"),
        pytest.param([*_run(0, 8), *_run(8, 8)], 9, id="adjacent-runs-join"),
        pytest.param([*_run(0, 8), *_run(9, 8)], 2, id="one-gap"),
        pytest.param(range(0, 40, 2), 0, id="every-other"),
        pytest.param(range(40), 33, id="everything"),
    ],
)
def test_verify_sketch_counts_exactly_the_covered_entries(
    honest: tuple[coin.CommitmentHead, bytes], indices: Iterable[int], covered: int
) -> None:
    head, sketch = honest
    pairs = _pairs(IDS, indices)
    assert coin.verify_sketch(head, sketch, KEY, pairs) == covered
    assert coin.verify_sketch(head, sketch, KEY, reversed(pairs)) == covered  # any order
    assert coin.verify_sketch(head, sketch, KEY, iter(pairs)) == covered  # any iterable


def _lying(entry: int) -> tuple[coin.CommitmentHead, bytes]:
    """A sketch whose ``entry`` (tokens entry..entry+7) lies, and a head that binds it."""
    raw = bytearray(coin.ngram_sketch(KEY, IDS))
    raw[8 * entry + 3] ^= 0x40
    return _head_binding(IDS, bytes(raw)), bytes(raw)


@pytest.mark.parametrize("entry", [0, 13, 32])
@pytest.mark.parametrize("length", [8, 10, 16])
def test_a_lying_entry_is_caught_exactly_when_a_run_covers_its_ngram(
    entry: int, length: int
) -> None:
    head, sketch = _lying(entry)
    for start in range(len(IDS) - length + 1):
        pairs = _pairs(IDS, _run(start, length))
        if start <= entry <= start + length - 8:
            with pytest.raises(coin.SketchMismatch) as caught:
                coin.verify_sketch(head, sketch, KEY, pairs)
            assert caught.value.code == "coin.sketch_mismatch"
        else:
            assert coin.verify_sketch(head, sketch, KEY, pairs) == length - 7


def test_a_lying_entry_needs_every_token_of_its_ngram_opened() -> None:
    entry = 13
    head, sketch = _lying(entry)
    window = set(_run(entry, 8))
    everything_else = [i for i in range(len(IDS)) if i not in window]
    for missing in sorted(window):
        opened = sorted(window - {missing}) + everything_else
        verified = coin.verify_sketch(head, sketch, KEY, _pairs(IDS, opened))
        assert verified < 33
    with pytest.raises(coin.SketchMismatch):
        coin.verify_sketch(head, sketch, KEY, _pairs(IDS, window))


def test_opened_tokens_that_differ_from_the_sketched_ones_are_caught(
    honest: tuple[coin.CommitmentHead, bytes],
) -> None:
    head, sketch = honest
    pairs = _pairs(IDS, _run(10, 8))
    pairs[4] = (pairs[4][0], pairs[4][1] + 1)
    with pytest.raises(coin.SketchMismatch):
        coin.verify_sketch(head, sketch, KEY, pairs)


def test_verify_sketch_refuses_another_key_and_another_sketch(
    honest: tuple[coin.CommitmentHead, bytes],
) -> None:
    head, sketch = honest
    pairs = _pairs(IDS, _run(4, 8))
    with pytest.raises(coin.SketchMismatch) as caught:
        coin.verify_sketch(head, sketch, OTHER_KEY, pairs)
    assert caught.value.code == "coin.sketch_mismatch"
    # The sketch itself is checked against the head first, whatever is opened.
    for other in (coin.ngram_sketch(OTHER_KEY, IDS), sketch[:-8], b""):
        with pytest.raises(coin.SketchMismatch):
            coin.verify_sketch(head, other, KEY, [])
    with pytest.raises(coin.SketchMismatch):
        coin.verify_sketch(_head_binding(IDS, None), sketch, KEY, pairs)


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33), "k" * 32], ids=repr)
def test_verify_sketch_refuses_a_key_of_the_wrong_size(
    honest: tuple[coin.CommitmentHead, bytes], key: Any
) -> None:
    head, sketch = honest
    with pytest.raises(MalformedInput) as caught:
        coin.verify_sketch(head, sketch, key, _pairs(IDS, _run(4, 8)))
    assert caught.value.code == "coin.sketch_malformed"


def test_verify_sketch_refuses_a_bad_key_even_when_no_ngram_is_covered(
    honest: tuple[coin.CommitmentHead, bytes],
) -> None:
    head, sketch = honest
    with pytest.raises(MalformedInput) as caught:
        coin.verify_sketch(head, sketch, b"short", _pairs(IDS, [0, 5, 9]))
    assert caught.value.code == "coin.sketch_malformed"


# -- challenge runs ------------------------------------------------------------------------


def _expected_runs(anchors: Iterable[int], size: int, run: int) -> list[int]:
    """Each anchor ``a`` opens ``[s, s + run)``, ``s = max(0, min(a, size - run))``, clipped."""
    opened: set[int] = set()
    for anchor in anchors:
        start = max(0, min(anchor, size - run))
        opened.update(range(start, min(start + run, size)))
    return sorted(opened)


def test_run_length_one_is_the_anchors_and_the_golden_indices() -> None:
    vector = _vector("head.json")
    seed = bytes.fromhex(vector["seed_hex"])
    for k in (3, 5, 10):
        assert coin.challenge_indices(seed, 10, 4, k, 1) == vector[f"indices_k{k}"]
        assert coin.challenge_indices(seed, 10, 4, k) == vector[f"indices_k{k}"]
    run = vector["run_length"]
    widened = coin.challenge_indices(seed, 10, 4, 2, run)
    assert widened == vector["indices_k2_runs"]
    assert widened == _expected_runs(coin.challenge_indices(seed, 10, 4, 2), 10, run)
    for size, block, k in ((1000, 64, 40), (5000, 256, 300), (257, 256, 2)):
        assert coin.challenge_indices(seed, size, block, k, 1) == coin.challenge_indices(
            seed, size, block, k
        )


def test_runs_are_clipped_inside_the_tree() -> None:
    seed = bytes(32)
    anchors = coin.challenge_indices(seed, 100, 10, 12)
    assert anchors[-1] == 99
    widened = coin.challenge_indices(seed, 100, 10, 12, 8)
    assert widened[-8:] == list(range(92, 100))  # the last anchor's run ends at the last leaf
    assert widened == _expected_runs(anchors, 100, 8)
    assert widened[0] == min(anchors[0], 92)
    # A run longer than the tree opens the whole tree.
    assert coin.challenge_indices(seed, 5, 4, 1, 8) == list(range(5))
    assert coin.challenge_indices(seed, 5, 4, 1, 2**32 - 1) == list(range(5))
    assert coin.challenge_indices(seed, 0, 4, 3, 8) == []
    assert coin.challenge_indices(seed, 10, 4, 0, 8) == []


@pytest.mark.parametrize("run", [0, -1, True, False, 2**32, 1.0, "8", None], ids=repr)
def test_bad_run_lengths_are_refused(run: Any) -> None:
    with pytest.raises(MalformedInput) as caught:
        coin.challenge_indices(bytes(32), 100, 10, 5, run)
    assert caught.value.code == "coin.bad_int"


@settings(max_examples=200, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    size=st.integers(0, 3000),
    block=st.integers(1, 400),
    k=st.integers(0, 300),
    run=st.integers(1, 300),
)
def test_runs_widen_every_anchor(seed: bytes, size: int, block: int, k: int, run: int) -> None:
    anchors = coin.challenge_indices(seed, size, block, k)
    opened = coin.challenge_indices(seed, size, block, k, run)
    assert opened == coin.challenge_indices(seed, size, block, k, run)  # deterministic
    assert opened == sorted(set(opened))  # sorted, distinct
    assert all(0 <= index < size for index in opened)
    assert opened == _expected_runs(anchors, size, run)
    assert set(anchors) <= set(opened)
    if size and k:
        assert opened[-1] == size - 1
        assert len(opened) >= min(run, size)
        members = set(opened)
        for anchor in anchors:  # each anchor's whole run is opened
            start = max(0, min(anchor, size - run))
            assert members.issuperset(range(start, min(start + run, size)))
    else:
        assert opened == []


# -- evidence ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> golden.Synthetic:
    return golden.commit(golden.TOKEN_IDS)


def _sketch_error(evidence: coin.Evidence | str | bytes) -> str:
    with pytest.raises(coin.SketchMismatch) as caught:
        coin.verify_evidence(evidence)
    return caught.value.code


def test_golden_evidence_carries_the_sketch_and_its_key(synthetic: golden.Synthetic) -> None:
    document = _vector("evidence-consistent.json")
    assert b64_decode(document["sketch"]) == synthetic.sketch
    assert b64_decode(document["sketch_key"]) == golden.SKETCH_KEY
    assert document["challenge"]["run_length"] == N  # the shortest a sketched head accepts
    assert [opening["index"] for opening in document["openings"]] == list(range(10))
    assert coin.verify_evidence(json.dumps(document)).consistent


def test_a_head_with_a_sketch_needs_the_sketch_and_key(synthetic: golden.Synthetic) -> None:
    evidence = golden.evidence(synthetic)
    assert coin.verify_evidence(evidence).consistent
    for changes in ({"sketch": None}, {"sketch_key": None}, {"sketch": None, "sketch_key": None}):
        assert _sketch_error(dataclasses.replace(evidence, **changes)) == "coin.sketch_mismatch"
    document = json.loads(evidence.to_json())
    document["sketch"] = document["sketch_key"] = None
    assert _sketch_error(json.dumps(document)) == "coin.sketch_mismatch"


def test_a_head_without_a_sketch_takes_none(synthetic: golden.Synthetic) -> None:
    plain = golden.evidence(golden.commit(golden.TOKEN_IDS, sketched=False))
    assert plain.sketch is None and plain.sketch_key is None
    assert coin.verify_evidence(plain).consistent
    assert coin.verify_evidence(plain.to_json()).consistent
    for changes in (
        {"sketch": synthetic.sketch, "sketch_key": golden.SKETCH_KEY},
        {"sketch": synthetic.sketch},
        {"sketch_key": golden.SKETCH_KEY},
        {"sketch": b""},
    ):
        assert _sketch_error(dataclasses.replace(plain, **changes)) == "coin.sketch_mismatch"


def test_a_flipped_sketch_byte_is_a_mismatch(synthetic: golden.Synthetic) -> None:
    document = json.loads(golden.evidence(synthetic).to_json())
    for position in (0, 11, 23):
        raw = bytearray(b64_decode(document["sketch"]))
        raw[position] ^= 1
        changed = {**document, "sketch": b64_encode(bytes(raw))}
        assert _sketch_error(json.dumps(changed)) == "coin.sketch_mismatch"
    changed = {**document, "sketch": b64_encode(b64_decode(document["sketch"])[:-8])}
    assert _sketch_error(json.dumps(changed)) == "coin.sketch_mismatch"


def test_a_sketch_key_of_the_wrong_size_is_malformed(synthetic: golden.Synthetic) -> None:
    evidence = golden.evidence(synthetic)
    for key in (b"", bytes(31), bytes(33)):
        with pytest.raises(MalformedInput) as caught:
            coin.verify_evidence(dataclasses.replace(evidence, sketch_key=key))
        assert caught.value.code == "coin.evidence_malformed"
    document = json.loads(evidence.to_json())
    for value in ("not base64!", 5, []):
        with pytest.raises(MalformedInput) as caught:
            coin.Evidence.from_json(json.dumps({**document, "sketch_key": value}))
        assert caught.value.code == "coin.evidence_malformed"


def _challenge(run_length: int) -> coin.Challenge:
    return dataclasses.replace(golden.CHALLENGE, run_length=run_length)


def test_evidence_with_runs_verifies_and_counts_anchors(synthetic: golden.Synthetic) -> None:
    evidence = golden.evidence(synthetic, challenge=_challenge(8))
    assert [opening.index for opening in evidence.openings] == list(range(10))
    verdict = coin.verify_evidence(evidence.to_json())
    assert verdict.consistent
    assert verdict.k == 10  # leaves opened
    # ... but the probability counts the k = 5 anchors: a run's leaves are not independent.
    assert verdict.detection_probability == pytest.approx(1 - 0.5**5)
    assert json.loads(evidence.to_json())["challenge"]["run_length"] == 8
    # Another run length than the openings were drawn with is another challenge.
    document = json.loads(evidence.to_json())
    document["challenge"]["run_length"] = 2
    with pytest.raises(coin.EvidenceInvalid) as caught:
        coin.verify_evidence(json.dumps(document))
    assert caught.value.code == "coin.challenge_mismatch"


def test_evidence_with_runs_catches_another_sketch_key(synthetic: golden.Synthetic) -> None:
    evidence = golden.evidence(synthetic, challenge=_challenge(8))
    wrong = dataclasses.replace(evidence, sketch_key=OTHER_KEY)
    assert _sketch_error(wrong) == "coin.sketch_mismatch"


def _lying_synthetic(synthetic: golden.Synthetic, entry: int) -> golden.Synthetic:
    """``synthetic`` with sketch ``entry`` lying, under a head (re-signed) that binds it."""
    assert synthetic.sketch is not None
    raw = bytearray(synthetic.sketch)
    raw[8 * entry] ^= 1
    head = dataclasses.replace(synthetic.head, sketch_sha256=coin.sketch_sha256(bytes(raw)))
    return dataclasses.replace(
        synthetic,
        head=head,
        head_note=sign_note(head.to_text(), golden.PROVIDER),
        sketch=bytes(raw),
    )


@pytest.mark.parametrize(("entry", "runs_of_8_cover_it"), [(0, False), (1, False), (2, True)])
def test_evidence_catches_a_lying_sketch_entry_only_where_runs_cover_it(
    synthetic: golden.Synthetic, entry: int, runs_of_8_cover_it: bool
) -> None:
    lying = _lying_synthetic(synthetic, entry)  # tokens entry..entry+7 lie
    assert lying.sketch is not None
    covered = golden.evidence(lying, challenge=_challenge(10))  # a run opens all 10 leaves
    assert [opening.index for opening in covered.openings] == list(range(10))
    assert _sketch_error(covered) == "coin.sketch_mismatch"
    # Runs of 8 from this head's anchors open leaves 2..9 (0..9 for entry 2's re-signed head):
    # the lie is caught where they cover its n-gram, and stands (a sampling miss) elsewhere.
    runs = golden.evidence(lying, challenge=_challenge(N))
    opened = {opening.index for opening in runs.openings}
    assert opened.issuperset(_run(entry, N)) == runs_of_8_cover_it
    if runs_of_8_cover_it:
        assert _sketch_error(runs) == "coin.sketch_mismatch"
    else:
        assert coin.verify_evidence(runs).consistent
    # Isolated leaves cover no n-gram: the sketch alone cannot catch the lie ...
    isolated = golden.evidence(lying, challenge=_challenge(1))
    opened = [(opening.index, opening.token_id) for opening in isolated.openings]
    assert len(opened) == 5 and not {index for index, _ in opened}.issuperset(_run(entry, 8))
    assert coin.verify_sketch(lying.head, lying.sketch, golden.SKETCH_KEY, opened) == 0
    # ... so evidence for a sketched head refuses such runs instead of passing it.
    assert _runs_error(isolated) == "coin.runs_too_short"


def _runs_error(evidence: coin.Evidence | str | bytes) -> str:
    with pytest.raises(coin.EvidenceInvalid) as caught:
        coin.verify_evidence(evidence)
    return caught.value.code


@pytest.mark.parametrize("run_length", range(1, N))
def test_a_sketched_head_refuses_runs_shorter_than_an_ngram(
    synthetic: golden.Synthetic, run_length: int
) -> None:
    evidence = golden.evidence(synthetic, challenge=_challenge(run_length))
    assert evidence.sketch is not None and evidence.challenge.run_length == run_length
    with pytest.raises(coin.EvidenceInvalid) as caught:
        coin.verify_evidence(evidence)
    assert caught.value.code == "coin.runs_too_short"
    assert f"runs of {run_length} leaves" in str(caught.value)
    assert f"at least {N}" in str(caught.value)
    assert _runs_error(evidence.to_json()) == "coin.runs_too_short"
    assert _runs_error(evidence.to_json().decode()) == "coin.runs_too_short"


@pytest.mark.parametrize("run_length", [N, 9, 10, coin.MAX_RUN_LENGTH])
def test_a_sketched_head_accepts_runs_of_an_ngram_or_more(
    synthetic: golden.Synthetic, run_length: int
) -> None:
    evidence = golden.evidence(synthetic, challenge=_challenge(run_length))
    assert coin.verify_evidence(evidence).consistent
    assert coin.verify_evidence(evidence.to_json()).consistent


@pytest.mark.parametrize("run_length", [1, 2, N - 1, N])
def test_a_head_without_a_sketch_accepts_any_run_length(run_length: int) -> None:
    plain = golden.evidence(
        golden.commit(golden.TOKEN_IDS, sketched=False), challenge=_challenge(run_length)
    )
    assert plain.sketch is None and plain.challenge.run_length == run_length
    assert coin.verify_evidence(plain).consistent
    assert coin.verify_evidence(plain.to_json()).consistent


def _cli_verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = _cli.main(["audit", "verify", *argv])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().out


def test_cli_refuses_a_sketched_head_with_short_runs(
    synthetic: golden.Synthetic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short.json"
    short.write_bytes(golden.evidence(synthetic, challenge=_challenge(1)).to_json())
    code, out = _cli_verify(capsys, str(short))
    assert code == 1 and out.startswith("not consistent: coin.runs_too_short: ")
    code, out = _cli_verify(capsys, str(short), "--json")
    result = json.loads(out)
    assert code == 1 and not result["valid"] and not result["consistent"]
    assert result["code"] == "coin.runs_too_short" and result["verdict"] is None
    # The same audit over a head without a sketch passes.
    plain = tmp_path / "plain.json"
    plain_head = golden.commit(golden.TOKEN_IDS, sketched=False)
    plain.write_bytes(golden.evidence(plain_head, challenge=_challenge(1)).to_json())
    code, out = _cli_verify(capsys, str(plain))
    assert code == 0 and out.startswith("consistent: 10 reasoning tokens committed, 5 leaves")


@pytest.mark.parametrize("run_length", [0, 257, -1, True, 1.5, "8", None], ids=repr)
def test_challenge_run_length_is_bounded(run_length: Any) -> None:
    with pytest.raises(MalformedInput) as caught:
        _challenge(run_length)
    assert caught.value.code == "coin.evidence_malformed"
    document = _vector("evidence-consistent.json")
    document["challenge"]["run_length"] = run_length
    with pytest.raises(MalformedInput) as caught:
        coin.Evidence.from_json(json.dumps(document))
    assert caught.value.code == "coin.evidence_malformed"


def test_challenge_run_length_limits_are_accepted_and_required() -> None:
    assert _challenge(1).run_length == 1 and _challenge(256).run_length == 256
    assert coin.Challenge(k=5, fraction=0.5, target=0.95, per_leaf_detection=1.0).run_length == 1
    document = _vector("evidence-consistent.json")
    del document["challenge"]["run_length"]
    with pytest.raises(MalformedInput) as caught:
        coin.Evidence.from_json(json.dumps(document))
    assert caught.value.code == "coin.evidence_malformed"
    document = _vector("evidence-consistent.json")
    del document["sketch"]
    with pytest.raises(MalformedInput) as caught:
        coin.Evidence.from_json(json.dumps(document))
    assert caught.value.code == "coin.evidence_malformed"
