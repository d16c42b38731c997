"""Pieces the log benchmarks share: the recorded call, percentiles, the baselines' storage.

``bench/record_store.py`` (the log core, in process) and ``bench/record.py`` (the real daemon,
client processes) both use these, so their rows measure the same entries and the same baseline.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Final

from tallystick.daemon.log import Log
from tallystick.verifier.logentry import EntryKind

#: The body of every benchmark call entry (a realistic ``call``: usage, cost, latency).
BODY: Final[dict[str, Any]] = {
    "provider": "openai",
    "model": "gpt-4.1-2025-04-14",
    "request_id": "req_0123456789",
    "usage": {"input_tokens": 1200, "cache_read_input_tokens": 1000, "output_tokens": 300},
    "cost": {"amount": "0.0042", "currency": "USD"},
    "latency_ms": 812,
}

#: Rows appended per transaction when a log is filled to a size before a measurement.
FILL_BATCH: Final = 5_000

_PLAIN_INSERT: Final = "INSERT INTO t (entry) VALUES (?)"


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def fill_log(
    data_dir: Path, size: int, agents: tuple[str, ...] = ("agent",), *, every: int = 100_000
) -> float:
    """Append call entries with ``Log.append_batch`` until the log holds ``size``; seconds taken.

    One agent per batch, in turn; a checkpoint every ``every`` entries, and one on close.
    """
    start = time.perf_counter()
    with Log.open(data_dir, checkpoint_every_entries=every) as log:
        turn = 0
        while log.size < size:
            count = min(FILL_BATCH, size - log.size)
            log.append_batch([(EntryKind.CALL, agents[turn % len(agents)], BODY)] * count)
            turn += 1
    return time.perf_counter() - start


def create_plain_sqlite(path: Path) -> None:
    """The plain-SQLite baseline's database: one table of blobs, WAL journal."""
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")  # persistent: every later connection uses it
    setup.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, entry BLOB NOT NULL)")
    setup.close()


def connect_plain_sqlite(path: Path) -> sqlite3.Connection:
    """A connection with the log's durability: autocommit, so each INSERT is one fsynced commit."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def insert_plain(conn: sqlite3.Connection, payload: bytes) -> None:
    """One durable INSERT, committed on its own."""
    conn.execute(_PLAIN_INSERT, (payload,))
