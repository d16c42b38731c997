"""The log's SQLite storage: one file, one :func:`open`, a writer connection and pooled readers.

Schema (every table ``STRICT``; column names are part of the contract, tamper tests use them)::

    meta        (key TEXT PRIMARY KEY, value TEXT)          origin, format_version
    entries     ("index" INTEGER PRIMARY KEY, entry BLOB, leaf_hash BLOB)
    nodes       (level INTEGER, "index" INTEGER, hash BLOB, PRIMARY KEY (level, "index"))
    checkpoints (size INTEGER PRIMARY KEY, root BLOB, note TEXT, time_ms INTEGER)

``entries.entry`` holds an entry's exact bytes; ``nodes`` holds the hash of every complete
perfect subtree (level 0 = leaf hashes), so :class:`Store` is a verifier ``NodeReader`` and
any root or proof for any size is O(log n) reads. ``checkpoints`` keeps every signed note.

Durability: WAL with ``synchronous=FULL``, so :meth:`Store.commit` returns only once its
transaction is on disk; callers reach throughput by committing many entries per transaction.
All SQL is constant text with ``?`` parameters (a PRAGMA value, which cannot be one, is
an ``int`` formatted in).

Checkpoints: the writer connection never checkpoints (``wal_autocheckpoint=0``); SQLite's
automatic checkpoint would run inside whichever commit crosses 1000 WAL pages and set the
commit p99. A background thread on its own connection runs ``wal_checkpoint(PASSIVE)`` every
``wal_checkpoint_every_ms`` instead (PASSIVE waits on no lock and never blocks the writer or a
reader; the writer starts the WAL over once it is all copied). A reader that stays in one
snapshot keeps PASSIVE from finishing, so the WAL grows: once the ``-wal`` file is larger than
``wal_limit_bytes`` each round falls back to ``wal_checkpoint(TRUNCATE)``, which waits at most
``wal_truncate_wait_ms`` for readers (and holds up the writer that long at most) and, once it
succeeds, empties the file; so the WAL cannot grow without bound or stay large.
:meth:`Store.close` ends with a TRUNCATE checkpoint, so a stopped log is one file. A checkpoint
only copies frames that are already durable in the WAL, so none of this changes durability.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import sqlite_utils
from tallystick.verifier.merkle import HASH_SIZE, NodeReader

from ..errors import LogUnavailable

__all__ = [
    "DB_FILENAME",
    "FORMAT_VERSION",
    "WAL_CHECKPOINT_EVERY_MS",
    "WAL_LIMIT_BYTES",
    "WAL_TRUNCATE_WAIT_MS",
    "Store",
    "StoredCheckpoint",
    "open",
]

DB_FILENAME: Final = "tallystick.sqlite3"
#: Bumped when the schema or the meaning of a column changes.
FORMAT_VERSION: Final = "1"

#: How often the background thread runs a PASSIVE checkpoint.
WAL_CHECKPOINT_EVERY_MS: Final = 250
#: ``-wal`` file size above which each PASSIVE checkpoint is followed by a TRUNCATE one.
WAL_LIMIT_BYTES: Final = 64 * 1024 * 1024
#: How long that TRUNCATE checkpoint waits for readers (and holds up the writer) at most.
WAL_TRUNCATE_WAIT_MS: Final = 100

_FILE_MODE: Final = 0o600

# sqlite-utils cannot declare WITHOUT ROWID; a node row is 3 small columns, so the table is its
# own primary-key b-tree instead of a rowid table plus an index holding the same columns again.
_CREATE_NODES: Final = (
    'CREATE TABLE nodes (level INTEGER NOT NULL, "index" INTEGER NOT NULL, hash BLOB NOT NULL, '
    'PRIMARY KEY (level, "index")) STRICT, WITHOUT ROWID'
)
_INSERT_CHECKPOINT: Final = (
    "INSERT INTO checkpoints (size, root, note, time_ms) VALUES (?, ?, ?, ?)"
)
# A group commit is ONE statement: an INSERT into this temporary view, whose trigger routes each
# row (tag 0 entry, 1 node, 2 checkpoint) to its table. Outside a transaction SQLite runs one
# statement atomically, and Python's sqlite3 releases the GIL around each statement, so a busy
# process hands the GIL back to the writer once per group instead of once per statement.
# TEMP objects live in the connection, not in the file.
_CREATE_GROUP_VIEW: Final = (
    "CREATE TEMP VIEW IF NOT EXISTS group_rows (tag, a, b, c, d) AS "
    "SELECT NULL, NULL, NULL, NULL, NULL WHERE 0"
)
_CREATE_GROUP_TRIGGER: Final = """CREATE TEMP TRIGGER IF NOT EXISTS group_rows_insert
INSTEAD OF INSERT ON group_rows BEGIN
    INSERT INTO entries ("index", entry, leaf_hash) SELECT NEW.a, NEW.b, NEW.c WHERE NEW.tag = 0;
    INSERT INTO nodes (level, "index", hash) SELECT NEW.a, NEW.b, NEW.c WHERE NEW.tag = 1;
    INSERT INTO checkpoints (size, root, note, time_ms)
        SELECT NEW.a, NEW.b, NEW.c, NEW.d WHERE NEW.tag = 2;
END"""
_INSERT_GROUP: Final = "INSERT INTO group_rows (tag, a, b, c, d) VALUES "
_GROUP_ROW: Final = "(?, ?, ?, ?, ?)"
_GROUP_COLUMNS: Final = 5
_TAG_ENTRY, _TAG_NODE, _TAG_CHECKPOINT = 0, 1, 2
_SELECT_NODE: Final = 'SELECT hash FROM nodes WHERE level = ? AND "index" = ?'
_SELECT_UPPER_NODES: Final = (
    'SELECT level, "index", hash FROM nodes WHERE level >= ? ORDER BY level, "index"'
)
#: Nodes from this level up are also kept in memory (see _UpperLevels).
_UPPER_FROM_LEVEL: Final = 4
_SELECT_LEVEL_FROM: Final = (
    'SELECT "index", hash FROM nodes WHERE level = ? AND "index" >= ? ORDER BY "index"'
)
_SELECT_ENTRIES: Final = (
    'SELECT "index", entry, leaf_hash FROM entries WHERE "index" >= ? AND "index" < ? '
    'ORDER BY "index"'
)
_SELECT_ENTRY_BYTES: Final = (
    'SELECT entry FROM entries WHERE "index" >= ? AND "index" < ? ORDER BY "index"'
)
_SELECT_CHECKPOINTS: Final = (
    "SELECT size, root, note, time_ms FROM checkpoints WHERE size <= ? ORDER BY size"
)
_SELECT_LATEST_CHECKPOINT: Final = (
    "SELECT size, root, note, time_ms FROM checkpoints ORDER BY size DESC LIMIT 1"
)


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """One row of ``checkpoints``: as stored, not yet verified."""

    size: int
    root: bytes
    note: str
    time_ms: int


class _UpperLevels:
    """Memory copies of the nodes of level >= 4, one flat ``bytearray`` per level.

    A proof at a million entries reads about 24 nodes; SQLite costs ~9 µs a read, and all but
    the lowest four levels (a sixteenth of the nodes: 4 MB per million entries) come from here.
    Nodes never change once written, so a copy is never stale; a node not (yet) here is read
    from SQLite. Only the writer appends, after its transaction commits.
    """

    __slots__ = ("levels",)

    def __init__(self) -> None:
        self.levels: list[bytearray] = []

    def remember(self, nodes: Iterable[tuple[int, int, bytes]]) -> None:
        levels = self.levels
        for level, index, value in nodes:
            if level < _UPPER_FROM_LEVEL:
                continue
            position = level - _UPPER_FROM_LEVEL
            while len(levels) <= position:
                levels.append(bytearray())
            # Only the next node of its level: a gap would shift every later offset.
            if len(levels[position]) == index * HASH_SIZE:
                levels[position] += value


class _Nodes:
    """A ``NodeReader`` over one connection, upper levels first from memory."""

    __slots__ = ("_conn", "_levels")

    def __init__(self, conn: sqlite3.Connection, upper: _UpperLevels) -> None:
        self._conn = conn
        self._levels = upper.levels

    def get_node(self, level: int, index: int) -> bytes:
        # Inlined _UpperLevels.get: this runs ~24 times per proof.
        position = level - _UPPER_FROM_LEVEL
        if 0 <= position < len(self._levels) and index >= 0:
            data = self._levels[position]
            offset = index * HASH_SIZE
            if offset + HASH_SIZE <= len(data):
                return bytes(data[offset : offset + HASH_SIZE])
        row = self._conn.execute(_SELECT_NODE, (level, index)).fetchone()
        if row is None or not isinstance(row[0], bytes):
            raise LogUnavailable(
                f"log storage: node ({level}, {index}) is not stored", code="log.node_missing"
            )
        return row[0]


def _insert_group(conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """One INSERT of ``rows`` into ``group_rows``; the text holds only placeholders."""
    sql = _INSERT_GROUP + ",".join([_GROUP_ROW] * len(rows))
    conn.execute(sql, [value for row in rows for value in row])


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    if read_only:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
    else:
        # Autocommit: transactions are explicit (BEGIN) or one statement (see commit).
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")  # ms to wait for a lock another process holds
    if read_only:
        conn.execute("PRAGMA query_only = 1")
    else:
        # WAL persists in the file; synchronous is per connection and must be set on each.
        sqlite_utils.Database(conn).enable_wal()
        conn.execute("PRAGMA synchronous = FULL")
    return conn


class _WalCheckpointer:
    """A thread that checkpoints the WAL on its own connection (see the module docstring)."""

    __slots__ = ("_conn", "_every_s", "_limit_bytes", "_stop", "_thread", "_wal_path")

    def __init__(
        self, path: Path, *, every_ms: int, limit_bytes: int, truncate_wait_ms: int
    ) -> None:
        self._conn = _connect(path, read_only=False)
        # Only TRUNCATE calls the busy handler: this bounds its wait for readers.
        self._conn.execute(f"PRAGMA busy_timeout = {int(truncate_wait_ms)}")
        self._wal_path = path.with_name(path.name + "-wal")
        self._every_s = every_ms / 1000
        self._limit_bytes = limit_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="tallystick-wal-checkpointer", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            # Nothing is lost by a failed round: the frames stay in the WAL for the next one.
            with contextlib.suppress(sqlite3.Error, OSError):
                self.checkpoint()

    def checkpoint(self) -> None:
        """PASSIVE, then TRUNCATE if the ``-wal`` file is over the limit.

        :raises sqlite3.Error: SQLite failed.
        :raises OSError: the ``-wal`` file cannot be examined.
        """
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        try:
            wal_bytes = self._wal_path.stat().st_size
        except FileNotFoundError:
            return
        if wal_bytes > self._limit_bytes:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def close(self) -> None:
        """Stop the thread, TRUNCATE the WAL (best effort: a reader may hold it) and close."""
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self._conn.close()


class Store:
    """The log database. Writes go through one writer connection (one thread at a time);
    reads take a pooled connection, so many threads read at once. Build with :func:`open`.

    Every read raises :class:`~tallystick.daemon.errors.LogUnavailable`
    (``log.storage_failed``, or ``log.closed``) when SQLite fails; :meth:`commit` and
    :meth:`initialise` let ``sqlite3.Error`` through, so the writer decides what it means.
    """

    def __init__(
        self,
        path: Path,
        *,
        read_only: bool,
        pinned: sqlite3.Connection | None = None,
        wal_checkpoint_every_ms: int = WAL_CHECKPOINT_EVERY_MS,
        wal_limit_bytes: int = WAL_LIMIT_BYTES,
        wal_truncate_wait_ms: int = WAL_TRUNCATE_WAIT_MS,
    ) -> None:
        """Private: use :func:`open` (``pinned``: serve every read from that one connection)."""
        self.path = path
        self.read_only = read_only
        self._pinned = pinned
        self._writer = None if read_only else _connect(path, read_only=False)
        self._checkpointer: _WalCheckpointer | None = None
        if self._writer is not None:
            self._writer.execute("PRAGMA wal_autocheckpoint = 0")  # _WalCheckpointer does it
            try:
                self._checkpointer = _WalCheckpointer(
                    path,
                    every_ms=wal_checkpoint_every_ms,
                    limit_bytes=wal_limit_bytes,
                    truncate_wait_ms=wal_truncate_wait_ms,
                )
            except BaseException:
                self._writer.close()
                raise
        self._group_view = False
        self._upper = _UpperLevels()
        self._closed = False
        self._idle: list[sqlite3.Connection] = []
        self._readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # -- connections ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        if self._pinned is not None:
            try:
                yield self._pinned
            except sqlite3.Error as exc:
                raise LogUnavailable(f"log storage: {exc}", code="log.storage_failed") from exc
            return
        with self._lock:
            if self._closed:
                raise LogUnavailable("log storage: closed", code="log.closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = _connect(self.path, read_only=True)
            with self._lock:
                self._readers.append(conn)
        try:
            yield conn
        except sqlite3.Error as exc:
            raise LogUnavailable(f"log storage: {exc}", code="log.storage_failed") from exc
        finally:
            if conn.in_transaction:
                conn.rollback()
            with self._lock:
                self._idle.append(conn)

    def _write_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            raise LogUnavailable("log storage: opened read-only", code="log.storage_failed")
        return self._writer

    def close(self) -> None:
        """Close every connection, the last checkpoint first (one file remains). Idempotent."""
        with self._lock:
            self._closed = True
            conns = [*self._readers, *([self._writer] if self._writer else [])]
            checkpointer = self._checkpointer
            self._readers, self._idle, self._writer = [], [], None
            self._checkpointer = None
        for conn in conns:
            conn.close()
        if checkpointer is not None:
            checkpointer.close()

    # -- creation and meta ---------------------------------------------------------------------

    def is_initialised(self) -> bool:
        """True once :meth:`initialise` has committed."""
        with self._reader() as conn:
            row = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", ("meta",)
            ).fetchone()
        return bool(row[0])

    def initialise(self, *, origin: str, checkpoint: StoredCheckpoint) -> None:
        """Create the tables, the meta rows and the size-0 checkpoint in one transaction.

        :raises sqlite3.Error: the database already has tables, or the write failed.
        """
        db = sqlite_utils.Database(self._write_conn())
        with db.atomic():
            db.table("meta").create(
                {"key": str, "value": str}, pk="key", not_null={"value"}, strict=True
            )
            db.table("entries").create(
                {"index": int, "entry": bytes, "leaf_hash": bytes},
                pk="index",
                not_null={"entry", "leaf_hash"},
                strict=True,
            )
            db.execute(_CREATE_NODES)
            db.table("checkpoints").create(
                {"size": int, "root": bytes, "note": str, "time_ms": int},
                pk="size",
                not_null={"root", "note", "time_ms"},
                strict=True,
            )
            db.table("meta").insert_all(
                [
                    {"key": "format_version", "value": FORMAT_VERSION},
                    {"key": "origin", "value": origin},
                ]
            )
            db.execute(
                _INSERT_CHECKPOINT,
                (checkpoint.size, checkpoint.root, checkpoint.note, checkpoint.time_ms),
            )

    def meta(self, key: str) -> str | None:
        """The meta value under ``key``, or ``None``."""
        with self._reader() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # -- the one write -------------------------------------------------------------------------

    def commit(
        self,
        entries: Sequence[tuple[int, bytes, bytes]],
        nodes: Sequence[tuple[int, int, bytes]],
        checkpoint: StoredCheckpoint | None,
    ) -> None:
        """Write ``(index, entry, leaf_hash)`` rows, ``(level, index, hash)`` nodes and an
        optional checkpoint in ONE transaction; returns once it is durable.

        :raises sqlite3.Error: nothing was written (the transaction is rolled back).
        """
        conn = self._write_conn()
        if not self._group_view:
            conn.execute(_CREATE_GROUP_VIEW)
            conn.execute(_CREATE_GROUP_TRIGGER)
            self._group_view = True
        rows: list[tuple[object, ...]] = [(_TAG_ENTRY, *row, None) for row in entries]
        rows.extend((_TAG_NODE, *row, None) for row in nodes)
        if checkpoint is not None:
            rows.append(
                (
                    _TAG_CHECKPOINT,
                    checkpoint.size,
                    checkpoint.root,
                    checkpoint.note,
                    checkpoint.time_ms,
                )
            )
        # SQLite caps the parameters of one statement (32,766 by default, 999 before 3.32).
        per_statement = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _GROUP_COLUMNS
        if len(rows) <= per_statement:
            _insert_group(conn, rows)  # autocommit: the statement is the transaction
        else:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(rows), per_statement):
                    _insert_group(conn, rows[start : start + per_statement])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self._upper.remember(nodes)

    # -- reads ---------------------------------------------------------------------------------

    def get_node(self, level: int, index: int) -> bytes:
        """The stored hash of node ``(level, index)`` (the verifier's ``NodeReader``).

        Reads SQLite, never the in-memory copy, so a self-check sees what is on disk.

        :raises LogUnavailable: the node is not stored (``log.node_missing``) or SQLite failed.
        """
        with self._reader() as conn:
            return _Nodes(conn, _UpperLevels()).get_node(level, index)

    def load_upper_levels(self) -> None:
        """Copy the stored nodes of level >= 4 into memory for :meth:`nodes` (once, at start)."""
        with self._reader() as conn:
            self._upper.remember(conn.execute(_SELECT_UPPER_NODES, (_UPPER_FROM_LEVEL,)))

    @contextlib.contextmanager
    def nodes(self) -> Iterator[NodeReader]:
        """A ``NodeReader`` for one proof: one connection, upper levels from memory."""
        with self._reader() as conn:
            yield _Nodes(conn, self._upper)

    def level_from(self, level: int, start: int) -> list[tuple[int, bytes]]:
        """``(index, hash)`` of the nodes at ``level`` with index ``>= start``, ascending."""
        with self._reader() as conn:
            return list(conn.execute(_SELECT_LEVEL_FROM, (level, start)))

    def stored_size(self) -> int:
        """One past the highest stored entry index (0 when there is none)."""
        with self._reader() as conn:
            row = conn.execute('SELECT max("index") FROM entries').fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def count_entries(self) -> int:
        """The number of entry rows."""
        with self._reader() as conn:
            return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])

    def count_nodes(self) -> int:
        """The number of node rows."""
        with self._reader() as conn:
            return int(conn.execute("SELECT count(*) FROM nodes").fetchone()[0])

    def first_gap(self) -> int | None:
        """The lowest index missing below the highest stored one, or ``None`` (a full scan)."""
        with self._reader() as conn:
            rows = conn.execute('SELECT "index" FROM entries ORDER BY "index"')
            for expected, (index,) in enumerate(rows):
                if index != expected:
                    return expected
        return None

    def entry_rows(self, start: int, end: int) -> Iterator[tuple[int, bytes, bytes]]:
        """``(index, entry, leaf_hash)`` rows with ``start <= index < end``, streamed in order."""
        with self._reader() as conn:
            yield from conn.execute(_SELECT_ENTRIES, (start, end))

    def entries(self, start: int, end: int) -> list[bytes]:
        """The exact bytes of entries ``start <= index < end``, in order (missing rows skipped)."""
        with self._reader() as conn:
            return [row[0] for row in conn.execute(_SELECT_ENTRY_BYTES, (start, end))]

    def node_rows(self) -> Iterator[tuple[int, int, bytes]]:
        """Every ``(level, index, hash)`` row, in key order (for the full self-check)."""
        with self._reader() as conn:
            yield from conn.execute(
                'SELECT level, "index", hash FROM nodes ORDER BY level, "index"'
            )

    def checkpoints(self, max_size: int) -> list[StoredCheckpoint]:
        """Every stored checkpoint of size ``<= max_size``, ascending."""
        with self._reader() as conn:
            rows = conn.execute(_SELECT_CHECKPOINTS, (max_size,)).fetchall()
        return [StoredCheckpoint(*row) for row in rows]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The stored checkpoint of the largest size, or ``None``."""
        with self._reader() as conn:
            row = conn.execute(_SELECT_LATEST_CHECKPOINT).fetchone()
        return None if row is None else StoredCheckpoint(*row)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Store]:
        """A read view pinned to one moment: every read through it sees one committed state."""
        conn = _connect(self.path, read_only=True)
        try:
            conn.execute("BEGIN")
            # WAL pins the snapshot at the first read, so read once now.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            yield Store(self.path, read_only=True, pinned=conn)
        except sqlite3.Error as exc:
            raise LogUnavailable(f"log storage: {exc}", code="log.storage_failed") from exc
        finally:
            conn.close()


def open(
    path: Path,
    *,
    read_only: bool = False,
    wal_checkpoint_every_ms: int = WAL_CHECKPOINT_EVERY_MS,
    wal_limit_bytes: int = WAL_LIMIT_BYTES,
    wal_truncate_wait_ms: int = WAL_TRUNCATE_WAIT_MS,
) -> Store:
    """Open (creating the file with mode 0600 if absent) the log database at ``path``.

    A read-only store never creates the file and can be opened while a daemon writes; a
    writable one checkpoints its WAL in the background (the ``wal_`` options: module docstring).

    :raises LogUnavailable: ``log.not_found`` (read-only, no file) or ``log.storage_failed``.
    """
    path = Path(path)
    if read_only and not path.is_file():
        raise LogUnavailable(f"log storage: no database at {path}", code="log.not_found")
    try:
        if not read_only and not path.exists():
            # Create it 0600 before SQLite does, so the log (and its -wal, -shm) is private.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE))
        return Store(
            path,
            read_only=read_only,
            wal_checkpoint_every_ms=wal_checkpoint_every_ms,
            wal_limit_bytes=wal_limit_bytes,
            wal_truncate_wait_ms=wal_truncate_wait_ms,
        )
    except (sqlite3.Error, OSError) as exc:
        raise LogUnavailable(f"log storage: cannot open {path}: {exc}") from exc
