"""Fixtures for the SDK tests: a REAL tallystickd on Unix sockets in a short temp dir."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tallystick.daemon.config import load_config
from tallystick.daemon.server import Daemon
from tallystick.sdk.client import Policy
from tallystick.verifier.logentry import CallBody, LogEntry, Usage

#: alice and bob act for human-a; carol for nobody. No checkpoint is signed on its own.
AGENTS: dict[str, Any] = {
    "alice": {"principals": ["human-a"]},
    "bob": {"principals": ["human-a"]},
    "carol": {},
}
_QUIET = {"checkpoint_every_ms": 3_600_000, "checkpoint_every_entries": 10_000_000}


def make_call(model: str = "gpt-4o-2024-08-06", **overrides: Any) -> CallBody:
    """A valid call body; keyword arguments replace its fields."""
    fields: dict[str, Any] = {
        "provider": "openai",
        "model": model,
        "request_id": "req_1",
        "usage": Usage(input_tokens=120, cache_read_input_tokens=20, output_tokens=30),
        "latency_ms": 12,
        "operation": "chat",
        "session_id": "s1",
    }
    fields.update(overrides)
    return CallBody(**fields)


@dataclass
class Sidecar:
    """A data directory and the daemon serving it (restartable on the same directory)."""

    data_dir: Path
    daemon: Daemon | None = None

    def start(self) -> Sidecar:
        flags = {"data_dir": self.data_dir, "agents": AGENTS, **_QUIET}
        self.daemon = Daemon.start(load_config(flags=flags, environ={}))
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop(grace=0)
            self.daemon = None

    def address(self, agent: str | None = None) -> str:
        """``unix:PATH`` of ``agent``'s socket, or of the shared socket."""
        if agent is None:
            return f"unix:{self.data_dir / 'tallystickd.sock'}"
        return f"unix:{self.data_dir / 'agents' / f'{agent}.sock'}"

    def entries(self, start: int = 0) -> list[LogEntry]:
        assert self.daemon is not None
        log = self.daemon.log
        return [LogEntry.from_bytes(raw) for raw in log.entries(start, log.size)]

    def calls(self) -> list[LogEntry]:
        return [entry for entry in self.entries() if entry.kind == "call"]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temporary directory with a short path (Unix socket paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="tss-") as name:
        yield Path(name)


@pytest.fixture
def sidecar(short_dir: Path) -> Iterator[Sidecar]:
    """A running daemon of its own (agents alice, bob, carol), stopped at teardown."""
    running = Sidecar(short_dir / "d").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def shared_sidecar() -> Iterator[Sidecar]:
    """One daemon for a whole module."""
    with tempfile.TemporaryDirectory(prefix="tss-") as name:
        running = Sidecar(Path(name) / "d").start()
        yield running
        running.stop()


@pytest.fixture
def policy(short_dir: Path) -> Policy:
    """The default policy, spooling into a private directory, no background retry thread."""
    return Policy(
        spool_dir=short_dir / "spool", retry_in_background=False, timeout_s=5, connect_wait_s=1.5
    )
