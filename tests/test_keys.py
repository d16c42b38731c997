"""Keys: generation, files, text forms, key ids, and rotation through signed key documents."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tallystick.verifier.errors import (
    ChainBroken,
    IdentityUnresolvable,
    KeyInvalid,
    SignatureInvalid,
    TallystickError,
)
from tallystick.verifier.keys import (
    KeyDocument,
    Keyring,
    PrivateKey,
    PublicKey,
    load_private_key,
    load_public_key,
    save_private_key,
)

# RFC 8032 §7.1 TEST 1.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUB = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_rfc8032_test1_sign_and_verify() -> None:
    key = PrivateKey.from_seed(RFC8032_SEED)
    assert key.public_key.raw == RFC8032_PUB
    assert key.sign(b"") == RFC8032_SIG
    key.public_key.verify(RFC8032_SIG, b"")


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        pytest.param(RFC8032_SIG[:-1] + bytes([RFC8032_SIG[-1] ^ 1]), b"", id="flipped-bit"),
        pytest.param(RFC8032_SIG, b"x", id="other-message"),
        pytest.param(RFC8032_SIG[:63], b"", id="short-signature"),
    ],
)
def test_bad_signatures_are_rejected(signature: bytes, message: bytes) -> None:
    with pytest.raises(SignatureInvalid) as exc:
        PublicKey.from_raw(RFC8032_PUB).verify(signature, message)
    assert exc.value.code == "signature.invalid"


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_wrong_key_lengths_are_rejected(length: int) -> None:
    with pytest.raises(KeyInvalid) as exc:
        PublicKey.from_raw(b"\x01" * length)
    assert exc.value.code == "key.invalid"


def test_text_forms_round_trip() -> None:
    pub = PublicKey.from_raw(RFC8032_PUB)
    assert PublicKey.from_text(pub.to_hex()) == pub
    assert PublicKey.from_text(pub.to_hex().upper()) == pub
    assert PublicKey.from_text(pub.to_b64url()) == pub
    assert len(pub.to_b64url()) == 43


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("zz" * 32, id="not-hex"),
        pytest.param("A" * 42, id="short-b64"),
        pytest.param("A" * 42 + "=", id="padded-b64"),
        pytest.param("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURr", id="non-canonical-bits"),
        pytest.param("11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo", id="standard-alphabet"),
    ],
)
def test_malformed_key_text_is_rejected(text: str) -> None:
    with pytest.raises(KeyInvalid):
        PublicKey.from_text(text)


def test_key_id_is_stable_and_distinct() -> None:
    pub = PublicKey.from_raw(RFC8032_PUB)
    assert pub.kid == "ed25519:" + "If4x36FUomFia_hUBG_SJw"
    assert PrivateKey.generate().kid != pub.kid


def test_private_key_file_is_0600_and_round_trips(tmp_path: Path) -> None:
    key = PrivateKey.from_seed(RFC8032_SEED)
    path = tmp_path / "issuer.pem"
    save_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_private_key(path).public_key == key.public_key
    assert load_public_key(str(path)) == key.public_key
    with pytest.raises(FileExistsError):
        save_private_key(path, key)


def test_repr_never_shows_the_secret() -> None:
    key = PrivateKey.from_seed(RFC8032_SEED)
    assert RFC8032_SEED.hex() not in repr(key)
    assert "ed25519:" in repr(key)


def test_public_key_from_files(tmp_path: Path) -> None:
    pub = PublicKey.from_raw(RFC8032_PUB)
    (tmp_path / "k.pub").write_text(pub.to_b64url() + "\n")
    (tmp_path / "h.pub").write_text(pub.to_hex())
    assert load_public_key(str(tmp_path / "k.pub")) == pub
    assert load_public_key(str(tmp_path / "h.pub")) == pub
    (tmp_path / "bad.pub").write_bytes(b"\xff\xfe")
    with pytest.raises(KeyInvalid):
        load_public_key(str(tmp_path / "bad.pub"))
    with pytest.raises(KeyInvalid):
        load_public_key(str(tmp_path / "missing.pub"))
    (tmp_path / "bad.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(KeyInvalid):
        load_private_key(tmp_path / "bad.pem")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=100))
def test_key_text_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(TallystickError):
        PublicKey.from_text(text)


# -- key documents -----------------------------------------------------------------------------

OWNER = "tallystickd/log"


def _keys() -> tuple[PrivateKey, PrivateKey, PrivateKey]:
    return tuple(PrivateKey.from_seed(bytes([i]) * 32) for i in (1, 2, 3))  # type: ignore[return-value]


def test_rotation_keeps_old_signatures_valid() -> None:
    k1, k2, k3 = _keys()
    v1 = KeyDocument.create(owner=OWNER, key=k1, at_ms=1_000)
    v2 = v1.rotate(old_key=k1, new_key=k2, at_ms=5_000)
    v3 = v2.rotate(old_key=k2, new_key=k3, at_ms=9_000)
    ring = Keyring.from_documents([v1, v2, v3], trust_anchor=k1.public_key)
    assert ring.key_for(k1.kid, at_ms=4_999) == k1.public_key
    assert ring.key_for(k2.kid, at_ms=5_000) == k2.public_key
    assert ring.current() == (k3.public_key,)
    with pytest.raises(IdentityUnresolvable):
        ring.key_for(k1.kid, at_ms=5_000)
    with pytest.raises(IdentityUnresolvable):
        ring.key_for("ed25519:unknown", at_ms=5_000)


def test_key_document_json_round_trip() -> None:
    k1, k2, _ = _keys()
    v2 = KeyDocument.create(owner=OWNER, key=k1, at_ms=1).rotate(old_key=k1, new_key=k2, at_ms=2)
    assert KeyDocument.from_json(v2.to_json()) == v2


def test_rotation_needs_the_old_key() -> None:
    k1, k2, k3 = _keys()
    v1 = KeyDocument.create(owner=OWNER, key=k1, at_ms=1)
    with pytest.raises(IdentityUnresolvable):
        v1.rotate(old_key=k2, new_key=k3, at_ms=2)


def test_forged_successor_is_rejected() -> None:
    k1, k2, k3 = _keys()
    v1 = KeyDocument.create(owner=OWNER, key=k1, at_ms=1)
    # An attacker holding only k3 writes a v2 that adds k3, signed by k3 alone.
    forged = KeyDocument(
        owner=OWNER,
        version=2,
        issued_at=2,
        prev=v1.digest(),
        keys=(*v1.keys, KeyDocument.create(owner=OWNER, key=k3, at_ms=2).keys[0]),
    )._signed_by([k3])
    with pytest.raises(SignatureInvalid) as exc:
        Keyring.from_documents([v1, forged], trust_anchor=k1.public_key)
    assert exc.value.code == "key.document_unsigned"
    honest = v1.rotate(old_key=k1, new_key=k2, at_ms=2)
    with pytest.raises(ChainBroken):
        Keyring.from_documents([honest], trust_anchor=k1.public_key)
    wrong_prev = honest.model_copy(update={"prev": "sha256:" + "A" * 43})._signed_by([k1, k2])
    with pytest.raises(ChainBroken):
        Keyring.from_documents([v1, wrong_prev], trust_anchor=k1.public_key)
    with pytest.raises(IdentityUnresolvable):
        Keyring.from_documents([v1], trust_anchor=k2.public_key)


def test_tampered_key_document_is_rejected() -> None:
    k1, _, _ = _keys()
    v1 = KeyDocument.create(owner=OWNER, key=k1, at_ms=1)
    tampered = v1.model_copy(update={"owner": "someone-else"})
    with pytest.raises(SignatureInvalid):
        Keyring.from_documents([tampered], trust_anchor=k1.public_key)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("{}", id="empty"),
        pytest.param('{"type":"tallystick.keys/v1","type":"x"}', id="duplicate"),
        pytest.param("[1,2", id="truncated"),
        pytest.param(
            '{"type":"tallystick.keys/v1","owner":"o","version":1.0,"issued_at":0,"keys":[]}',
            id="float-version",
        ),
    ],
)
def test_malformed_key_documents_are_rejected(raw: str) -> None:
    with pytest.raises(TallystickError):
        KeyDocument.from_json(raw)


def test_backdated_successor_is_rejected() -> None:
    k1, k2, k3 = _keys()
    v2 = KeyDocument.create(owner=OWNER, key=k1, at_ms=1_000).rotate(
        old_key=k1, new_key=k2, at_ms=5_000
    )
    # k1 was active in v1 at time 2,000: it could sign a successor of v2 dated then.
    backdated = KeyDocument(
        owner=OWNER,
        version=3,
        issued_at=2_000,
        prev=v2.digest(),
        keys=(*v2.keys, KeyDocument.create(owner=OWNER, key=k3, at_ms=2_000).keys[0]),
    )._signed_by([k1, k3])
    v1 = KeyDocument.create(owner=OWNER, key=k1, at_ms=1_000)
    with pytest.raises(ChainBroken) as exc:
        Keyring.from_documents([v1, v2, backdated], trust_anchor=k1.public_key)
    assert "dated before" in str(exc.value)
