"""CoIn audit evidence (coin.md §4.6, §4.9): offline re-checks, tamper twins, the CLI."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tallystick.verifier import _cli, coin
from tallystick.verifier._internal.encoding import b64_decode, b64_encode
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.errors import TallystickError
from tallystick.verifier.keys import PrivateKey
from vectors import generate_coin as golden

VECTORS = Path(__file__).resolve().parent / "vectors" / "coin"


def _document(name: str = "evidence-consistent.json") -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return loaded


def test_golden_vector_files_are_exactly_what_the_generator_makes() -> None:
    built = golden.build_vectors()
    on_disk = {path.name: path.read_bytes() for path in VECTORS.glob("*.json")}
    assert on_disk == built


def test_consistent_and_flagged_evidence_verify_offline() -> None:
    verdict = coin.verify_evidence(json.dumps(_document()))
    assert verdict.consistent and verdict.flagged == ()
    # Runs of 8 from 5 anchors open all 10 leaves; the probability counts the anchors.
    assert verdict.k == 10 and verdict.reasoning_tokens == 10 and verdict.p_assumed == 1.0
    assert verdict.detection_probability == pytest.approx(1 - 0.5**5)
    assert verdict.claims == coin.WHAT_IS_CLAIMED and verdict.not_claimed == coin.NOT_CLAIMED
    assert verdict.length_prior_z == 0.25 and verdict.fpr_at_threshold == 0.01
    flagged = coin.verify_evidence(json.dumps(_document("evidence-flagged.json")))
    assert not flagged.consistent and flagged.flagged == ("block_answer@block1",)


def test_evidence_round_trips_canonically() -> None:
    evidence = coin.Evidence.from_json(json.dumps(_document()))
    assert coin.Evidence.from_json(evidence.to_json()) == evidence
    assert json.loads(evidence.to_json()) == _document()
    assert b"\n\n" not in evidence.to_json().replace(b"\\n", b"")


def test_evidence_holds_no_reasoning_text() -> None:
    text = json.dumps(_document())
    assert "What is 2 + 2?" not in text  # the prompt only travels as its hash
    assert set(_document()["openings"][0]) == {"index", "leaf", "salt", "token_id", "proof"}


def test_pinned_keys_and_the_log_countersignature() -> None:
    synthetic = golden.commit(golden.TOKEN_IDS, signers=(golden.PROVIDER, golden.LOG))
    evidence = golden.evidence(synthetic)
    verdict = coin.verify_evidence(
        evidence, log_key=golden.LOG.verifier, provider_key=golden.PROVIDER.verifier
    )
    assert verdict.consistent
    plain = golden.evidence(golden.commit(golden.TOKEN_IDS))
    with pytest.raises(coin.EvidenceInvalid) as caught:
        coin.verify_evidence(plain, log_key=golden.LOG.verifier)
    assert caught.value.code == "coin.countersignature_missing"
    with pytest.raises(coin.EvidenceInvalid) as caught:
        coin.verify_evidence(plain, provider_key=golden.LOG.verifier)
    assert caught.value.code == "coin.provider_key_mismatch"


# -- tamper twins: one per field, each with its code ----------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _flip_b64(path: str, position: int = 0) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        slot: Any = int(last) if isinstance(node, list) else last
        raw = bytearray(b64_decode(node[slot]))
        raw[position] ^= 1
        node[slot] = b64_encode(bytes(raw))

    return mutate


def _edit(fn: Callable[[dict[str, Any]], Any]) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        fn(document)

    return mutate


_OTHER_VKEY = NoteSigner("provider.example/coin", PrivateKey.from_seed(bytes(32))).vkey
_HEAD = _document()["head_note"]

TWINS: dict[str, tuple[Mutation, str]] = {
    "format": (_set("format", "tallystick.coin.evidence/v2"), "coin.evidence_version"),
    "extra-member": (_set("note", "x"), "coin.evidence_malformed"),
    "missing-member": (_edit(lambda d: d.pop("checks")), "coin.evidence_malformed"),
    "head-note-line": (
        _set("head_note", _HEAD.replace("time 1700000000", "time 1700000001")),
        "coin.head_signature_invalid",
    ),
    "head-note-signature": (
        _set("head_note", _HEAD.replace("DnSgCkUa", "DnSgCkUb")),
        "coin.head_signature_invalid",
    ),
    "provider-vkey-other": (_set("provider_vkey", _OTHER_VKEY), "coin.head_signature_invalid"),
    "provider-vkey-garbage": (_set("provider_vkey", "nope"), "note.bad_vkey"),
    "nonce": (_flip_b64("auditor_nonce"), "coin.challenge_mismatch"),
    "nonce-short": (_set("auditor_nonce", b64_encode(bytes(8))), "coin.bad_nonce"),
    # k = 6 opens the same 10 leaves, but its 6 anchors claim a higher detection probability.
    "challenge-k-up": (_set("challenge.k", 6), "coin.verdict_mismatch"),
    "challenge-k-down": (_set("challenge.k", 4), "coin.challenge_undersized"),
    "challenge-fraction": (_set("challenge.fraction", 0.25), "coin.challenge_undersized"),
    "challenge-fraction-up": (_set("challenge.fraction", 0.75), "coin.verdict_mismatch"),
    "challenge-target": (_set("challenge.target", 0.99), "coin.challenge_undersized"),
    "challenge-p": (_set("challenge.per_leaf_detection", 0.5), "coin.challenge_undersized"),
    "challenge-p-range": (_set("challenge.per_leaf_detection", 1.5), "coin.evidence_malformed"),
    "challenge-run-length": (_set("challenge.run_length", 2), "coin.challenge_mismatch"),
    # Runs of 7 open the same 10 leaves, but cover no sketch n-gram by themselves.
    "challenge-run-length-short": (_set("challenge.run_length", 7), "coin.runs_too_short"),
    "opening-index": (_set("openings.0.index", 3), "coin.challenge_mismatch"),
    "opening-dropped": (_edit(lambda d: d["openings"].pop()), "coin.challenge_mismatch"),
    "opening-reordered": (
        _edit(lambda d: d["openings"].reverse()),
        "coin.challenge_mismatch",
    ),
    "opening-leaf-fp": (_flip_b64("openings.1.leaf", 500), "coin.inclusion_invalid"),
    "opening-leaf-index": (_flip_b64("openings.1.leaf", 4), "coin.index_mismatch"),
    "opening-leaf-block": (_flip_b64("openings.1.leaf", 8), "coin.block_mismatch"),
    "opening-leaf-version": (_flip_b64("openings.1.leaf", 0), "coin.leaf_version"),
    "opening-salt": (_flip_b64("openings.2.salt"), "coin.token_commitment_mismatch"),
    "opening-token-id": (_set("openings.2.token_id", 1), "coin.token_commitment_mismatch"),
    "opening-proof": (_flip_b64("openings.3.proof.0"), "coin.inclusion_invalid"),
    "opening-proof-short": (
        _edit(lambda d: d["openings"][3]["proof"].pop()),
        "coin.inclusion_invalid",
    ),
    "check-score": (_set("checks.0.score", 0.1), "coin.flag_mismatch"),
    "check-threshold": (_set("checks.0.threshold", 0.95), "coin.flag_mismatch"),
    "check-flagged": (_set("checks.0.flagged", True), "coin.flag_mismatch"),
    "check-flag-if": (_set("checks.0.flag_if", "above"), "coin.flag_mismatch"),
    "check-flag-if-bad": (_set("checks.0.flag_if", "sideways"), "coin.evidence_malformed"),
    "check-block": (_set("checks.0.block_index", 7), "coin.check_unopened_block"),
    "check-name": (_set("checks.0.check", "block_prompt"), "coin.check_missing"),
    "check-dropped": (_edit(lambda d: d["checks"].pop()), "coin.check_missing"),
    "check-duplicated": (
        _edit(lambda d: d["checks"].append(copy.deepcopy(d["checks"][0]))),
        "coin.check_duplicate",
    ),
    "length-prior-z": (_set("length_prior.z", 3.0), "coin.flag_mismatch"),
    "length-prior-z-quiet": (_set("length_prior.z", 1.0), "coin.verdict_mismatch"),
    "length-prior-threshold": (_set("length_prior.threshold", 0.1), "coin.flag_mismatch"),
    "length-prior-flagged": (_set("length_prior.flagged", True), "coin.flag_mismatch"),
    "length-prior-removed": (_set("length_prior", None), "coin.verdict_mismatch"),
    "fpr": (_set("fpr_at_threshold", 0.05), "coin.verdict_mismatch"),
    "fpr-range": (_set("fpr_at_threshold", 2), "coin.evidence_malformed"),
    "verdict-consistent": (_set("verdict.consistent", False), "coin.verdict_mismatch"),
    "verdict-k": (_set("verdict.k", 50), "coin.verdict_mismatch"),
    "verdict-p": (_set("verdict.p_assumed", 0.9), "coin.verdict_mismatch"),
    "verdict-detection": (_set("verdict.detection_probability", 0.999), "coin.verdict_mismatch"),
    "verdict-flagged": (_set("verdict.flagged", ["x@block0"]), "coin.verdict_mismatch"),
    "verdict-fpr": (_set("verdict.fpr_at_threshold", 0.0), "coin.verdict_mismatch"),
    "verdict-z": (_set("verdict.length_prior_z", 0.0), "coin.verdict_mismatch"),
    "verdict-tokens": (_set("verdict.reasoning_tokens", 11), "coin.verdict_mismatch"),
    "verdict-claims": (
        _set("verdict.claims", ["the model generated every token"]),
        "coin.verdict_mismatch",
    ),
    "verdict-not-claimed": (_set("verdict.not_claimed", []), "coin.verdict_mismatch"),
    "verdict-type": (_set("verdict.consistent", "yes"), "coin.evidence_malformed"),
}


@pytest.mark.parametrize(("mutate", "code"), list(TWINS.values()), ids=list(TWINS))
def test_every_tampered_field_is_rejected_with_its_code(mutate: Mutation, code: str) -> None:
    document = _document()
    mutate(document)
    assert document != _document()
    with pytest.raises(TallystickError) as caught:
        coin.verify_evidence(json.dumps(document))
    assert caught.value.code == code


def test_a_flagged_audit_cannot_be_turned_into_a_pass() -> None:
    document = _document("evidence-flagged.json")
    document["checks"][1]["flagged"] = False
    with pytest.raises(coin.EvidenceInvalid) as caught:
        coin.verify_evidence(json.dumps(document))
    assert caught.value.code == "coin.flag_mismatch"
    document["checks"][1]["score"] = 0.9
    with pytest.raises(coin.EvidenceInvalid) as caught:
        coin.verify_evidence(json.dumps(document))
    assert caught.value.code == "coin.verdict_mismatch"


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_evidence_parser_never_crashes_on_mutated_json(data: st.DataObject) -> None:
    text = json.dumps(_document())
    position = data.draw(st.integers(0, len(text) - 1))
    char = data.draw(st.characters(max_codepoint=0x7F))
    mutated = text[:position] + char + text[position + 1 :]
    try:
        verdict = coin.verify_evidence(mutated)
    except TallystickError:
        return
    assert verdict == coin.verify_evidence(text)  # only whitespace-like edits survive


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_evidence_parser_never_crashes_on_bytes(raw: bytes) -> None:
    with pytest.raises(TallystickError):
        coin.verify_evidence(raw)


# -- the CLI --------------------------------------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = _cli.main(["audit", "verify", *argv])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().out


def test_cli_audit_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    consistent = str(VECTORS / "evidence-consistent.json")
    code, out = _run(capsys, consistent)
    assert code == 0 and out.startswith("consistent: 10 reasoning tokens")
    code, out = _run(capsys, consistent, "--json")
    result = json.loads(out)
    assert code == 0 and result["valid"] and result["consistent"] and result["code"] is None
    assert result["verdict"]["k"] == 10
    code, out = _run(capsys, str(VECTORS / "evidence-flagged.json"), "--json")
    result = json.loads(out)
    assert code == 1 and result["valid"] and not result["consistent"]
    assert result["code"] == "coin.flagged"
    tampered = _document()
    tampered["verdict"]["k"] = 6
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(tampered))
    code, out = _run(capsys, str(path), "--json")
    result = json.loads(out)
    assert code == 1 and not result["valid"] and result["code"] == "coin.verdict_mismatch"
    assert result["verdict"] is None
    (tmp_path / "junk.json").write_text("{not json")
    assert _run(capsys, str(tmp_path / "junk.json"))[0] == 2
    assert _run(capsys, str(tmp_path / "missing.json"))[0] == 2
    assert _run(capsys, consistent, "--log-key", "garbage")[0] == 2
    code, out = _run(capsys, consistent, "--log-key", golden.LOG.vkey, "--json")
    assert code == 1 and json.loads(out)["code"] == "coin.countersignature_missing"
    code, _ = _run(capsys, consistent, "--provider-key", golden.PROVIDER.vkey)
    assert code == 0


def test_cli_passes_the_audit_group_to_plugins() -> None:
    seen: dict[str, Any] = {}
    _cli._build_parser([lambda groups: seen.update(groups)])
    assert set(seen) == {"", "log", "audit"}
    assert "verify" in seen["audit"].choices
