"""Crash safety of tallystickd itself: SIGKILL the real daemon at random moments under load.

Each round starts ``python -m tallystick.daemon`` on the same data directory. Its start-up
self-check must pass: it prints ``ready`` and the health service answers SERVING. Then
several client threads, each with its own channel on its agent's Unix socket, record calls
(single ``RecordCall`` and ``RecordCalls`` batches) for a random short time, and the daemon is
killed with SIGKILL. Some rounds kill it before it is ready instead, inside the self-check.
Every call carries a unique ``request_id``; a client keeps the indexes the daemon acknowledged
(the RPC returned OK) with their request ids.

After each restart the previous round's acknowledged entries are read back. After the last
one, the whole log is read: every acknowledged record is at its index with its request id,
no request id is stored twice, and every stored call, acknowledged or not, is one that a
client sent, as its agent sent it. Appends go on, a SIGTERM stops the daemon cleanly, and
``tallystick log export`` + ``tallystick log verify`` find the log valid.

``TALLYSTICK_DAEMON_CRASH_KILLS`` sets the number of kill points (default 50; a benchmark run
uses more) and ``TALLYSTICK_CRASH_SEED`` replays a run's random choices.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tallystick.proto import ledger_pb2, ledger_pb2_grpc, log_pb2, log_pb2_grpc
from tallystick.verifier._cli import main as tallystick_main
from tallystick.verifier.logentry import EntryKind, LogEntry

from .conftest import QUIET_CHECKPOINTS, make_call

KILLS = int(os.environ.get("TALLYSTICK_DAEMON_CRASH_KILLS", "50"))
AGENTS = ("a1", "a2")
CLIENTS_PER_AGENT = 2
#: The longest load window of a round before the kill.
MAX_LOAD_S = 0.25
#: The share of rounds that kill the daemon while it starts (self-check, recovery checkpoint).
START_KILL_SHARE = 0.2
MAX_BATCH = 8
RPC_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0


class Tallystickd:
    """One ``python -m tallystick.daemon`` subprocess; its stdout lines are read by a thread."""

    def __init__(self, data_dir: Path, stderr_path: Path, *, checkpoint_every_ms: int) -> None:
        args = [f"--agent={agent}" for agent in AGENTS]
        args += [
            f"--checkpoint-every-ms={checkpoint_every_ms}",
            f"--checkpoint-every-entries={QUIET_CHECKPOINTS['checkpoint_every_entries']}",
            "--grace-seconds=10",
        ]
        self.stderr_path = stderr_path
        with stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tallystick.daemon", "--data-dir", str(data_dir), *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._started = time.monotonic()
        #: Seconds from the start to ``ready``, once it was printed.
        self.ready_s: float | None = None
        self.stdout: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_ready(self, context: str) -> None:
        """Wait for ``ready``; fail with the daemon's stderr if it exits first."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                code = self.process.wait()
                raise AssertionError(f"{context}: tallystickd exited {code}: {self.stderr()}")
            if line == "ready":
                self.ready_s = time.monotonic() - self._started
                return
            self.stdout.append(line)

    def address(self, role: str) -> str:
        """The address of the line ``listening: ADDR (role)``."""
        for line in self.stdout:
            if line.startswith("listening: ") and line.endswith(f"({role})"):
                return line.split()[1]
        raise AssertionError(f"no socket for {role!r} in {self.stdout}")

    def kill(self) -> None:
        """SIGKILL it and reap it: it holds no lock on the data directory afterwards."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    def stderr(self) -> str:
        return self.stderr_path.read_text()[-4000:]


@dataclass
class Sent:
    """What a client sent in one call record: the fields the stored entry must repeat."""

    agent: str
    latency_ms: int


@dataclass
class Client:
    """One load thread: its own channel on its agent's socket, RecordCall and RecordCalls."""

    name: str
    agent: str
    address: str
    rng: random.Random
    killed: threading.Event
    sent: dict[str, Sent] = field(default_factory=dict)
    acked: dict[int, str] = field(default_factory=dict)
    #: An RPC was in flight when the daemon died.
    cut: bool = False
    #: A failure that the kill does not explain.
    failure: str | None = None

    def run(self, stop: threading.Event) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = ledger_pb2_grpc.LedgerStub(channel)
            serial = 0
            while not stop.is_set():
                calls = []
                for _ in range(self.rng.choice([1, 1, self.rng.randint(2, MAX_BATCH)])):
                    request_id = f"{self.name}-{serial}"
                    serial += 1
                    self.sent[request_id] = Sent(self.agent, serial)
                    calls.append(make_call(request_id=request_id, latency_ms=serial))
                try:
                    if len(calls) == 1:
                        request = ledger_pb2.RecordCallRequest(call=calls[0])
                        indexes = [stub.RecordCall(request, timeout=RPC_TIMEOUT_S).index]
                    else:
                        batch = ledger_pb2.RecordCallsRequest(calls=calls)
                        indexes = list(stub.RecordCalls(batch, timeout=RPC_TIMEOUT_S).indexes)
                except grpc.RpcError as error:
                    if self.killed.is_set():
                        self.cut = True
                    else:
                        self.failure = f"{self.name}: {error.code()} {error.details()}"
                    return
                # A failed assert would die with this thread: record it for the test to raise.
                if len(indexes) != len(calls) or self.acked.keys() & set(indexes):
                    self.failure = f"{self.name}: indexes {indexes} for {len(calls)} calls"
                    return
                self.acked.update(zip(indexes, (call.request_id for call in calls), strict=True))


@dataclass
class Round:
    """What the clients of one loaded round sent and had acknowledged."""

    sent: dict[str, Sent]
    acked: dict[int, str]
    cut: bool


@pytest.fixture
def daemons() -> Iterator[list[Tallystickd]]:
    """Every daemon the test starts; any still running at teardown is killed (by pid)."""
    started: list[Tallystickd] = []
    yield started
    for daemon in started:
        daemon.kill()


def start(data_dir: Path, daemons: list[Tallystickd], rng: random.Random) -> Tallystickd:
    # Most starts sign no checkpoint on their own; some sign every 20 ms, so kills also land
    # while a checkpoint is being signed and stored.
    every_ms = rng.choice([QUIET_CHECKPOINTS["checkpoint_every_ms"]] * 3 + [20])
    stderr_path = data_dir.parent / f"stderr-{len(daemons)}.log"
    daemon = Tallystickd(data_dir, stderr_path, checkpoint_every_ms=every_ms)
    daemons.append(daemon)
    return daemon


def start_ready(
    data_dir: Path, daemons: list[Tallystickd], rng: random.Random, context: str
) -> Tallystickd:
    """Start a daemon; its self-check passes, it prints ready and its health is SERVING."""
    daemon = start(data_dir, daemons, rng)
    daemon.wait_ready(context)
    with grpc.insecure_channel(daemon.address("shared, read-only")) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING, context
    return daemon


def load_and_kill(daemon: Tallystickd, rng: random.Random, name: str) -> Round:
    """Run the clients for a random short time, SIGKILL the daemon, collect what they got."""
    killed = threading.Event()
    clients = [
        Client(
            f"{name}-{agent}-{n}",
            agent,
            daemon.address(f"agent {agent}"),
            random.Random(rng.random()),
            killed,
        )
        for agent in AGENTS
        for n in range(CLIENTS_PER_AGENT)
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=client.run, args=(stop,)) for client in clients]
    for thread in threads:
        thread.start()
    time.sleep(rng.uniform(0, MAX_LOAD_S))
    killed.set()  # before the kill: every failure after it may be the kill's
    daemon.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=RPC_TIMEOUT_S + 5)
        assert not thread.is_alive(), f"{name}: a client hangs"
    failures = [client.failure for client in clients if client.failure is not None]
    assert not failures, f"{name}: clients failed before the kill: {failures}\n{daemon.stderr()}"
    acked: dict[int, str] = {}
    for client in clients:
        assert not acked.keys() & client.acked.keys(), f"{name}: an index was acked twice"
        acked.update(client.acked)
    sent = {request_id: item for client in clients for request_id, item in client.sent.items()}
    return Round(sent, acked, any(client.cut for client in clients))


def read_entries(address: str, start: int, stop: int | None = None) -> list[LogEntry]:
    """Entries ``start`` to ``stop`` (the end of the log when None), parsed strictly."""
    entries: list[LogEntry] = []
    with grpc.insecure_channel(address) as channel:
        log = log_pb2_grpc.LogStub(channel)
        if stop is None:
            # A fresh checkpoint: its size is the number of entries stored now.
            request = log_pb2.GetCheckpointRequest(refresh=True)
            stop = log.GetCheckpoint(request, timeout=RPC_TIMEOUT_S).tree_size
        while start + len(entries) < stop:
            request = log_pb2.GetEntriesRequest(
                start=start + len(entries), count=stop - start - len(entries)
            )
            response = log.GetEntries(request, timeout=RPC_TIMEOUT_S)
            assert response.start == start + len(entries) and response.entries
            entries += [LogEntry.from_bytes(raw) for raw in response.entries]
    return entries


def check_acked(address: str, acked: dict[int, str], context: str) -> None:
    """Every acknowledged index holds the call with the request id it was acknowledged for."""
    if not acked:
        return
    low = min(acked)
    entries = read_entries(address, low, max(acked) + 1)
    for index, request_id in acked.items():
        entry = entries[index - low]
        assert entry.index == index, context
        assert entry.kind == EntryKind.CALL, f"{context}: entry {index} is {entry.kind}"
        assert entry.body["request_id"] == request_id, f"{context}: entry {index} lost its call"


def tallystick(*argv: str) -> tuple[int, str]:
    """``tallystick ARGV`` in-process: the exit code and standard output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = tallystick_main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue()


def test_acknowledged_records_survive_sigkill_of_the_daemon(
    short_dir: Path, daemons: list[Tallystickd]
) -> None:
    seed = int(os.environ.get("TALLYSTICK_CRASH_SEED", time.time_ns()))
    rng = random.Random(seed)
    data_dir = short_dir / "d"
    sent: dict[str, Sent] = {}
    acked: dict[int, str] = {}
    previous: dict[int, str] = {}
    loaded_kills = cut_kills = start_kills = 0
    ready_s = 1.0

    for number in range(KILLS):
        context = f"seed {seed}, round {number}"
        if number > 0 and rng.random() < START_KILL_SHARE:
            # A kill inside the start. Most of a start is importing Python modules: aim at
            # its last half, where the log is opened, checked and a recovery checkpoint signed.
            daemon = start(data_dir, daemons, rng)
            time.sleep(rng.uniform(0.5, 1.0) * ready_s)
            daemon.kill()
            start_kills += 1
            continue
        daemon = start_ready(data_dir, daemons, rng, context)
        ready_s = daemon.ready_s or ready_s
        shared = daemon.address("shared, read-only")
        check_acked(shared, previous, context)
        result = load_and_kill(daemon, rng, f"r{number}")
        assert not acked.keys() & result.acked.keys(), f"{context}: an index was acked twice"
        acked.update(result.acked)
        sent.update(result.sent)
        previous = result.acked
        loaded_kills += 1
        cut_kills += result.cut

    context = f"seed {seed}, after the last kill"
    daemon = start_ready(data_dir, daemons, rng, context)
    shared = daemon.address("shared, read-only")
    entries = read_entries(shared, 0)
    size = len(entries)
    stored: dict[str, int] = {}
    for index, entry in enumerate(entries):
        assert entry.index == index, context
        if entry.kind != EntryKind.CALL:
            continue
        request_id = entry.body["request_id"]
        # Acknowledged or not, a stored call is whole and is what its client sent.
        assert request_id in sent, f"{context}: entry {index} holds an unknown call {request_id}"
        assert request_id not in stored, f"{context}: {request_id} is stored twice"
        stored[request_id] = index
        expected = sent[request_id]
        assert (entry.agent, entry.body["latency_ms"]) == (expected.agent, expected.latency_ms)
    for index, request_id in acked.items():
        assert stored.get(request_id) == index, f"{context}: acked {request_id}@{index} is lost"

    # Appends go on where the log ends.
    with grpc.insecure_channel(daemon.address(f"agent {AGENTS[0]}")) as channel:
        stub = ledger_pb2_grpc.LedgerStub(channel)
        after = [
            stub.RecordCall(
                ledger_pb2.RecordCallRequest(call=make_call(request_id=f"after-{n}")),
                timeout=RPC_TIMEOUT_S,
            ).index
            for n in range(3)
        ]
    assert after == [size, size + 1, size + 2], context
    check_acked(shared, {size + n: f"after-{n}" for n in range(3)}, context)

    daemon.process.send_signal(signal.SIGTERM)  # drains and signs a final checkpoint
    assert daemon.process.wait(timeout=30) == 0, daemon.stderr()
    bundle = short_dir / "bundle.jsonl"
    assert tallystick("log", "export", "--data-dir", str(data_dir), "--out", str(bundle))[0] == 0
    code, out = tallystick(
        "log", "verify", str(bundle), "--log-key", str(data_dir / "log.pub"), "--json"
    )
    report = json.loads(out)
    assert (code, report["valid"], report["size"]) == (0, True, size + 3), f"{context}: {out}"

    assert start_kills + loaded_kills == KILLS
    # The kills hit a busy daemon: many records were acknowledged, many RPCs were cut.
    assert len(acked) > loaded_kills * 20, f"{context}: only {len(acked)} acks"
    assert cut_kills >= loaded_kills // 2, f"{context}: {cut_kills} of {loaded_kills} cut RPCs"
    assert loaded_kills >= KILLS // 2, f"{context}: {start_kills} kills were at start-up"
