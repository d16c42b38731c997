"""A log writer for the crash test (test_crash.py), which SIGKILLs it at random moments.

Usage: ``python log_writer.py DATA_DIR THREADS``. It imports everything once and prints
``ready``; then, for each line ``go OUT`` on standard input, it forks a writer process, prints
``child <pid>``, waits for it and prints ``exit <pid> <wait status>``. Forking from a warm,
single-threaded parent keeps Python's start-up time out of the test's budget of kill points.

The writer (the forked child) sends its standard output to the file OUT, opens the log
(start-up self-check included) and appends from THREADS threads until it is killed: single
``call`` and ``audit`` entries, and atomic batches of three. It prints ``ack <index> <token>``
for an entry only after ``append``/``append_batch`` returned, so every such line names an entry
the log acknowledged as durable.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import traceback
from collections.abc import Iterable
from pathlib import Path

from tallystick.daemon.log import Log
from tallystick.verifier.logentry import EntryKind

BATCH = 3


def call_body(token: str) -> dict[str, object]:
    """A valid ``call`` body; the token travels as its request id."""
    return {
        "provider": "openai",
        "model": "gpt-4.1",
        "request_id": token,
        "usage": {"input_tokens": 1200, "cache_read_input_tokens": 1000, "output_tokens": 300},
    }


def write(data_dir: Path, threads: int) -> None:
    """Open the log and append from ``threads`` threads, printing acks, until killed."""
    # Small intervals, so that kills also land while checkpoints are signed and written.
    log = Log.open(data_dir, checkpoint_every_entries=40, checkpoint_every_ms=15)
    print(f"open {log.size}", flush=True)
    printing = threading.Lock()

    def work(slot: int) -> None:
        agent = f"writer-{slot}"
        for n in itertools.count():
            token = f"{os.getpid()}-{slot}-{n}"
            acks: Iterable[tuple[int, str]]
            if n % 3 == 2:
                tokens = [f"{token}-{k}" for k in range(BATCH)]
                items = [(EntryKind.AUDIT, agent, {"token": t}) for t in tokens]
                acks = zip(log.append_batch(items), tokens, strict=True)
            elif n % 3 == 1:
                acks = [(log.append(EntryKind.CALL, agent, call_body(token)), token)]
            else:
                acks = [(log.append(EntryKind.AUDIT, agent, {"token": token}), token)]
            text = "".join(f"ack {index} {ack_token}\n" for index, ack_token in acks)
            with printing:  # whole lines, each written after its append returned
                sys.stdout.write(text)
                sys.stdout.flush()

    for slot in range(threads):
        threading.Thread(target=work, args=(slot,), daemon=True).start()
    threading.Event().wait()


def main(argv: list[str]) -> int:
    data_dir, threads = Path(argv[1]), int(argv[2])
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, out = line.strip().partition(" ")
        if command != "go" or not out:
            return 2
        pid = os.fork()
        if pid == 0:
            try:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(fd, sys.stdout.fileno())
                os.close(fd)
                write(data_dir, threads)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(1)  # never back into the parent's loop
        print(f"child {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
