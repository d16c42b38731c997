"""Tampering with a stopped daemon's SQLite file: the offline verifier and the self-check see it.

One log is recorded through a real tallystickd with the real CLI (12 calls; checkpoints at
0, 5, 10 and, on shutdown, 12). Each case copies it, changes the database directly with
sqlite3 as an attacker with write access would, exports it with ``tallystick log export
--data-dir`` (which must copy what is stored, not repair it) and checks that ``tallystick log
verify --json`` exits 1 naming the kind of damage and the first bad index, and that the daemon
refuses to serve it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tallystick.daemon.config import load_config
from tallystick.daemon.errors import LogInconsistent
from tallystick.daemon.log import KEY_FILE, Log
from tallystick.daemon.server import Daemon
from tallystick.daemon.storage.sqlite import DB_FILENAME
from tallystick.verifier._cli import main
from tallystick.verifier.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from tallystick.verifier.keys import PrivateKey, load_private_key
from tallystick.verifier.logbundle import DamageKind
from tallystick.verifier.logentry import LogEntry
from tallystick.verifier.merkle import MerkleTree, hash_leaf

from .conftest import QUIET_CHECKPOINTS

ENTRIES = 12
CHECKPOINT_SIZES = [0, 5, 10, 12]
FORGED_ROOT = bytes([1]) * 32


def tallystick(*argv: str) -> tuple[int, str]:
    """``tallystick ARGV`` in-process: the exit code and standard output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def pristine() -> Iterator[Path]:
    """The data directory of a stopped daemon that recorded 12 calls through the CLI."""
    with tempfile.TemporaryDirectory(prefix="tsd-") as name:
        data_dir = Path(name) / "d"
        flags = {"data_dir": data_dir, "agents": {"alice": {}, "bob": {}}, **QUIET_CHECKPOINTS}
        daemon = Daemon.start(load_config(flags=flags, environ={}))
        shared = f"unix:{data_dir / 'tallystickd.sock'}"
        try:
            for n in range(ENTRIES):
                agent = ("alice", "bob")[n % 2]
                usage = ["--input-tokens", str(100 + n), "--output-tokens", str(n)]
                argv = ["--daemon", shared, "--agent-id", agent, "--model", "gpt-4o", *usage]
                assert tallystick("record", *argv) == (0, f"{n}\n")
                if n + 1 in (5, 10):
                    assert tallystick("log", "checkpoint", "--daemon", shared, "--refresh")[0] == 0
        finally:
            daemon.stop(grace=0)  # signs the final checkpoint, at 12
        yield data_dir


@pytest.fixture
def copy_of(pristine: Path) -> Iterator[Callable[[str], Path]]:
    """Fresh copies of the pristine data directory, in short paths (sockets fit)."""
    with tempfile.TemporaryDirectory(prefix="tsd-") as name:

        def copy(label: str) -> Path:
            target = Path(name) / label
            shutil.copytree(pristine, target, ignore=shutil.ignore_patterns("*.sock"))
            return target

        yield copy


# --- what an attacker does to the database --------------------------------------------------


def entry_bytes(conn: sqlite3.Connection, index: int) -> bytes:
    (raw,) = conn.execute('SELECT entry FROM entries WHERE "index" = ?', (index,)).fetchone()
    return bytes(raw)


def rewritten(raw: bytes, **changes: object) -> bytes:
    entry = LogEntry.from_bytes(raw)
    fields = {
        "index": entry.index,
        "prev": entry.prev,
        "kind": entry.kind,
        "time_ms": entry.time_ms,
        "agent": entry.agent,
        "body": entry.body,
    } | changes
    return LogEntry(**fields).to_bytes()


def store_entry(conn: sqlite3.Connection, index: int, raw: bytes) -> None:
    sql = 'UPDATE entries SET entry = ?, leaf_hash = ? WHERE "index" = ?'
    assert conn.execute(sql, (raw, hash_leaf(raw), index)).rowcount == 1


def edit_entry(conn: sqlite3.Connection, data_dir: Path) -> None:
    sql = 'UPDATE entries SET entry = ? WHERE "index" = 7'
    conn.execute(sql, (rewritten(entry_bytes(conn, 7), agent="mallory"),))


def garble_entry(conn: sqlite3.Connection, data_dir: Path) -> None:
    conn.execute('UPDATE entries SET entry = ? WHERE "index" = 7', (b'{"not": "an entry"}',))


def delete_entry(conn: sqlite3.Connection, data_dir: Path) -> None:
    assert conn.execute('DELETE FROM entries WHERE "index" = 7').rowcount == 1


def swap_entry_bytes(conn: sqlite3.Connection, data_dir: Path) -> None:
    six, seven = entry_bytes(conn, 6), entry_bytes(conn, 7)
    conn.execute('UPDATE entries SET entry = ? WHERE "index" = 6', (seven,))
    conn.execute('UPDATE entries SET entry = ? WHERE "index" = 7', (six,))


def swap_entry_indexes(conn: sqlite3.Connection, data_dir: Path) -> None:
    conn.execute('UPDATE entries SET "index" = -1 WHERE "index" = 6')
    conn.execute('UPDATE entries SET "index" = 6 WHERE "index" = 7')
    conn.execute('UPDATE entries SET "index" = 7 WHERE "index" = -1')


def swap_and_renumber(conn: sqlite3.Connection, data_dir: Path) -> None:
    """Swap entries 6 and 7 and rewrite their index fields, so each sits at its own index."""
    six, seven = entry_bytes(conn, 6), entry_bytes(conn, 7)
    store_entry(conn, 6, rewritten(seven, index=6))
    store_entry(conn, 7, rewritten(six, index=7))


def truncate_tail(conn: sqlite3.Connection, data_dir: Path) -> None:
    assert conn.execute('DELETE FROM entries WHERE "index" >= 10').rowcount == 2


def edit_consistently(conn: sqlite3.Connection, data_dir: Path) -> None:
    """Edit entry 7, then redo the hash chain, leaf hashes and every stored tree node."""
    rows = [entry_bytes(conn, index) for index in range(ENTRIES)]
    rows[7] = rewritten(rows[7], agent="mallory")
    for index in range(8, ENTRIES):
        rows[index] = rewritten(rows[index], prev=hash_leaf(rows[index - 1]))
    tree = MerkleTree()
    for index, raw in enumerate(rows):
        store_entry(conn, index, raw)
        tree.append(hash_leaf(raw))
    for level, index in conn.execute('SELECT level, "index" FROM nodes').fetchall():
        sql = 'UPDATE nodes SET hash = ? WHERE level = ? AND "index" = ?'
        conn.execute(sql, (tree.get_node(level, index), level, index))


def _forged_note(conn: sqlite3.Connection, key: PrivateKey, size: int) -> str:
    (origin,) = conn.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
    return sign_checkpoint(Checkpoint(origin, size, FORGED_ROOT), NoteSigner(origin, key))


def _add_checkpoint(conn: sqlite3.Connection, key: PrivateKey, size: int) -> None:
    """A second checkpoint row of ``size``: the table is rebuilt without its primary key."""
    note = _forged_note(conn, key, size)
    conn.executescript(
        "CREATE TABLE forked (size INTEGER, root BLOB, note TEXT, time_ms INTEGER) STRICT;"
        "INSERT INTO forked SELECT size, root, note, time_ms FROM checkpoints;"
        "DROP TABLE checkpoints; ALTER TABLE forked RENAME TO checkpoints;"
    )
    (time_ms,) = conn.execute("SELECT max(time_ms) FROM checkpoints").fetchone()
    sql = "INSERT INTO checkpoints (size, root, note, time_ms) VALUES (?, ?, ?, ?)"
    conn.execute(sql, (size, FORGED_ROOT, note, time_ms))


def fork_with_the_log_key(conn: sqlite3.Connection, data_dir: Path) -> None:
    _add_checkpoint(conn, load_private_key(data_dir / KEY_FILE), ENTRIES)


def fork_with_another_key(conn: sqlite3.Connection, data_dir: Path) -> None:
    _add_checkpoint(conn, PrivateKey.generate(), ENTRIES)


def fork_an_older_checkpoint(conn: sqlite3.Connection, data_dir: Path) -> None:
    """Replace the checkpoint of size 10 by one of another root, signed by the log key."""
    note = _forged_note(conn, load_private_key(data_dir / KEY_FILE), 10)
    sql = "UPDATE checkpoints SET note = ?, root = ? WHERE size = 10"
    assert conn.execute(sql, (note, FORGED_ROOT)).rowcount == 1


@dataclass(frozen=True)
class Tamper:
    """One attack, the damage ``log verify`` must report, and what the self-check says."""

    apply: Callable[[sqlite3.Connection, Path], None]
    kind: DamageKind
    index: int
    #: The full self-check's reason (a substring of its message).
    why: str
    #: The start-up (default) self-check's reason, where it words it differently.
    start_up_why: str | None = None

    @property
    def start_up_reason(self) -> str:
        return self.why if self.start_up_why is None else self.start_up_why


CASES = {
    "edit-entry": Tamper(edit_entry, DamageKind.CHAIN_BROKEN, 8, "entry 7: stored leaf hash"),
    "garble-entry": Tamper(
        garble_entry,
        DamageKind.ENTRY_MALFORMED,
        7,
        "entry 7: not a valid entry",
        "entry 7: stored leaf hash",
    ),
    "delete-entry": Tamper(delete_entry, DamageKind.INDEX_MISMATCH, 7, "entry 7 is missing"),
    "reorder-bytes": Tamper(
        swap_entry_bytes,
        DamageKind.INDEX_MISMATCH,
        6,
        "entry 6: stored under 6",
        "entry 6: stored leaf hash",
    ),
    "reorder-indexes": Tamper(
        swap_entry_indexes,
        DamageKind.INDEX_MISMATCH,
        6,
        "entry 6: stored under 6",
        "tree vs checkpoint",
    ),
    "reorder-renumbered": Tamper(
        swap_and_renumber, DamageKind.CHAIN_BROKEN, 6, "chain: entry 6", "tree vs checkpoint"
    ),
    "truncate-tail": Tamper(truncate_tail, DamageKind.TRUNCATED, 10, "a tree of 10 entries has 18"),
    "edit-consistently": Tamper(
        edit_consistently, DamageKind.ROOT_MISMATCH, 5, "tree vs checkpoint"
    ),
    "fork-log-key": Tamper(
        fork_with_the_log_key,
        DamageKind.FORK,
        12,
        "tree vs checkpoint",
        "two different rows (a fork)",
    ),
    "fork-other-key": Tamper(
        fork_with_another_key,
        DamageKind.WRONG_KEY,
        12,
        "no signature by a known key",
        "two different rows (a fork)",
    ),
    "fork-older-checkpoint": Tamper(
        fork_an_older_checkpoint,
        DamageKind.FORK,
        10,
        "tree vs checkpoint",
    ),
}


def tampered(copy_of: Callable[[str], Path], name: str) -> Path:
    data_dir = copy_of(name)
    with contextlib.closing(sqlite3.connect(data_dir / DB_FILENAME)) as conn, conn:
        CASES[name].apply(conn, data_dir)
    return data_dir


def open_error(data_dir: Path, *, full_check: bool = False) -> LogInconsistent | None:
    """Why ``Log.open`` refuses the log in ``data_dir``, or None if it opened (then closed) it."""
    try:
        log = Log.open(data_dir, full_check=full_check)
    except LogInconsistent as exc:
        return exc
    log.close()
    return None


# --- the tests ----------------------------------------------------------------------------


def test_the_untouched_log_verifies_and_opens(
    copy_of: Callable[[str], Path], tmp_path: Path
) -> None:
    data_dir = copy_of("untouched")
    with contextlib.closing(sqlite3.connect(data_dir / DB_FILENAME)) as conn:
        sizes = [size for (size,) in conn.execute("SELECT size FROM checkpoints ORDER BY size")]
    assert sizes == CHECKPOINT_SIZES
    bundle = tmp_path / "bundle.jsonl"
    assert tallystick("log", "export", "--data-dir", str(data_dir), "--out", str(bundle))[0] == 0
    code, out = tallystick(
        "log", "verify", str(bundle), "--log-key", str(data_dir / "log.pub"), "--json"
    )
    report = json.loads(out)
    assert (code, report["valid"], report["size"]) == (0, True, ENTRIES)
    assert report["checkpoints"] == len(CHECKPOINT_SIZES)
    assert open_error(data_dir, full_check=True) is None


@pytest.mark.parametrize("name", list(CASES))
def test_log_verify_names_the_damage_and_the_first_bad_index(
    copy_of: Callable[[str], Path], tmp_path: Path, name: str
) -> None:
    data_dir = tampered(copy_of, name)
    bundle = tmp_path / "bundle.jsonl"
    code, out = tallystick(
        "log", "export", "--data-dir", str(data_dir), "--out", str(bundle), "--json"
    )
    assert code == 0
    # The export copies what is stored, every row as it is, in index order: no repair.
    with contextlib.closing(sqlite3.connect(data_dir / DB_FILENAME)) as conn:
        stored = [
            bytes(raw) for (raw,) in conn.execute('SELECT entry FROM entries ORDER BY "index"')
        ]
        notes = [note for (note,) in conn.execute("SELECT note FROM checkpoints ORDER BY size")]
    lines = [json.loads(line) for line in bundle.read_text().splitlines()]
    assert json.loads(out)["size"] == lines[0]["size"] == len(stored)
    assert [base64.b64decode(line["entry"]) for line in lines[1 : 1 + len(stored)]] == stored
    assert sorted(line["checkpoint"] for line in lines[1 + len(stored) :]) == sorted(notes)

    code, out = tallystick(
        "log", "verify", str(bundle), "--log-key", str(data_dir / "log.pub"), "--json"
    )
    report = json.loads(out)
    assert (code, report["valid"]) == (1, False)
    case = CASES[name]
    assert (report["damage"]["kind"], report["damage"]["index"]) == (case.kind.value, case.index)


@pytest.mark.parametrize("name", list(CASES))
def test_the_full_self_check_refuses_the_log(copy_of: Callable[[str], Path], name: str) -> None:
    error = open_error(tampered(copy_of, name), full_check=True)
    assert error is not None, "Log.open(full_check=True) served a tampered log"
    assert error.code == "log.inconsistent"
    assert CASES[name].why in str(error)


@pytest.mark.parametrize("name", CASES)
def test_the_start_up_self_check_refuses_the_log(copy_of: Callable[[str], Path], name: str) -> None:
    error = open_error(tampered(copy_of, name))  # what tallystickd runs on start
    assert error is not None, "the start-up self-check served a tampered log"
    assert error.code == "log.inconsistent"
    assert CASES[name].start_up_reason in str(error)


@pytest.mark.parametrize("name", CASES)
def test_tallystickd_exits_1_saying_why(copy_of: Callable[[str], Path], name: str) -> None:
    data_dir = tampered(copy_of, name)
    done = subprocess.run(
        [sys.executable, "-m", "tallystick.daemon", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""  # never "ready"
    last = done.stderr.splitlines()[-1]
    assert last.startswith("tallystickd: log.inconsistent: ")
    assert CASES[name].start_up_reason in last
    assert not (data_dir / "tallystickd.sock").exists()
