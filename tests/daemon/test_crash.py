"""Crash safety: SIGKILL a writer process at random moments; nothing acknowledged is ever lost.

Each round starts a writer process (forked by tests/daemon/log_writer.py) on the same data
directory, lets it append from several threads for a random 0-150 ms (so kills also land
inside ``Log.open``: the self-check and the recovery checkpoint), kills it with SIGKILL, and
reopens the log here: the self-check must pass, every index the writer printed as acknowledged
must hold the entry it wrote, and appends must go on. The last round reopens with the full
check, which re-reads every entry, node and checkpoint.

``TALLYSTICK_CRASH_KILLS`` sets the number of kill points (default 50; a benchmark run uses
many more) and ``TALLYSTICK_CRASH_SEED`` replays a run's random delays.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tallystick.daemon.log import Log
from tallystick.verifier.logentry import EntryKind, LogEntry

WRITER = Path(__file__).with_name("log_writer.py")
KILLS = int(os.environ.get("TALLYSTICK_CRASH_KILLS", "50"))
THREADS = 4
MAX_RUN_S = 0.15


class Writers:
    """The log_writer.py parent process, which forks one writer per :meth:`run`."""

    def __init__(self, data_dir: Path, workdir: Path) -> None:
        self._workdir = workdir
        self._stderr = workdir / "writers.err"
        with self._stderr.open("wb") as stderr:
            self._parent = subprocess.Popen(
                [sys.executable, str(WRITER), str(data_dir), str(THREADS)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self._runs = 0
        assert self._readline() == "ready"

    def _readline(self) -> str:
        assert self._parent.stdout is not None
        line = self._parent.stdout.readline()
        assert line, f"log_writer.py exited: {self._stderr.read_text()}"
        return line.strip()

    def run(self, seconds: float) -> dict[int, str]:
        """Fork a writer, SIGKILL it after ``seconds``, return the acks it printed."""
        out = self._workdir / f"run-{self._runs}.out"
        self._runs += 1
        assert self._parent.stdin is not None
        self._parent.stdin.write(f"go {out}\n")
        self._parent.stdin.flush()
        kind, pid = self._readline().split()
        assert kind == "child"
        time.sleep(seconds)
        os.kill(int(pid), signal.SIGKILL)
        assert self._readline().split()[:2] == ["exit", pid]  # reaped: it holds no lock now
        return parse_acks(out, self._stderr)

    def close(self) -> None:
        assert self._parent.stdin is not None
        self._parent.stdin.close()
        self._parent.wait(timeout=30)


def parse_acks(out: Path, stderr: Path) -> dict[int, str]:
    acks: dict[int, str] = {}
    # No file: the kill came before the child opened it, so nothing was acknowledged.
    text = out.read_text() if out.exists() else ""
    for line in text.splitlines(keepends=True):
        if line.startswith("ack ") and line.endswith("\n"):  # a line cut by the kill is no ack
            _, index, token = line.split()
            acks[int(index)] = token
        else:
            # The writer died of something other than the kill if it printed anything else.
            assert line.startswith(("open ", "ack ")), f"{text[-2000:]}\n{stderr.read_text()}"
    return acks


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[Writers]:
    running = Writers(tmp_path / "var", tmp_path)
    yield running
    running.close()


def token_of(raw: bytes) -> str:
    body = LogEntry.from_bytes(raw).body
    return str(body["request_id"] if "request_id" in body else body["token"])


def check(data_dir: Path, acks: dict[int, str], *, full: bool, seed: int) -> None:
    """Reopen (self-check), find every acknowledged entry unchanged, append one more."""
    with Log.open(data_dir, full_check=full) as log:
        if acks:
            assert log.size > max(acks), f"seed {seed}: size {log.size} lost acks"
        for index, token in sorted(acks.items()):
            (raw,) = log.entries(index, index + 1)
            assert token_of(raw) == token, f"seed {seed}: entry {index} is not what was acked"
        size = log.size
        assert log.append(EntryKind.AUDIT, "checker", {"token": f"check-{size}"}) == size
        assert f"\n{size + 1}\n" in log.checkpoint_now()


def test_acknowledged_appends_survive_sigkill_at_random_points(
    writers: Writers, tmp_path: Path
) -> None:
    seed = int(os.environ.get("TALLYSTICK_CRASH_SEED", time.time_ns()))
    rng = random.Random(seed)
    data_dir = tmp_path / "var"
    all_acks: dict[int, str] = {}
    for _ in range(KILLS):
        acks = writers.run(rng.uniform(0, MAX_RUN_S))
        assert not acks.keys() & all_acks.keys(), f"seed {seed}: an index was acked twice"
        check(data_dir, acks, full=False, seed=seed)
        all_acks.update(acks)
    # Enough appends happened for the kills to have hit a busy writer.
    assert len(all_acks) > KILLS * 20, f"seed {seed}: only {len(all_acks)} acks"
    check(data_dir, all_acks, full=True, seed=seed)


@pytest.mark.parametrize(
    "seconds", [pytest.param(0.0, id="during-open"), pytest.param(0.05, id="while-busy")]
)
def test_a_kill_leaves_no_half_written_row(
    writers: Writers, tmp_path: Path, seconds: float
) -> None:
    # The full check right after one kill: every stored row, not only the acked ones, is whole.
    acks = writers.run(seconds)
    check(tmp_path / "var", acks, full=True, seed=0)
