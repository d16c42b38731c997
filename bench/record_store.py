"""The log core alone (no gRPC): durable appends per second from threads, and proof times.

Rows, each on a fresh data directory under a temporary folder:

- ``Log.append`` from T threads (group commit): appends/s and p50/p99 latency per append;
- baseline: plain SQLite, one durable INSERT per transaction (WAL, ``synchronous=FULL``, the
  same durability), from the same number of threads;
- baseline: pymerkle's ``SqliteTree`` with single appends, and its inclusion proof time;
- ``Log.inclusion_proof`` / ``consistency_proof`` / start-up self-check at sizes 1e5 and 1e6
  (the log is filled with ``append_batch``, then reopened).

Run: ``.venv/bin/python bench/record_store.py [--quick]``. Not a test: numbers depend on the
disk's fsync latency and on the cores the run gets.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _common import (
    BODY,
    connect_plain_sqlite,
    create_plain_sqlite,
    fill_log,
    insert_plain,
    percentile,
)
from tallystick.daemon.log import Log
from tallystick.verifier.logentry import EntryKind


def threaded(
    threads: int, per_thread: int, call: Callable[[], object]
) -> tuple[float, list[float]]:
    """Run ``call`` per_thread times on each of ``threads`` threads: (ops/s, latencies in s)."""
    latencies: list[float] = []

    def work() -> None:
        mine = []
        for _ in range(per_thread):
            start = time.perf_counter()
            call()
            mine.append(time.perf_counter() - start)
        latencies.extend(mine)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * per_thread / (time.perf_counter() - start), latencies


def row(name: str, rate: float, latencies: list[float]) -> None:
    print(
        f"{name:<44} {rate:>10,.0f}/s   p50 {percentile(latencies, 0.5) * 1e3:6.2f} ms"
        f"   p99 {percentile(latencies, 0.99) * 1e3:6.2f} ms"
    )


def bench_log_appends(root: Path, threads: int, per_thread: int) -> None:
    with Log.open(root / f"log-{threads}") as log:
        threaded(threads, 50, lambda: log.append(EntryKind.CALL, "agent", BODY))  # warm up
        rates, latencies = [], []
        for _ in range(3):
            rate, lat = threaded(
                threads, per_thread, lambda: log.append(EntryKind.CALL, "agent", BODY)
            )
            rates.append(rate)
            latencies.extend(lat)
    row(f"Log.append, {threads} threads (median of 3)", statistics.median(rates), latencies)


def bench_plain_sqlite(root: Path, threads: int, per_thread: int) -> None:
    path = root / f"plain-{threads}.sqlite3"
    create_plain_sqlite(path)
    local = threading.local()
    lock = threading.Lock()
    payload = os.urandom(330)

    def insert() -> None:
        if not hasattr(local, "conn"):
            local.conn = connect_plain_sqlite(path)
        with lock:  # one writer at a time, as SQLite allows; each insert is its own commit
            insert_plain(local.conn, payload)

    rate, latencies = threaded(threads, per_thread, insert)
    row(f"plain SQLite, 1 insert/commit, {threads} threads", rate, latencies)


def bench_pymerkle(root: Path, appends: int) -> None:
    try:
        from pymerkle import SqliteTree
    except ImportError:
        print("pymerkle not installed: baseline skipped")
        return
    tree = SqliteTree(str(root / "pymerkle.db"))
    rate, latencies = threaded(1, appends, lambda: tree.append_entry(os.urandom(330)))
    row("pymerkle SqliteTree.append_entry, 1 thread", rate, latencies)
    size = tree.get_size()
    indices = [random.randrange(1, size + 1) for _ in range(200)]  # pymerkle counts from 1
    start = time.perf_counter()
    for index in indices:
        tree.prove_inclusion(index, size)
    per_proof = (time.perf_counter() - start) / len(indices)
    print(f"{'pymerkle prove_inclusion at ' + str(size):<44} {per_proof * 1e6:>10,.1f} µs")
    tree.close()


def bench_proofs(root: Path, size: int) -> None:
    data_dir = root / f"proofs-{size}"
    filled = fill_log(data_dir, size)
    start = time.perf_counter()
    log = Log.open(data_dir)
    opened = time.perf_counter() - start
    indices = [random.randrange(size) for _ in range(5_000)]
    timings = {}
    for name, call in (
        ("inclusion_proof(i, n)", lambda i: log.inclusion_proof(i, size)),
        ("consistency_proof(m, n)", lambda i: log.consistency_proof(max(1, i), size)),
        ("inclusion_proof(i/2, i) (historical)", lambda i: log.inclusion_proof(i // 2, max(1, i))),
    ):
        start = time.perf_counter()
        for index in indices:
            call(index)
        timings[name] = (time.perf_counter() - start) / len(indices)
    log.close()
    print(f"n = {size:,}: filled in {filled:.1f} s, reopened (self-check) in {opened * 1e3:.0f} ms")
    for name, seconds in timings.items():
        print(f"  {name:<42} {seconds * 1e6:>10,.1f} µs")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer appends; proofs at 1e5 only")
    args = parser.parse_args(argv)
    per_thread = 200 if args.quick else 1_000
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    versions = f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}"
    print(f"{versions}, {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory(prefix="tallystick-bench-") as name:
        root = Path(name)
        for threads in (8, 32, 64):
            bench_log_appends(root, threads, per_thread)
        for threads in (1, 32):
            bench_plain_sqlite(root, threads, per_thread // 2)
        bench_pymerkle(root, 500 if args.quick else 2_000)
        for size in sizes:
            bench_proofs(root, size)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
