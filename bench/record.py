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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from _common import (
    BODY,
    connect_plain_sqlite,
    create_plain_sqlite,
    fill_log,
    insert_plain,
    percentile,
)
from tallystick.daemon.log import Log

#: Unary, batched and streamed record RPCs; the proof RPC; the two baselines.
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


def _call_record() -> Any:
    from tallystick.daemon._proto import ledger_pb2

    return ledger_pb2.CallRecord(
        provider=BODY["provider"],
        model=BODY["model"],
        request_id=BODY["request_id"],
        usage=ledger_pb2.Usage(**BODY["usage"]),
        cost=ledger_pb2.Cost(**BODY["cost"]),
        latency_ms=BODY["latency_ms"],
    )


def _grpc_calls(job: Job, target: str, worker: int) -> tuple[Callable[[], Callable[[], int]], Any]:
    """A factory of per-thread calls (each returns the records it acknowledged), the channel."""
    import grpc
    from tallystick.daemon._proto import ledger_pb2, ledger_pb2_grpc, log_pb2, log_pb2_grpc
    from tallystick.verifier.merkle import verify_inclusion

    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=30)
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

    if job.kind != "proof":
        chosen = {"unary": unary, "batch": batch, "stream": stream}[job.kind]
        return lambda: chosen, channel

    log = log_pb2_grpc.LogStub(channel)
    size = job.tree_size
    answer = log.GetInclusionProof(
        log_pb2.GetInclusionProofRequest(leaf_index=size // 3, tree_size=size), timeout=60
    )
    # The rows below time real proofs: check one against its root.
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

    return make_prover, channel


def _baseline_calls(job: Job, target: str) -> tuple[Callable[[], Callable[[], int]], Any]:
    path = Path(target)
    if job.kind == "sqlite":

        def make_inserter() -> Callable[[], int]:
            conn = connect_plain_sqlite(path)

            def insert() -> int:
                insert_plain(conn, job.payload)
                return 1

            return insert

        return make_inserter, None
    from pymerkle import SqliteTree

    tree = SqliteTree(str(path))  # shared by the threads: guarded by the tree's own lock

    def make_appender() -> Callable[[], int]:
        def append() -> int:
            tree.append_entry(job.payload)
            return 1

        return append

    return make_appender, tree


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
    target = job.targets[worker % len(job.targets)]
    if job.kind in ("sqlite", "pymerkle"):
        factory, resource = _baseline_calls(job, target)
    else:
        factory, resource = _grpc_calls(job, target, worker)
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
    if resource is not None:
        resource.close()
    return total


def _client_main(worker: int, jobs: mp.Queue[Any], results: mp.Queue[Any]) -> None:
    """A client process: run jobs from ``jobs`` until None; report on ``results``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    while (message := jobs.get()) is not None:
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


class Clients:
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


@dataclass(frozen=True)
class Plan:
    """Sizes and the grid of rows; ``--quick`` shrinks everything."""

    size: int
    rounds: int
    window: float
    main_clients: tuple[int, int]
    batches: tuple[int, ...]
    client_grid: tuple[tuple[int, int], ...]  # extra P x T rows for RecordCall and batch 16
    workers_grid: tuple[int, ...]  # extra daemons with these --workers
    in_process_proofs: int
    pymerkle_proofs: int
    pymerkle_seconds: float


FULL = Plan(
    size=1_000_000,
    rounds=3,
    window=2.0,
    main_clients=(4, 4),
    batches=(16, 64, 256),
    client_grid=((1, 1), (2, 4), (8, 4), (4, 16)),
    workers_grid=(4, 64),
    in_process_proofs=5_000,
    pymerkle_proofs=300,
    pymerkle_seconds=15.0,
)
QUICK = Plan(
    size=100_000,
    rounds=3,
    window=0.5,
    main_clients=(4, 4),
    batches=(16, 64),
    client_grid=((1, 1),),
    workers_grid=(),
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


def _timed(calls: Iterator[Callable[[], object]]) -> Timing:
    samples = []
    for call in calls:
        began = time.perf_counter()
        call()
        samples.append(time.perf_counter() - began)
    return Timing(percentile(samples, 0.5), percentile(samples, 0.99), len(samples))


def _log_proofs(data_dir: Path, size: int, count: int) -> tuple[Timing, int, float]:
    """In-process ``Log.inclusion_proof`` at ``size``; also the log's size and reopen time."""
    began = time.perf_counter()
    with Log.open(data_dir) as log:
        reopened = time.perf_counter() - began
        rng = random.Random(7)
        indices = [rng.randrange(size) for _ in range(count)]
        log.inclusion_proof(indices[0], size)  # the first read of each page is not the point
        timing = _timed((lambda index=index: log.inclusion_proof(index, size)) for index in indices)
        return timing, log.size, reopened


def _pymerkle_proofs(path: Path, size: int, payload: bytes, count: int, budget: float) -> Timing:
    """pymerkle: bulk-fill a tree to ``size``, then proofs at ``size`` (the first one apart)."""
    from pymerkle import SqliteTree

    with SqliteTree(str(path)) as tree:
        began = time.perf_counter()
        tree.append_entries(payload + number.to_bytes(8, "big") for number in range(size))
        filled = time.perf_counter() - began
        rng = random.Random(7)
        began = time.perf_counter()
        tree.prove_inclusion(rng.randrange(size) + 1, size)  # pymerkle counts from 1
        first = time.perf_counter() - began
        deadline = time.perf_counter() + budget

        def proofs() -> Iterator[Callable[[], object]]:
            for _ in range(count):
                if time.perf_counter() > deadline:
                    return
                index = rng.randrange(size) + 1
                yield lambda index=index: tree.prove_inclusion(index, size)

        timing = _timed(proofs())
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
    f"{'':<40} {'PxT':>5} {'rec/RPC':>7} {'records/s':>10} {'RPC/s':>8} "
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
        f"{job.name:<40} {job.clients:>5} {job.per_call:>7} {row.rate:>10,.0f} "
        f"{row.rpc_rate:>8,.0f} {_ms(row.latency(0.5))} {_ms(row.latency(0.99))} "
        f"{_ratio(row.rate, base.rate if base and base is not row else None)} "
        f"{_ratio(row.rate, pymerkle.rate if pymerkle and pymerkle is not row else None)}{errors}"
    )


def _machine() -> str:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    import grpc

    return (
        f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs "
        f"({usable} usable), python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
        f"grpcio {grpc.__version__}"
    )


@dataclass
class Report:
    """Everything measured, printed once at the end."""

    plan: Plan
    command: str
    machine: str = ""
    fill_s: float = 0.0
    daemon_start_s: dict[int, float] = field(default_factory=dict)
    records: list[Row] = field(default_factory=list)
    knobs: list[Row] = field(default_factory=list)
    plain: dict[str, Row] = field(default_factory=dict)
    pymerkle: Row | None = None
    rpc_proofs: list[Row] = field(default_factory=list)
    log_proof: Timing | None = None
    pymerkle_proof: Timing | None = None
    reopen_s: float = 0.0
    acked: int = 0
    final_size: int = 0
    daemon_exit: list[int] = field(default_factory=list)

    def print(self) -> None:
        plan = self.plan
        n = f"{plan.size:,}"
        print("tallystickd record benchmark (bench/record.py)")
        print(f"machine: {self.machine}")
        print(f"command: {self.command}")
        starts = ", ".join(f"--workers {w}: {s:.1f} s" for w, s in self.daemon_start_s.items())
        print(
            f"log: filled to {n} entries with Log.append_batch ({self.fill_s:.1f} s, before the "
            f"daemon started); tallystickd start to ready on it: {starts}"
        )
        print(
            f"each row: {plan.rounds} windows x {plan.window:g} s after a {RAMP_S:g} s ramp; "
            "records/s and RPC/s = median window; p50/p99 per RPC over all windows; "
            "PxT = client processes x threads (one gRPC channel per process, own agent socket)"
        )
        print()
        print("durable records, daemon --workers 16 (default)")
        print(_RECORD_HEADER)
        for row in self.records:
            print(_record_line(row, self.plain, self.pymerkle))
        print()
        print("knobs: client count and daemon worker threads")
        print(_RECORD_HEADER)
        for row in self.knobs:
            print(_record_line(row, self.plain, self.pymerkle))
        print()
        print("baselines (same disk, client processes x threads)")
        print(_RECORD_HEADER)
        for row in [*self.plain.values(), *([self.pymerkle] if self.pymerkle else [])]:
            print(_record_line(row, self.plain, self.pymerkle))
        print()
        print(f"inclusion proofs at tree size {n}")
        print(f"{'':<52} {'p50 us':>10} {'p99 us':>10} {'proofs/s':>10} {'/pymerkle p50':>14}")
        theirs = self.pymerkle_proof.p50 if self.pymerkle_proof else None
        if self.log_proof:
            proof = self.log_proof
            print(
                f"{'Log.inclusion_proof, in process':<52} {_us(proof.p50)} {_us(proof.p99)} "
                f"{1 / proof.p50:>10,.0f} {_ratio(proof.p50, theirs):>14}"
            )
        for row in self.rpc_proofs:
            label = f"GetInclusionProof RPC, {row.job.clients} clients"
            print(
                f"{label:<52} {_us(row.latency(0.5))} {_us(row.latency(0.99))} "
                f"{row.rpc_rate:>10,.0f} {_ratio(row.latency(0.5), theirs):>14}"
            )
        if self.pymerkle_proof:
            proof = self.pymerkle_proof
            label = f"pymerkle SqliteTree.prove_inclusion ({proof.count} proofs)"
            print(f"{label:<52} {_us(proof.p50)} {_us(proof.p99)} {1 / proof.p50:>10,.0f}")
            print(f"  pymerkle: {proof.note}")
        print()
        present = "yes" if self.final_size == plan.size + self.acked else "NO"
        print(
            f"after SIGTERM (exit codes {self.daemon_exit}): log reopened (self-check) in "
            f"{self.reopen_s * 1e3:,.0f} ms, size {self.final_size:,} = {n} + "
            f"{self.acked:,} acknowledged records: {present}"
        )
        self._targets()

    def _targets(self) -> None:
        ours = [*self.records, *self.knobs]
        good = [
            row
            for row in ours
            if row.rate >= 10_000 and row.latency(0.99) < 0.010 and not row.measured.errors
        ]
        best = max(ours, key=lambda row: row.rate)
        unary = [row for row in ours if row.job.kind == "unary"]
        print("targets (2 cores: >= 10,000 durable records/s with p99 < 10 ms; proofs < 100 us)")
        if good:
            top = max(good, key=lambda row: row.rate)
            print(
                f"  records: MET by {len(good)} of {len(ours)} rows; best {top.job.name} "
                f"{top.job.clients}: {top.rate:,.0f}/s, p99 {top.latency(0.99) * 1e3:.2f} ms"
            )
        else:
            print(
                f"  records: NOT MET; best {best.job.name} {best.job.clients}: {best.rate:,.0f}/s,"
                f" p99 {best.latency(0.99) * 1e3:.2f} ms"
            )
        if unary:
            top = max(unary, key=lambda row: row.rate)
            print(
                f"  one record per RPC at best: {top.rate:,.0f}/s ({top.job.clients}, "
                f"p99 {top.latency(0.99) * 1e3:.2f} ms)"
            )
        if self.log_proof:
            verdict = (
                "MET"
                if self.log_proof.p99 < 100e-6
                else ("MET at p50" if self.log_proof.p50 < 100e-6 else "NOT MET")
            )
            print(
                f"  proofs in process: {verdict} (p50 {self.log_proof.p50 * 1e6:.1f} us, "
                f"p99 {self.log_proof.p99 * 1e6:.1f} us)"
            )
        for row in self.rpc_proofs[:1]:
            print(f"  proofs over gRPC (round trip included): p50 {row.latency(0.5) * 1e6:.0f} us")


# -- the run --------------------------------------------------------------------------------


def _daemon_flags(workers: int) -> tuple[str, ...]:
    agents = [flag for agent in AGENTS for flag in ("--agent", agent)]
    return (*agents, "--workers", str(workers), "--log-level", "warning")


def _first_entry(data_dir: Path) -> bytes:
    uri = f"file:{data_dir / 'tallystick.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        (entry,) = conn.execute('SELECT entry FROM entries WHERE "index" = 0').fetchone()
    return bytes(entry)


def run(plan: Plan, root: Path, report: Report) -> None:
    report.machine = _machine()
    most = max(p for p, _ in (plan.main_clients, *plan.client_grid))
    clients = Clients(most)  # they start (and import gRPC) while the log fills
    daemons: list[DaemonProcess] = []
    try:
        data_dir = root / "d"
        report.fill_s = fill_log(data_dir, plan.size, AGENTS)
        payload = _first_entry(data_dir)

        def measure(job: Job) -> Row:
            print(f"  {job.name} {job.clients} ...", file=sys.stderr, flush=True)
            return clients.run(job, plan.rounds, plan.window)

        def serve(workers: int) -> DaemonProcess:
            daemon = DaemonProcess(data_dir, root / "tallystickd.log", *_daemon_flags(workers))
            daemons.append(daemon)
            daemon.start()
            report.daemon_start_s[workers] = daemon.started_s
            return daemon

        def acked(row: Row) -> Row:
            report.acked += row.measured.acked
            return row

        daemon = serve(16)
        agents = daemon.agent_addresses()
        p, t = plan.main_clients
        report.records.append(acked(measure(Job("RecordCall (1 per RPC)", "unary", p, t, agents))))
        for size in plan.batches:
            job = Job(f"RecordCalls batch of {size}", "batch", p, t, agents, per_call=size)
            report.records.append(acked(measure(job)))
        stream = plan.batches[1]
        job = Job(f"RecordCallStream of {stream}", "stream", p, t, agents, per_call=stream)
        report.records.append(acked(measure(job)))
        for p_grid, t_grid in plan.client_grid:
            job = Job("RecordCall (1 per RPC)", "unary", p_grid, t_grid, agents)
            report.knobs.append(acked(measure(job)))
            job = Job("RecordCalls batch of 16", "batch", p_grid, t_grid, agents, per_call=16)
            report.knobs.append(acked(measure(job)))
        shared = (daemon.shared,)
        size = plan.size
        report.rpc_proofs.append(measure(Job("proof", "proof", 1, 1, shared, tree_size=size)))
        report.rpc_proofs.append(measure(Job("proof", "proof", p, 1, shared, tree_size=size)))
        report.daemon_exit.append(daemon.stop())
        for workers in plan.workers_grid:
            daemon = serve(workers)
            agents = daemon.agent_addresses()
            for kind, name, per_call, threads in (
                ("unary", "RecordCall", 1, 16),
                ("batch", "RecordCalls batch of 16", 16, t),
            ):
                job = Job(f"{name}, --workers {workers}", kind, p, threads, agents, per_call)
                report.knobs.append(acked(measure(job)))
            report.daemon_exit.append(daemon.stop())

        configs = {row.job.clients: (row.job.processes, row.job.threads) for row in report.records}
        configs.update(
            (row.job.clients, (row.job.processes, row.job.threads)) for row in report.knobs
        )
        for clients_key, (p_base, t_base) in sorted(configs.items()):
            path = root / f"plain-{clients_key}.sqlite3"
            create_plain_sqlite(path)
            job = Job(
                "plain SQLite, 1 INSERT per commit",
                "sqlite",
                p_base,
                t_base,
                (str(path),),
                payload=payload,
            )
            report.plain[clients_key] = measure(job)
        job = Job(
            "pymerkle append_entry (its defaults)",
            "pymerkle",
            1,
            1,
            (str(root / "pymerkle-appends.db"),),
            payload=payload,
        )
        report.pymerkle = measure(job)

        report.log_proof, report.final_size, report.reopen_s = _log_proofs(
            data_dir, size, plan.in_process_proofs
        )
        report.pymerkle_proof = _pymerkle_proofs(
            root / "pymerkle-proofs.db",
            size,
            payload,
            plan.pymerkle_proofs,
            plan.pymerkle_seconds,
        )
    finally:
        for daemon in daemons:
            daemon.kill()
        clients.close()


def _stop_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise BenchError(f"stopped by {signal.Signals(signum).name}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1e5 entries, short windows (~30 s)")
    parser.add_argument(
        "--time-limit", type=float, default=None, help="abort after this many seconds"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    limit = args.time_limit or (180 if args.quick else 900)
    report = Report(plan, shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])))
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGALRM, _stop_on_signal)
    signal.alarm(int(limit))
    # Short: Unix socket paths are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="tsb-"))
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
