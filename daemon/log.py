"""The durable, hash-chained, Merkle-proven log that tallystickd serves: a handful of calls.

::

    log = Log.open(Path("var"))                        # keys, self-check, writer thread
    index = log.append(EntryKind.CALL, "agent-7", body)  # returns once the entry is durable
    log.inclusion_proof(index, log.size)               # O(log n) stored-node reads
    log.close()                                        # drain, final checkpoint

Contracts:

- :meth:`Log.append` MUST NOT return before the entry, its Merkle nodes and the transaction
  that holds them are on disk (SQLite WAL, ``synchronous=FULL``). Throughput comes from group
  commit: one writer thread takes every pending append, writes them in ONE transaction (one
  fsync) and then wakes each caller. A crash therefore loses only unacknowledged appends and
  never leaves half a group behind.
- Entry ``n`` names ``hash_leaf(bytes of entry n-1)`` in ``prev`` (``GENESIS_PREV`` for 0),
  and entry times never decrease (the writer clamps a clock that steps back).
- Checkpoints are signed in batches, when ``checkpoint_every_entries`` entries or
  ``checkpoint_every_ms`` milliseconds are uncovered, in the same transaction as the group that
  triggers them; their sizes only grow, and all are roots of the one stored tree.
- :meth:`Log.open` checks the stored log first (:func:`self_check`) and refuses to serve one
  that contradicts itself, raising :class:`~tallystick.daemon.errors.LogInconsistent`.
- After a storage failure the writer stops (part of the failed transaction may be on disk):
  appends then raise ``log.storage_failed`` until a restart runs the self-check again.

The bundle (:meth:`Log.export`, :func:`export_data_dir`) is JSON Lines of canonical JSON: a
header ``{"format", "origin", "log_vkey", "size"}``, for a rotated log its key history as
``{"key_document": ...}`` lines (``log_keys``), one ``{"entry": base64}`` per entry in index
order, then ``{"checkpoint": note}`` lines by ascending size.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tallystick.verifier.canonical import MAX_JSON_DEPTH, parse_json
from tallystick.verifier.checkpoint import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    SignedNote,
    sign_checkpoint,
)
from tallystick.verifier.errors import MalformedInput, TallystickError
from tallystick.verifier.keys import KeyDocument, PrivateKey, PublicKey, load_private_key
from tallystick.verifier.logbundle import LogKeys, encode_bundle
from tallystick.verifier.logentry import (
    GENESIS_PREV,
    CallBody,
    EntryKind,
    LogEntry,
    _validated_call,
    _ValidatedCall,
)
from tallystick.verifier.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    NodeReader,
    ProofBuilder,
    hash_children,
    hash_leaf,
    verify_inclusion,
)

from . import log_keys
from .errors import LogInconsistent, LogUnavailable
from .log_keys import KEY_FILE, PUB_FILE
from .storage import sqlite as storage
from .storage.sqlite import Store, StoredCheckpoint

__all__ = [
    "KEY_FILE",
    "PUB_FILE",
    "Log",
    "export_data_dir",
    "self_check",
]

_DIR_MODE: Final = 0o700
_DEFAULT_ORIGIN_PREFIX: Final = "tallystick.local/"
_ORIGIN_KEY_CHARS: Final = 16
#: Beyond any index SQLite stores (INTEGER is signed 64-bit): "every row".
_ALL: Final = (1 << 63) - 1


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the Merkle tip: the compact range -------------------------------------------------------


def _append_leaf(
    border: list[bytes], index: int, leaf: bytes, nodes: list[tuple[int, int, bytes]]
) -> None:
    """Add leaf ``index`` to the compact range ``border``; collect every node it completes."""
    nodes.append((0, index, leaf))
    node, level, position = leaf, 0, index
    # A right child completes its parent: merge upwards like a binary counter.
    while position & 1:
        node = hash_children(border.pop(), node)
        level, position = level + 1, position >> 1
        nodes.append((level, position, node))
    border.append(node)


def _border_root(border: Sequence[bytes]) -> bytes:
    if not border:
        return EMPTY_ROOT
    node = border[-1]
    for left in reversed(border[:-1]):
        node = hash_children(left, node)
    return node


def _load_border(reader: NodeReader, size: int) -> list[bytes]:
    """The perfect subtrees covering ``[0, size)``, largest first (one per set bit)."""
    border: list[bytes] = []
    start = 0
    for level in reversed(range(size.bit_length())):
        if size >> level & 1:
            border.append(reader.get_node(level, start >> level))
            start += 1 << level
    return border


@dataclass(slots=True)
class _Tip:
    """What the writer needs to append: owned by the writer thread once the log is open."""

    size: int
    prev: bytes
    border: list[bytes]
    time_ms: int


# -- the start-up self-check -------------------------------------------------------------------


def _parse_row(index: int, raw: bytes, leaf: bytes) -> LogEntry:
    try:
        entry = LogEntry.from_bytes(raw)
    except MalformedInput as exc:
        raise LogInconsistent(f"entry {index}: not a valid entry ({exc.code}: {exc})") from exc
    if entry.index != index:
        raise LogInconsistent(f"entry {index}: stored under {index} but says index {entry.index}")
    if leaf != hash_leaf(raw):
        raise LogInconsistent(f"entry {index}: stored leaf hash is not the hash of its bytes")
    return entry


def _check_link(index: int, entry: LogEntry, prev: bytes) -> None:
    if entry.prev != prev:
        raise LogInconsistent(
            f"chain: entry {index} names prev {entry.prev.hex()[:16]}..., but entry "
            f"{index - 1} hashes to {prev.hex()[:16]}..."
        )


def _check_checkpoint(row: StoredCheckpoint, keys: LogKeys, root: bytes, store: Store) -> None:
    try:
        checkpoint = keys.verify(row.note)
        if keys.rotated:
            keys.check_in_service(row.note, newest_entry_ms=_newest_entry_ms(store, row.size))
    except TallystickError as exc:
        raise LogInconsistent(f"checkpoint at size {row.size}: {exc} ({exc.code})") from exc
    if checkpoint.size != row.size or checkpoint.root_hash != row.root:
        raise LogInconsistent(
            f"checkpoint at size {row.size}: its signed note says size {checkpoint.size} "
            "and another root than its row"
        )
    if root != row.root:
        raise LogInconsistent(
            f"tree vs checkpoint: the stored tree's root at size {row.size} is not the "
            "checkpoint's root"
        )


def _newest_entry_ms(store: Store, size: int) -> int:
    """The time of entry ``size - 1`` (0 for none): when a checkpoint of ``size`` was due."""
    if not size:
        return 0
    rows = list(store.entry_rows(size - 1, size))
    if len(rows) != 1:
        raise LogInconsistent(f"entries: entry {size - 1} is missing")
    index, raw, leaf = rows[0]
    return _parse_row(index, raw, leaf).time_ms


def _compare_tail_nodes(store: Store, computed: list[tuple[int, int, bytes]]) -> None:
    by_level: dict[int, list[tuple[int, bytes]]] = {}
    for level, index, value in computed:
        by_level.setdefault(level, []).append((index, value))
    for level, expected in by_level.items():
        stored = store.level_from(level, expected[0][0])
        for (index, value), found in zip(expected, [*stored, None], strict=False):
            if found is None or found[0] != index:
                raise LogInconsistent(f"tree: node ({level}, {index}) is missing")
            if found[1] != value:
                raise LogInconsistent(
                    f"tree: node ({level}, {index}) is not the hash of its children"
                )


def _check_tail(store: Store, latest: StoredCheckpoint, size: int) -> _Tip:
    """The chain and nodes of entries after the latest (verified) checkpoint."""
    start = latest.size
    border = _load_border(store, start)
    prev, time_ms = GENESIS_PREV, 0
    if start:
        # Bind the entry just before the checkpoint to its root, so the chain check below
        # starts from a verified link rather than a stored one.
        rows = list(store.entry_rows(start - 1, start))
        if len(rows) != 1:
            raise LogInconsistent(f"entries: entry {start - 1} is missing")
        _, raw, leaf = rows[0]
        entry = _parse_row(start - 1, raw, leaf)
        proof = ProofBuilder(store, size=start).inclusion_proof(start - 1, start)
        try:
            verify_inclusion(
                leaf_index=start - 1,
                tree_size=start,
                leaf_hash=leaf,
                proof=proof,
                root_hash=latest.root,
            )
        except TallystickError as exc:
            raise LogInconsistent(
                f"entry {start - 1}: not in the tree of the checkpoint at size {start}"
            ) from exc
        prev, time_ms = leaf, entry.time_ms
    computed: list[tuple[int, int, bytes]] = []
    for index, raw, leaf in store.entry_rows(start, size):
        entry = _parse_row(index, raw, leaf)
        _check_link(index, entry, prev)
        _append_leaf(border, index, leaf, computed)
        prev, time_ms = leaf, entry.time_ms
    _compare_tail_nodes(store, computed)
    return _Tip(size, prev, border, time_ms)


def _check_signed_prefix(store: Store, keys: LogKeys, signed_size: int) -> None:
    """Every entry a checkpoint covers still hashes to its leaf, and every checkpoint row is
    signed and is the root of those leaves.

    Hashing bytes is cheap next to parsing them (``_check_all``): an edit, a reordering or a
    replaced row changes a leaf or the tree, and the signed roots catch it. Entries were
    chain-checked when they were appended, so an intact tree under a valid signature means an
    intact chain.
    """
    tree = MerkleTree()
    for index, raw, leaf in store.entry_rows(0, signed_size):
        if leaf != hash_leaf(raw):
            raise LogInconsistent(f"entry {index}: stored leaf hash is not the hash of its bytes")
        tree.append(leaf)
    sizes: set[int] = set()
    for row in store.checkpoints(_ALL):
        if row.size in sizes:
            raise LogInconsistent(f"checkpoint at size {row.size}: two different rows (a fork)")
        sizes.add(row.size)
        _check_checkpoint(row, keys, tree.root(row.size), store)


def _check_all(store: Store, keys: LogKeys, size: int) -> _Tip:
    """Every entry, every node and every checkpoint, from scratch."""
    tree = MerkleTree()
    prev, time_ms = GENESIS_PREV, 0
    for index, raw, leaf in store.entry_rows(0, size):
        entry = _parse_row(index, raw, leaf)
        _check_link(index, entry, prev)
        tree.append(leaf)
        prev, time_ms = leaf, entry.time_ms
    for level, index, value in store.node_rows():
        try:
            expected = tree.get_node(level, index)
        except TallystickError as exc:
            raise LogInconsistent(f"tree: node ({level}, {index}) is not in the tree") from exc
        if value != expected:
            raise LogInconsistent(f"tree: node ({level}, {index}) is not the hash of its children")
    previous_time = 0
    for row in store.checkpoints(_ALL):
        if row.time_ms < previous_time:
            raise LogInconsistent(f"checkpoint at size {row.size}: older than a smaller one")
        previous_time = row.time_ms
        _check_checkpoint(row, keys, tree.root(row.size), store)
    return _Tip(size, prev, _load_border(tree, size), time_ms)


def self_check(store: Store, keys: LogKeys, *, full: bool = False) -> StoredCheckpoint:
    """Check the stored log against itself and its newest checkpoint; return that checkpoint.

    Always: the format version, that entry indices are contiguous, the node count of a tree of
    that size; that every entry up to the newest checkpoint hashes to its stored leaf and every
    checkpoint row is signed by ``keys`` (for a rotated log: by a key in service at the time
    of its newest entry, ``tallystick.daemon.log_keys``) and is the root of those leaves, one
    row per size;
    that the stored tree's root at the newest checkpoint is its root; and the hash chain, leaf
    hashes and nodes of every entry after it. ``full`` also re-parses every entry and
    recomputes every stored node.

    :raises LogInconsistent: the first contradiction found, naming the index, size or node.
    """
    return _checked_tip(store, keys, full=full)[1]


def _checked_tip(store: Store, keys: LogKeys, *, full: bool) -> tuple[_Tip, StoredCheckpoint]:
    try:
        return _run_checks(store, keys, full=full)
    except LogUnavailable as exc:
        # A node the checks need is gone, or SQLite cannot read the file: either way the
        # stored log cannot be vouched for.
        raise LogInconsistent(f"self-check: {exc}") from exc


def _run_checks(store: Store, keys: LogKeys, *, full: bool) -> tuple[_Tip, StoredCheckpoint]:
    version = store.meta("format_version")
    if version != storage.FORMAT_VERSION:
        raise LogInconsistent(
            f"meta: format version {version!r}, this daemon writes {storage.FORMAT_VERSION!r}"
        )
    size = store.stored_size()
    rows = store.count_entries()
    if rows != size:
        raise LogInconsistent(
            f"entries: {rows} rows for indices 0..{size - 1}; entry {store.first_gap()} is missing"
        )
    expected_nodes = 2 * size - size.bit_count()
    nodes = store.count_nodes()
    if nodes != expected_nodes:
        raise LogInconsistent(
            f"tree: {nodes} nodes stored, a tree of {size} entries has {expected_nodes}"
        )
    latest = store.latest_checkpoint()
    if latest is None:
        raise LogInconsistent("checkpoints: none stored")
    if latest.size > size:
        raise LogInconsistent(
            f"checkpoint at size {latest.size}: only {size} entries are stored (truncated?)"
        )
    if full:
        tip = _check_all(store, keys, size)
    else:
        _check_signed_prefix(store, keys, latest.size)
        root = ProofBuilder(store, size=size).root(latest.size)
        _check_checkpoint(latest, keys, root, store)
        tip = _check_tail(store, latest, size)
    return tip, latest


# -- keys --------------------------------------------------------------------------------------


def _create_key(data_dir: Path) -> PrivateKey:
    """A fresh log key in ``log.key`` (0600) and ``log.pub``, each durable before it is used."""
    key = PrivateKey.generate()
    log_keys.install_key(data_dir, key)
    return key


def _load_key(data_dir: Path, *, log_exists: bool) -> PrivateKey:
    key_path = data_dir / KEY_FILE
    if not key_path.exists():
        if log_exists:
            raise LogInconsistent(f"keys: {key_path} is missing but the log exists")
        return _create_key(data_dir)
    key = load_private_key(key_path)
    pub_path = data_dir / PUB_FILE
    if not pub_path.exists():
        log_keys.write_pub(data_dir, key.public_key)  # a crash between the two files
    elif pub_path.read_text(encoding="ascii").strip() != key.public_key.to_b64url():
        raise LogInconsistent(f"keys: {pub_path} is not the public half of {key_path}")
    return key


# -- the bundle --------------------------------------------------------------------------------


def _write_bundle(
    out: Path,
    *,
    origin: str,
    vkey: str,
    size: int,
    entries: Iterable[tuple[int, bytes, bytes]],
    checkpoints: Iterable[StoredCheckpoint],
    key_documents: Sequence[KeyDocument],
) -> None:
    """Write the bundle to a staging file and rename it, so ``out`` is never half written."""
    out = Path(out)
    staged = out.with_name(out.name + ".partial")
    try:
        with staged.open("wb") as handle:
            handle.writelines(
                encode_bundle(
                    origin=origin,
                    log_vkey=vkey,
                    size=size,
                    entries=(raw for _, raw, _ in entries),
                    checkpoints=(row.note for row in checkpoints),
                    key_documents=key_documents,
                )
            )
        staged.replace(out)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def export_data_dir(
    data_dir: Path, out: Path, *, progress: Callable[[int, int], None] | None = None
) -> int:
    """Write the bundle of the log in ``data_dir`` exactly as stored; return its entry count.

    ``progress(done, total)`` is called as entries are written (every 4,096 and at the end).

    Reads the database read-only (a daemon may be running) and signs nothing: every stored entry
    row, in index order, and every stored checkpoint, so damage to the rows stays visible to
    the offline verifier. If the newest entries postdate the newest checkpoint (a crash before
    the next start), the last checkpoint line is smaller than ``size``.

    :raises LogUnavailable: no log there (``log.not_found``) or SQLite failed.
    :raises KeyInvalid: ``log.pub`` is not a public key.
    """
    data_dir = Path(data_dir)
    store = storage.open(data_dir / storage.DB_FILENAME, read_only=True)
    try:
        with store.snapshot() as snap:
            origin = snap.meta("origin")
            if origin is None:
                raise LogUnavailable(f"log: {data_dir} holds no log", code="log.not_found")
            public_key = _stored_public_key(data_dir)
            vkey = NoteVerifier.from_public_key(origin, public_key).vkey
            size = snap.count_entries()
            history = log_keys.read_history(data_dir)
            rows = snap.entry_rows(0, _ALL)
            _write_bundle(
                out,
                origin=origin,
                vkey=vkey,
                size=size,
                entries=rows if progress is None else _reporting(rows, size, progress),
                checkpoints=snap.checkpoints(_ALL),
                key_documents=history if len(history) > 1 else (),
            )
    finally:
        store.close()
    return size


def _reporting(
    rows: Iterable[tuple[int, bytes, bytes]], total: int, progress: Callable[[int, int], None]
) -> Iterator[tuple[int, bytes, bytes]]:
    done = 0
    for row in rows:
        yield row
        done += 1
        if done % 4096 == 0:
            progress(done, total)
    progress(done, total)


def _stored_public_key(data_dir: Path) -> PublicKey:
    pub_path = data_dir / PUB_FILE
    if pub_path.exists():
        return PublicKey.from_text(pub_path.read_text(encoding="ascii").strip())
    key_path = data_dir / KEY_FILE
    if key_path.exists():
        return load_private_key(key_path).public_key
    raise LogUnavailable(f"log: neither {pub_path} nor {key_path} exists", code="log.not_found")


# -- the log -----------------------------------------------------------------------------------


_LONG_DIGIT_RUN: Final = re.compile(rb"[0-9]{16}")


#: What an append carries: a body to validate, or a ``call`` body validated already.
_Body = dict[str, Any] | _ValidatedCall


def _entry_bytes(
    index: int, prev: bytes, kind: EntryKind, time_ms: int, agent: str, body: _Body
) -> bytes:
    """The exact bytes of a new entry, refused unless they parse back as exactly that entry.

    :raises MalformedInput: a field or body that does not fit, or a body (an integer beyond
        2^53, nesting beyond 64) whose canonical bytes the strict parser would refuse later.
    """
    if isinstance(body, _ValidatedCall):  # only append_calls makes these, for CALL entries
        # CallBody bounds every integer to 2^53 - 1 and nests three deep: nothing to re-parse.
        return LogEntry._call_bytes(index, prev, time_ms, agent, body)
    try:
        raw = LogEntry(index, prev, kind, time_ms, agent, body).to_bytes()
        # Of the strict parser's refusals, canonical bytes of a dict can only hit two: nesting
        # beyond MAX_JSON_DEPTH and integers beyond 2^53 (16+ digits). Parse (the costly half of
        # LogEntry.from_bytes; the rest cannot fail for bytes just produced) only when the bytes
        # could hold either: brackets past the limit, or a 16-digit run anywhere.
        if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH or _LONG_DIGIT_RUN.search(raw):
            parse_json(raw)
    except RecursionError as exc:
        raise MalformedInput("log entry: body nested too deeply", code="input.too_deep") from exc
    return raw


class _Request:
    """Appends (or a checkpoint demand) waiting for the writer; ``wait`` blocks until done."""

    __slots__ = ("_done", "error", "force_checkpoint", "indices", "items")

    def __init__(
        self, items: Sequence[tuple[EntryKind, str, _Body]], *, force_checkpoint: bool
    ) -> None:
        self.items = items
        self.force_checkpoint = force_checkpoint
        self.indices: list[int] = []
        self.error: TallystickError | None = None
        # A bare lock is the cheapest one-shot signal: held now, released by the writer.
        self._done = threading.Lock()
        self._done.acquire()

    def finish(self, error: TallystickError | None = None) -> None:
        if not self._done.locked():
            return  # finished already (a failure path may reach a request twice)
        if error is not None:
            self.error, self.indices = error, []
        self._done.release()

    def wait(self) -> list[int]:
        self._done.acquire()
        if self.error is not None:
            raise self.error
        return self.indices


class Log:
    """An open log: appends, checkpoints, proofs and reads; every method is thread-safe.

    One writer thread takes every pending request, assigns indices, builds the entries, nodes
    and any due checkpoint, writes them in one transaction, and only then publishes the new
    size and wakes the callers.

    Build with :meth:`open`; call :meth:`close` when done.
    """

    def __init__(
        self,
        store: Store,
        signer: NoteSigner,
        tip: _Tip,
        checkpoint: StoredCheckpoint,
        *,
        every_entries: int,
        every_ms: int,
        clock_ms: Callable[[], int],
        overlap: tuple[NoteSigner, int] | None = None,
        key_documents: Sequence[KeyDocument] = (),
    ) -> None:
        """Private: use :meth:`open`."""
        self._store = store
        self._signer = signer
        # A key retired by a rotation co-signs checkpoints until the given time (log_keys).
        self._overlap = overlap
        self._key_documents = key_documents
        self._every_entries = every_entries
        self._every_ms = every_ms
        self._clock_ms = clock_ms
        self._tip = tip  # the writer thread's alone from here on
        # Published after each commit, read without a lock (one reference each).
        self._head = (tip.size, _border_root(tip.border))
        self._checkpoint = checkpoint
        self._pending: list[_Request] = []
        self._wake = threading.Condition(threading.Lock())
        self._closing = False
        self._failure: str | None = None
        self._writer = threading.Thread(target=self._run, name="tallystick-log-writer", daemon=True)

    # -- opening and closing -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        origin: str | None = None,
        checkpoint_every_entries: int = 1000,
        checkpoint_every_ms: int = 1000,
        clock_ms: Callable[[], int] = _wall_clock_ms,
        full_check: bool = False,
        wal_checkpoint_every_ms: int = storage.WAL_CHECKPOINT_EVERY_MS,
        wal_limit_bytes: int = storage.WAL_LIMIT_BYTES,
    ) -> Log:
        """Open the log in ``data_dir``, creating it (0700), its key and database on first start.

        ``origin`` defaults to ``tallystick.local/`` and 16 characters of the key; once stored
        it never changes. The stored log is checked first (:func:`self_check`; ``full_check``
        scans everything) and a checkpoint is signed if entries postdate the newest one.
        ``wal_checkpoint_every_ms`` and ``wal_limit_bytes`` tune the storage's background WAL
        checkpoints (:mod:`tallystick.daemon.storage.sqlite`).

        :raises LogInconsistent: the self-check failed, or ``origin`` is not the stored one
            (``log.origin_mismatch``); the log is not served.
        :raises MalformedInput: an interval or limit below 1 (``log.bad_config``) or an
            origin that is not a note key name (``note.bad_vkey``).
        :raises KeyInvalid: ``log.key`` cannot be loaded.
        :raises LogUnavailable: the database cannot be opened.
        """
        for name, value in (
            ("checkpoint_every_entries", checkpoint_every_entries),
            ("checkpoint_every_ms", checkpoint_every_ms),
            ("wal_checkpoint_every_ms", wal_checkpoint_every_ms),
            ("wal_limit_bytes", wal_limit_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MalformedInput(
                    f"log: {name} must be a positive integer", code="log.bad_config"
                )
        data_dir = Path(data_dir)
        if not data_dir.exists():
            data_dir.mkdir(mode=_DIR_MODE, parents=True)
            data_dir.chmod(_DIR_MODE)  # mkdir's mode is filtered by the umask
        store = storage.open(
            data_dir / storage.DB_FILENAME,
            wal_checkpoint_every_ms=wal_checkpoint_every_ms,
            wal_limit_bytes=wal_limit_bytes,
        )
        try:
            log_exists = store.is_initialised()
            key = _load_key(data_dir, log_exists=log_exists)
            if not log_exists:
                name = (
                    origin
                    or _DEFAULT_ORIGIN_PREFIX + key.public_key.to_b64url()[:_ORIGIN_KEY_CHARS]
                )
                signer = NoteSigner(name, key)
                note = sign_checkpoint(Checkpoint(name, 0, EMPTY_ROOT), signer)
                try:
                    store.initialise(
                        origin=name, checkpoint=StoredCheckpoint(0, EMPTY_ROOT, note, clock_ms())
                    )
                except sqlite3.Error as exc:
                    raise LogUnavailable(f"log storage: cannot create the log: {exc}") from exc
            stored_origin = store.meta("origin")
            if stored_origin is None:
                raise LogInconsistent("meta: no origin stored")
            if origin is not None and origin != stored_origin:
                raise LogInconsistent(
                    f"meta: the log's origin is {stored_origin!r}, not {origin!r}",
                    code="log.origin_mismatch",
                )
            if not log_exists:
                log_keys.create_history(data_dir, origin=stored_origin, key=key)
            key_set = log_keys.load(data_dir, origin=stored_origin, key=key)
            signer = NoteSigner(stored_origin, key_set.key)
            tip, checkpoint = _checked_tip(store, key_set.keys, full=full_check)
            store.load_upper_levels()
        except BaseException:
            store.close()
            raise
        log = cls(
            store,
            signer,
            tip,
            checkpoint,
            every_entries=checkpoint_every_entries,
            every_ms=checkpoint_every_ms,
            clock_ms=clock_ms,
            overlap=key_set.overlap,
            key_documents=key_set.documents,
        )
        log._writer.start()
        if tip.size > checkpoint.size:
            log.checkpoint_now()  # recovery: the newest entries were never checkpointed
        return log

    def close(self) -> None:
        """Refuse new appends, commit the pending ones, sign a final checkpoint and close.

        Idempotent.
        """
        with self._wake:
            already = self._closing
            self._closing = True
            self._wake.notify()
        self._writer.join()
        if not already:
            self._store.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- appending -----------------------------------------------------------------------------

    def append(self, kind: EntryKind, agent: str, body: dict[str, Any]) -> int:
        """Append one entry and return its index once it is durable.

        :raises MalformedInput: ``body`` does not fit ``kind``, or the entry is too large;
            nothing is written.
        :raises LogUnavailable: the log is closed (``log.closed``) or storage failed
            (``log.storage_failed``); the entry was not acknowledged.
        """
        return self._submit(_Request(((kind, agent, body),), force_checkpoint=False))[0]

    def append_batch(self, items: Sequence[tuple[EntryKind, str, dict[str, Any]]]) -> list[int]:
        """Append entries atomically (all or none) at consecutive indices, once durable.

        :raises MalformedInput: any item is invalid (nothing is written).
        :raises LogUnavailable: as :meth:`append`.
        """
        batch = tuple(items)
        for item in batch:
            if not isinstance(item, tuple) or len(item) != 3:
                raise MalformedInput(
                    "log: each item must be (kind, agent, body)", code="log.entry_malformed"
                )

        if not batch:
            return []
        return self._submit(_Request(batch, force_checkpoint=False))

    def append_calls(self, agent: str, bodies: Sequence[CallBody]) -> list[int]:
        """Append ``call`` entries for validated bodies, atomically, once durable.

        The bodies are not validated again: a :class:`CallBody` is valid by construction. Their
        canonical bytes are made here, on the caller's thread, not on the writer's.

        :raises MalformedInput: as :meth:`append_batch` (nothing is written).
        :raises LogUnavailable: as :meth:`append`.
        """
        items = tuple((EntryKind.CALL, agent, _validated_call(body)) for body in bodies)
        if not items:
            return []
        return self._submit(_Request(items, force_checkpoint=False))

    def _submit(self, request: _Request) -> list[int]:
        with self._wake:
            if self._failure is not None:
                raise LogUnavailable(f"log: stopped: {self._failure}", code="log.storage_failed")
            if self._closing:
                raise LogUnavailable("log: closed", code="log.closed")
            self._pending.append(request)
            if len(self._pending) == 1:
                self._wake.notify()
        return request.wait()

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        batch: list[_Request] = []
        try:
            while True:
                with self._wake:
                    while not self._pending and not self._closing:
                        timeout = self._seconds_to_checkpoint()
                        if timeout == 0.0:
                            break
                        self._wake.wait(timeout)
                    batch, self._pending = self._pending, []
                    closing = self._closing
                if self._failure is not None:
                    self._fail_requests(batch)
                    return
                self._write(batch, final=closing)
                batch = []
                if closing:
                    return
        except BaseException as exc:  # a bug must not leave callers blocked forever
            self._stop(f"writer died: {exc!r}")
            self._fail_requests(batch)
            raise

    def _seconds_to_checkpoint(self) -> float | None:
        size, checkpoint = self._tip.size, self._checkpoint
        if size == checkpoint.size:
            return None
        waited = self._clock_ms() - checkpoint.time_ms
        # A clock stepping back must not postpone the checkpoint beyond one interval.
        return max(0.0, min(self._every_ms, self._every_ms - waited)) / 1000

    def _write(self, batch: list[_Request], *, final: bool) -> None:
        """Build every valid request's entries, commit them in one transaction, wake callers."""
        tip = self._tip
        now = self._clock_ms()
        time_ms = max(tip.time_ms, now)
        size, prev, border = tip.size, tip.prev, tip.border.copy()
        entry_rows: list[tuple[int, bytes, bytes]] = []
        node_rows: list[tuple[int, int, bytes]] = []
        accepted: list[_Request] = []
        force = final
        for request in batch:
            force = force or request.force_checkpoint
            built: list[tuple[int, bytes, bytes]] = []
            try:
                for kind, agent, body in request.items:
                    index = size + len(built)
                    link = built[-1][2] if built else prev
                    raw = _entry_bytes(index, link, kind, time_ms, agent, body)
                    built.append((index, raw, hash_leaf(raw)))
            except TallystickError as exc:
                request.finish(exc)  # all or nothing: none of its entries is kept
                continue
            for index, raw, leaf in built:
                entry_rows.append((index, raw, leaf))
                _append_leaf(border, index, leaf, node_rows)
            if built:
                size, prev = size + len(built), built[-1][2]
                request.indices = [row[0] for row in built]
            accepted.append(request)
        root = _border_root(border)
        checkpoint = self._due_checkpoint(size, root, now, force=force)
        if entry_rows or checkpoint is not None:
            try:
                self._store.commit(entry_rows, node_rows, checkpoint)
            except (sqlite3.Error, OSError) as exc:
                # Part of the transaction may be on disk after all: stop, and let a restart's
                # self-check decide what the log holds.
                self._stop(f"storage failed: {exc}")
                self._fail_requests(accepted)
                return
            if entry_rows:
                self._tip = _Tip(size, prev, border, time_ms)
            self._head = (size, root)
            if checkpoint is not None:
                self._checkpoint = checkpoint
        for request in accepted:
            request.finish()

    def _due_checkpoint(
        self, size: int, root: bytes, now: int, *, force: bool
    ) -> StoredCheckpoint | None:
        last = self._checkpoint
        if size == last.size:
            return None
        uncovered = size - last.size
        if not (force or uncovered >= self._every_entries or now - last.time_ms >= self._every_ms):
            return None
        signers = [self._signer]
        if self._overlap is not None and now < self._overlap[1]:
            signers.append(self._overlap[0])
        note = sign_checkpoint(Checkpoint(self._signer.name, size, root), *signers)
        return StoredCheckpoint(size, root, note, max(now, last.time_ms))

    def _stop(self, reason: str) -> None:
        with self._wake:
            self._failure = reason
            batch, self._pending = self._pending, []
        self._fail_requests(batch)

    def _fail_requests(self, requests: Iterable[_Request]) -> None:
        for request in requests:
            request.finish(
                LogUnavailable(f"log: stopped: {self._failure}", code="log.storage_failed")
            )

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoint_now(self) -> str:
        """Sign a checkpoint covering every committed entry (if newer) and return the newest.

        :raises LogUnavailable: the log is closed or storage failed.
        """
        self._submit(_Request((), force_checkpoint=True))
        return self._checkpoint.note

    def latest_checkpoint(self) -> str:
        """The signed note text of the newest checkpoint."""
        return self._checkpoint.note

    def countersign(self, note: str) -> str:
        """``note`` with the log key's signature added to its own (a provider's CoIn head on
        receipt, coin.md §4.3), for the caller that has verified it.

        The log key also signs checkpoints; a note whose second line is not a decimal size
        (a CoIn head's is its origin) can never be read as one.

        :raises CheckpointInvalid: ``note`` is not a signed note (``note.malformed``).
        """
        signed = SignedNote.from_text(note)
        return signed.with_signatures(self._signer.sign(signed.text)).to_text()

    # -- reading -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of committed (durable) entries."""
        return self._head[0]

    @property
    def origin(self) -> str:
        """The checkpoint origin, which is also the log key's note name."""
        return self._signer.name

    @property
    def public_key(self) -> PublicKey:
        """The log's Ed25519 public key (``log.pub``)."""
        return self._signer.verifier.public_key

    @property
    def vkey(self) -> str:
        """The C2SP verifier key text of the log key under :attr:`origin`."""
        return self._signer.vkey

    def root(self, size: int | None = None) -> bytes:
        """The tree root at ``size`` entries (default: every committed entry).

        :raises ProofInvalid: a size beyond the log (``merkle.bad_size``).
        """
        size_now, root_now = self._head
        if size is None or size == size_now:
            return root_now
        with self._store.nodes() as nodes:
            return ProofBuilder(nodes, size=size_now).root(size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of ``size``, leaf side first.

        :raises ProofInvalid: ``index >= size`` or ``size`` beyond the log.
        """
        with self._store.nodes() as nodes:
            return ProofBuilder(nodes, size=self._head[0]).inclusion_proof(index, size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """RFC 9162 consistency proof from size ``first`` to ``second``.

        :raises ProofInvalid: ``first == 0``, ``first > second`` or ``second`` beyond the log.
        """
        with self._store.nodes() as nodes:
            return ProofBuilder(nodes, size=self._head[0]).consistency_proof(first, second)

    def entries(self, start: int, end: int) -> list[bytes]:
        """The exact bytes of entries ``start <= index < end``.

        :raises MalformedInput: not ``0 <= start <= end <= size`` (``log.bad_range``).
        :raises LogInconsistent: a row in the range has vanished from storage.
        """
        size = self._head[0]
        for value in (start, end):
            if isinstance(value, bool) or not isinstance(value, int):
                raise MalformedInput("log: range bounds must be integers", code="log.bad_range")
        if not 0 <= start <= end <= size:
            raise MalformedInput(
                f"log: range [{start}, {end}) is not within [0, {size})", code="log.bad_range"
            )
        found = self._store.entries(start, end)
        if len(found) != end - start:
            raise LogInconsistent(f"entries: rows in [{start}, {end}) are missing from storage")
        return found

    def export(self, out: Path) -> int:
        """Sign a fresh checkpoint, then write the bundle up to it to ``out``; return its size.

        :raises LogUnavailable: the log is closed or storage failed.
        """
        self.checkpoint_now()
        checkpoint = self._checkpoint
        with self._store.snapshot() as snap:
            _write_bundle(
                out,
                origin=self.origin,
                vkey=self.vkey,
                size=checkpoint.size,
                entries=snap.entry_rows(0, checkpoint.size),
                checkpoints=snap.checkpoints(checkpoint.size),
                key_documents=self._key_documents,
            )
        return checkpoint.size
