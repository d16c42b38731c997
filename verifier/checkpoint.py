"""C2SP signed notes and transparency-log checkpoints, with Ed25519 and cosignature/v1 keys.

One call verifies a log's checkpoint before its root is trusted::

    log_key = NoteVerifier.from_vkey("example.com/log+5b3f0a1c+AXr...")
    checkpoint = verify_checkpoint(text, verifiers=[log_key], origin="example.com/log")
    verify_inclusion(leaf_index=i, tree_size=checkpoint.size, leaf_hash=h, proof=p,
                     root_hash=checkpoint.root_hash)

Layers, each its own frozen type (parse once, at the edge):

- :class:`SignedNote` (c2sp.org/signed-note): text plus signature lines. A signature is *known*
  only when its key name and key id both match a configured :class:`NoteVerifier`; unknown
  signatures are ignored, a known one that fails rejects the note, and a note with no known
  signature is rejected.
- :class:`Checkpoint` (c2sp.org/tlog-checkpoint): origin, tree size, root hash, extension lines.
- :class:`SignedCheckpoint`: both, with the origin checked before size and root are trusted.

Key types: Ed25519 (``0x01``) and Ed25519 timestamped cosignatures (``0x04``,
c2sp.org/tlog-cosignature). Every failure raises :class:`CheckpointInvalid`, except key text
that cannot be loaded (:class:`KeyInvalid`, code ``note.bad_vkey`` / ``note.bad_skey``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import IntEnum

from ._internal.encoding import b64_decode, b64_encode
from ._internal.note import (
    MAX_SIGNATURES,
    check_text,
    format_signature_line,
    is_valid_key_name,
    key_id,
    parse_note,
)
from .errors import CheckpointInvalid, KeyInvalid, MalformedInput, SignatureInvalid
from .keys import PrivateKey, PublicKey

__all__ = [
    "MAX_SIGNATURES",
    "Checkpoint",
    "Cosignature",
    "Cosigner",
    "KeyType",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "SignedCheckpoint",
    "SignedNote",
    "VerifiedNote",
    "VerifiedSignature",
    "cosignature_message",
    "sign_checkpoint",
    "sign_note",
    "verify_checkpoint",
]

_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_UINT64_LIMIT = 1 << 64
#: tlog-cosignature: the timestamp MUST NOT exceed 2^63 - 1.
_MAX_TIMESTAMP = (1 << 63) - 1
_ED25519_SIGNATURE_BYTES = 64
_COSIGNATURE_BYTES = 4 + 8 + _ED25519_SIGNATURE_BYTES
_SKEY_PREFIX = "PRIVATE+KEY+"
_ROOT_HASH_BYTES = 32


class KeyType(IntEnum):
    """Signature type bytes (c2sp.org/signed-note "Signature types") this verifier speaks."""

    ED25519 = 0x01
    COSIGNATURE_V1 = 0x04


def cosignature_message(text: str, timestamp: int) -> bytes:
    """The bytes a cosignature/v1 signs: ``cosignature/v1``, ``time <timestamp>``, then the text.

    :raises CheckpointInvalid: a text that is not a note text, or a timestamp outside
        ``[0, 2^63 - 1]`` (``cosignature.malformed``).
    """
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise CheckpointInvalid(
            "cosignature: timestamp must be an integer", code="cosignature.malformed"
        )
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise CheckpointInvalid("cosignature: timestamp out of range", code="cosignature.malformed")
    body = check_text(text, code="cosignature.malformed")
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A decoded cosignature/v1 blob: ``key id (4) || u64be timestamp || Ed25519 sig (64)``."""

    key_id: int
    timestamp: int
    signature: bytes

    @classmethod
    def from_bytes(cls, blob: bytes) -> Cosignature:
        """From the 76 bytes a cosignature line carries.

        :raises CheckpointInvalid: any other length, or a timestamp above 2^63 - 1
            (``cosignature.malformed``).
        """
        if not isinstance(blob, bytes) or len(blob) != _COSIGNATURE_BYTES:
            raise CheckpointInvalid(
                f"cosignature: must be {_COSIGNATURE_BYTES} bytes", code="cosignature.malformed"
            )
        timestamp = int.from_bytes(blob[4:12], "big")
        if timestamp > _MAX_TIMESTAMP:
            raise CheckpointInvalid(
                "cosignature: timestamp above 2^63 - 1", code="cosignature.malformed"
            )
        return cls(int.from_bytes(blob[:4], "big"), timestamp, blob[12:])

    @classmethod
    def from_base64(cls, text: str) -> Cosignature:
        """From the base64 part of a cosignature line.

        :raises CheckpointInvalid: not standard base64, or not a cosignature blob.
        """
        try:
            blob = b64_decode(text, what="cosignature", code="cosignature.malformed")
        except MalformedInput as exc:
            raise CheckpointInvalid(str(exc), code="cosignature.malformed") from exc
        return cls.from_bytes(blob)


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A note verifier key: a key name, a signature type and an Ed25519 public key.

    Build it with :meth:`from_vkey` or :meth:`from_public_key`.
    """

    name: str
    key_type: KeyType
    public_key: PublicKey

    def __post_init__(self) -> None:
        if not is_valid_key_name(self.name):
            raise KeyInvalid("vkey: invalid key name", code="note.bad_vkey")
        if not isinstance(self.key_type, KeyType) or not isinstance(self.public_key, PublicKey):
            raise KeyInvalid("vkey: unsupported key type or key", code="note.bad_vkey")

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<hex key id>+<base64(type || public key)>`` and check its key id.

        :raises KeyInvalid: malformed, an unsupported type, or a key id that does not match
            (``note.bad_vkey``).
        """
        if not isinstance(vkey, str):
            raise KeyInvalid("vkey: must be text", code="note.bad_vkey")
        # At most three parts: the base64 key may itself contain "+".
        parts = vkey.split("+", 2)
        if len(parts) != 3 or _KEY_ID_HEX.fullmatch(parts[1]) is None:
            raise KeyInvalid(
                "vkey: expected <name>+<8 hex digits>+<base64 key>", code="note.bad_vkey"
            )
        name, key_id_hex, encoded = parts
        verifier = cls(name, *_decode_typed_key(encoded, code="note.bad_vkey"))
        if verifier.key_id != int(key_id_hex, 16):
            raise KeyInvalid("vkey: key id does not match the name and key", code="note.bad_vkey")
        return verifier

    @classmethod
    def from_public_key(
        cls, name: str, public_key: PublicKey, *, key_type: KeyType = KeyType.ED25519
    ) -> NoteVerifier:
        """The verifier for ``public_key`` under ``name`` (see :attr:`vkey` for its text).

        :raises KeyInvalid: an invalid key name (``note.bad_vkey``).
        """
        return cls(name, key_type, public_key)

    @property
    def key_id(self) -> int:
        """``SHA-256(name || 0x0A || type || public key)[:4]`` as a uint32."""
        return key_id(self.name, self.key_type, self.public_key.raw)

    @property
    def label(self) -> str:
        """``<name>+<hex key id>``, how the Go reference names a key in its results."""
        return f"{self.name}+{self.key_id:08x}"

    @property
    def vkey(self) -> str:
        """The vkey text, ``<name>+<hex key id>+<base64(type || public key)>``."""
        return f"{self.label}+{b64_encode(bytes([self.key_type]) + self.public_key.raw)}"

    def verify(self, text: str, signature: bytes) -> int | None:
        """Check ``signature`` (the bytes after the key id) over the note ``text``.

        Returns the cosignature timestamp for a cosignature key, ``None`` for an Ed25519 key.

        :raises SignatureInvalid: the signature does not verify (``note.signature_invalid``).
        """
        timestamp: int | None = None
        try:
            if self.key_type is KeyType.COSIGNATURE_V1:
                cosignature = Cosignature.from_bytes(self.key_id.to_bytes(4, "big") + signature)
                timestamp = cosignature.timestamp
                message = cosignature_message(text, timestamp)
                signature = cosignature.signature
            else:
                message = check_text(text, code="note.malformed").encode("utf-8")
        except CheckpointInvalid as exc:
            raise SignatureInvalid(
                f"note: cannot check the signature by {self.label}: {exc}",
                code="note.signature_invalid",
            ) from exc
        try:
            self.public_key.verify(signature, message)
        except (SignatureInvalid, KeyInvalid) as exc:
            raise SignatureInvalid(
                f"note: signature by {self.label} does not verify", code="note.signature_invalid"
            ) from exc
        return timestamp


def _decode_typed_key(encoded: str, *, code: str) -> tuple[KeyType, PublicKey]:
    try:
        blob = b64_decode(encoded, what="key", code=code)
    except MalformedInput as exc:
        raise KeyInvalid("key: not standard base64", code=code) from exc
    try:
        key_type = KeyType(blob[0])
    except (IndexError, ValueError) as exc:
        raise KeyInvalid("key: missing or unsupported signature type", code=code) from exc
    try:
        return key_type, PublicKey.from_raw(blob[1:])
    except KeyInvalid as exc:
        raise KeyInvalid("key: Ed25519 keys are 32 bytes", code=code) from exc


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, key id, and the signature bytes after the key id."""

    name: str
    key_id: int
    signature: bytes

    def __post_init__(self) -> None:
        valid_key_id = isinstance(self.key_id, int) and 0 <= self.key_id < 1 << 32
        if not is_valid_key_name(self.name) or not valid_key_id:
            raise CheckpointInvalid("note signature: bad key name or id", code="note.malformed")
        if not isinstance(self.signature, bytes) or not self.signature:
            raise CheckpointInvalid("note signature: empty", code="note.malformed")

    @property
    def line(self) -> str:
        """``— <name> <base64(key id || signature)>``, without the newline."""
        return format_signature_line(self.name, self.key_id, self.signature)


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    """A signature that verified, with its verifier and (for a cosignature) its timestamp."""

    verifier: NoteVerifier
    signature: NoteSignature
    timestamp: int | None


@dataclass(frozen=True, slots=True)
class VerifiedNote:
    """The outcome of :meth:`SignedNote.verify`: only :attr:`text` is trusted, and only now."""

    text: str
    verified: tuple[VerifiedSignature, ...]
    unverified: tuple[NoteSignature, ...]

    @property
    def verified_names(self) -> frozenset[str]:
        """Names of the keys whose signatures verified."""
        return frozenset(item.verifier.name for item in self.verified)


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A parsed, not yet verified, signed note, from :meth:`from_text` or :func:`sign_note`.

    Its text is untrusted until :meth:`verify` returns.
    """

    text: str
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        check_text(self.text, code="note.malformed")
        if not isinstance(self.signatures, tuple) or not 0 < len(self.signatures) <= MAX_SIGNATURES:
            raise CheckpointInvalid(
                f"note: needs 1 to {MAX_SIGNATURES} signatures", code="note.malformed"
            )
        if not all(isinstance(item, NoteSignature) for item in self.signatures):
            raise CheckpointInvalid("note: signatures must be NoteSignature", code="note.malformed")

    @classmethod
    def from_text(cls, note: str | bytes) -> SignedNote:
        """Parse a signed note (text, empty line, signature lines).

        :raises CheckpointInvalid: not a well-formed signed note (``note.malformed``).
        """
        return _parse_signed_note(note, code="note.malformed")

    def to_text(self) -> str:
        """The note as it travels: text, an empty line, one line per signature."""
        return self.text + "\n" + "".join(signature.line + "\n" for signature in self.signatures)

    def with_signatures(self, *signatures: NoteSignature) -> SignedNote:
        """This note with more signature lines, e.g. a witness's cosignature.

        :raises CheckpointInvalid: more than the signature cap (``note.malformed``).
        """
        return SignedNote(self.text, self.signatures + signatures)

    def verify(
        self, verifiers: Iterable[NoteVerifier], *, required: Collection[str] = ()
    ) -> VerifiedNote:
        """Verify the known signatures; at least one must verify, and each ``required`` name.

        :raises KeyInvalid: two verifiers share a name and key id (``note.ambiguous_verifier``).
        :raises CheckpointInvalid: ``note.signature_invalid`` (a known signature fails),
            ``note.no_known_signature`` or ``note.missing_required_signature``.
        """
        return _verify_signatures(self, verifiers, required, subject="note")


def _parse_signed_note(note: object, *, code: str) -> SignedNote:
    text, raw_signatures = parse_note(note, code=code)
    return SignedNote(text, tuple(NoteSignature(*raw) for raw in raw_signatures))


def _verifier_table(verifiers: Iterable[NoteVerifier]) -> dict[tuple[str, int], NoteVerifier]:
    table: dict[tuple[str, int], NoteVerifier] = {}
    for verifier in verifiers:
        if not isinstance(verifier, NoteVerifier):
            raise KeyInvalid("verifiers: expected NoteVerifier objects", code="note.bad_vkey")
        known = table.setdefault((verifier.name, verifier.key_id), verifier)
        if known != verifier:
            raise KeyInvalid(
                f"verifiers: two keys named {verifier.label}", code="note.ambiguous_verifier"
            )
    return table


def _verify_signatures(
    note: SignedNote,
    verifiers: Iterable[NoteVerifier],
    required: Collection[str],
    *,
    subject: str,
) -> VerifiedNote:
    table = _verifier_table(verifiers)
    verified: dict[tuple[str, int], VerifiedSignature] = {}
    checked: set[NoteSignature] = set()
    unverified: dict[NoteSignature, None] = {}
    for signature in note.signatures:
        verifier = table.get((signature.name, signature.key_id))
        if verifier is None:
            # Unknown name or key id: ignored (signed-note "Signatures"), kept for the record.
            unverified.setdefault(signature)
            continue
        if signature in checked:
            continue
        checked.add(signature)
        try:
            timestamp = verifier.verify(note.text, signature.signature)
        except SignatureInvalid as exc:
            raise CheckpointInvalid(
                f"{subject}: signature by {verifier.label} does not verify",
                code=f"{subject}.signature_invalid",
            ) from exc
        verified.setdefault(
            (signature.name, signature.key_id), VerifiedSignature(verifier, signature, timestamp)
        )
    if not verified:
        raise CheckpointInvalid(
            f"{subject}: no signature by a known key", code=f"{subject}.no_known_signature"
        )
    result = VerifiedNote(note.text, tuple(verified.values()), tuple(unverified))
    missing = sorted(set(required) - result.verified_names)
    if missing:
        raise CheckpointInvalid(
            f"{subject}: no verified signature by {', '.join(missing)}",
            code=f"{subject}.missing_required_signature",
        )
    return result


class NoteSigner:
    """Signs notes with an Ed25519 key (type ``0x01``) under a key name. ``repr`` hides the key."""

    __slots__ = ("_key", "verifier")

    def __init__(self, name: str, key: PrivateKey) -> None:
        """Sign as ``name`` with ``key``.

        :raises KeyInvalid: an invalid key name (``note.bad_vkey``).
        """
        self._key = key
        self.verifier = NoteVerifier(name, KeyType.ED25519, key.public_key)

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        """From the Go reference's ``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>``.

        :raises KeyInvalid: malformed, not Ed25519, or a key id that does not match
            (``note.bad_skey``).
        """
        if not isinstance(skey, str) or not skey.startswith(_SKEY_PREFIX):
            raise KeyInvalid("skey: expected PRIVATE+KEY+<name>+<id>+<key>", code="note.bad_skey")
        parts = skey[len(_SKEY_PREFIX) :].split("+", 2)
        if len(parts) != 3 or _KEY_ID_HEX.fullmatch(parts[1]) is None:
            raise KeyInvalid("skey: expected PRIVATE+KEY+<name>+<id>+<key>", code="note.bad_skey")
        name, key_id_hex, encoded = parts
        try:
            blob = b64_decode(encoded, what="skey", code="note.bad_skey")
            if len(blob) != 33 or blob[0] != KeyType.ED25519:
                raise KeyInvalid("skey: expected an Ed25519 seed", code="note.bad_skey")
            signer = cls(name, PrivateKey.from_seed(blob[1:]))
        except MalformedInput as exc:  # includes KeyInvalid
            raise KeyInvalid("skey: malformed", code="note.bad_skey") from exc
        if signer.verifier.key_id != int(key_id_hex, 16):
            raise KeyInvalid("skey: key id does not match the name and key", code="note.bad_skey")
        return signer

    @property
    def name(self) -> str:
        """The key name signature lines carry."""
        return self.verifier.name

    @property
    def vkey(self) -> str:
        """The verifier key text to publish."""
        return self.verifier.vkey

    def sign(self, text: str) -> NoteSignature:
        """The Ed25519 signature of a note text.

        :raises CheckpointInvalid: not a note text (``note.malformed``).
        """
        body = check_text(text, code="note.malformed")
        signature = self._key.sign(body.encode("utf-8"))
        return NoteSignature(self.name, self.verifier.key_id, signature)

    def __repr__(self) -> str:
        return f"NoteSigner({self.verifier.label!r})"


class Cosigner:
    """Signs cosignature/v1 lines (type ``0x04``) as a witness. ``repr`` hides the key.

    The signed message does not name the cosigner, so use one key per cosigner.
    """

    __slots__ = ("_key", "verifier")

    def __init__(self, name: str, key: PrivateKey) -> None:
        """Cosign as ``name`` with ``key``.

        :raises KeyInvalid: an invalid key name (``note.bad_vkey``).
        """
        self._key = key
        self.verifier = NoteVerifier(name, KeyType.COSIGNATURE_V1, key.public_key)

    @property
    def vkey(self) -> str:
        """The type-0x04 verifier key text to publish."""
        return self.verifier.vkey

    def cosign(self, text: str, *, timestamp: int) -> NoteSignature:
        """The cosignature of a checkpoint text as of ``timestamp`` (POSIX seconds).

        :raises CheckpointInvalid: not a note text, or a timestamp outside ``[0, 2^63 - 1]``.
        """
        signature = self._key.sign(cosignature_message(text, timestamp))
        blob = timestamp.to_bytes(8, "big") + signature
        return NoteSignature(self.verifier.name, self.verifier.key_id, blob)

    def __repr__(self) -> str:
        return f"Cosigner({self.verifier.label!r})"


def sign_note(text: str, *signers: NoteSigner) -> str:
    """The signed note text: ``text``, an empty line, one signature line per signer.

    :raises CheckpointInvalid: not a note text, or no signer (``note.malformed``).
    """
    if not signers:
        raise CheckpointInvalid("note: at least one signer is required", code="note.malformed")
    signatures = tuple(signer.sign(text) for signer in signers)
    return SignedNote(text, signatures).to_text()


# -- checkpoints ------------------------------------------------------------------------------


def _check_line(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or "\n" in value:
        raise CheckpointInvalid(
            f"checkpoint: {what} must be one non-empty line", code="checkpoint.malformed"
        )
    return value


def _parse_size(text: str) -> int:
    # ASCII digits only (int() also takes "+1", "1_0" and non-ASCII digits), no leading zeros,
    # and bounded before int() so a huge digit string costs nothing.
    if len(text) > 20 or _DECIMAL.fullmatch(text) is None or int(text) >= _UINT64_LIMIT:
        raise CheckpointInvalid(
            "checkpoint: tree size must be a uint64 in decimal without leading zeros",
            code="checkpoint.malformed",
        )
    return int(text)


def _parse_root_hash(text: str) -> bytes:
    try:
        return b64_decode(text, what="checkpoint root hash", code="checkpoint.malformed")
    except MalformedInput as exc:
        raise CheckpointInvalid(
            "checkpoint: root hash is not standard base64", code="checkpoint.malformed"
        ) from exc


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's signed tree head (c2sp.org/tlog-checkpoint): origin, size, root, extension lines.

    Building one checks every field (:class:`CheckpointInvalid`, ``checkpoint.malformed``).
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        check_text(self.origin + "\n", code="checkpoint.malformed")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointInvalid(
                "checkpoint: size must be an integer", code="checkpoint.malformed"
            )
        if not 0 <= self.size < _UINT64_LIMIT:
            raise CheckpointInvalid(
                "checkpoint: size must be a uint64", code="checkpoint.malformed"
            )
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != _ROOT_HASH_BYTES:
            raise CheckpointInvalid(
                "checkpoint: root hash must be 32 bytes", code="checkpoint.malformed"
            )
        if not isinstance(self.extensions, tuple):
            raise CheckpointInvalid(
                "checkpoint: extensions must be a tuple", code="checkpoint.malformed"
            )
        for line in self.extensions:
            _check_line(line, "extension line")
            check_text(line + "\n", code="checkpoint.malformed")

    @classmethod
    def from_text(cls, body: str) -> Checkpoint:
        """Parse a checkpoint note text (the part before the signatures).

        :raises CheckpointInvalid: fewer than three lines, an empty origin or extension line, a
            size that is not canonical uint64 decimal, a root that is not base64 of 32 bytes, or
            no final newline (``checkpoint.malformed``).
        """
        if not isinstance(body, str) or not body.endswith("\n"):
            raise CheckpointInvalid(
                "checkpoint: must end with a newline", code="checkpoint.malformed"
            )
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointInvalid(
                "checkpoint: needs origin, size and root hash lines", code="checkpoint.malformed"
            )
        origin, size, root_hash, *extensions = lines
        return cls(origin, _parse_size(size), _parse_root_hash(root_hash), tuple(extensions))

    def to_text(self) -> str:
        """The checkpoint note text, ending in a newline."""
        lines = [self.origin, str(self.size), b64_encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A parsed, not yet verified, signed checkpoint. Build it with :meth:`from_text`."""

    checkpoint: Checkpoint
    note: SignedNote

    def __post_init__(self) -> None:
        # The signatures cover note.text, so the checkpoint must be exactly that text.
        if self.checkpoint.to_text() != self.note.text:
            raise CheckpointInvalid(
                "checkpoint: does not match the signed text", code="checkpoint.malformed"
            )

    @classmethod
    def from_text(cls, text: str | bytes) -> SignedCheckpoint:
        """Parse a signed checkpoint.

        :raises CheckpointInvalid: not a signed note, or not a checkpoint
            (``checkpoint.malformed``).
        """
        note = _parse_signed_note(text, code="checkpoint.malformed")
        return cls(Checkpoint.from_text(note.text), note)

    def verify(
        self,
        verifiers: Iterable[NoteVerifier],
        *,
        origin: str,
        required: Collection[str] = (),
    ) -> Checkpoint:
        """The checkpoint, once its origin is ``origin`` and its signatures verify.

        The origin is compared first: size and root mean nothing for a log we did not ask about.

        :raises KeyInvalid: two verifiers share a name and key id.
        :raises CheckpointInvalid: ``checkpoint.origin_mismatch``,
            ``checkpoint.signature_invalid``, ``checkpoint.no_known_signature`` or
            ``checkpoint.missing_required_signature``.
        """
        if self.checkpoint.origin != origin:
            raise CheckpointInvalid(
                f"checkpoint: origin {self.checkpoint.origin!r} is not {origin!r}",
                code="checkpoint.origin_mismatch",
            )
        _verify_signatures(self.note, verifiers, required, subject="checkpoint")
        return self.checkpoint


def verify_checkpoint(
    text: str | bytes,
    *,
    verifiers: Iterable[NoteVerifier],
    origin: str,
    required: Collection[str] = (),
) -> Checkpoint:
    """Parse and verify a signed checkpoint from the log ``origin``; one call, safe defaults.

    At least one signature by a known key must verify, none may fail, and every name in
    ``required`` must be among those that verified.

    :raises CheckpointInvalid: malformed, another origin, or a signature failure (see
        :meth:`SignedCheckpoint.verify`).
    :raises KeyInvalid: two verifiers share a name and key id.
    """
    return SignedCheckpoint.from_text(text).verify(verifiers, origin=origin, required=required)


def sign_checkpoint(checkpoint: Checkpoint, *signers: NoteSigner) -> str:
    """The exact C2SP text of ``checkpoint`` signed by each of ``signers`` (e.g. old and new key).

    :raises CheckpointInvalid: no signer (``note.malformed``).
    """
    return sign_note(checkpoint.to_text(), *signers)
