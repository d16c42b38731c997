"""Fixtures that run a REAL tallystickd on Unix sockets: in-process, or as a subprocess."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from tallystick.daemon.config import load_config
from tallystick.daemon.server import REASON_KEY, Daemon
from tallystick.proto import ledger_pb2, ledger_pb2_grpc, log_pb2_grpc

#: No checkpoint is signed on its own during a test: only on refresh, export and shutdown.
QUIET_CHECKPOINTS = {"checkpoint_every_ms": 3_600_000, "checkpoint_every_entries": 10_000_000}


def make_call(**overrides: Any) -> ledger_pb2.CallRecord:
    """A valid call record; keyword arguments replace its fields."""
    fields: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-4.1-2025-04-14",
        "request_id": "req_123",
        "usage": ledger_pb2.Usage(
            input_tokens=1200,
            cache_read_input_tokens=1000,
            output_tokens=300,
            reasoning_output_tokens=120,
        ),
        "cost": ledger_pb2.Cost(amount="0.0042", currency="USD"),
        "latency_ms": 812,
        "request_sha256": "ab" * 32,
        "response_sha256": "cd" * 32,
        "delegation_id": "hdp:tok-1",
        "session_id": "sess-9",
    }
    fields.update(overrides)
    return ledger_pb2.CallRecord(**fields)


def reason(error: grpc.RpcError) -> str | None:
    """The ``tallystick-reason`` trailer of a failed call."""
    return dict(error.trailing_metadata() or ()).get(REASON_KEY)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temporary directory with a short path: Unix socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="tsd-") as name:
        yield Path(name)


@dataclass
class RunningDaemon:
    """An in-process daemon and the channels opened to it (closed at teardown)."""

    daemon: Daemon
    data_dir: Path
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def shared(self) -> str:
        return self.daemon.listeners[0].address

    def agent(self, name: str) -> str:
        (listener,) = [item for item in self.daemon.listeners if item.caller.agent == name]
        return listener.address

    def channel(self, address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address)
        self.channels.append(channel)
        return channel

    def ledger(self, agent: str | None) -> ledger_pb2_grpc.LedgerStub:
        address = self.shared if agent is None else self.agent(agent)
        return ledger_pb2_grpc.LedgerStub(self.channel(address))

    def log(self, address: str | None = None) -> log_pb2_grpc.LogStub:
        return log_pb2_grpc.LogStub(self.channel(address or self.shared))

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.daemon.stop(grace=0)


def _start(data_dir: Path, **settings: Any) -> RunningDaemon:
    flags = {"data_dir": data_dir, "agents": {"alice": {}, "bob": {}}, **QUIET_CHECKPOINTS}
    flags.update(settings)
    return RunningDaemon(Daemon.start(load_config(flags=flags, environ={})), data_dir)


@pytest.fixture
def start_daemon(short_dir: Path) -> Iterator[Callable[..., RunningDaemon]]:
    """Start in-process daemons (data dir ``short_dir/d`` unless given); all stop at teardown."""
    running: list[RunningDaemon] = []

    def start(data_dir: Path | None = None, **settings: Any) -> RunningDaemon:
        daemon = _start(data_dir or short_dir / "d", **settings)
        running.append(daemon)
        return daemon

    yield start
    for daemon in running:
        daemon.close()


@pytest.fixture(scope="module")
def served() -> Iterator[RunningDaemon]:
    """One daemon for a whole test module (agents alice and bob; GetEntries capped at 5)."""
    with tempfile.TemporaryDirectory(prefix="tsd-") as name:
        daemon = _start(Path(name) / "d", max_entries_per_response=5, max_batch=50)
        yield daemon
        daemon.close()


@dataclass
class DaemonProcess:
    """A ``python -m tallystick.daemon`` subprocess that printed "ready"."""

    process: subprocess.Popen[str]
    data_dir: Path
    stdout: list[str]
    stderr_path: Path

    def address(self, role: str) -> str:
        """The address of the line ``listening: ADDR (role)``."""
        for line in self.stdout:
            if line.startswith("listening: ") and line.endswith(f"({role})"):
                return line.split()[1]
        raise AssertionError(f"no socket for {role!r} in {self.stdout}")

    def terminate(self, timeout: float = 15) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def spawn_daemon(short_dir: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start tallystickd subprocesses; any still running at teardown are killed (by pid)."""
    started: list[DaemonProcess] = []

    def spawn(*args: str, timeout: float = 30) -> DaemonProcess:
        data_dir = short_dir / "d"
        stderr_path = short_dir / f"stderr-{len(started)}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "tallystick.daemon", "--data-dir", str(data_dir), *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
            )
        running = DaemonProcess(process, data_dir, [], stderr_path)
        started.append(running)
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(
                    f"tallystickd exited {process.wait()}: {stderr_path.read_text()}"
                )
            if line == "ready":
                return running
            running.stdout.append(line)

    yield spawn
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
