"""Offline verification of an exported log bundle: every entry, every checkpoint, every token.

One call checks a whole exported log with nothing but the log's public key::

    bundle = Bundle.from_path("log.bundle")
    report = verify_bundle(bundle, log_key=load_public_key("log.pub"))
    if not report.valid:
        print(report.damage)        # e.g. "chain_broken at entry 41: ..."

The bundle format (JSON Lines, UTF-8; each line one canonical JSON object and ``\\n``):

1. the header, ``{"format": "tallystick.bundle/v1", "origin": O, "log_vkey": V, "size": N}``;
1a. only for a log whose key was rotated: its key history, oldest first, one line per version,
   ``{"key_document": <the signed KeyDocument object, owner O>}`` (bundles of logs that never
   rotated have none, so they read as before);
2. ``N`` entry lines in index order, ``{"entry": <standard padded base64 of the entry bytes>}``;
3. one or more checkpoint lines, tree sizes strictly ascending, the last one of size ``N``:
   ``{"checkpoint": <the C2SP signed note text>}``. (A last checkpoint of another size
   still parses; :func:`verify_bundle` reports it as ``truncated`` or ``unanchored_tail``.)

:meth:`Bundle.from_text` checks that format only and raises :class:`MalformedInput`
(codes ``bundle.*``, listed on :class:`Bundle`). :func:`verify_bundle` judges the content
and returns a :class:`BundleReport`; it does not raise for damage. Its checks, in order,
stop at the first :class:`Damage`:

0. key documents, if any (``key_document_invalid``): a verified history (:func:`log_keyring`)
   whose owner is the origin and which holds ``log_key``;
1. the header: the expected ``origin``, and a ``log_vkey`` that is the log key's for it (with
   key documents: one of the history's keys);
2. each checkpoint: origin and log signature, sizes ascending, no two roots for one size;
3. each entry in index order up to the last checkpoint: canonical bytes, ``index`` equal to
   its position, ``prev`` equal to the previous entry's leaf hash, and a ``delegation``
   body whose token verifies under its issuer key;
4. the RFC 9162 root of the first ``S`` entries against each checkpoint of size ``S``
   (one tree, built once), over the entries that passed step 3 — reported ahead of a
   step-3 failure, since it names an earlier entry;
5. key validity, for a rotated log: each checkpoint carries a signature by a key that was not
   yet retired at the time of the newest entry it covers (``wrong_key`` otherwise);
6. coverage: the last checkpoint covers exactly the entries, no fewer and no more.

Rotated logs (see ``tallystick.daemon.log_keys`` for how the daemon rotates): ``log_key`` may be
the log's original key, the trust anchor that version 1 of the history holds, or any later key
of the history. Pinning the original key (its ``log.pub`` as first published) is the safe
choice and what ``tallystick log verify --log-key`` expects: a key learnt later is only as
trustworthy as the channel it came by. Either way, someone holding a retired key can forge a
whole bundle whose entries all predate that key's retirement and which omits the later history;
only a verifier that knows the later key (or an earlier checkpoint of a larger size) sees that.

``Damage.kind`` is one of a stable set (:class:`DamageKind`); ``Damage.index`` names the
first entry the damage concerns, or for a checkpoint the tree size it signs.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from os import PathLike
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from . import aip, hdp, logentry
from ._internal.encoding import b64_decode, b64_encode
from ._internal.note import is_valid_key_name
from .canonical import canonicalize, parse_json
from .checkpoint import (
    Checkpoint,
    KeyType,
    NoteVerifier,
    SignedCheckpoint,
    verify_checkpoint,
)
from .errors import (
    ChainBroken,
    CheckpointInvalid,
    IdentityUnresolvable,
    KeyInvalid,
    MalformedInput,
    TallystickError,
)
from .keys import KeyDocument, Keyring, PublicKey
from .logentry import DelegationBody, EntryKind, LogEntry
from .merkle import MerkleTree, hash_leaf

__all__ = [
    "BUNDLE_FORMAT",
    "MAX_BUNDLE_BYTES",
    "MAX_LINE_BYTES",
    "Bundle",
    "BundleReport",
    "Damage",
    "DamageKind",
    "LogDamaged",
    "LogKeys",
    "encode_bundle",
    "log_keyring",
    "verify_bundle",
]

#: The header's ``format`` value for this layout.
BUNDLE_FORMAT: Final = "tallystick.bundle/v1"
#: Default cap on a whole bundle: about two million entries of typical size.
MAX_BUNDLE_BYTES: Final = 1 << 30
#: Cap on one line: an entry of MAX_ENTRY_BYTES (65,535) is 87,380 base64 characters.
MAX_LINE_BYTES: Final = 1 << 17

_HEADER_MEMBERS = frozenset({"format", "origin", "log_vkey", "size"})
# An entry line has one canonical spelling, so a match is exactly what parse + canonicalize
# would accept; it skips the JSON parser on the line type that makes up nearly all of a bundle.
_ENTRY_LINE = re.compile(rb'\{"entry":"([A-Za-z0-9+/]*={0,2})"\}')


class DamageKind(StrEnum):
    """What is wrong with a log; the values are stable and scripts may rely on them."""

    #: An entry's bytes are not a log entry (bad JSON, members, fields or delegation body).
    ENTRY_MALFORMED = "entry_malformed"
    #: An entry, but not in its one canonical encoding.
    ENTRY_NOT_CANONICAL = "entry_not_canonical"
    #: An entry's ``index`` is not its position: a row deleted, reordered or duplicated.
    INDEX_MISMATCH = "index_mismatch"
    #: An entry's ``prev`` is not the previous entry's leaf hash: the entry before it changed.
    CHAIN_BROKEN = "chain_broken"
    #: The entries hash to another root than a checkpoint signs: edited with the chain redone.
    ROOT_MISMATCH = "root_mismatch"
    #: A checkpoint that is malformed, for another origin, badly signed, out of order or repeated.
    CHECKPOINT_INVALID = "checkpoint_invalid"
    #: Two signed checkpoints that no single log can both have produced.
    FORK = "fork"
    #: Fewer entries than a checkpoint covers.
    TRUNCATED = "truncated"
    #: Entries beyond the last checkpoint, which nothing signs.
    UNANCHORED_TAIL = "unanchored_tail"
    #: A stored delegation token whose own signatures (or structure) do not verify.
    TOKEN_INVALID = "token_invalid"
    #: The bundle or a checkpoint is signed by another key than the log key, or (rotated
    #: logs) only by keys retired before the newest entry it covers.
    WRONG_KEY = "wrong_key"
    #: The log's key history does not verify: a forged, reordered or broken key document.
    KEY_DOCUMENT_INVALID = "key_document_invalid"


_CHECKPOINT_KINDS = frozenset(
    {DamageKind.CHECKPOINT_INVALID, DamageKind.FORK, DamageKind.WRONG_KEY}
)


@dataclass(frozen=True, slots=True)
class Damage:
    """The first damage found: its kind, where it is, and what was seen.

    ``index`` is an entry index; for ``checkpoint_invalid``, ``fork`` and ``wrong_key`` it is
    the tree size of the checkpoint concerned. It is ``None`` when the damage is in the header
    or in a checkpoint whose size cannot be read. For ``root_mismatch`` it is the first entry
    no matching checkpoint vouches for (the size of the last checkpoint that matched, or 0).
    """

    kind: DamageKind
    index: int | None
    detail: str

    def __str__(self) -> str:
        if self.index is None:
            return f"{self.kind.value}: {self.detail}"
        where = "checkpoint of size" if self.kind in _CHECKPOINT_KINDS else "entry"
        return f"{self.kind.value} at {where} {self.index}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """``{"kind", "index", "detail"}``, as ``tallystick log verify --json`` prints it."""
        return {"kind": self.kind.value, "index": self.index, "detail": self.detail}


class LogDamaged(TallystickError):
    """A log bundle with damage; ``code`` is ``log.<kind>`` and ``damage`` says where."""

    default_code = "log.damaged"

    def __init__(self, damage: Damage) -> None:
        """Raise for ``damage``."""
        super().__init__(f"log bundle: {damage}", code=f"log.{damage.kind.value}")
        self.damage = damage


@dataclass(frozen=True, slots=True)
class BundleReport:
    """What :func:`verify_bundle` found. ``valid`` holds only when every check ran and passed.

    ``size`` is the number of entries in the bundle, ``origin`` the header's origin, and
    ``checkpoints`` the number of checkpoints whose log signature verified.
    """

    size: int
    origin: str
    checkpoints: int
    damage: Damage | None

    @property
    def valid(self) -> bool:
        """True when no damage was found."""
        return self.damage is None

    def raise_for_damage(self) -> None:
        """Return if valid.

        :raises LogDamaged: with code ``log.<kind>`` for the first damage.
        """
        if self.damage is not None:
            raise LogDamaged(self.damage)

    def to_dict(self) -> dict[str, Any]:
        """``{"valid", "size", "origin", "checkpoints", "damage"}`` for ``--json``."""
        return {
            "valid": self.valid,
            "size": self.size,
            "origin": self.origin,
            "checkpoints": self.checkpoints,
            "damage": None if self.damage is None else self.damage.to_dict(),
        }


def _bad(message: str, code: str) -> MalformedInput:
    return MalformedInput(f"bundle: {message}", code=f"bundle.{code}")


@dataclass(frozen=True, slots=True)
class Bundle:
    """A parsed, not yet verified, log bundle. Parse with :meth:`from_text` or :meth:`from_path`.

    Building one checks the header fields (``bundle.bad_header``) and that there is a
    checkpoint (``bundle.no_checkpoint``). Format errors of :meth:`from_text`, all
    :class:`MalformedInput`: ``bundle.too_large``, ``bundle.line_too_large``,
    ``bundle.bad_unicode``, ``bundle.no_final_newline``, ``bundle.bad_json``,
    ``bundle.not_canonical``, ``bundle.bad_line``, ``bundle.no_header``,
    ``bundle.unsupported_format``, ``bundle.bad_header``, ``bundle.bad_base64``,
    ``bundle.bad_key_document``, ``bundle.bad_order``, ``bundle.size_mismatch``,
    ``bundle.no_checkpoint``, and ``bundle.unreadable`` from :meth:`from_path`.

    ``key_documents`` is the log's key history (empty unless its key was rotated); it is
    parsed here and verified by :func:`verify_bundle`.
    """

    origin: str
    log_vkey: str
    entries: tuple[bytes, ...]
    checkpoints: tuple[str, ...]
    key_documents: tuple[KeyDocument, ...] = ()

    def __post_init__(self) -> None:
        if not is_valid_key_name(self.origin):
            raise _bad("header origin must be a note key name (no spaces, no +)", "bad_header")
        try:
            NoteVerifier.from_vkey(self.log_vkey)
        except KeyInvalid as exc:
            raise _bad(f"header log_vkey: {exc}", "bad_header") from exc
        if not isinstance(self.entries, tuple) or not all(
            isinstance(raw, bytes) for raw in self.entries
        ):
            raise _bad("entries must be a tuple of bytes", "bad_line")
        if not isinstance(self.checkpoints, tuple) or not all(
            isinstance(text, str) for text in self.checkpoints
        ):
            raise _bad("checkpoints must be a tuple of str", "bad_line")
        if not isinstance(self.key_documents, tuple) or not all(
            isinstance(doc, KeyDocument) for doc in self.key_documents
        ):
            raise _bad("key_documents must be a tuple of KeyDocument", "bad_key_document")
        if not self.checkpoints:
            raise _bad("no checkpoint line: nothing is signed", "no_checkpoint")

    @property
    def size(self) -> int:
        """The number of entries."""
        return len(self.entries)

    @classmethod
    def from_text(cls, text: str | bytes, *, max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
        """Parse the JSON Lines bundle format strictly.

        :raises MalformedInput: any format error (see the class docstring for codes).
        """
        return _parse(_bundle_bytes(text, max_bytes))

    @classmethod
    def from_path(cls, path: str | PathLike[str], *, max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
        """Read and parse a bundle file.

        :raises MalformedInput: unreadable (``bundle.unreadable``), or as :meth:`from_text`.
        """
        try:
            with Path(path).open("rb") as handle:
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise _bad(f"cannot read {path}: {exc.strerror}", "unreadable") from exc
        return cls.from_text(data, max_bytes=max_bytes)

    def to_bytes(self) -> bytes:
        """The bundle in its one encoding, as :meth:`from_text` reads it."""
        return b"".join(
            encode_bundle(
                origin=self.origin,
                log_vkey=self.log_vkey,
                size=self.size,
                entries=self.entries,
                checkpoints=self.checkpoints,
                key_documents=self.key_documents,
            )
        )


def encode_bundle(
    *,
    origin: str,
    log_vkey: str,
    size: int,
    entries: Iterable[bytes],
    checkpoints: Iterable[str],
    key_documents: Iterable[KeyDocument] = (),
) -> Iterator[bytes]:
    """The bundle's lines (each with its newline), lazily, so a writer can stream a large log.

    ``size`` is the header's entry count; ``entries`` must yield exactly that many.
    ``key_documents`` (the key history of a rotated log, oldest first) follow the header.
    """
    header = {"format": BUNDLE_FORMAT, "origin": origin, "log_vkey": log_vkey, "size": size}
    yield canonicalize(header) + b"\n"
    for doc in key_documents:
        yield canonicalize({"key_document": doc.model_dump(mode="json")}) + b"\n"
    for raw in entries:
        yield b'{"entry":"' + b64_encode(raw).encode("ascii") + b'"}\n'
    for text in checkpoints:
        yield canonicalize({"checkpoint": text}) + b"\n"


def _bundle_bytes(text: object, max_bytes: int) -> bytes:
    if isinstance(text, bytes | bytearray):
        raw = bytes(text)
    elif isinstance(text, str):
        if len(text) > max_bytes:  # each character is at least one byte
            raise _bad(f"larger than {max_bytes} bytes", "too_large")
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _bad("not valid Unicode", "bad_unicode") from exc
    else:
        raise _bad("must be text or bytes", "bad_line")
    if len(raw) > max_bytes:
        raise _bad(f"larger than {max_bytes} bytes", "too_large")
    return raw


def _parse(raw: bytes) -> Bundle:
    if not raw:
        raise _bad("empty: no header line", "no_header")
    if not raw.endswith(b"\n"):
        raise _bad("the last line does not end with a newline", "no_final_newline")
    lines = raw[:-1].split(b"\n")
    origin, log_vkey, size = _parse_header(_parse_line(lines[0], 1))
    entries: list[bytes] = []
    checkpoints: list[str] = []
    documents: list[KeyDocument] = []
    for number, line in enumerate(lines[1:], start=2):
        member, value = _body_line(line, number)
        if member == "key_document":
            if entries or checkpoints:
                raise _bad(f"line {number}: a key document after an entry", "bad_order")
            documents.append(_parse_key_document(value, number))
        elif member == "entry":
            if checkpoints:
                raise _bad(f"line {number}: an entry after a checkpoint", "bad_order")
            entries.append(_decode_entry(value, number))
        elif isinstance(value, str):
            checkpoints.append(value)
        else:
            raise _bad(f"line {number}: checkpoint must be a string", "bad_line")
    if len(entries) != size:
        raise _bad(
            f"the header says {size} entries, the bundle holds {len(entries)}", "size_mismatch"
        )
    return Bundle(origin, log_vkey, tuple(entries), tuple(checkpoints), tuple(documents))


def _parse_key_document(value: object, number: int) -> KeyDocument:
    try:
        return KeyDocument.model_validate(value)
    except ValidationError as exc:
        raise _bad(
            f"line {number}: not a key document: {exc.errors()[0]['msg']}", "bad_key_document"
        ) from exc


def _body_line(line: bytes, number: int) -> tuple[str, object]:
    """``(member, value)`` of a line after the header: an entry, checkpoint or key document."""
    _check_length(line, number)
    match = _ENTRY_LINE.fullmatch(line)
    if match is not None:
        return "entry", match.group(1).decode("ascii")
    value = _parse_line(line, number)
    if (
        not isinstance(value, dict)
        or len(value) != 1
        or not value.keys() <= {"entry", "checkpoint", "key_document"}
    ):
        raise _bad(f"line {number}: neither an entry, a checkpoint nor a key document", "bad_line")
    [(member, content)] = value.items()
    return member, content


def _check_length(line: bytes, number: int) -> None:
    if len(line) > MAX_LINE_BYTES:
        raise _bad(f"line {number}: longer than {MAX_LINE_BYTES} bytes", "line_too_large")


def _parse_line(line: bytes, number: int) -> Any:
    _check_length(line, number)
    try:
        value = parse_json(line, max_bytes=MAX_LINE_BYTES)
    except MalformedInput as exc:
        raise _bad(f"line {number}: {exc.code}: {exc}", "bad_json") from exc
    if canonicalize(value) != line:
        raise _bad(f"line {number}: not canonical JSON (RFC 8785)", "not_canonical")
    return value


def _parse_header(value: Any) -> tuple[str, str, int]:
    if not isinstance(value, dict) or "format" not in value:
        raise _bad("line 1: not a header", "no_header")
    if value["format"] != BUNDLE_FORMAT:
        raise _bad(f"format {value['format']!r} is not {BUNDLE_FORMAT}", "unsupported_format")
    if value.keys() != _HEADER_MEMBERS:
        raise _bad(f"header members must be {sorted(_HEADER_MEMBERS)}", "bad_header")
    origin, log_vkey, size = value["origin"], value["log_vkey"], value["size"]
    if not isinstance(origin, str) or not isinstance(log_vkey, str):
        raise _bad("header origin and log_vkey must be strings", "bad_header")
    if type(size) is not int or size < 0:
        raise _bad("header size must be an integer of 0 or more", "bad_header")
    return origin, log_vkey, size


def _decode_entry(encoded: object, number: int) -> bytes:
    if not isinstance(encoded, str):
        raise _bad(f"line {number}: entry must be a base64 string", "bad_line")
    try:
        return b64_decode(encoded, what=f"bundle: line {number}: entry", code="bundle.bad_base64")
    except MalformedInput as exc:
        raise _bad(f"line {number}: entry is not standard padded base64", "bad_base64") from exc


# -- the log's keys ------------------------------------------------------------------------------


def log_keyring(documents: Iterable[KeyDocument], *, origin: str, pinned: PublicKey) -> Keyring:
    """Verify a log's key history, oldest first, from a key the caller trusts.

    ``pinned`` is the trust anchor (a key of version 1) or any later key of the history: the
    versions up to the one that adds it are hash-linked to it and signed by it, so none of
    them can be swapped. On top of :meth:`Keyring.from_documents`, each version's owner is
    ``origin`` and ``issued_at`` strictly grows, so a retired key cannot append a backdated
    version.

    :raises ChainBroken: ``key.document_chain`` (order, ``prev``, owner, time, an edited key).
    :raises SignatureInvalid: ``key.document_unsigned`` or a bad signature.
    :raises IdentityUnresolvable: ``pinned`` is not in the history (``key.not_in_history``).
    :raises KeyInvalid: a kid that does not match its key.
    :raises MalformedInput: an undecodable key or signature.
    """
    docs = list(documents)
    if not docs:
        raise ChainBroken("key documents: empty history", code="key.document_chain")
    anchors = docs[0].keys
    # Not an anchor: start from version 1's own key and require ``pinned`` further on.
    pinned_is_anchor = any(entry.kid == pinned.kid for entry in anchors)
    anchor = pinned if pinned_is_anchor else anchors[0].public_key
    keyring = Keyring.from_documents(docs, trust_anchor=anchor)
    for previous, doc in itertools.pairwise(docs):
        if doc.issued_at <= previous.issued_at:
            raise ChainBroken(
                f"key documents: v{doc.version} is not issued after v{previous.version}",
                code="key.document_chain",
            )
    if any(doc.owner != origin for doc in docs):
        raise ChainBroken(
            f"key documents: owner is not the log origin {origin!r}", code="key.document_chain"
        )
    if all(entry.kid != pinned.kid for entry in keyring.entries):
        raise IdentityUnresolvable(
            f"key documents: the log key {pinned.kid} is not in the history",
            code="key.not_in_history",
        )
    return keyring


@dataclass(frozen=True, slots=True)
class LogKeys:
    """The keys that may sign a log's checkpoints, each with the time it was retired (ms).

    A checkpoint is valid when a signature by one of them verifies and, for a rotated log,
    one of its signatures is by a key not yet retired at the time of the newest entry it
    covers: a key may vouch for entries older than itself (a new key signs the whole tree),
    never for one written after its retirement. Entry times are covered by the signed root,
    so they cannot be moved without breaking the tree.
    """

    origin: str
    keys: tuple[tuple[NoteVerifier, int | None], ...]

    @classmethod
    def single(cls, origin: str, public_key: PublicKey) -> LogKeys:
        """A log that never rotated: one key, never retired.

        :raises KeyInvalid: ``origin`` is not a note key name (``note.bad_vkey``).
        """
        return cls(origin, ((NoteVerifier.from_public_key(origin, public_key), None),))

    @classmethod
    def from_keyring(cls, origin: str, keyring: Keyring) -> LogKeys:
        """Every key of a verified history (:func:`log_keyring`).

        :raises KeyInvalid: ``origin`` is not a note key name (``note.bad_vkey``).
        """
        return cls(
            origin,
            tuple(
                (NoteVerifier.from_public_key(origin, entry.public_key), entry.retired_at)
                for entry in keyring.entries
            ),
        )

    @property
    def rotated(self) -> bool:
        """True when some key is retired, so signing times matter."""
        return any(retired is not None for _, retired in self.keys)

    def holds(self, public_key: PublicKey) -> bool:
        """True when ``public_key`` is one of the keys."""
        return any(verifier.public_key == public_key for verifier, _ in self.keys)

    def verify(self, text: str) -> Checkpoint:
        """The checkpoint, once a signature by one of the keys verifies (none may fail).

        :raises CheckpointInvalid: as :func:`verify_checkpoint`.
        """
        return verify_checkpoint(text, verifiers=[key for key, _ in self.keys], origin=self.origin)

    @staticmethod
    def in_service(retired_at: int | None, at_ms: int) -> bool:
        """Whether a key retired at ``retired_at`` (None: never) may vouch for an entry written
        at ``at_ms``: only for entries older than its retirement."""
        return retired_at is None or at_ms < retired_at

    def check_in_service(self, text: str, *, newest_entry_ms: int) -> None:
        """Check that a (verified) checkpoint has a signature by a key in service at its time.

        ``newest_entry_ms`` is the time of the newest entry the checkpoint covers (0 for none).

        :raises CheckpointInvalid: ``checkpoint.retired_key``: signed only by retired keys.
        """
        if not self.rotated:
            return
        in_service = [
            key for key, retired in self.keys if self.in_service(retired, newest_entry_ms)
        ]
        try:
            if in_service:
                verify_checkpoint(text, verifiers=in_service, origin=self.origin)
                return
        except CheckpointInvalid as exc:
            if exc.code != "checkpoint.no_known_signature":
                raise
        raise CheckpointInvalid(
            f"checkpoint: signed only by keys retired before its newest entry ({newest_entry_ms})",
            code="checkpoint.retired_key",
        )


# -- verification -------------------------------------------------------------------------------


def verify_bundle(
    bundle: Bundle,
    *,
    log_key: PublicKey,
    origin: str | None = None,
    verify_tokens: bool = True,
) -> BundleReport:
    """Check a whole bundle against the log's public key; the report names the first damage.

    ``log_key`` is the log's key; for a rotated log (a bundle with key documents) its original
    key, the trust anchor, or any later key of its history (see the module docstring).
    ``origin``, when given, is the checkpoint origin the caller expects. With
    ``verify_tokens=False`` the signatures of stored delegation tokens are not checked
    (their bodies still are, and the hash chain and tree cover them either way).

    :raises KeyInvalid: ``log_key`` is not a :class:`PublicKey`.
    """
    keys = LogKeys.single(bundle.origin, log_key)
    damage: Damage | None = None
    if bundle.key_documents:
        keys, damage = _keyring_keys(bundle, log_key)
    verified: list[Checkpoint] = []
    damage = (
        damage or _header_damage(bundle, keys, origin) or _checkpoint_damage(bundle, keys, verified)
    )
    if damage is None:
        last_size = verified[-1].size
        tree = MerkleTree()
        entry_damage = _entry_damage(bundle.entries[:last_size], tree, verify_tokens=verify_tokens)
        # The tree holds the entries before entry_damage; a root that does not match them
        # names an earlier entry, so it is reported first.
        damage = (
            _root_damage(verified, tree)
            or entry_damage
            or _retired_damage(bundle, keys, verified)
            or _coverage_damage(bundle.size, last_size)
        )
    return BundleReport(bundle.size, bundle.origin, len(verified), damage)


def _keyring_keys(bundle: Bundle, log_key: PublicKey) -> tuple[LogKeys, Damage | None]:
    """The keys of the bundle's verified key history, or the damage that stops it."""
    try:
        keyring = log_keyring(bundle.key_documents, origin=bundle.origin, pinned=log_key)
    except IdentityUnresolvable as exc:
        return LogKeys.single(bundle.origin, log_key), Damage(
            DamageKind.WRONG_KEY, None, f"{exc.code}: {exc}"
        )
    except TallystickError as exc:
        return LogKeys.single(bundle.origin, log_key), Damage(
            DamageKind.KEY_DOCUMENT_INVALID, None, f"{exc.code}: {exc}"
        )
    return LogKeys.from_keyring(bundle.origin, keyring), None


def _header_damage(bundle: Bundle, keys: LogKeys, origin: str | None) -> Damage | None:
    if origin is not None and bundle.origin != origin:
        return Damage(
            DamageKind.CHECKPOINT_INVALID,
            None,
            f"the bundle's origin {bundle.origin!r} is not the expected {origin!r}",
        )
    header_key = NoteVerifier.from_vkey(bundle.log_vkey)
    if header_key.key_type is not KeyType.ED25519 or not keys.holds(header_key.public_key):
        return Damage(
            DamageKind.WRONG_KEY, None, f"the bundle names log key {header_key.label}, not ours"
        )
    if header_key.name != bundle.origin:
        return Damage(
            DamageKind.CHECKPOINT_INVALID,
            None,
            f"the header's log_vkey names {header_key.name!r}, its origin is {bundle.origin!r}",
        )
    return None


def _checkpoint_damage(bundle: Bundle, keys: LogKeys, verified: list[Checkpoint]) -> Damage | None:
    """Verify each checkpoint in turn, appending it to ``verified``; the first damage, if any."""
    roots: dict[int, bytes] = {}
    for text in bundle.checkpoints:
        try:
            checkpoint = keys.verify(text)
        except CheckpointInvalid as exc:
            kind = (
                DamageKind.WRONG_KEY
                if exc.code == "checkpoint.no_known_signature"
                else DamageKind.CHECKPOINT_INVALID
            )
            return Damage(kind, _readable_size(text), f"{exc.code}: {exc}")
        size = checkpoint.size
        if size in roots:
            if roots[size] != checkpoint.root_hash:
                return Damage(DamageKind.FORK, size, "two signed checkpoints of this size differ")
            return Damage(DamageKind.CHECKPOINT_INVALID, size, "a checkpoint of this size repeats")
        if verified and size < verified[-1].size:
            return Damage(
                DamageKind.CHECKPOINT_INVALID,
                size,
                f"checkpoints out of order: {size} after {verified[-1].size}",
            )
        roots[size] = checkpoint.root_hash
        verified.append(checkpoint)
    return None


def _retired_damage(bundle: Bundle, keys: LogKeys, verified: list[Checkpoint]) -> Damage | None:
    """A checkpoint signed only by keys retired before its newest entry (rotated logs)."""
    if not keys.rotated:
        return None
    for text, checkpoint in zip(bundle.checkpoints, verified, strict=False):
        size = checkpoint.size
        if size > bundle.size:
            break  # reported as truncated
        # Entries up to the last checkpoint parsed cleanly before this step runs.
        newest = LogEntry.from_bytes(bundle.entries[size - 1]).time_ms if size else 0
        try:
            keys.check_in_service(text, newest_entry_ms=newest)
        except CheckpointInvalid as exc:
            return Damage(DamageKind.WRONG_KEY, size, f"{exc.code}: {exc}")
    return None


def _readable_size(text: str) -> int | None:
    try:
        return SignedCheckpoint.from_text(text).checkpoint.size
    except CheckpointInvalid:
        return None


def _entry_damage(
    entries: tuple[bytes, ...], tree: MerkleTree, *, verify_tokens: bool
) -> Damage | None:
    """Check entries in order, appending each good one's leaf to ``tree``; the first damage."""
    prev = logentry.GENESIS_PREV
    for index, raw in enumerate(entries):
        try:
            entry = LogEntry.from_bytes(raw)
        except MalformedInput as exc:
            kind = (
                DamageKind.ENTRY_NOT_CANONICAL
                if exc.code == "log.entry_not_canonical"
                else DamageKind.ENTRY_MALFORMED
            )
            return Damage(kind, index, f"{exc.code}: {exc}")
        if entry.index != index:
            return Damage(
                DamageKind.INDEX_MISMATCH,
                index,
                f"the entry at position {index} says {entry.index}",
            )
        if entry.prev != prev:
            return Damage(
                DamageKind.CHAIN_BROKEN,
                index,
                "prev is not the leaf hash of the entry before"
                if index
                else "entry 0 must have the genesis prev (32 zero bytes)",
            )
        if entry.kind is EntryKind.DELEGATION:
            damage = _delegation_damage(entry, verify_tokens=verify_tokens)
            if damage is not None:
                return damage
        prev = hash_leaf(raw)  # raw is canonical: these are the entry's own bytes
        tree.append(prev)
    return None


def _delegation_damage(entry: LogEntry, *, verify_tokens: bool) -> Damage | None:
    try:
        body = DelegationBody.from_body(entry.body)
    except MalformedInput as exc:
        return Damage(DamageKind.ENTRY_MALFORMED, entry.index, f"{exc.code}: {exc}")
    if not verify_tokens:
        return None
    token = body.token
    try:
        if isinstance(token, dict):  # DelegationBody: a dict exactly for format "hdp"
            hdp.verify(token, public_key=body.public_key)
        else:
            aip.verify(
                token, public_key=body.public_key, now=entry.time_ms // 1000, audience=body.audience
            )
    except TallystickError as exc:
        return Damage(
            DamageKind.TOKEN_INVALID, entry.index, f"{body.format.value} token: {exc.code}: {exc}"
        )
    return None


def _root_damage(checkpoints: list[Checkpoint], tree: MerkleTree) -> Damage | None:
    """Compare each checkpoint the tree reaches with the tree's root at its size."""
    matched = 0
    for position, checkpoint in enumerate(checkpoints):
        if checkpoint.size > tree.size:
            break
        if tree.root(checkpoint.size) == checkpoint.root_hash:
            matched = checkpoint.size
            continue
        # A later checkpoint that matches vouches for these entries, so this one cannot be
        # the same log's: a fork. Otherwise the entries themselves changed.
        for later in checkpoints[position + 1 :]:
            if later.size <= tree.size and tree.root(later.size) == later.root_hash:
                return Damage(
                    DamageKind.FORK,
                    checkpoint.size,
                    f"not consistent with the signed checkpoint of size {later.size}, "
                    "which the entries match",
                )
        return Damage(
            DamageKind.ROOT_MISMATCH,
            matched,
            f"entries [{matched}, {checkpoint.size}) do not hash to the root signed "
            f"at size {checkpoint.size}",
        )
    return None


def _coverage_damage(size: int, last_size: int) -> Damage | None:
    if size < last_size:
        return Damage(
            DamageKind.TRUNCATED,
            size,
            f"the bundle holds {size} entries, a signed checkpoint covers {last_size}",
        )
    if size > last_size:
        return Damage(
            DamageKind.UNANCHORED_TAIL,
            last_size,
            f"{size - last_size} entries after the last checkpoint (size {last_size})",
        )
    return None
