"""C2SP signed notes, checkpoints and cosignatures: spec examples, Go reference vectors,
transparency-dev/formats cases, our own round trips, and property tests."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import vector_path
from hypothesis import given, settings
from hypothesis import strategies as st
from tallystick.verifier.checkpoint import (
    Checkpoint,
    Cosignature,
    Cosigner,
    KeyType,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    SignedCheckpoint,
    SignedNote,
    cosignature_message,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
)
from tallystick.verifier.errors import CheckpointInvalid, KeyInvalid, TallystickError
from tallystick.verifier.keys import PrivateKey, PublicKey
from tallystick.verifier.merkle import EMPTY_ROOT, MerkleTree, hash_leaf, verify_inclusion


def _json(family_path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vector_path("c2sp", family_path).read_text(encoding="utf-8"))
    return data


def _text(family_path: str) -> str:
    return vector_path("c2sp", family_path).read_bytes().decode("utf-8")


SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_ORIGIN = "go.sum database tree"

# -- signed-note: the spec example ------------------------------------------------------------

SPEC = _json("signed-note/spec-example.json")
SPEC_NOTE = _text("signed-note/spec-example.note")
SPEC_VERIFIER = NoteVerifier.from_vkey(_text("signed-note/spec-example.vkey").rstrip("\n"))


def test_spec_example_verifies() -> None:
    verified = SignedNote.from_text(SPEC_NOTE).verify([SPEC_VERIFIER])
    assert verified.text == SPEC["expected"]["returned_text"]
    assert [item.verifier.label for item in verified.verified] == SPEC["expected"]["verified_keys"]
    assert verified.unverified == ()
    assert verified.verified[0].timestamp is None
    assert verified.verified[0].signature.line == SPEC["signature_line"]


def test_spec_example_vkey_fields() -> None:
    assert SPEC_VERIFIER.vkey == SPEC["vkey"]
    assert SPEC_VERIFIER.name == SPEC["key_name"]
    assert SPEC_VERIFIER.key_type == KeyType.ED25519 == SPEC["signature_type"]
    assert SPEC_VERIFIER.public_key.raw.hex() == SPEC["public_key_hex"]
    # key id = SHA-256(name || 0x0A || 0x01 || public key)[:4], recomputed independently here.
    digest = hashlib.sha256(b"example.com/foo\n\x01" + SPEC_VERIFIER.public_key.raw).digest()
    assert digest[:4].hex() == SPEC["key_id_hex"] == f"{SPEC_VERIFIER.key_id:08x}"
    signature = SignedNote.from_text(SPEC_NOTE).signatures[0]
    assert f"{signature.key_id:08x}" == SPEC["signature_key_id_hex"]
    assert signature.signature.hex() == SPEC["signature_ed25519_hex"]


def _spec_negative(desc_start: str) -> dict[str, Any]:
    case: dict[str, Any] = next(
        item for item in SPEC["derived_negative_cases"] if item["desc"].startswith(desc_start)
    )
    return case


def test_spec_example_altered_text_fails() -> None:
    case = _spec_negative("note text altered")
    with pytest.raises(CheckpointInvalid) as exc:
        SignedNote.from_text(case["note"]).verify([SPEC_VERIFIER])
    assert exc.value.code == "note.signature_invalid"


def test_spec_example_key_under_another_name_is_unknown() -> None:
    case = _spec_negative("verifier holds the same public key")
    other = NoteVerifier.from_vkey(case["vkey"])
    assert other.public_key == SPEC_VERIFIER.public_key
    with pytest.raises(CheckpointInvalid) as exc:
        SignedNote.from_text(case["note"]).verify([other])
    assert exc.value.code == "note.no_known_signature"


def test_spec_example_vkey_with_wrong_key_id_is_rejected() -> None:
    with pytest.raises(KeyInvalid) as exc:
        NoteVerifier.from_vkey(_spec_negative("vkey whose key id")["vkey"])
    assert exc.value.code == "note.bad_vkey"


def test_spec_example_without_blank_line_is_malformed() -> None:
    with pytest.raises(CheckpointInvalid) as exc:
        SignedNote.from_text(_spec_negative("blank separator line removed")["note"])
    assert exc.value.code == "note.malformed"


# -- signed-note: the spec's opening poem ------------------------------------------------------

INTRO = _json("signed-note/spec-intro.json")


def test_spec_intro_splits_at_the_last_empty_line() -> None:
    note = SignedNote.from_text(_text("signed-note/spec-intro.note"))
    assert note.text == INTRO["note_text"]
    assert "\n\n" in note.text
    (signature,) = note.signatures
    assert signature.name == INTRO["signature_key_name"]
    assert f"{signature.key_id:08x}" == INTRO["signature_key_id_hex"]
    assert len(signature.signature) + 4 == INTRO["signature_length_bytes"]
    assert SignedNote.from_text(note.to_text()) == note
    assert note.to_text() == _text("signed-note/spec-intro.note")


@pytest.mark.parametrize(
    "verifiers",
    [pytest.param([], id="no-keys"), pytest.param([SPEC_VERIFIER], id="unrelated-key")],
)
def test_spec_intro_is_rejected_without_its_key(verifiers: list[NoteVerifier]) -> None:
    note = SignedNote.from_text(_text("signed-note/spec-intro.note"))
    with pytest.raises(CheckpointInvalid) as exc:
        note.verify(verifiers)
    assert exc.value.code == "note.no_known_signature"


# -- go-sumdb-note: the Go reference vectors --------------------------------------------------

SUMDB = _json("go-sumdb-note/sumdb-note-cases.json")
PETER = NoteVerifier.from_vkey(SUMDB["keys"]["PeterNeumann"]["vkey"])
ENOCH = NoteVerifier.from_vkey(SUMDB["keys"]["EnochRoot"]["vkey"])


def _outcome_code(expected: dict[str, Any]) -> str | None:
    """The Go outcome class as our code; the Go strings are only used to classify."""
    if expected["ok"]:
        return None
    error: str = expected["error"]
    if error.startswith("malformed note"):
        return "note.malformed"
    if error.startswith("invalid signature"):
        return "note.signature_invalid"
    assert error.startswith("note has no verifiable signatures"), error
    return "note.no_known_signature"


def _open_case_note(case: dict[str, Any]) -> str | bytes:
    if "note_file" in case:
        return vector_path("c2sp", "go-sumdb-note/" + case["note_file"]).read_bytes()
    if "note_hex" in case:
        return bytes.fromhex(case["note_hex"])
    note: str = case["note"]
    return note


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case["desc"]) for case in SUMDB["open_cases"]]
)
def test_go_open_cases(case: dict[str, Any]) -> None:
    verifiers = [NoteVerifier.from_vkey(vkey) for vkey in case["verifiers"]]
    expected = case["expected"]
    code = _outcome_code(expected)
    raw = _open_case_note(case)
    if code is not None:
        with pytest.raises(CheckpointInvalid) as exc:
            SignedNote.from_text(raw).verify(verifiers)
        assert exc.value.code == code
        return
    verified = SignedNote.from_text(raw).verify(verifiers)
    assert [item.verifier.label for item in verified.verified] == expected["verified"]
    if "text" in expected:
        assert verified.text == expected["text"]
    labels = [f"{sig.name}+{sig.key_id:08x}" for sig in verified.unverified]
    if "unverified" in expected:
        assert labels == expected["unverified"]
    else:
        assert len(verified.unverified) == expected["unverified_count"]


def test_go_note_accepts_exactly_one_hundred_signatures() -> None:
    text = SUMDB["sign_vector"]["text"]
    line = SUMDB["sign_vector"]["expected_signed_note"][len(text) + 1 :]
    verified = SignedNote.from_text(text + "\n" + line * 100).verify([PETER])
    assert verified.verified_names == {"PeterNeumann"}
    with pytest.raises(CheckpointInvalid) as exc:
        SignedNote.from_text(text + "\n" + line * 101)
    assert exc.value.code == "note.malformed"


def test_go_signing_vector_is_reproduced_byte_for_byte() -> None:
    vector = SUMDB["sign_vector"]
    signer = NoteSigner.from_skey(vector["signer_skey"])
    assert signer.vkey == SUMDB["keys"]["PeterNeumann"]["vkey"]
    assert sign_note(vector["text"], signer) == vector["expected_signed_note"]
    assert repr(signer) == "NoteSigner('PeterNeumann+c74f20a3')"


VALID_PETER_VKEY = SUMDB["vkey_cases"][0]["vkey"]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, id=case.get("why", "valid"))
        for case in SUMDB["vkey_cases"]
        if "vkey" in case
    ],
)
def test_go_vkey_cases(case: dict[str, Any]) -> None:
    if case["valid"]:
        assert NoteVerifier.from_vkey(case["vkey"]).vkey == case["vkey"]
    else:
        with pytest.raises(KeyInvalid) as exc:
            NoteVerifier.from_vkey(case["vkey"])
        assert exc.value.code == "note.bad_vkey"


def test_go_vkey_manglings_are_rejected() -> None:
    vkey = VALID_PETER_VKEY.encode("ascii")
    mangled = {
        vkey[start:end].decode("ascii")
        for start in range(len(vkey) + 1)
        for end in range(start + 1, len(vkey) + 1)
        if (start, end) != (0, len(vkey))
    }
    for position in range(len(vkey)):
        changed = bytearray(vkey)
        changed[position] = (changed[position] + 1) % 128
        mangled.add(changed.decode("ascii"))
    for text in sorted(mangled):
        with pytest.raises(KeyInvalid):
            NoteVerifier.from_vkey(text)


PETER_SKEY_KEY = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"


@pytest.mark.parametrize(
    "skey",
    [
        pytest.param(f"PRIVATE+KEY+PeterNeumann+c74f20a4+{PETER_SKEY_KEY}", id="wrong-id"),
        pytest.param(f"PRIVATE+KEY+PeterNeumann+c74f20a3+{PETER_SKEY_KEY[:-1]}", id="short"),
        pytest.param(f"PRIVATE+KEY+PeterNeumann+c74f20a3+B{PETER_SKEY_KEY[1:]}", id="type-byte"),
        pytest.param(f"PRIVATE+KEY+Peter Neumann+c74f20a3+{PETER_SKEY_KEY}", id="space-in-name"),
        pytest.param(f"PRIVATE+KEY+PeterNeumann+C74F20A3+{PETER_SKEY_KEY}", id="uppercase-id"),
        pytest.param(VALID_PETER_VKEY, id="a-vkey"),
    ],
)
def test_bad_skeys_are_rejected(skey: str) -> None:
    with pytest.raises(KeyInvalid) as exc:
        NoteSigner.from_skey(skey)
    assert exc.value.code == "note.bad_skey"


# -- tlog-checkpoint ----------------------------------------------------------------------------

SUMDB_VERIFIER = NoteVerifier.from_vkey(SUMDB_VKEY)


def test_derived_sumdb_checkpoint_verifies() -> None:
    checkpoint = verify_checkpoint(
        _text("tlog-checkpoint/derived-sumdb-20852163.checkpoint"),
        verifiers=[SUMDB_VERIFIER],
        origin=SUMDB_ORIGIN,
    )
    assert checkpoint.size == 20852163
    assert (
        checkpoint.root_hash.hex()
        == _json("tlog-checkpoint/spec-example.json")["expected_parse"]["root_hash_hex"]
    )


FORMATS_SUMDB = _json("tlog-checkpoint/formats-sumdb-6476701.json")


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case["desc"]) for case in FORMATS_SUMDB["cases"]]
)
def test_formats_sumdb_checkpoint_origin_cases(case: dict[str, Any]) -> None:
    text = _text("tlog-checkpoint/" + FORMATS_SUMDB["checkpoint_file"])
    verifier = NoteVerifier.from_vkey(FORMATS_SUMDB["vkey"])
    if case["want_error"]:
        with pytest.raises(CheckpointInvalid) as exc:
            verify_checkpoint(text, verifiers=[verifier], origin=case["expected_origin"])
        assert exc.value.code == "checkpoint.origin_mismatch"
        return
    checkpoint = verify_checkpoint(text, verifiers=[verifier], origin=case["expected_origin"])
    want = FORMATS_SUMDB["expected_parse"]
    assert checkpoint.origin == want["origin"]
    assert checkpoint.size == want["tree_size"]
    assert checkpoint.root_hash == base64.b64decode(want["root_hash_base64"])
    assert checkpoint.extensions == ()


def test_spec_checkpoint_parses_but_does_not_verify_under_the_sumdb_key() -> None:
    spec = _json("tlog-checkpoint/spec-example.json")
    text = _text("tlog-checkpoint/spec-example.checkpoint")
    signed = SignedCheckpoint.from_text(text)
    want = spec["expected_parse"]
    assert signed.checkpoint.origin == want["origin"]
    assert signed.checkpoint.size == want["tree_size"]
    assert signed.checkpoint.root_hash.hex() == want["root_hash_hex"]
    assert list(signed.checkpoint.extensions) == want["extension_lines"]
    assert signed.checkpoint.to_text() == signed.note.text
    with pytest.raises(CheckpointInvalid) as exc:
        signed.verify([SUMDB_VERIFIER], origin=SUMDB_ORIGIN)
    assert exc.value.code == "checkpoint.origin_mismatch"
    with pytest.raises(CheckpointInvalid) as exc:
        signed.verify([SUMDB_VERIFIER], origin=want["origin"])
    assert exc.value.code == "checkpoint.no_known_signature"


def test_a_matching_name_without_a_matching_key_id_is_ignored() -> None:
    # The spec example carries sum.golang.org's signature under another name. A verifier with that
    # name and the sumdb key has another key id, so the line is unknown, not a failed signature.
    text = _text("tlog-checkpoint/spec-example.checkpoint")
    impostor = NoteVerifier.from_public_key(
        "example.com/behind-the-sofa", SUMDB_VERIFIER.public_key
    )
    signed = SignedCheckpoint.from_text(text)
    assert impostor.key_id != signed.note.signatures[0].key_id
    with pytest.raises(CheckpointInvalid) as exc:
        signed.verify([impostor], origin="example.com/behind-the-sofa")
    assert exc.value.code == "checkpoint.no_known_signature"


BODY_CASES = _json("tlog-checkpoint/formats-body-parse-cases.json")["cases"]


def _with_32_byte_root(body: str) -> str:
    """The same body with a base64 root line swapped for base64 of a 32-byte stand-in.

    The upstream cases use short roots ("bananas"); a root that is not base64 stays as it is.
    """
    lines = body.split("\n")
    if len(lines) >= 3:
        try:
            decoded = base64.b64decode(lines[2], validate=True)
        except ValueError:
            return body
        lines[2] = base64.b64encode(hashlib.sha256(decoded).digest()).decode("ascii")
    return "\n".join(lines)


# "valid with trailing newlines" has three *empty* extension lines: tlog-checkpoint says
# extension lines MUST be non-empty, so we reject what the Go parser accepts there.
EMPTY_EXTENSION_CASES = {"valid with trailing newlines"}


@pytest.mark.parametrize("case", [pytest.param(case, id=case["desc"]) for case in BODY_CASES])
def test_formats_body_parse_cases(case: dict[str, Any]) -> None:
    # The upstream short roots fail our 32-byte rule whatever the case says.
    with pytest.raises(CheckpointInvalid) as exc:
        Checkpoint.from_text(case["body"])
    assert exc.value.code == "checkpoint.malformed"
    body = _with_32_byte_root(case["body"])
    if case["want_error"] or case["desc"] in EMPTY_EXTENSION_CASES:
        with pytest.raises(CheckpointInvalid) as exc:
            Checkpoint.from_text(body)
        assert exc.value.code == "checkpoint.malformed"
        return
    checkpoint = Checkpoint.from_text(body)
    want = case["want"]
    assert checkpoint.origin == want["origin"]
    assert checkpoint.size == want["tree_size"]
    stand_in = hashlib.sha256(want["root_hash_utf8"].encode("utf-8")).digest()
    assert checkpoint.root_hash == stand_in
    assert "".join(line + "\n" for line in checkpoint.extensions) == case.get("want_rest", "")
    assert checkpoint.to_text() == body


ROOT = hashlib.sha256(b"root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode("ascii")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(f"log\n0123\n{ROOT_B64}\n", id="leading-zero"),
        pytest.param(f"log\n00\n{ROOT_B64}\n", id="double-zero"),
        pytest.param(f"log\n+5\n{ROOT_B64}\n", id="plus-sign"),
        pytest.param(f"log\n1_000\n{ROOT_B64}\n", id="underscore"),
        pytest.param(f"log\n\u0661\u0662\n{ROOT_B64}\n", id="arabic-digits"),
        pytest.param(f"log\n 5\n{ROOT_B64}\n", id="space"),
        pytest.param(f"log\n{2**64}\n{ROOT_B64}\n", id="2^64"),
        pytest.param(f"log\n{'9' * 5000}\n{ROOT_B64}\n", id="5000-digits"),
        pytest.param(f"log\n5\n{base64.b64encode(ROOT[:31]).decode()}\n", id="31-byte-root"),
        pytest.param(f"log\n5\n{base64.b64encode(ROOT + b'x').decode()}\n", id="33-byte-root"),
        pytest.param(f"log\n5\n{ROOT_B64.rstrip('=')}\n", id="unpadded-root"),
        pytest.param(f"log\n5\n{ROOT_B64[:-2]}9=\n", id="non-canonical-root"),
        pytest.param(f"log\n5\n{ROOT_B64}\n\nextension\n", id="empty-extension"),
        pytest.param(f"log\n5\n{ROOT_B64}", id="no-final-newline"),
        pytest.param(f"\n5\n{ROOT_B64}\n", id="empty-origin"),
        pytest.param("log\n5\n", id="two-lines"),
    ],
)
def test_checkpoint_body_rejections(body: str) -> None:
    with pytest.raises(CheckpointInvalid) as exc:
        Checkpoint.from_text(body)
    assert exc.value.code == "checkpoint.malformed"


@pytest.mark.parametrize(
    ("size", "extensions"),
    [
        pytest.param(0, (), id="zero"),
        pytest.param(2**64 - 1, (), id="max-uint64"),
        pytest.param(7, ("ext one", "ext two"), id="extensions"),
    ],
)
def test_checkpoint_body_accepts(size: int, extensions: tuple[str, ...]) -> None:
    checkpoint = Checkpoint("example.com/log", size, ROOT, extensions)
    assert Checkpoint.from_text(checkpoint.to_text()) == checkpoint
    assert checkpoint.to_text().split("\n")[1] == str(size)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"origin": ""}, id="empty-origin"),
        pytest.param({"origin": "a\nb"}, id="newline-origin"),
        pytest.param({"origin": "a\x07b"}, id="control-origin"),
        pytest.param({"origin": "\ud800"}, id="surrogate-origin"),
        pytest.param({"size": -1}, id="negative"),
        pytest.param({"size": 2**64}, id="too-large"),
        pytest.param({"size": True}, id="bool"),
        pytest.param({"root_hash": ROOT[:31]}, id="short-root"),
        pytest.param({"root_hash": ROOT_B64}, id="str-root"),
        pytest.param({"extensions": ("",)}, id="empty-extension"),
        pytest.param({"extensions": ["x"]}, id="list-extensions"),
    ],
)
def test_checkpoint_construction_is_checked(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"origin": "example.com/log", "size": 1, "root_hash": ROOT}
    fields.update(kwargs)
    with pytest.raises(CheckpointInvalid) as exc:
        Checkpoint(**fields)
    assert exc.value.code == "checkpoint.malformed"


# -- tlog-cosignature -----------------------------------------------------------------------------

COSIGNED = _json("tlog-cosignature/derived-cosigned.json")
COSIGNED_TEXT = _text("tlog-cosignature/" + COSIGNED["checkpoint_file"])
COSIGNER_VERIFIER = NoteVerifier.from_vkey(COSIGNED["cosigner_vkey"])
BEHIND_THE_SOFA = "example.com/behind-the-sofa"


def test_derived_cosignature_verifies_with_the_cosignature_key() -> None:
    assert COSIGNER_VERIFIER.key_type == KeyType.COSIGNATURE_V1
    assert f"{COSIGNER_VERIFIER.key_id:08x}" == COSIGNED["cosigner_key_id_hex"]
    checkpoint = verify_checkpoint(
        COSIGNED_TEXT,
        verifiers=[COSIGNER_VERIFIER],
        origin=BEHIND_THE_SOFA,
        required={"PeterNeumann"},
    )
    assert checkpoint.size == 20852163
    verified = SignedNote.from_text(COSIGNED_TEXT).verify([COSIGNER_VERIFIER])
    (cosignature,) = verified.verified
    assert cosignature.timestamp == COSIGNED["timestamp"]
    assert cosignature.signature.line == COSIGNED["cosignature_line"]
    assert (
        cosignature_message(verified.text, COSIGNED["timestamp"]).decode()
        == COSIGNED["signed_message"]
    )


def test_derived_cosignature_does_not_verify_with_the_plain_key() -> None:
    plain = NoteVerifier.from_vkey(COSIGNED["plain_note_vkey_of_same_key"])
    assert plain.public_key == COSIGNER_VERIFIER.public_key
    with pytest.raises(CheckpointInvalid) as exc:
        verify_checkpoint(COSIGNED_TEXT, verifiers=[plain], origin=BEHIND_THE_SOFA)
    assert exc.value.code == "checkpoint.no_known_signature"


def test_derived_cosignature_fails_when_the_size_changes() -> None:
    tampered = COSIGNED_TEXT.replace("\n20852163\n", "\n20852164\n", 1)
    assert tampered != COSIGNED_TEXT
    with pytest.raises(CheckpointInvalid) as exc:
        verify_checkpoint(tampered, verifiers=[COSIGNER_VERIFIER], origin=BEHIND_THE_SOFA)
    assert exc.value.code == "checkpoint.signature_invalid"


def test_derived_cosignature_line_is_reproduced_byte_for_byte() -> None:
    peter = NoteSigner.from_skey(COSIGNED["signer_key_source"]["skey"])
    seed = base64.b64decode(COSIGNED["signer_key_source"]["skey"].split("+", 4)[4])[1:]
    cosigner = Cosigner("PeterNeumann", PrivateKey.from_seed(seed))
    assert cosigner.vkey == COSIGNED["cosigner_vkey"]
    assert peter.vkey == COSIGNED["plain_note_vkey_of_same_key"]
    spec = SignedNote.from_text(_text("tlog-cosignature/spec-example.checkpoint"))
    line = cosigner.cosign(spec.text, timestamp=COSIGNED["timestamp"])
    assert line.line == COSIGNED["cosignature_line"]
    log_only = SignedNote(spec.text, spec.signatures[:1])
    assert log_only.with_signatures(line).to_text() == COSIGNED_TEXT
    assert repr(cosigner) == "Cosigner('PeterNeumann+18b9780b')"


def test_spec_cosignature_parses() -> None:
    spec = _json("tlog-cosignature/spec-example.json")
    note = SignedNote.from_text(_text("tlog-cosignature/spec-example.checkpoint"))
    log_line, witness_line = (signature.line for signature in note.signatures)
    assert log_line == spec["log_signature_line"]
    assert witness_line == spec["cosignature_line"]
    decoded = spec["cosignature_decoded"]
    cosignature = Cosignature.from_base64(witness_line.rsplit(" ", 1)[1])
    assert f"{cosignature.key_id:08x}" == decoded["key_id_hex"]
    assert cosignature.timestamp == decoded["timestamp"] == spec["expected"]["timestamp"]
    assert cosignature.signature.hex() == decoded["ed25519_signature_hex"]
    message = cosignature_message(note.text, cosignature.timestamp).decode()
    assert message == spec["signed_message_example"]
    with pytest.raises(CheckpointInvalid) as exc:
        note.verify([])
    assert exc.value.code == "note.no_known_signature"


TIMESTAMP_CASES = _json("tlog-cosignature/formats-timestamp-cases.json")["cases"]


@pytest.mark.parametrize("case", [pytest.param(case, id=case["desc"]) for case in TIMESTAMP_CASES])
def test_cosignature_timestamp_cases(case: dict[str, Any]) -> None:
    if case["want_error"]:
        with pytest.raises(CheckpointInvalid) as exc:
            Cosignature.from_base64(case["signature_base64"])
        assert exc.value.code == "cosignature.malformed"
    else:
        assert Cosignature.from_base64(case["signature_base64"]).timestamp == case["want_timestamp"]


def test_cosignature_timestamp_above_2_63_is_rejected() -> None:
    blob = bytes(4) + (2**63).to_bytes(8, "big") + bytes(64)
    with pytest.raises(CheckpointInvalid) as exc:
        Cosignature.from_bytes(blob)
    assert exc.value.code == "cosignature.malformed"
    with pytest.raises(CheckpointInvalid):
        cosignature_message("a\n", 2**63)
    with pytest.raises(CheckpointInvalid):
        cosignature_message("a\n", -1)


# -- our own keys: round trips, rotation, required signers ---------------------------------------

LOG_KEY = PrivateKey.from_seed(bytes(range(32)))
NEW_LOG_KEY = PrivateKey.from_seed(bytes(range(1, 33)))
WITNESS_KEY = PrivateKey.from_seed(bytes(range(2, 34)))
ORIGIN = "tallystick.example/log"
LOG = NoteSigner(ORIGIN, LOG_KEY)
NEW_LOG = NoteSigner(ORIGIN, NEW_LOG_KEY)
WITNESS = Cosigner("witness.example/w1", WITNESS_KEY)


def _tree_checkpoint(size: int) -> tuple[MerkleTree, Checkpoint]:
    tree = MerkleTree()
    tree.extend(hash_leaf(b"entry %d" % i) for i in range(size))
    return tree, Checkpoint(ORIGIN, size, tree.root())


def test_sign_and_verify_round_trip_then_prove_inclusion() -> None:
    tree, checkpoint = _tree_checkpoint(11)
    text = sign_checkpoint(checkpoint, LOG)
    lines = text.split("\n")
    assert lines[:4] == [ORIGIN, "11", base64.b64encode(tree.root()).decode(), ""]
    assert lines[4].startswith("\u2014 " + ORIGIN + " ")
    assert text.endswith("\n")
    verified = verify_checkpoint(text, verifiers=[LOG.verifier], origin=ORIGIN)
    assert verified == checkpoint
    verify_inclusion(
        leaf_index=4,
        tree_size=verified.size,
        leaf_hash=hash_leaf(b"entry 4"),
        proof=tree.inclusion_proof(4, 11),
        root_hash=verified.root_hash,
    )
    assert NoteVerifier.from_vkey(LOG.vkey) == LOG.verifier
    assert NoteVerifier.from_public_key(ORIGIN, LOG_KEY.public_key).vkey == LOG.vkey


def test_empty_tree_checkpoint_carries_the_empty_root() -> None:
    _, checkpoint = _tree_checkpoint(0)
    assert checkpoint.root_hash == EMPTY_ROOT
    text = sign_checkpoint(checkpoint, LOG)
    assert text.split("\n")[1] == "0"
    assert verify_checkpoint(text, verifiers=[LOG.verifier], origin=ORIGIN) == checkpoint


def test_key_rotation_overlap_verifies_for_old_and_new_clients() -> None:
    _, checkpoint = _tree_checkpoint(3)
    text = sign_checkpoint(checkpoint, LOG, NEW_LOG)
    for verifiers in ([LOG.verifier], [NEW_LOG.verifier], [LOG.verifier, NEW_LOG.verifier]):
        assert verify_checkpoint(text, verifiers=verifiers, origin=ORIGIN) == checkpoint


def test_cosigned_checkpoint_with_required_witness() -> None:
    _, checkpoint = _tree_checkpoint(5)
    signed = SignedNote.from_text(sign_checkpoint(checkpoint, LOG))
    cosigned = signed.with_signatures(WITNESS.cosign(signed.text, timestamp=1_700_000_000))
    verifiers = [LOG.verifier, WITNESS.verifier]
    result = cosigned.verify(verifiers, required={ORIGIN, "witness.example/w1"})
    assert result.verified_names == {ORIGIN, "witness.example/w1"}
    assert {item.timestamp for item in result.verified} == {None, 1_700_000_000}
    assert (
        verify_checkpoint(
            cosigned.to_text(), verifiers=verifiers, origin=ORIGIN, required={"witness.example/w1"}
        )
        == checkpoint
    )
    with pytest.raises(CheckpointInvalid) as exc:
        verify_checkpoint(
            signed.to_text(), verifiers=verifiers, origin=ORIGIN, required={"witness.example/w1"}
        )
    assert exc.value.code == "checkpoint.missing_required_signature"


def test_a_failing_known_signature_rejects_even_if_another_verifies() -> None:
    _, checkpoint = _tree_checkpoint(5)
    good = SignedNote.from_text(sign_checkpoint(checkpoint, LOG))
    forged = NEW_LOG.sign("something else\n")
    with pytest.raises(CheckpointInvalid) as exc:
        verify_checkpoint(
            good.with_signatures(forged).to_text(),
            verifiers=[LOG.verifier, NEW_LOG.verifier],
            origin=ORIGIN,
        )
    assert exc.value.code == "checkpoint.signature_invalid"


def test_ambiguous_verifiers_are_refused() -> None:
    # Two 32-byte keys whose key ids collide under ORIGIN (a birthday search over
    # SHA-256(b"k%d"), done once offline): a signature line could not say which one it means.
    first, second = (
        PublicKey.from_raw(hashlib.sha256(b"k%d" % n).digest()) for n in (23677, 53140)
    )
    colliding = [NoteVerifier.from_public_key(ORIGIN, key) for key in (first, second)]
    assert colliding[0].key_id == colliding[1].key_id == 0xCD5B7164
    text = sign_checkpoint(_tree_checkpoint(1)[1], LOG)
    with pytest.raises(KeyInvalid) as exc:
        verify_checkpoint(text, verifiers=[LOG.verifier, *colliding], origin=ORIGIN)
    assert exc.value.code == "note.ambiguous_verifier"
    # The same verifier twice is not ambiguous.
    assert verify_checkpoint(text, verifiers=[LOG.verifier, LOG.verifier], origin=ORIGIN)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("no newline", id="no-newline"),
        pytest.param("", id="empty"),
        pytest.param("bell\x07\n", id="control"),
        pytest.param("lone \ud800 surrogate\n", id="surrogate"),
    ],
)
def test_signing_refuses_what_is_not_a_note_text(text: str) -> None:
    with pytest.raises(CheckpointInvalid) as exc:
        sign_note(text, LOG)
    assert exc.value.code == "note.malformed"
    with pytest.raises(CheckpointInvalid):
        WITNESS.cosign(text, timestamp=1)


def test_signing_needs_a_signer_and_a_valid_name() -> None:
    with pytest.raises(CheckpointInvalid):
        sign_note("text\n")
    for name in ("", "has space", "has+plus", "tab\tname", "nbsp\u00a0name"):
        with pytest.raises(KeyInvalid):
            NoteSigner(name, LOG_KEY)


def test_text_with_empty_lines_round_trips() -> None:
    text = "first\n\n\nlast\n\n"
    verified = SignedNote.from_text(sign_note(text, LOG)).verify([LOG.verifier])
    assert verified.text == text


def test_parsed_types_cannot_be_assembled_inconsistently() -> None:
    signed = SignedCheckpoint.from_text(sign_checkpoint(_tree_checkpoint(3)[1], LOG))
    _, other = _tree_checkpoint(4)
    with pytest.raises(CheckpointInvalid) as exc:
        SignedCheckpoint(other, signed.note)
    assert exc.value.code == "checkpoint.malformed"
    signature = signed.note.signatures[0]
    with pytest.raises(CheckpointInvalid) as exc:
        SignedNote("no final newline", (signature,))
    assert exc.value.code == "note.malformed"
    with pytest.raises(CheckpointInvalid) as exc:
        SignedNote(signed.note.text, ())
    assert exc.value.code == "note.malformed"
    with pytest.raises(CheckpointInvalid) as exc:
        signed.note.with_signatures(*[signature] * 100)
    assert exc.value.code == "note.malformed"
    with pytest.raises(CheckpointInvalid) as exc:
        NoteSignature("bad name", signature.key_id, signature.signature)
    assert exc.value.code == "note.malformed"


# -- property tests -----------------------------------------------------------------------------

SIGNED_TEXT = sign_checkpoint(Checkpoint(ORIGIN, 42, ROOT, ("ext",)), LOG)
COSIGNED_OWN = (
    SignedNote.from_text(SIGNED_TEXT)
    .with_signatures(WITNESS.cosign(SignedNote.from_text(SIGNED_TEXT).text, timestamp=99))
    .to_text()
)
NOTE_ALPHABET = st.sampled_from(
    ["\n", "\n\n", "\u2014 ", " ", "+", "=", "a", "Z", "0", "/", "\x00"]
)


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.lists(NOTE_ALPHABET | st.text(max_size=8), max_size=30).map("".join),
        st.binary(max_size=200),
    )
)
def test_random_text_never_crashes_the_parsers(text: str | bytes) -> None:
    for parse in (SignedNote.from_text, SignedCheckpoint.from_text):
        try:
            parse(text)
        except TallystickError as exc:
            assert exc.code.endswith(".malformed")
    with pytest.raises(TallystickError):
        verify_checkpoint(text, verifiers=[LOG.verifier], origin=ORIGIN)
    if isinstance(text, str):
        try:
            Checkpoint.from_text(text)
        except CheckpointInvalid as exc:
            assert exc.code == "checkpoint.malformed"
        try:
            NoteVerifier.from_vkey(text)
        except KeyInvalid as exc:
            assert exc.code == "note.bad_vkey"


@settings(max_examples=300, deadline=None)
@given(data=st.data(), cosigned=st.booleans())
def test_a_flipped_byte_never_verifies(data: st.DataObject, cosigned: bool) -> None:
    original = (COSIGNED_OWN if cosigned else SIGNED_TEXT).encode("utf-8")
    position = data.draw(st.integers(0, len(original) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(original)
    flipped[position] ^= 1 << bit
    verifiers = [LOG.verifier, WITNESS.verifier]
    required = {ORIGIN, "witness.example/w1"} if cosigned else {ORIGIN}
    with pytest.raises(TallystickError):
        verify_checkpoint(bytes(flipped), verifiers=verifiers, origin=ORIGIN, required=required)


def test_unflipped_originals_verify() -> None:
    verifiers = [LOG.verifier, WITNESS.verifier]
    required = {ORIGIN, "witness.example/w1"}
    assert verify_checkpoint(COSIGNED_OWN, verifiers=verifiers, origin=ORIGIN, required=required)
    assert verify_checkpoint(SIGNED_TEXT.encode(), verifiers=verifiers, origin=ORIGIN)


@settings(max_examples=100, deadline=None)
@given(
    origin=st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], min_codepoint=0x20), min_size=1
    ),
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=["Cs"], min_codepoint=0x20), min_size=1
        ),
        max_size=3,
    ),
)
def test_checkpoint_text_round_trips(
    origin: str, size: int, root: bytes, extensions: list[str]
) -> None:
    checkpoint = Checkpoint(origin, size, root, tuple(extensions))
    assert Checkpoint.from_text(checkpoint.to_text()) == checkpoint
    text = sign_checkpoint(checkpoint, LOG)
    assert verify_checkpoint(text, verifiers=[LOG.verifier], origin=origin) == checkpoint


def test_vector_files_are_present() -> None:
    assert isinstance(vector_path("c2sp", "README.md"), Path)
