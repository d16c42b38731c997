"""tallystickd end to end: durable records per second over the agents' Unix sockets, and proofs.

One run, on a fresh temporary data directory:

1. the log is filled to N entries (1e6; 1e5 with ``--quick``) with ``Log.append_batch`` in this
   process, BEFORE the daemon starts (the fill is not a measurement; its time is printed);
2. a real ``tallystickd`` subprocess (``python -m tallystick.daemon``) serves that directory
   with one socket per agent; P client PROCESSES (multiprocessing, spawn), each with T threads
   sharing one gRPC channel on its own agent's socket, call ``RecordCall`` (one record per
   RPC), ``RecordCalls`` (a batch per RPC) or ``RecordCallStream`` for fixed windows; a
   record counts once its RPC returned, i.e. once it is durable;
3. ``GetInclusionProof`` at tree size N over the shared socket, then the daemon is stopped
   (SIGTERM) and the log reopened here: ``Log.inclusion_proof`` at N, and a check that the
   log holds exactly N + every acknowledged record;
4. baselines, same disk, same client processes and threads: plain SQLite (WAL,
   ``synchronous=FULL``, one INSERT per commit, a connection per thread) and pymerkle's
   ``SqliteTree`` (single ``append_entry`` calls; its proofs on a tree bulk-filled to N).

Rates are the median of the windows of one run; p50/p99 are per RPC over all windows.
Ratios are ours / baseline: above 1 is better for rates, below 1 is better for times.

Run: ``.venv/bin/python bench/record.py [--quick]``. Not a test: numbers depend on the disk's
fsync latency and on the cores the run gets (the clients share them with the daemon).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import queue
import random
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from _common import (
    BODY,
    connect_plain_sqlite,
    create_plain_sqlite,
    fill_log,
    insert_plain,
    percentile,
)
from pymerkle import SqliteTree
from tallystick.daemon.log import Log
from tallystick.proto import ledger_pb2, ledger_pb2_grpc, log_pb2, log_pb2_grpc
from tallystick.verifier.merkle import verify_inclusion

#: Job kinds that record: unary, batched and streamed RPCs.
RECORD_KINDS = ("unary", "batch", "stream")
AGENTS = tuple(f"a{number}" for number in range(8))
#: Seconds between "go" and the first window: threads start, connections settle.
RAMP_S = 0.4


# -- what one client process runs ----------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One measured row: P processes x T threads calling ``kind`` for ``rounds`` windows."""

    name: str
    kind: str  # RECORD_KINDS, "proof", "sqlite", "pymerkle"
    processes: int
    threads: int
    targets: tuple[str, ...]  # gRPC addresses or file paths; process i uses i % len
    per_call: int = 1  # records per RPC (batch or stream length)
    tree_size: int = 0  # "proof": the tree size asked for
    payload: bytes = b""  # baselines: the bytes stored per record

    @property
    def clients(self) -> str:
        return f"{self.processes}x{self.threads}"


@dataclass
class Measured:
    """What one process (or, summed, one job) saw: per window, and every latency."""

    records: list[int]
    rpcs: list[int]
    latencies: array[float] = field(default_factory=lambda: array("d"))
    acked: int = 0  # records acknowledged at any time, warm-up and ramp included
    errors: int = 0
    first_error: str = ""

    def add(self, other: Measured) -> None:
        self.records = [a + b for a, b in zip(self.records, other.records, strict=True)]
        self.rpcs = [a + b for a, b in zip(self.rpcs, other.rpcs, strict=True)]
        self.latencies.extend(other.latencies)
        self.acked += other.acked
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error


def _call_record() -> ledger_pb2.CallRecord:
    return ledger_pb2.CallRecord(
        provider=BODY["provider"],
        model=BODY["model"],
        request_id=BODY["request_id"],
        usage=ledger_pb2.Usage(**BODY["usage"]),
        cost=ledger_pb2.Cost(**BODY["cost"]),
        latency_ms=BODY["latency_ms"],
    )


#: Makes one thread's call; a call returns how many records it got acknowledged.
CallFactory = Callable[[], Callable[[], int]]


def _record_calls(job: Job, channel: grpc.Channel) -> CallFactory:
    ledger = ledger_pb2_grpc.LedgerStub(channel)
    one = ledger_pb2.RecordCallRequest(call=_call_record())
    many = ledger_pb2.RecordCallsRequest(calls=[_call_record()] * job.per_call)

    def unary() -> int:
        ledger.RecordCall(one, timeout=60)
        return 1

    def batch() -> int:
        return len(ledger.RecordCalls(many, timeout=60).indexes)

    def stream() -> int:
        return len(ledger.RecordCallStream(iter([one] * job.per_call), timeout=60).indexes)

    chosen = {"unary": unary, "batch": batch, "stream": stream}[job.kind]
    return lambda: chosen


def _proof_calls(job: Job, channel: grpc.Channel, worker: int) -> CallFactory:
    log = log_pb2_grpc.LogStub(channel)
    size = job.tree_size
    answer = log.GetInclusionProof(
        log_pb2.GetInclusionProofRequest(leaf_index=size // 3, tree_size=size), timeout=60
    )
    # The rows time real proofs: check one against its root.
    verify_inclusion(
        leaf_index=size // 3,
        tree_size=size,
        leaf_hash=answer.leaf_hash,
        proof=list(answer.hashes),
        root_hash=answer.root_hash,
    )

    def make_prover() -> Callable[[], int]:
        rng = random.Random(worker * 1_000_003 + threading.get_ident())

        def prove() -> int:
            request = log_pb2.GetInclusionProofRequest(
                leaf_index=rng.randrange(size), tree_size=size
            )
            log.GetInclusionProof(request, timeout=60)
            return 0  # a proof records nothing

        return prove

    return make_prover


def _calls(job: Job, target: str, worker: int, opened: list[Any]) -> CallFactory:
    """The per-thread call of ``job`` against ``target``; what it opens is added to ``opened``."""
    if job.kind == "sqlite":

        def make_inserter() -> Callable[[], int]:
            conn = connect_plain_sqlite(Path(target))
            opened.append(conn)

            def insert() -> int:
                insert_plain(conn, job.payload)
                return 1

            return insert

        return make_inserter
    if job.kind == "pymerkle":
        tree = SqliteTree(target)  # shared by the threads: guarded by the tree's own lock
        opened.append(tree)

        def append() -> int:
            tree.append_entry(job.payload)
            return 1

        return lambda: append
    channel = grpc.insecure_channel(target)
    opened.append(channel)
    grpc.channel_ready_future(channel).result(timeout=30)
    if job.kind == "proof":
        return _proof_calls(job, channel, worker)
    return _record_calls(job, channel)


def _run_thread(
    call: Callable[[], int], start: float, end: float, window: float, out: Measured
) -> None:
    clock = time.monotonic
    while (began := clock()) < end:
        try:
            count = call()
        except Exception as exc:  # counted and reported; the row is then marked
            out.errors += 1
            out.first_error = out.first_error or repr(exc)[:300]
            continue
        done = clock()
        out.acked += count
        if start <= done < end:
            slot = int((done - start) / window)
            out.records[slot] += count
            out.rpcs[slot] += 1
            out.latencies.append(done - began)


def _run_job(
    worker: int, job: Job, rounds: int, jobs: mp.Queue[Any], results: mp.Queue[Any]
) -> Measured:
    opened: list[Any] = []
    try:
        return _measure_job(worker, job, rounds, jobs, results, opened)
    finally:
        for resource in opened:
            resource.close()


def _measure_job(
    worker: int,
    job: Job,
    rounds: int,
    jobs: mp.Queue[Any],
    results: mp.Queue[Any],
    opened: list[Any],
) -> Measured:
    factory = _calls(job, job.targets[worker % len(job.targets)], worker, opened)
    calls = [factory() for _ in range(job.threads)]
    warm = sum(call() for call in calls)  # connect, and fault in every code path
    results.put(("ready", worker, None))
    message = jobs.get(timeout=600)
    if message[0] != "go":
        raise RuntimeError(f"expected go, got {message!r}")
    _, start, window = message
    end = start + rounds * window
    outs = [Measured([0] * rounds, [0] * rounds) for _ in calls]
    threads = [
        threading.Thread(target=_run_thread, args=(call, start, end, window, out), daemon=True)
        for call, out in zip(calls, outs, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = Measured([0] * rounds, [0] * rounds, acked=warm)
    for out in outs:
        total.add(out)
    return total


def _client_main(worker: int, jobs: mp.Queue[Any], results: mp.Queue[Any]) -> None:
    """A client process: run jobs from ``jobs`` until None; report on ``results``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    parent = mp.parent_process()
    while True:
        try:
            message = jobs.get(timeout=2)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return  # the parent died without saying goodbye
            continue
        if message is None:
            return
        job, rounds = message
        try:
            results.put(("done", worker, _run_job(worker, job, rounds, jobs, results)))
        except BaseException:
            results.put(("error", worker, traceback.format_exc()))


# -- the parent: client processes, the daemon, the rows ------------------------------------


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process failed or hung)."""


@dataclass
class Row:
    """One printed row."""

    job: Job
    measured: Measured
    window: float

    @property
    def rate(self) -> float:
        return statistics.median(count / self.window for count in self.measured.records)

    @property
    def rpc_rate(self) -> float:
        return statistics.median(count / self.window for count in self.measured.rpcs)

    def latency(self, fraction: float) -> float:
        values = list(self.measured.latencies)
        return percentile(values, fraction) if values else float("nan")


class ClientPool:
    """Client processes started once (spawn: no gRPC state crosses a fork) and reused."""

    def __init__(self, count: int) -> None:
        context = mp.get_context("spawn")
        self._results: mp.Queue[Any] = context.Queue()
        self._jobs: list[mp.Queue[Any]] = [context.Queue() for _ in range(count)]
        self._processes = [
            context.Process(
                target=_client_main,
                args=(worker, self._jobs[worker], self._results),
                name=f"bench-client-{worker}",
                daemon=True,
            )
            for worker in range(count)
        ]
        for process in self._processes:
            process.start()

    def _collect(self, kind: str, count: int, timeout: float) -> dict[int, Any]:
        deadline = time.monotonic() + timeout
        found: dict[int, Any] = {}
        while len(found) < count:
            try:
                what, worker, value = self._results.get(
                    timeout=max(0.1, deadline - time.monotonic())
                )
            except queue.Empty:
                raise BenchError(f"client processes: no {kind!r} within {timeout:.0f} s") from None
            if what == "error":
                raise BenchError(f"client process {worker} failed:\n{value}")
            if what != kind:
                raise BenchError(f"client process {worker}: {what!r} while waiting for {kind!r}")
            found[worker] = value
        return found

    def run(self, job: Job, rounds: int, window: float) -> Row:
        if job.processes > len(self._processes):
            raise BenchError(
                f"{job.name}: {job.processes} processes, {len(self._processes)} started"
            )
        for worker in range(job.processes):
            self._jobs[worker].put((job, rounds))
        self._collect("ready", job.processes, timeout=120)
        start = time.monotonic() + RAMP_S
        for worker in range(job.processes):
            self._jobs[worker].put(("go", start, window))
        done = self._collect("done", job.processes, timeout=RAMP_S + rounds * window + 120)
        total = Measured([0] * rounds, [0] * rounds)
        for measured in done.values():
            total.add(measured)
        return Row(job, total, window)

    def close(self) -> None:
        for jobs in self._jobs:
            with contextlib.suppress(Exception):
                jobs.put(None)
        deadline = time.monotonic() + 5
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)


class DaemonProcess:
    """A ``python -m tallystick.daemon`` subprocess; :meth:`kill` is safe to call at any time."""

    def __init__(self, data_dir: Path, stderr_path: Path, *flags: str) -> None:
        self.data_dir = data_dir
        self._stderr_path = stderr_path
        self._flags = flags
        self.process: subprocess.Popen[str] | None = None
        self.addresses: dict[str, str] = {}
        self.started_s = 0.0

    def start(self, timeout: float = 120) -> None:
        command = [sys.executable, "-m", "tallystick.daemon", "--data-dir", str(self.data_dir)]
        started = time.perf_counter()
        with self._stderr_path.open("a") as stderr:
            self.process = subprocess.Popen(
                [*command, *self._flags],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None

        def read() -> None:
            for line in stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise BenchError(f"tallystickd: not ready within {timeout:.0f} s") from None
            if line is None:
                tail = self._stderr_path.read_text()[-2000:]
                raise BenchError(f"tallystickd exited {self.process.wait()}:\n{tail}")
            if line == "ready":
                break
            if line.startswith("listening: "):
                _, address, role = line.split(" ", 2)
                self.addresses[role.strip("()").removeprefix("agent ")] = address
        self.started_s = time.perf_counter() - started

    @property
    def shared(self) -> str:
        return self.addresses["shared, read-only"]

    def agent_addresses(self) -> tuple[str, ...]:
        return tuple(self.addresses[agent] for agent in AGENTS)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (drain, final checkpoint); kill after ``timeout``. Returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return -1 if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"tallystickd: still running {timeout:.0f} s after SIGTERM") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


PxT = tuple[int, int]  # client processes, threads per process


@dataclass(frozen=True)
class Plan:
    """Sizes and the grid of rows; ``--quick`` shrinks everything."""

    size: int
    rounds: int
    window: float
    batches: tuple[int, ...]  # records per RPC; 1 is RecordCall, more is RecordCalls
    clients: tuple[PxT, ...]  # every batch size runs with each of these
    streams: tuple[tuple[int, PxT], ...]  # RecordCallStream: length, clients
    workers: tuple[int, ...]  # further daemons with these --workers (the default is 16)
    workers_rows: tuple[tuple[int, PxT], ...]  # batch size, clients, on each of them
    in_process_proofs: int
    pymerkle_proofs: int
    pymerkle_seconds: float


FULL = Plan(
    size=1_000_000,
    rounds=3,
    window=2.0,
    batches=(1, 16, 32, 64, 256),
    clients=((1, 1), (2, 1), (4, 4)),
    streams=((64, (2, 1)), (64, (4, 4))),
    workers=(4, 64),
    workers_rows=((1, (4, 4)), (64, (2, 1))),
    in_process_proofs=5_000,
    pymerkle_proofs=300,
    pymerkle_seconds=15.0,
)
QUICK = Plan(
    size=100_000,
    rounds=3,
    window=0.5,
    batches=(1, 64),
    clients=((1, 1), (4, 4)),
    streams=((64, (4, 4)),),
    workers=(),
    workers_rows=(),
    in_process_proofs=1_000,
    pymerkle_proofs=50,
    pymerkle_seconds=3.0,
)


@dataclass
class Timing:
    """Per-operation times in seconds, and how many were taken."""

    p50: float
    p99: float
    count: int
    note: str = ""


def _timed(prove: Callable[[int], object], indices: Iterable[int]) -> Timing:
    """Time ``prove(index)`` for each index, one by one."""
    samples = []
    for index in indices:
        began = time.perf_counter()
        prove(index)
        samples.append(time.perf_counter() - began)
    return Timing(percentile(samples, 0.5), percentile(samples, 0.99), len(samples))


def _log_proofs(data_dir: Path, size: int, count: int) -> tuple[Timing, int, float]:
    """In-process ``Log.inclusion_proof`` at ``size``; also the log's size and reopen time."""
    began = time.perf_counter()
    with Log.open(data_dir) as log:
        reopened = time.perf_counter() - began
        rng = random.Random(7)
        indices = [rng.randrange(size) for _ in range(count)]
        log.inclusion_proof(indices[0], size)  # compile-time costs out of the first sample
        timing = _timed(lambda index: log.inclusion_proof(index, size), indices)
        return timing, log.size, reopened


def _pymerkle_proofs(path: Path, size: int, payload: bytes, count: int, budget: float) -> Timing:
    """pymerkle: bulk-fill a tree to ``size``, then proofs at ``size`` (the first one apart)."""
    with SqliteTree(str(path)) as tree:
        began = time.perf_counter()
        tree.append_entries(payload + number.to_bytes(8, "big") for number in range(size))
        filled = time.perf_counter() - began
        rng = random.Random(7)
        began = time.perf_counter()
        tree.prove_inclusion(rng.randrange(size) + 1, size)  # pymerkle counts from 1
        first = time.perf_counter() - began
        deadline = time.perf_counter() + budget

        def indices() -> Iterator[int]:
            for _ in range(count):
                if time.perf_counter() > deadline:
                    return
                yield rng.randrange(size) + 1

        timing = _timed(lambda index: tree.prove_inclusion(index, size), indices())
    timing.note = f"bulk fill {filled:.1f} s; first (cold cache) proof {first * 1e3:,.0f} ms"
    return timing


# -- output ---------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f}"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:10,.1f}"


def _ratio(ours: float, theirs: float | None) -> str:
    return f"{ours / theirs:8.2f}x" if theirs else "        -"


_RECORD_HEADER = (
    f"{'':<36} {'PxT':>5} {'rec/RPC':>7} {'records/s':>10} {'RPC/s':>8} "
    f"{'p50 ms':>8} {'p99 ms':>8} {'/plain':>9} {'/pymerkle':>9}"
)


def _record_line(row: Row, plain: dict[str, Row], pymerkle: Row | None) -> str:
    job = row.job
    base = plain.get(job.clients)
    errors = (
        f"  ({row.measured.errors} errors: {row.measured.first_error})"
        if row.measured.errors
        else ""
    )
    return (
        f"{job.name:<36} {job.clients:>5} {job.per_call:>7} {row.rate:>10,.0f} "
        f"{row.rpc_rate:>8,.0f} {_ms(row.latency(0.5))} {_ms(row.latency(0.99))} "
        f"{_ratio(row.rate, base.rate if base and base is not row else None)} "
        f"{_ratio(row.rate, pymerkle.rate if pymerkle and pymerkle is not row else None)}{errors}"
    )


def _machine() -> str:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs ({usable} usable), "
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
        f"grpcio {grpc.__version__}"
    )


def _record_name(kind: str, per_call: int) -> str:
    if kind == "unary":
        return "RecordCall"
    return f"{'RecordCalls' if kind == 'batch' else 'RecordCallStream'} x{per_call}"


@dataclass
class Report:
    """Everything measured, printed once at the end."""

    plan: Plan
    command: str
    machine: str = ""
    fill_s: float = 0.0
    daemon_start_s: dict[int, float] = field(default_factory=dict)
    records: list[Row] = field(default_factory=list)  # on the default daemon (--workers 16)
    by_workers: dict[int, list[Row]] = field(default_factory=dict)
    plain: dict[str, Row] = field(default_factory=dict)
    pymerkle: Row | None = None
    rpc_proofs: list[Row] = field(default_factory=list)
    log_proof: Timing | None = None
    pymerkle_proof: Timing | None = None
    reopen_s: float = 0.0
    acked: int = 0
    final_size: int = 0
    daemon_exit: list[int] = field(default_factory=list)

    def _ours(self) -> list[Row]:
        return [*self.records, *(row for rows in self.by_workers.values() for row in rows)]

    def print(self) -> None:
        plan = self.plan
        n = f"{plan.size:,}"
        print("tallystickd record benchmark (bench/record.py)")
        print(f"machine: {self.machine}")
        print(f"command: {self.command}")
        starts = ", ".join(f"--workers {w}: {s:.1f} s" for w, s in self.daemon_start_s.items())
        print(
            f"log: filled to {n} entries with Log.append_batch in {self.fill_s:.1f} s before the "
            f"daemon started; tallystickd start to ready on it: {starts}"
        )
        print(
            f"rows: {plan.rounds} windows x {plan.window:g} s after a {RAMP_S:g} s ramp; "
            "records/s, RPC/s = median window; p50/p99 per RPC over all windows;\n"
            "  PxT = client processes x threads (one gRPC channel per process, on its own "
            "agent's socket); /plain, /pymerkle = ours / baseline (same PxT; pymerkle 1x1)"
        )
        print()
        print("durable records, tallystickd --workers 16 (the default)")
        print(_RECORD_HEADER)
        for row in self.records:
            print(_record_line(row, self.plain, self.pymerkle))
        for workers, rows in self.by_workers.items():
            print(f"... tallystickd --workers {workers}")
            for row in rows:
                print(_record_line(row, self.plain, self.pymerkle))
        print("baselines: plain SQLite (WAL, synchronous=FULL, one INSERT per commit, a connection")
        print("  per thread); pymerkle SqliteTree.append_entry (its defaults: rollback journal,")
        print("  synchronous=FULL, one commit per append)")
        for row in [*self.plain.values(), *([self.pymerkle] if self.pymerkle else [])]:
            print(_record_line(row, self.plain, self.pymerkle))
        print()
        self._print_proofs()
        print()
        present = "yes" if self.final_size == plan.size + self.acked else "NO"
        print(
            f"after SIGTERM (exit codes {self.daemon_exit}): log reopened (self-check) in "
            f"{self.reopen_s * 1e3:,.0f} ms; size {self.final_size:,} = {n} + "
            f"{self.acked:,} acknowledged records: {present}"
        )
        self._print_knobs()
        self._print_targets()

    def _print_proofs(self) -> None:
        print(f"inclusion proofs at tree size {self.plan.size:,} (random leaves)")
        print(f"{'':<52} {'p50 us':>10} {'p99 us':>10} {'proofs/s':>10} {'/pymerkle p50':>14}")
        theirs = self.pymerkle_proof.p50 if self.pymerkle_proof else None
        if self.log_proof:
            proof = self.log_proof
            print(
                f"{'Log.inclusion_proof, in process':<52} {_us(proof.p50)} {_us(proof.p99)} "
                f"{1 / proof.p50:>10,.0f} {_ratio(proof.p50, theirs):>14}"
            )
        for row in self.rpc_proofs:
            label = f"GetInclusionProof RPC, {row.job.clients} clients (shared socket)"
            print(
                f"{label:<52} {_us(row.latency(0.5))} {_us(row.latency(0.99))} "
                f"{row.rpc_rate:>10,.0f} {_ratio(row.latency(0.5), theirs):>14}"
            )
        if self.pymerkle_proof:
            proof = self.pymerkle_proof
            label = f"pymerkle SqliteTree.prove_inclusion, {proof.count} proofs"
            print(f"{label:<52} {_us(proof.p50)} {_us(proof.p99)} {1 / proof.p50:>10,.0f}")
            print(f"  pymerkle: {proof.note}")

    def _print_knobs(self) -> None:
        rate = {(row.job.kind, row.job.per_call, row.job.clients): row.rate for row in self.records}
        plan = self.plan
        print("knobs (records/s):")
        first, last = plan.batches[0], plan.batches[-1]
        parts = []
        for p, t in plan.clients:
            clients = f"{p}x{t}"
            low = rate[("unary" if first == 1 else "batch", first, clients)]
            high = rate[("batch", last, clients)]
            parts.append(f"{clients} {low:,.0f} -> {high:,.0f} ({high / low:.1f}x)")
        print(f"  batching, {first} -> {last} records per RPC: " + "; ".join(parts))
        for batch in plan.batches:
            kind = "unary" if batch == 1 else "batch"
            values = " / ".join(f"{rate[(kind, batch, f'{p}x{t}')]:,.0f}" for p, t in plan.clients)
            names = " / ".join(f"{p}x{t}" for p, t in plan.clients)
            print(f"  clients {names}, {_record_name(kind, batch)}: {values}")
        for batch, (p, t) in plan.workers_rows:
            kind = "unary" if batch == 1 else "batch"
            clients = f"{p}x{t}"
            default = rate.get((kind, batch, clients))
            by_workers = {} if default is None else {16: default}
            for workers, rows in self.by_workers.items():
                by_workers.update(
                    (workers, row.rate)
                    for row in rows
                    if (row.job.kind, row.job.per_call, row.job.clients) == (kind, batch, clients)
                )
            shown = " / ".join(f"{w}: {by_workers[w]:,.0f}" for w in sorted(by_workers))
            print(f"  daemon --workers, {_record_name(kind, batch)} {clients}: {shown}")

    def _print_targets(self) -> None:
        ours = self._ours()
        good = [
            row
            for row in ours
            if row.rate >= 10_000 and row.latency(0.99) < 0.010 and not row.measured.errors
        ]
        print("targets on 2 cores: >= 10,000 durable records/s with p99 < 10 ms; proofs < 100 us")
        if good:
            top = max(good, key=lambda row: row.rate)
            print(
                f"  records: MET by {len(good)} of {len(ours)} rows; best {top.job.name} "
                f"{top.job.clients}: {top.rate:,.0f}/s, p99 {top.latency(0.99) * 1e3:.2f} ms"
            )
        else:
            print("  records: NOT MET by any row")
        fast = max(ours, key=lambda row: row.rate)
        print(
            f"  highest rate: {fast.job.name} {fast.job.clients}: {fast.rate:,.0f}/s "
            f"(p99 {fast.latency(0.99) * 1e3:.2f} ms)"
        )
        quick = [row for row in ours if row.latency(0.99) < 0.010]
        if quick:
            top = max(quick, key=lambda row: row.rate)
            print(
                f"  highest rate with p99 < 10 ms: {top.job.name} {top.job.clients}: "
                f"{top.rate:,.0f}/s (p99 {top.latency(0.99) * 1e3:.2f} ms)"
            )
        unary = [row for row in ours if row.job.kind == "unary"]
        if unary:
            top = max(unary, key=lambda row: row.rate)
            print(
                f"  one record per RPC at best: {top.rate:,.0f}/s ({top.job.clients}, "
                f"p99 {top.latency(0.99) * 1e3:.2f} ms)"
            )
        if self.log_proof:
            verdict = "MET" if self.log_proof.p50 < 100e-6 else "NOT MET"
            print(
                f"  proofs, Log.inclusion_proof in process: {verdict} at the median "
                f"(p50 {self.log_proof.p50 * 1e6:.1f} us, p99 {self.log_proof.p99 * 1e6:.1f} us)"
            )
        for row in self.rpc_proofs[:1]:
            verdict = "MET" if row.latency(0.5) < 100e-6 else "NOT MET"
            print(
                f"  proofs over gRPC, round trip included: {verdict} "
                f"(p50 {row.latency(0.5) * 1e6:.0f} us)"
            )


# -- the run --------------------------------------------------------------------------------


def _daemon_flags(workers: int) -> tuple[str, ...]:
    agents = [flag for agent in AGENTS for flag in ("--agent", agent)]
    return (*agents, "--workers", str(workers), "--log-level", "warning")


def _first_entry(data_dir: Path) -> bytes:
    uri = f"file:{data_dir / 'tallystick.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        (entry,) = conn.execute('SELECT entry FROM entries WHERE "index" = 0').fetchone()
    return bytes(entry)


def _record_job(kind: str, per_call: int, clients: PxT, agents: tuple[str, ...]) -> Job:
    p, t = clients
    return Job(_record_name(kind, per_call), kind, p, t, agents, per_call=per_call)


def run(plan: Plan, root: Path, report: Report) -> None:
    report.machine = _machine()
    grid = [*plan.clients, *(c for _, c in plan.streams), *(c for _, c in plan.workers_rows)]
    pool = ClientPool(max(p for p, _ in grid))  # they start (import gRPC) while the log fills
    daemons: list[DaemonProcess] = []
    try:
        data_dir = root / "d"
        report.fill_s = fill_log(data_dir, plan.size, AGENTS)
        payload = _first_entry(data_dir)

        def measure(job: Job) -> Row:
            print(f"  {job.name} {job.clients} ...", file=sys.stderr, flush=True)
            row = pool.run(job, plan.rounds, plan.window)
            if job.kind in RECORD_KINDS:
                report.acked += row.measured.acked
            return row

        def serve(workers: int) -> DaemonProcess:
            daemon = DaemonProcess(data_dir, root / "tallystickd.log", *_daemon_flags(workers))
            daemons.append(daemon)
            daemon.start()
            report.daemon_start_s[workers] = daemon.started_s
            return daemon

        daemon = serve(16)
        agents = daemon.agent_addresses()
        for batch in plan.batches:
            for clients in plan.clients:
                kind = "unary" if batch == 1 else "batch"
                report.records.append(measure(_record_job(kind, batch, clients, agents)))
        for length, clients in plan.streams:
            report.records.append(measure(_record_job("stream", length, clients, agents)))
        size, shared = plan.size, (daemon.shared,)
        for p in (1, 4):
            job = Job("GetInclusionProof", "proof", p, 1, shared, tree_size=size)
            report.rpc_proofs.append(measure(job))
        report.daemon_exit.append(daemon.stop())
        for workers in plan.workers:
            daemon = serve(workers)
            agents = daemon.agent_addresses()
            report.by_workers[workers] = [
                measure(_record_job("unary" if batch == 1 else "batch", batch, clients, agents))
                for batch, clients in plan.workers_rows
            ]
            report.daemon_exit.append(daemon.stop())

        configs = {row.job.clients: (row.job.processes, row.job.threads) for row in report._ours()}
        for name, (p, t) in sorted(configs.items()):
            path = root / f"plain-{name}.sqlite3"
            create_plain_sqlite(path)
            job = Job("plain SQLite INSERT+commit", "sqlite", p, t, (str(path),), payload=payload)
            report.plain[name] = measure(job)
        path = root / "pymerkle-appends.db"
        job = Job("pymerkle append_entry", "pymerkle", 1, 1, (str(path),), payload=payload)
        report.pymerkle = measure(job)

        report.log_proof, report.final_size, report.reopen_s = _log_proofs(
            data_dir, size, plan.in_process_proofs
        )
        report.pymerkle_proof = _pymerkle_proofs(
            root / "pymerkle-proofs.db", size, payload, plan.pymerkle_proofs, plan.pymerkle_seconds
        )
    finally:
        for daemon in daemons:
            daemon.kill()
        pool.close()


def _stop_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise BenchError(f"stopped by {signal.Signals(signum).name}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1e5 entries, short windows (~30 s)")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="S",
        help="abort (killing the daemon and clients) after S seconds; default 900, quick 180",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    limit = args.time_limit or (180 if args.quick else 900)
    report = Report(plan, shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])))
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGALRM, _stop_on_signal)
    signal.alarm(max(1, int(limit)))
    root = Path(tempfile.mkdtemp(prefix="tsb-"))  # short: Unix socket paths fit 107 bytes
    began = time.perf_counter()
    try:
        run(plan, root, report)
    finally:
        signal.alarm(0)
        shutil.rmtree(root, ignore_errors=True)
    report.print()
    print(f"total {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
