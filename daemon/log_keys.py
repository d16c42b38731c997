"""The log key's files and its rotation history: which keys sign checkpoints, and when.

Files in the data directory ``DIR``:

- ``log.key`` (0600) and ``log.pub``: the key in service now. Checkpoints are signed with it.
- ``log.keys.json`` (0600): the signed key history, a canonical JSON array of
  :class:`~tallystick.verifier.keys.KeyDocument` versions, oldest first, owner = the
  checkpoint origin. Version 1 is written on first start for the original key, valid from
  time 0 (the log's beginning); a data directory from before rotation existed has no file
  until its first rotation writes version 1 and 2 together. A log that never rotated needs
  no history: its only key is ``log.key``, and its bundles carry no key documents.
- ``keys/log.<kid>.key`` (0600, folder 0700): every key the history names, retired ones
  included, never overwritten; ``<kid>`` is the key id without ``ed25519:``.

Rotation (``tallystick keys rotate --data-dir DIR``, :func:`rotate_files`): the daemon must
be stopped; the command takes the daemon's lock (``tallystickd.lock``), so a running daemon
makes it refuse and a daemon cannot start while it runs. It opens the log first (self-check,
and a checkpoint signed by the old key over every entry). At time ``R`` (now, but after
the newest entry and the previous version) it creates a key, writes both keys to ``keys/``,
appends version ``n + 1`` (old key ``retired_at = R``, new key ``valid_from = R``, signed by
both and naming version ``n``'s digest), and then switches ``log.key`` and ``log.pub``, each
by an atomic rename. The history's rename is the commit point: a crash after it leaves
``log.key`` one version behind, and the next start finishes the switch from ``keys/``.
The checkpoint origin never changes: C2SP lets one origin have several keys (the note key
id differs).

Overlap: for :data:`OVERLAP_MS` (7 days) after a rotation the daemon signs each checkpoint with
the new key AND the key it retired (C2SP's rotation advice), so clients that still pin the
old key keep working while they learn the new one; after that, or from the next rotation on,
only the key in service signs. Tallystick's own verifiers ignore the old key's signature on
checkpoints after ``R``: they need one by a key in service at the checkpoint's time.

Verification (:func:`load`, used by the start-up self-check, and
:func:`~tallystick.verifier.logbundle.verify_bundle` offline): the history must verify from
its version 1 key (the trust anchor), versions hash-linked, each signed by the key it adds
and by a key in service before it, ``issued_at`` strictly growing; ``log.key`` must be the
key in service; each checkpoint needs a signature by a key not retired at the time of the
newest entry it covers (entry times are inside the signed tree). With the default origin
(``tallystick.local/`` + the first 16 characters of the original key) the origin also pins
the anchor.

What file access buys an attacker: whoever can read ``log.key`` (or a retired key in ``keys/``)
can sign, so can write a fresh history and re-sign every checkpoint; whoever can write the
directory can replace ``log.keys.json`` and ``log.key`` together. The self-check therefore
catches damage and edits by someone without the keys, not a rewrite by someone with them. The
defence is outside the data directory: publish ``log.pub`` at first start and verify bundles
with that original key pinned (``tallystick log verify --log-key``), which refuses any history
not descended from it; and keep exported checkpoints, since a rewrite forks from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tallystick.verifier.canonical import canonicalize, parse_json
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.errors import MalformedInput, TallystickError
from tallystick.verifier.keys import (
    KeyDocument,
    PrivateKey,
    PublicKey,
    load_private_key,
    save_private_key,
)
from tallystick.verifier.logbundle import LogKeys, log_keyring

from .errors import LogInconsistent
from .files import fsync_path, replace_bytes, replace_private_key

__all__ = [
    "ARCHIVE_DIR",
    "HISTORY_FILE",
    "KEY_FILE",
    "OVERLAP_MS",
    "PUB_FILE",
    "LogKeySet",
    "archived_key_path",
    "create_history",
    "install_key",
    "load",
    "read_history",
    "rotate_files",
    "write_pub",
]

KEY_FILE: Final = "log.key"
PUB_FILE: Final = "log.pub"
HISTORY_FILE: Final = "log.keys.json"
ARCHIVE_DIR: Final = "keys"
#: How long after a rotation the retired key still co-signs checkpoints: 7 days.
OVERLAP_MS: Final = 7 * 24 * 3600 * 1000

_PRIVATE_MODE: Final = 0o600
_PUB_MODE: Final = 0o644
_DIR_MODE: Final = 0o700
_DEFAULT_ORIGIN_PREFIX: Final = "tallystick.local/"
_ORIGIN_KEY_CHARS: Final = 16
_KID_PREFIX: Final = "ed25519:"


# -- files -------------------------------------------------------------------------------------


def write_pub(data_dir: Path, public_key: PublicKey) -> None:
    """Replace ``log.pub`` atomically with ``public_key`` (one base64url line), durably."""
    data = (public_key.to_b64url() + "\n").encode("ascii")
    replace_bytes(data_dir / PUB_FILE, data, mode=_PUB_MODE)


def install_key(data_dir: Path, key: PrivateKey) -> None:
    """Make ``key`` the log key: ``log.key`` (0600) then ``log.pub``, each by an atomic rename."""
    replace_private_key(data_dir / KEY_FILE, key)
    write_pub(data_dir, key.public_key)


def archived_key_path(data_dir: Path, kid: str) -> Path:
    """Where ``keys/`` keeps the private key ``kid``."""
    return data_dir / ARCHIVE_DIR / f"log.{kid.removeprefix(_KID_PREFIX)}.key"


def _archive_key(data_dir: Path, key: PrivateKey) -> None:
    """Keep ``key`` in ``keys/`` (0600, never overwriting a different key), durably."""
    folder = data_dir / ARCHIVE_DIR
    if not folder.exists():
        folder.mkdir(mode=_DIR_MODE)
        folder.chmod(_DIR_MODE)  # mkdir's mode is filtered by the umask
    path = archived_key_path(data_dir, key.kid)
    if path.exists():
        if load_private_key(path).kid != key.kid:
            raise LogInconsistent(f"keys: {path} holds another key", code="log.keys_invalid")
        return  # left by an interrupted rotation
    save_private_key(path, key)
    fsync_path(path)
    fsync_path(folder)


def read_history(data_dir: Path) -> list[KeyDocument]:
    """The stored key history, oldest first; empty when the log never wrote one.

    :raises LogInconsistent: unreadable or not a list of key documents (``log.keys_invalid``).
    """
    path = data_dir / HISTORY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LogInconsistent(f"keys: cannot read {path}: {exc}", code="log.keys_invalid") from exc
    try:
        value = parse_json(raw)
        if not isinstance(value, list) or not value:
            raise MalformedInput("not a non-empty JSON array", code="key.document_malformed")
        return [KeyDocument.model_validate(item) for item in value]
    except (TallystickError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise LogInconsistent(
            f"keys: {path} is not a key history: {exc}", code="log.keys_invalid"
        ) from exc


def _write_history(data_dir: Path, documents: list[KeyDocument]) -> None:
    """Replace ``log.keys.json`` atomically and durably: the commit point of a rotation."""
    data = canonicalize([doc.model_dump(mode="json") for doc in documents]) + b"\n"
    replace_bytes(data_dir / HISTORY_FILE, data, mode=_PRIVATE_MODE)


def create_history(data_dir: Path, *, origin: str, key: PrivateKey) -> None:
    """Write version 1 for the original ``key`` (valid from 0) if there is no history yet."""
    if not (data_dir / HISTORY_FILE).exists():
        _archive_key(data_dir, key)
        _write_history(data_dir, [KeyDocument.create(owner=origin, key=key, at_ms=0)])


# -- loading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogKeySet:
    """What an open log needs of its keys.

    ``key`` signs checkpoints; ``keys`` verifies stored ones; ``overlap`` is the retired key
    that co-signs until the given time (ms), if any; ``documents`` go into bundles (empty for
    a log that never rotated).
    """

    key: PrivateKey
    keys: LogKeys
    overlap: tuple[NoteSigner, int] | None
    documents: tuple[KeyDocument, ...]


def _verified_history(documents: list[KeyDocument], origin: str) -> LogKeys:
    anchor = documents[0].keys[0].public_key
    default_origin = _DEFAULT_ORIGIN_PREFIX + anchor.to_b64url()[:_ORIGIN_KEY_CHARS]
    looks_default = origin.startswith(_DEFAULT_ORIGIN_PREFIX) and len(origin) == len(default_origin)
    if looks_default and origin != default_origin:
        raise LogInconsistent(
            f"keys: the origin {origin!r} names another original key than {HISTORY_FILE}'s",
            code="log.keys_invalid",
        )
    try:
        return LogKeys.from_keyring(origin, log_keyring(documents, origin=origin, pinned=anchor))
    except TallystickError as exc:
        raise LogInconsistent(
            f"keys: {HISTORY_FILE} does not verify ({exc.code}: {exc})", code="log.keys_invalid"
        ) from exc


def load(data_dir: Path, *, origin: str, key: PrivateKey) -> LogKeySet:
    """The verified keys of the log in ``data_dir``, whose ``log.key`` is ``key``.

    Finishes a rotation that stopped before ``log.key`` was switched.

    :raises LogInconsistent: ``log.keys_invalid``: the history does not verify, or
        ``log.key`` is not the key in service and ``keys/`` does not hold that key.
    :raises KeyInvalid: an archived key cannot be loaded.
    """
    documents = read_history(data_dir)
    if not documents:
        return LogKeySet(key, LogKeys.single(origin, key.public_key), None, ())
    keys = _verified_history(documents, origin)
    entries = documents[-1].keys
    in_service = [entry for entry in entries if entry.retired_at is None]
    if len(in_service) != 1:
        raise LogInconsistent(
            f"keys: {HISTORY_FILE} has {len(in_service)} keys in service, not one",
            code="log.keys_invalid",
        )
    current = in_service[0]
    if current.kid != key.kid:
        path = archived_key_path(data_dir, current.kid)
        if not path.exists():
            raise LogInconsistent(
                f"keys: {KEY_FILE} is not the key in service ({current.kid}) and {path} is missing",
                code="log.keys_invalid",
            )
        key = load_private_key(path)
        if key.kid != current.kid:
            raise LogInconsistent(f"keys: {path} holds another key", code="log.keys_invalid")
        install_key(data_dir, key)  # a rotation stopped after its commit point
    retired = [entry for entry in entries if entry.retired_at is not None]
    overlap: tuple[NoteSigner, int] | None = None
    if retired:
        last = max(retired, key=lambda entry: entry.retired_at or 0)
        path = archived_key_path(data_dir, last.kid)
        if path.exists() and last.retired_at is not None:
            overlap = (NoteSigner(origin, load_private_key(path)), last.retired_at + OVERLAP_MS)
    shown = tuple(documents) if len(documents) > 1 else ()
    return LogKeySet(key, keys, overlap, shown)


# -- rotating ----------------------------------------------------------------------------------


def rotate_files(
    data_dir: Path, *, origin: str, old_key: PrivateKey, new_key: PrivateKey, at_ms: int
) -> KeyDocument:
    """Retire ``old_key`` for ``new_key`` (see the module docstring); return the new version.

    The caller holds the daemon's lock and has just checkpointed every entry with ``old_key``.
    The rotation time is ``at_ms``, or just after the newest version if that is later.

    :raises LogInconsistent: the history does not verify or ``old_key`` is not in service
        (``log.keys_invalid``).
    """
    documents = read_history(data_dir) or [KeyDocument.create(owner=origin, key=old_key, at_ms=0)]
    _verified_history(documents, origin)
    at_ms = max(at_ms, documents[-1].issued_at + 1)
    try:
        document = documents[-1].rotate(old_key=old_key, new_key=new_key, at_ms=at_ms)
    except TallystickError as exc:
        raise LogInconsistent(
            f"keys: {KEY_FILE} is not the key in service: {exc}", code="log.keys_invalid"
        ) from exc
    _archive_key(data_dir, old_key)
    _archive_key(data_dir, new_key)
    _write_history(data_dir, [*documents, document])
    install_key(data_dir, new_key)
    return document
