"""Ed25519 keys: generation, files, text forms, key ids and signed key documents.

Signing and verification go through PyNaCl (libsodium), which is strict about
RFC 8032 edge cases: it rejects non-canonical ``S`` values and small-order
public keys, so a signature that libsodium accepts is also accepted by
``cryptography``/OpenSSL. Key files use ``cryptography`` (PKCS#8 PEM).

A key id (``kid``) is derived from the public key, ``"ed25519:"`` followed by
the unpadded base64url of the first 16 bytes of SHA-256 of the raw key, and
Tallystick's own signed structures always put the ``kid`` inside the signed
bytes, unlike plain HDP (hdp.md §9.2).

Key documents (:class:`KeyDocument`) let an owner rotate keys: each version is
signed by every key it introduces and by a key that was active in the previous
version, and names the previous version's hash. A :class:`Keyring` built from
such a history answers "was key K valid at time T", so what an old key signed
before its rotation still verifies.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ._internal.encoding import b64url_decode, b64url_encode, hex_decode
from .canonical import canonicalize, parse_json
from .errors import (
    ChainBroken,
    IdentityUnresolvable,
    KeyInvalid,
    MalformedInput,
    SignatureInvalid,
)

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "DocumentSignature",
    "KeyDocument",
    "KeyEntry",
    "Keyring",
    "PrivateKey",
    "PublicKey",
    "key_id",
    "load_private_key",
    "load_public_key",
    "save_private_key",
]

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_PRIVATE_FILE_MODE = 0o600


def key_id(raw_public_key: bytes) -> str:
    """The Tallystick key id of a raw 32-byte Ed25519 public key."""
    return "ed25519:" + b64url_encode(hashlib.sha256(raw_public_key).digest()[:16])


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key. Build it with :meth:`from_raw` or :meth:`from_text`."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != PUBLIC_KEY_BYTES:
            raise KeyInvalid("public key: must be 32 bytes")

    @classmethod
    def from_raw(cls, raw: bytes) -> PublicKey:
        """From the raw 32 bytes.

        :raises KeyInvalid: wrong length.
        """
        return cls(bytes(raw))

    @classmethod
    def from_text(cls, text: str) -> PublicKey:
        """From 64 hex characters or 43 characters of unpadded base64url.

        :raises KeyInvalid: any other form or length.
        """
        text = text.strip()
        try:
            if len(text) == 2 * PUBLIC_KEY_BYTES:
                return cls(hex_decode(text, what="public key"))
            if len(text) == 43:
                return cls(b64url_decode(text, what="public key"))
        except MalformedInput as exc:
            raise KeyInvalid(str(exc)) from exc
        raise KeyInvalid("public key: expected 64 hex or 43 base64url characters")

    @property
    def kid(self) -> str:
        """The key id, covered by every Tallystick signature made with this key."""
        return key_id(self.raw)

    def to_b64url(self) -> str:
        """Unpadded base64url of the raw key, the form ``.pub`` files hold."""
        return b64url_encode(self.raw)

    def to_hex(self) -> str:
        """Lowercase hex of the raw key."""
        return self.raw.hex()

    def verify(self, signature: bytes, message: bytes) -> None:
        """Check an Ed25519 signature over ``message``.

        :raises SignatureInvalid: the signature does not verify (or is not 64 bytes).
        """
        if len(signature) != SIGNATURE_BYTES:
            raise SignatureInvalid("signature: must be 64 bytes")
        try:
            _verify_key(self.raw).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
            raise SignatureInvalid("signature: does not verify") from exc

    def is_valid_signature(self, signature: bytes, message: bytes) -> bool:
        """Boolean form of :meth:`verify`."""
        try:
            self.verify(signature, message)
        except SignatureInvalid:
            return False
        return True


@functools.lru_cache(maxsize=1024)
def _verify_key(raw: bytes) -> nacl.signing.VerifyKey:
    # Cached: building a VerifyKey decodes the point, and verifiers check many signatures per key.
    try:
        return nacl.signing.VerifyKey(raw)
    except (nacl.exceptions.ValueError, nacl.exceptions.TypeError) as exc:
        raise KeyInvalid("public key: not a valid Ed25519 key") from exc


class PrivateKey:
    """An Ed25519 signing key. Never logged: ``repr`` shows only the key id."""

    __slots__ = ("_signing_key", "public_key")

    def __init__(self, seed: bytes) -> None:
        """Private: use :meth:`generate`, :meth:`from_seed` or :func:`load_private_key`."""
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise KeyInvalid("private key: seed must be 32 bytes")
        self._signing_key = nacl.signing.SigningKey(seed)
        self.public_key = PublicKey(bytes(self._signing_key.verify_key))

    @classmethod
    def generate(cls) -> PrivateKey:
        """A fresh key from the operating system's CSPRNG."""
        return cls(os.urandom(32))

    @classmethod
    def from_seed(cls, seed: bytes) -> PrivateKey:
        """From the 32-byte RFC 8032 seed (for fixed test vectors)."""
        return cls(bytes(seed))

    @classmethod
    def from_pem(cls, data: bytes) -> PrivateKey:
        """From an unencrypted PKCS#8 PEM.

        :raises KeyInvalid: not a PEM Ed25519 private key.
        """
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyInvalid("private key: not an unencrypted PKCS#8 PEM") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyInvalid("private key: not an Ed25519 key")
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return cls(seed)

    def to_pem(self) -> bytes:
        """PKCS#8 PEM, unencrypted. Store it with mode 0600 (see :func:`save_private_key`)."""
        key = Ed25519PrivateKey.from_private_bytes(bytes(self._signing_key))
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def seed(self) -> bytes:
        """The raw 32-byte seed. Hazardous: for handing to other Ed25519 libraries only."""
        return bytes(self._signing_key)

    @property
    def kid(self) -> str:
        """The key id of the public half."""
        return self.public_key.kid

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return bytes(self._signing_key.sign(message).signature)

    def __repr__(self) -> str:
        return f"PrivateKey(kid={self.kid!r})"


def save_private_key(path: Path, key: PrivateKey) -> None:
    """Write ``key`` as PKCS#8 PEM with mode 0600, refusing to overwrite.

    The file is created with 0600 from the start, so the key is never readable
    by others, not even briefly.

    :raises FileExistsError: ``path`` exists.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.to_pem())


def load_private_key(path: Path) -> PrivateKey:
    """Read a PKCS#8 PEM private key file.

    :raises KeyInvalid: unreadable or not an Ed25519 PEM key.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyInvalid(f"private key: cannot read {path}: {exc.strerror}") from exc
    return PrivateKey.from_pem(data)


def load_public_key(spec: str) -> PublicKey:
    """A public key from text or a file.

    ``spec`` is 64 hex characters, 43 base64url characters, or the path of a
    ``.pub`` file (one line of either form) or of a PEM file (public key, or a
    private key whose public half is taken).

    :raises KeyInvalid: none of those forms.
    """
    text = spec.strip()
    if len(text) in (43, 64) and not Path(text).exists():
        return PublicKey.from_text(text)
    path = Path(text)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyInvalid(f"public key: not a key and not a readable file: {text[:80]!r}") from exc
    if b"-----BEGIN" in data:
        if b"PRIVATE KEY" in data:
            return PrivateKey.from_pem(data).public_key
        try:
            pem_key = serialization.load_pem_public_key(data)
            raw = pem_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        except (ValueError, TypeError) as exc:
            raise KeyInvalid(f"public key: {path} is not an Ed25519 PEM key") from exc
        return PublicKey.from_raw(raw)
    try:
        line = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise KeyInvalid(f"public key: {path} is not a text key file") from exc
    return PublicKey.from_text(line)


# -- signed key documents ----------------------------------------------------------------------


class KeyEntry(BaseModel):
    """One key in a :class:`KeyDocument`, valid from ``valid_from`` until ``retired_at`` (ms)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kid: StrictStr
    alg: Literal["Ed25519"] = "Ed25519"
    pub: StrictStr
    valid_from: StrictInt = Field(ge=0)
    retired_at: StrictInt | None = Field(default=None, ge=0)

    @property
    def public_key(self) -> PublicKey:
        """The decoded key; its kid is checked against ``kid`` when the document is verified."""
        return PublicKey.from_raw(b64url_decode(self.pub, what="key entry pub"))

    def active_at(self, at_ms: int) -> bool:
        """True when the key was in service at ``at_ms``."""
        return self.valid_from <= at_ms and (self.retired_at is None or at_ms < self.retired_at)


class DocumentSignature(BaseModel):
    """A signature over a key document's canonical body by the key ``kid``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kid: StrictStr
    sig: StrictStr


class KeyDocument(BaseModel):
    """A signed, versioned list of an owner's keys. Parse with :meth:`from_json`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["tallystick.keys/v1"] = "tallystick.keys/v1"
    owner: StrictStr = Field(min_length=1)
    version: StrictInt = Field(ge=1)
    issued_at: StrictInt = Field(ge=0)
    prev: StrictStr | None = None
    keys: tuple[KeyEntry, ...] = Field(min_length=1)
    signatures: tuple[DocumentSignature, ...] = ()

    @classmethod
    def from_json(cls, raw: str | bytes) -> KeyDocument:
        """Parse (not verify) a key document.

        :raises MalformedInput: not a key document.
        """
        try:
            return cls.model_validate(parse_json(raw))
        except ValidationError as exc:
            raise MalformedInput(
                f"key document: {exc.errors()[0]['msg']}", code="key.document_malformed"
            ) from exc

    def to_json(self) -> str:
        """Canonical JSON text of the whole document."""
        return canonicalize(self.model_dump(mode="json")).decode("utf-8")

    def signed_bytes(self) -> bytes:
        """What each signature covers: the canonical document without ``signatures``."""
        return canonicalize(self.model_dump(mode="json", exclude={"signatures"}))

    def digest(self) -> str:
        """``sha256:`` + base64url of SHA-256 over the signed bytes; the next version's ``prev``."""
        return "sha256:" + b64url_encode(hashlib.sha256(self.signed_bytes()).digest())

    @classmethod
    def create(cls, *, owner: str, key: PrivateKey, at_ms: int) -> KeyDocument:
        """Version 1 of an owner's document, self-signed by its first key."""
        entry = KeyEntry(kid=key.kid, pub=key.public_key.to_b64url(), valid_from=at_ms)
        unsigned = cls(owner=owner, version=1, issued_at=at_ms, keys=(entry,))
        return unsigned._signed_by([key])

    def rotate(self, *, old_key: PrivateKey, new_key: PrivateKey, at_ms: int) -> KeyDocument:
        """The next version: ``old_key`` retires at ``at_ms`` and ``new_key`` starts then.

        Signed by both keys, so the new key is authorised by the old one and
        proves possession of itself.

        :raises IdentityUnresolvable: ``old_key`` is not active in this document at ``at_ms``.
        """
        current = self._entry(old_key.kid)
        if current is None or not current.active_at(at_ms):
            raise IdentityUnresolvable("key rotation: old key is not active at the rotation time")
        retired = tuple(
            entry.model_copy(update={"retired_at": at_ms}) if entry.kid == old_key.kid else entry
            for entry in self.keys
        )
        added = KeyEntry(kid=new_key.kid, pub=new_key.public_key.to_b64url(), valid_from=at_ms)
        keys = (*retired, added)
        unsigned = KeyDocument(
            owner=self.owner,
            version=self.version + 1,
            issued_at=at_ms,
            prev=self.digest(),
            keys=keys,
        )
        return unsigned._signed_by([old_key, new_key])

    def _entry(self, kid: str) -> KeyEntry | None:
        return next((entry for entry in self.keys if entry.kid == kid), None)

    def _signed_by(self, keys: Sequence[PrivateKey]) -> KeyDocument:
        body = self.signed_bytes()
        signatures = tuple(
            DocumentSignature(kid=key.kid, sig=b64url_encode(key.sign(body))) for key in keys
        )
        return self.model_copy(update={"signatures": signatures})

    def _check_signature_by(self, kid: str, public_key: PublicKey, body: bytes) -> None:
        for signature in self.signatures:
            if signature.kid == kid:
                public_key.verify(b64url_decode(signature.sig, what="key document signature"), body)
                return
        raise SignatureInvalid(
            f"key document v{self.version}: no signature by {kid}", code="key.document_unsigned"
        )


@dataclass(frozen=True)
class Keyring:
    """The verified key history of one owner. Build it with :meth:`from_documents`."""

    owner: str
    entries: tuple[KeyEntry, ...]

    @classmethod
    def from_documents(
        cls, documents: Iterable[KeyDocument], *, trust_anchor: PublicKey
    ) -> Keyring:
        """Verify a key document history, oldest first, from a pinned first key.

        Rules: version 1 contains ``trust_anchor`` and is signed by every key
        it lists; each later version names its predecessor's digest, keeps the
        owner, increments the version, is signed by every key it adds and by a
        key active in its predecessor at its ``issued_at``, and never changes
        an existing key except to retire it.

        :raises SignatureInvalid: a missing or bad signature.
        :raises ChainBroken: versions out of order, wrong ``prev``, or an edited key.
        :raises KeyInvalid: a kid that does not match its key.
        """
        docs = list(documents)
        if not docs:
            raise ChainBroken("key documents: empty history", code="key.document_chain")
        first = docs[0]
        if first.version != 1 or first.prev is not None:
            raise ChainBroken(
                "key documents: history must start at version 1", code="key.document_chain"
            )
        if trust_anchor.kid not in {entry.kid for entry in first.keys}:
            raise IdentityUnresolvable("key documents: trust anchor is not in version 1")
        body = first.signed_bytes()
        for entry in first.keys:
            _check_entry_kid(entry)
            first._check_signature_by(entry.kid, entry.public_key, body)
        previous = first
        for doc in docs[1:]:
            _check_successor(previous, doc)
            previous = doc
        return cls(owner=previous.owner, entries=previous.keys)

    def key_for(self, kid: str, *, at_ms: int) -> PublicKey:
        """The key ``kid`` if it was in service at ``at_ms``.

        :raises IdentityUnresolvable: unknown kid, or not active then.
        """
        for entry in self.entries:
            if entry.kid == kid:
                if entry.active_at(at_ms):
                    return entry.public_key
                raise IdentityUnresolvable(f"keyring: key {kid} was not active at {at_ms}")
        raise IdentityUnresolvable(f"keyring: unknown key {kid}")

    def current(self) -> tuple[PublicKey, ...]:
        """Keys not retired."""
        return tuple(entry.public_key for entry in self.entries if entry.retired_at is None)


def _check_entry_kid(entry: KeyEntry) -> None:
    if entry.public_key.kid != entry.kid:
        raise KeyInvalid(f"key documents: kid {entry.kid} does not match its key")


def _check_successor(previous: KeyDocument, doc: KeyDocument) -> None:
    if doc.owner != previous.owner or doc.version != previous.version + 1:
        raise ChainBroken(
            f"key documents: v{doc.version} does not follow v{previous.version}",
            code="key.document_chain",
        )
    if doc.issued_at < previous.issued_at:
        # Otherwise a holder of a retired key could append a backdated version.
        raise ChainBroken(
            f"key documents: v{doc.version} is dated before v{previous.version}",
            code="key.document_chain",
        )
    if doc.prev != previous.digest():
        raise ChainBroken(
            f"key documents: v{doc.version} names the wrong predecessor", code="key.document_chain"
        )
    old = {entry.kid: entry for entry in previous.keys}
    new = {entry.kid: entry for entry in doc.keys}
    for kid, entry in old.items():
        kept = new.get(kid)
        if kept is None or kept.model_copy(update={"retired_at": entry.retired_at}) != entry:
            raise ChainBroken(
                f"key documents: v{doc.version} edits key {kid}", code="key.document_chain"
            )
        if entry.retired_at is not None and kept.retired_at != entry.retired_at:
            raise ChainBroken(
                f"key documents: v{doc.version} un-retires key {kid}", code="key.document_chain"
            )
    body = doc.signed_bytes()
    for kid, entry in new.items():
        if kid not in old:
            _check_entry_kid(entry)
            doc._check_signature_by(kid, entry.public_key, body)
    authorisers = [entry for entry in previous.keys if entry.active_at(doc.issued_at)]
    for entry in authorisers:
        with contextlib.suppress(SignatureInvalid):
            doc._check_signature_by(entry.kid, entry.public_key, body)
            return
    raise SignatureInvalid(
        f"key documents: v{doc.version} is not signed by a key active in v{previous.version}",
        code="key.document_unsigned",
    )
