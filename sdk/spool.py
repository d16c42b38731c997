"""The durable local spool: usage records the sidecar could not take yet, oldest first.

One SQLite file per sidecar address in a private directory (mode 0700, the file 0600):
``DIR/spool-<16 hex of SHA-256(target)>.sqlite3``. A record is committed (``synchronous =
FULL``: fsynced) before :meth:`Spool.append` returns, and removed only by
:meth:`Spool.remove_through` after the sidecar acknowledged it, so no record is lost. The
window that remains is at-least-once: a crash between the sidecar's acknowledgement and the
delete, or an acknowledgement lost in transit, replays the record, and the log then holds it
twice (the proto has no idempotency key to deduplicate it).

A spool belongs to one address, because the address is the agent's identity: replaying a
record over another agent's socket would record it as that agent. The file names its target
and refuses another; a lock file keeps a second process (or client) from replaying it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from pydantic import ValidationError
from tallystick.verifier.logentry import CallBody

from .errors import SpoolError

__all__ = ["RejectedRecord", "Spool", "SpooledRecord", "default_spool_dir"]

_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rejected"
    " (id INTEGER PRIMARY KEY, body TEXT NOT NULL, code TEXT NOT NULL)",
)


def default_spool_dir() -> Path:
    """``$XDG_STATE_HOME/tallystick/spool``, or ``~/.local/state/tallystick/spool``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "tallystick" / "spool"


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """A pending record and its position (``id`` grows with every append, never reused)."""

    id: int
    call: CallBody


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A spooled record the sidecar refused on replay, kept with the refusal's code."""

    id: int
    body: str
    code: str


class Spool:
    """A durable FIFO of :class:`CallBody` for one sidecar target. Thread-safe.

    Build it with :meth:`open`; end it with :meth:`close`.
    """

    def __init__(self, connection: sqlite3.Connection, lock: IO[bytes], path: Path) -> None:
        self._db = connection
        self._lock_file = lock
        self._mutex = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, directory: Path, *, target: str) -> Spool:
        """Open (or create) the spool of ``target`` in ``directory``.

        :raises SpoolError: the directory or file cannot be created or read
            (``sdk.spool_unreadable``), another client holds it (``sdk.spool_locked``), or the
            file names another target (``sdk.spool_mismatch``).
        """
        digest = hashlib.sha256(target.encode("utf-8")).hexdigest()[:16]
        path = directory / f"spool-{digest}.sqlite3"
        try:
            directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            lock = (directory / f"spool-{digest}.lock").open("ab")
        except OSError as exc:
            raise SpoolError(f"spool {directory}: cannot create it: {exc.strerror}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.close()
            raise SpoolError(
                f"spool {path}: in use by another client", code="sdk.spool_locked"
            ) from exc
        try:
            return cls(_connect(path, target), lock, path)
        except BaseException:
            lock.close()
            raise

    def append(self, calls: Sequence[CallBody]) -> None:
        """Append ``calls`` in order, in one fsynced transaction.

        :raises SpoolError: the write failed (``sdk.spool_unreadable``); nothing was added.
        """
        rows = [(call.model_dump_json(),) for call in calls]
        with self._mutex, _failing("append"), self._db:
            self._db.executemany("INSERT INTO pending (body) VALUES (?)", rows)

    def head(self, limit: int) -> tuple[list[SpooledRecord], list[RejectedRecord]]:
        """Up to ``limit`` oldest pending records, and any row among them that no longer
        parses as a call (moved to the rejected table, code ``sdk.spool_corrupt``).

        :raises SpoolError: the read failed.
        """
        with self._mutex, _failing("read"):
            rows = self._db.execute(
                "SELECT id, body FROM pending ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
            records: list[SpooledRecord] = []
            corrupt: list[RejectedRecord] = []
            for row_id, body in rows:
                try:
                    records.append(SpooledRecord(row_id, CallBody.model_validate_json(body)))
                except ValidationError:
                    corrupt.append(RejectedRecord(row_id, body, "sdk.spool_corrupt"))
            if corrupt:
                with self._db:
                    self._move_to_rejected(corrupt)
        return (records, corrupt)

    def remove_through(self, last_id: int) -> None:
        """Delete every pending record up to and including ``last_id`` (acknowledged ones).

        :raises SpoolError: the delete failed (the records stay, and replay again).
        """
        with self._mutex, _failing("delete"), self._db:
            self._db.execute("DELETE FROM pending WHERE id <= ?", (last_id,))

    def reject(self, record: SpooledRecord, code: str) -> None:
        """Move ``record`` out of the queue into the rejected table, with the sidecar's code.

        :raises SpoolError: the write failed.
        """
        rejected = RejectedRecord(record.id, record.call.model_dump_json(), code)
        with self._mutex, _failing("reject"), self._db:
            self._move_to_rejected([rejected])

    def _move_to_rejected(self, rows: Sequence[RejectedRecord]) -> None:
        self._db.executemany(
            "INSERT INTO rejected (id, body, code) VALUES (?, ?, ?)",
            [(row.id, row.body, row.code) for row in rows],
        )
        self._db.executemany("DELETE FROM pending WHERE id = ?", [(row.id,) for row in rows])

    def rejected(self) -> list[RejectedRecord]:
        """The records refused on replay, oldest first.

        :raises SpoolError: the read failed.
        """
        with self._mutex, _failing("read"):
            rows = self._db.execute("SELECT id, body, code FROM rejected ORDER BY id").fetchall()
        return [RejectedRecord(row_id, body, code) for row_id, body, code in rows]

    def __len__(self) -> int:
        """The number of pending records."""
        with self._mutex, _failing("read"):
            (count,) = self._db.execute("SELECT count(*) FROM pending").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the file and release the lock (idempotent)."""
        with self._mutex:
            self._db.close()
            self._lock_file.close()


@contextlib.contextmanager
def _failing(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise SpoolError(f"spool: cannot {what}: {exc}") from exc


def _connect(path: Path, target: str) -> sqlite3.Connection:
    try:
        # Created 0600 before SQLite opens it; SQLite gives its journal the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE))
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise SpoolError(f"spool {path}: cannot open it: {exc}") from exc
    try:
        connection.execute("PRAGMA synchronous = FULL")
        connection.isolation_level = "DEFERRED"
        with connection:
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('target', ?)", (target,)
            )
            (stored,) = connection.execute("SELECT value FROM meta WHERE key = 'target'").fetchone()
    except sqlite3.Error as exc:
        connection.close()
        raise SpoolError(f"spool {path}: cannot read it: {exc}") from exc
    if stored != target:
        connection.close()
        raise SpoolError(
            f"spool {path}: holds records for {stored}, not {target}", code="sdk.spool_mismatch"
        )
    return connection
