"""The durable log core on a real SQLite file: proofs, chain, bundle, keys, threads, self-check."""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import json
import math
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tallystick.daemon.errors import LogInconsistent, LogUnavailable
from tallystick.daemon.log import Log, export_data_dir
from tallystick.daemon.storage.sqlite import DB_FILENAME
from tallystick.verifier.canonical import canonicalize
from tallystick.verifier.checkpoint import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    sign_checkpoint,
    verify_checkpoint,
)
from tallystick.verifier.errors import MalformedInput, TallystickError
from tallystick.verifier.keys import PrivateKey, PublicKey, load_private_key
from tallystick.verifier.logentry import GENESIS_PREV, EntryKind, LogEntry
from tallystick.verifier.merkle import (
    MerkleTree,
    hash_leaf,
    verify_consistency,
    verify_inclusion,
)

T0 = 1_700_000_000_000
#: No checkpoint on its own: only when a test asks, or at close.
QUIET = {"checkpoint_every_entries": 10**9, "checkpoint_every_ms": 10**9}


def call_body(n: int) -> dict[str, Any]:
    """A valid ``call`` body, distinct per ``n``."""
    return {
        "provider": "openai",
        "model": "gpt-4.1",
        "request_id": f"req-{n}",
        "usage": {"input_tokens": 100 + n, "output_tokens": 7, "reasoning_output_tokens": 3},
        "cost": {"amount": "0.0042", "currency": "USD"},
        "latency_ms": 812,
    }


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def open_log(data_dir: Path) -> Iterator[Callable[..., Log]]:
    """Open logs on ``data_dir`` (keyword arguments go to Log.open); all closed at teardown."""
    opened: list[Log] = []

    def open_(**options: Any) -> Log:
        log = Log.open(data_dir, **options)
        opened.append(log)
        return log

    yield open_
    for log in opened:
        log.close()


def read_bundle(path: Path) -> list[dict[str, Any]]:
    """Parse a bundle, asserting every line is canonical JSON followed by one newline."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw[:-1].split(b"\n")
    parsed = [json.loads(line) for line in lines]
    for line, value in zip(lines, parsed, strict=True):
        assert canonicalize(value) == line
    return parsed


def stored_checkpoints(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / DB_FILENAME) as conn:
        return [row[0] for row in conn.execute("SELECT note FROM checkpoints ORDER BY size")]


def verifier_of(log: Log) -> NoteVerifier:
    return NoteVerifier.from_vkey(log.vkey)


# -- proofs against the in-memory reference tree ---------------------------------------------


def test_proofs_match_the_reference_tree_at_every_size(open_log: Callable[..., Log]) -> None:
    log = open_log(clock_ms=Clock(), **QUIET)
    reference = MerkleTree()
    kinds = [EntryKind.CALL, EntryKind.AUDIT, EntryKind.REVOCATION]
    for n in range(70):
        kind = kinds[n % 3]
        body = call_body(n) if kind is EntryKind.CALL else {"n": n, "note": "é" * (n % 4)}
        assert log.append(kind, f"agent-{n % 5}", body) == n
        reference.append(hash_leaf(log.entries(n, n + 1)[0]))
        assert log.root() == reference.root()
    for size in range(1, 71):
        assert log.root(size) == reference.root(size)
        for index in {0, size // 2, size - 1}:
            assert log.inclusion_proof(index, size) == reference.inclusion_proof(index, size)
        for first in {1, size // 3 or 1, size - 1 or 1}:
            assert log.consistency_proof(first, size) == reference.consistency_proof(first, size)


def test_proofs_verify_against_signed_checkpoints(open_log: Callable[..., Log]) -> None:
    # One entry per commit, a checkpoint every 7: checkpoints at 7, 14, ... 35, then 40 at close.
    log = open_log(clock_ms=Clock(), checkpoint_every_entries=7, checkpoint_every_ms=10**9)
    for n in range(40):
        log.append(EntryKind.CALL, "agent-1", call_body(n))
    signed = [
        verify_checkpoint(text, verifiers=[verifier_of(log)], origin=log.origin)
        for text in stored_checkpoints(log_dir(log))
    ]
    assert [cp.size for cp in signed] == [0, 7, 14, 21, 28, 35]
    entries = log.entries(0, 40)
    for checkpoint in signed[1:]:
        # Historical sizes: proofs for an old checkpoint while the log has grown past it.
        for index in range(checkpoint.size):
            verify_inclusion(
                leaf_index=index,
                tree_size=checkpoint.size,
                leaf_hash=hash_leaf(entries[index]),
                proof=log.inclusion_proof(index, checkpoint.size),
                root_hash=checkpoint.root_hash,
            )
    for old, new in itertools.pairwise(signed[1:]):
        verify_consistency(
            first_size=old.size,
            second_size=new.size,
            first_root=old.root_hash,
            second_root=new.root_hash,
            proof=log.consistency_proof(old.size, new.size),
        )


def log_dir(log: Log) -> Path:
    return log._store.path.parent


def test_a_group_larger_than_one_statement_is_still_one_commit(
    open_log: Callable[..., Log],
) -> None:
    # 3,000 entries and their ~3,000 nodes pass SQLite's 32,766 parameters of one statement.
    log = open_log(**QUIET)
    indices = log.append_batch([(EntryKind.AUDIT, "a", {"n": n}) for n in range(3000)])
    assert indices == list(range(3000))
    reference = MerkleTree()
    reference.extend(hash_leaf(raw) for raw in log.entries(0, 3000))
    assert log.root() == reference.root()
    for index in (0, 1234, 2999):
        assert log.inclusion_proof(index, 3000) == reference.inclusion_proof(index, 3000)
        assert log.inclusion_proof(index, 2999 if index < 2999 else 3000) == (
            reference.inclusion_proof(index, 2999 if index < 2999 else 3000)
        )


@pytest.mark.parametrize(
    ("call", "code"),
    [
        pytest.param(lambda log: log.inclusion_proof(0, 6), "merkle.bad_size", id="incl-size"),
        pytest.param(lambda log: log.inclusion_proof(5, 5), "merkle.index_out_of_range", id="idx"),
        pytest.param(lambda log: log.consistency_proof(2, 6), "merkle.bad_size", id="cons-size"),
        pytest.param(lambda log: log.consistency_proof(0, 5), "merkle.empty_first_tree", id="c0"),
        pytest.param(lambda log: log.consistency_proof(4, 3), "merkle.bad_size", id="backwards"),
        pytest.param(lambda log: log.root(6), "merkle.bad_size", id="root-size"),
        pytest.param(lambda log: log.entries(3, 6), "log.bad_range", id="entries-end"),
        pytest.param(lambda log: log.entries(-1, 2), "log.bad_range", id="entries-negative"),
        pytest.param(lambda log: log.entries(3, 2), "log.bad_range", id="entries-reversed"),
    ],
)
def test_reads_beyond_the_log_are_refused(
    open_log: Callable[..., Log], call: Callable[[Log], object], code: str
) -> None:
    log = open_log(**QUIET)
    log.append_batch([(EntryKind.AUDIT, "a", {"n": n}) for n in range(5)])
    with pytest.raises(TallystickError) as exc:
        call(log)
    assert exc.value.code == code


def test_empty_log_has_the_empty_root_and_a_signed_size_zero_checkpoint(
    open_log: Callable[..., Log],
) -> None:
    log = open_log()
    assert log.size == 0
    assert log.root() == MerkleTree().root()
    checkpoint = verify_checkpoint(
        log.latest_checkpoint(), verifiers=[verifier_of(log)], origin=log.origin
    )
    assert (checkpoint.size, checkpoint.root_hash) == (0, MerkleTree().root())
    assert log.entries(0, 0) == []


# -- entries: exact bytes, hash chain ---------------------------------------------------------


def test_entries_form_a_hash_chain_of_canonical_entries(open_log: Callable[..., Log]) -> None:
    clock = Clock()
    log = open_log(clock_ms=clock, **QUIET)
    first = log.append(EntryKind.CALL, "agent-1", call_body(0))
    clock.now -= 5_000  # a clock that steps back must not make entry times decrease
    batch = log.append_batch(
        [(EntryKind.AUDIT, "auditor", {"n": n}) for n in range(3)]
        + [(EntryKind.KEY_ROTATION, "agent-2", {"new": "k"})]
    )
    assert [first, *batch] == [0, 1, 2, 3, 4]
    prev, times = GENESIS_PREV, []
    for index, raw in enumerate(log.entries(0, log.size)):
        entry = LogEntry.from_bytes(raw)
        assert entry.to_bytes() == raw
        assert (entry.index, entry.prev) == (index, prev)
        prev = hash_leaf(raw)
        times.append(entry.time_ms)
    assert times == sorted(times)
    assert times[0] == T0
    assert LogEntry.from_bytes(log.entries(1, 2)[0]).body == {"n": 0}


# -- the bundle --------------------------------------------------------------------------------


def test_export_writes_the_bundle_format(open_log: Callable[..., Log], tmp_path: Path) -> None:
    log = open_log(clock_ms=Clock(), checkpoint_every_entries=4, checkpoint_every_ms=10**9)
    for n in range(10):
        log.append(EntryKind.CALL, "agent-1", call_body(n))
    out = tmp_path / "log.bundle"
    assert log.export(out) == 10
    header, *rest = read_bundle(out)
    assert header == {
        "format": "tallystick.bundle/v1",
        "origin": log.origin,
        "log_vkey": log.vkey,
        "size": 10,
    }
    entry_lines, checkpoint_lines = rest[:10], rest[10:]
    assert [set(line) for line in entry_lines] == [{"entry"}] * 10
    decoded = [base64.b64decode(line["entry"], validate=True) for line in entry_lines]
    assert decoded == log.entries(0, 10)
    assert all(
        base64.b64encode(raw).decode() == line["entry"]
        for raw, line in zip(decoded, entry_lines, strict=True)
    )
    assert [set(line) for line in checkpoint_lines] == [{"checkpoint"}] * len(checkpoint_lines)
    verifier = NoteVerifier.from_vkey(header["log_vkey"])
    sizes = [
        verify_checkpoint(line["checkpoint"], verifiers=[verifier], origin=header["origin"]).size
        for line in checkpoint_lines
    ]
    assert sizes == [0, 4, 8, 10]
    final = verify_checkpoint(
        checkpoint_lines[-1]["checkpoint"], verifiers=[verifier], origin=log.origin
    )
    reference = MerkleTree()
    reference.extend(hash_leaf(raw) for raw in decoded)
    assert final.root_hash == reference.root()


def test_export_data_dir_copies_what_is_stored(data_dir: Path, tmp_path: Path) -> None:
    with Log.open(data_dir, clock_ms=Clock(), **QUIET) as log:
        log.append_batch([(EntryKind.AUDIT, "a", {"n": n}) for n in range(6)])
        log.export(tmp_path / "live.bundle")
    # Closed cleanly: the final checkpoint is the one export signed, so both bundles agree.
    assert export_data_dir(data_dir, tmp_path / "dir.bundle") == 6
    assert (tmp_path / "dir.bundle").read_bytes() == (tmp_path / "live.bundle").read_bytes()
    # Damage is copied, not repaired: the offline verifier must see it.
    with sqlite3.connect(data_dir / DB_FILENAME) as conn:
        conn.execute('UPDATE entries SET entry = ? WHERE "index" = 2', (b'{"forged":true}',))
    export_data_dir(data_dir, tmp_path / "damaged.bundle")
    lines = read_bundle(tmp_path / "damaged.bundle")
    assert base64.b64decode(lines[3]["entry"]) == b'{"forged":true}'
    assert lines[1:3] == read_bundle(tmp_path / "dir.bundle")[1:3]


def test_export_data_dir_reads_while_the_log_is_open(
    open_log: Callable[..., Log], data_dir: Path, tmp_path: Path
) -> None:
    log = open_log(**QUIET)
    log.append(EntryKind.AUDIT, "a", {"n": 1})
    log.checkpoint_now()
    assert export_data_dir(data_dir, tmp_path / "b") == 1
    log.append(EntryKind.AUDIT, "a", {"n": 2})
    # The unsigned newest entry is copied too; the last checkpoint then covers fewer entries.
    lines = read_bundle(tmp_path / "b")
    assert lines[0]["size"] == 1
    assert export_data_dir(data_dir, tmp_path / "c") == 2
    assert read_bundle(tmp_path / "c")[-1] == lines[-1]


def test_export_data_dir_takes_a_relative_path(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Log.open(data_dir, clock_ms=Clock(), **QUIET) as log:
        log.append(EntryKind.AUDIT, "a", {"n": 1})
    monkeypatch.chdir(data_dir.parent)
    assert export_data_dir(Path(data_dir.name), Path("relative.bundle")) == 1
    assert read_bundle(tmp_path / "relative.bundle")[0]["size"] == 1


def test_export_data_dir_without_a_log(tmp_path: Path) -> None:
    with pytest.raises(LogUnavailable) as exc:
        export_data_dir(tmp_path / "nothing", tmp_path / "b")
    assert exc.value.code == "log.not_found"
    assert not (tmp_path / "b").exists()


# -- keys and origin ---------------------------------------------------------------------------


def test_first_start_creates_private_keys_and_a_stable_origin(data_dir: Path) -> None:
    with Log.open(data_dir) as log:
        origin, public_key = log.origin, log.public_key
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "log.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / DB_FILENAME).stat().st_mode) == 0o600
    assert load_private_key(data_dir / "log.key").public_key == public_key
    assert (data_dir / "log.pub").read_text() == public_key.to_b64url() + "\n"
    assert PublicKey.from_text((data_dir / "log.pub").read_text().strip()) == public_key
    assert origin == "tallystick.local/" + public_key.to_b64url()[:16]
    with sqlite3.connect(data_dir / DB_FILENAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with Log.open(data_dir) as again:
        assert (again.origin, again.public_key) == (origin, public_key)
        assert again.vkey == NoteVerifier.from_public_key(origin, public_key).vkey


def test_a_configured_origin_is_kept_and_cannot_change(data_dir: Path) -> None:
    with Log.open(data_dir, origin="example.com/log") as log:
        assert log.origin == "example.com/log"
    with Log.open(data_dir) as log:
        assert log.origin == "example.com/log"
    with pytest.raises(LogInconsistent) as exc:
        Log.open(data_dir, origin="example.com/other")
    assert exc.value.code == "log.origin_mismatch"


@pytest.mark.parametrize(
    ("options", "code"),
    [
        pytest.param({"origin": "has space"}, "note.bad_vkey", id="origin-space"),
        pytest.param({"origin": "a+b"}, "note.bad_vkey", id="origin-plus"),
        pytest.param({"checkpoint_every_entries": 0}, "log.bad_config", id="every-entries"),
        pytest.param({"checkpoint_every_ms": -1}, "log.bad_config", id="every-ms"),
        pytest.param({"checkpoint_every_ms": True}, "log.bad_config", id="every-ms-bool"),
        pytest.param({"wal_checkpoint_every_ms": 0}, "log.bad_config", id="wal-every-ms"),
        pytest.param({"wal_limit_bytes": -1}, "log.bad_config", id="wal-limit"),
    ],
)
def test_bad_options_are_refused(data_dir: Path, options: dict[str, Any], code: str) -> None:
    with pytest.raises(MalformedInput) as exc:
        Log.open(data_dir, **options)
    assert exc.value.code == code


# -- concurrency ----------------------------------------------------------------------------------


def test_threads_get_unique_contiguous_indices_that_survive_reopen(data_dir: Path) -> None:
    threads, per_thread = 8, 500
    results: list[list[tuple[int, str]]] = [[] for _ in range(threads)]

    def work(slot: int) -> None:
        for n in range(per_thread):
            body = call_body(n) | {"request_id": f"t{slot}-{n}"}
            results[slot].append(
                (log.append(EntryKind.CALL, f"agent-{slot}", body), f"t{slot}-{n}")
            )

    with Log.open(data_dir, checkpoint_every_entries=300, checkpoint_every_ms=50) as log:
        workers = [threading.Thread(target=work, args=(slot,)) for slot in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert log.size == threads * per_thread
    acknowledged = dict(pair for result in results for pair in result)
    assert sorted(acknowledged) == list(range(threads * per_thread))
    for result in results:  # one thread's appends are ordered
        assert [index for index, _ in result] == sorted(index for index, _ in result)
    with Log.open(data_dir, full_check=True) as log:
        assert log.size == threads * per_thread
        for index, raw in enumerate(log.entries(0, log.size)):
            assert LogEntry.from_bytes(raw).body["request_id"] == acknowledged[index]
        checkpoint = verify_checkpoint(
            log.latest_checkpoint(), verifiers=[verifier_of(log)], origin=log.origin
        )
        assert checkpoint.size == log.size


def test_checkpoint_sizes_only_grow_and_stay_consistent(data_dir: Path) -> None:
    with Log.open(data_dir, checkpoint_every_entries=25, checkpoint_every_ms=5) as log:

        def work() -> None:
            for n in range(150):
                log.append(EntryKind.AUDIT, "a", {"n": n})

        workers = [threading.Thread(target=work) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        verifier = verifier_of(log)
        signed = [
            verify_checkpoint(text, verifiers=[verifier], origin=log.origin)
            for text in stored_checkpoints(data_dir)
        ]
        sizes = [cp.size for cp in signed]
        assert sizes == sorted(set(sizes))
        for old, new in itertools.pairwise(signed[1:]):
            verify_consistency(
                first_size=old.size,
                second_size=new.size,
                first_root=old.root_hash,
                second_root=new.root_hash,
                proof=log.consistency_proof(old.size, new.size),
            )


# -- checkpoints in batches ---------------------------------------------------------------------


def test_checkpoints_are_signed_per_batch_of_entries_not_per_entry(
    open_log: Callable[..., Log], data_dir: Path
) -> None:
    log = open_log(clock_ms=Clock(), checkpoint_every_entries=10, checkpoint_every_ms=10**9)
    for n in range(35):
        log.append(EntryKind.AUDIT, "a", {"n": n})
    assert len(stored_checkpoints(data_dir)) == 4  # sizes 0, 10, 20, 30
    assert log.latest_checkpoint() == stored_checkpoints(data_dir)[-1]


def test_checkpoint_after_the_interval_even_without_new_entries(
    open_log: Callable[..., Log],
) -> None:
    clock = Clock()
    log = open_log(clock_ms=clock, checkpoint_every_entries=1000, checkpoint_every_ms=1000)
    log.append_batch([(EntryKind.AUDIT, "a", {"n": n}) for n in range(3)])
    assert Checkpoint.from_text(log.latest_checkpoint().split("\n\n")[0] + "\n").size == 0
    clock.now += 1000  # due at the next commit
    log.append(EntryKind.AUDIT, "a", {"n": 3})
    assert Checkpoint.from_text(log.latest_checkpoint().split("\n\n")[0] + "\n").size == 4


def test_the_timer_signs_a_checkpoint_when_appends_stop(open_log: Callable[..., Log]) -> None:
    log = open_log(checkpoint_every_entries=1000, checkpoint_every_ms=30)
    log.append(EntryKind.AUDIT, "a", {"n": 0})
    log.append(EntryKind.AUDIT, "a", {"n": 1})
    deadline = time.monotonic() + 5
    while f"\n{log.size}\n" not in log.latest_checkpoint() and time.monotonic() < deadline:
        time.sleep(0.01)
    checkpoint = verify_checkpoint(
        log.latest_checkpoint(), verifiers=[verifier_of(log)], origin=log.origin
    )
    assert (checkpoint.size, checkpoint.root_hash) == (2, log.root())


def test_checkpoint_now_signs_only_when_newer(open_log: Callable[..., Log]) -> None:
    log = open_log(**QUIET)
    first = log.checkpoint_now()
    assert first == log.latest_checkpoint()
    log.append(EntryKind.AUDIT, "a", {"n": 0})
    second = log.checkpoint_now()
    assert second != first
    assert log.checkpoint_now() == second
    assert verify_checkpoint(second, verifiers=[verifier_of(log)], origin=log.origin).size == 1


def test_close_writes_a_final_checkpoint_and_refuses_more(data_dir: Path) -> None:
    log = Log.open(data_dir, **QUIET)
    log.append_batch([(EntryKind.AUDIT, "a", {"n": n}) for n in range(3)])
    log.close()
    log.close()  # idempotent
    with pytest.raises(LogUnavailable) as exc:
        log.append(EntryKind.AUDIT, "a", {"n": 4})
    assert exc.value.code == "log.closed"
    assert "\n3\n" in stored_checkpoints(data_dir)[-1]


# -- WAL checkpoints ---------------------------------------------------------------------------

#: Bounds a wait for the background checkpointer (it runs every few ms in these tests).
WAL_WAIT_S = 10.0


def wal_size(data_dir: Path) -> int:
    wal = data_dir / (DB_FILENAME + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def main_file_entries(data_dir: Path, tmp_path: Path) -> int:
    """Entry rows in a copy of the database file alone: what checkpoints have moved out of the
    WAL (-1 while the copy caught a checkpoint half way)."""
    copy = tmp_path / "main-file-only.sqlite3"
    copy.unlink(missing_ok=True)
    copy.write_bytes((data_dir / DB_FILENAME).read_bytes())
    try:
        with contextlib.closing(sqlite3.connect(copy)) as conn:
            return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
    except sqlite3.DatabaseError:
        return -1


def moved_to_file(data_dir: Path, tmp_path: Path, entries: int) -> bool:
    return main_file_entries(data_dir, tmp_path) == entries


def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAL_WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_wal_is_checkpointed_in_the_background_and_stays_bounded(
    data_dir: Path, tmp_path: Path
) -> None:
    log = Log.open(data_dir, wal_checkpoint_every_ms=5, **QUIET)
    try:
        batch = [(EntryKind.CALL, "a", call_body(n)) for n in range(200)]
        sizes = []
        for round_ in range(1, 7):
            log.append_batch(batch)
            # The writer never checkpoints: only the background thread moves rows to the file.
            assert wait_until(functools.partial(moved_to_file, data_dir, tmp_path, 200 * round_))
            time.sleep(0.05)  # let the checkpoint record that it finished
            sizes.append(wal_size(data_dir))
        # Each round starts the WAL over instead of growing it (six rounds would be ~6x).
        assert 0 < sizes[-1] < 3 * sizes[0]
    finally:
        log.close()
    assert wal_size(data_dir) == 0
    assert main_file_entries(data_dir, tmp_path) == 1200


def test_a_wal_over_the_limit_is_truncated_once_a_reader_lets_go(data_dir: Path) -> None:
    log = Log.open(data_dir, wal_checkpoint_every_ms=5, wal_limit_bytes=1, **QUIET)
    try:
        reader = sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM entries").fetchone()  # pins the WAL from here on
        for n in range(20):
            log.append_batch([(EntryKind.CALL, "a", call_body(n))] * 10)  # never held up
        assert log.size == 200
        time.sleep(0.1)
        assert wal_size(data_dir) > 0  # the reader still needs it
        reader.execute("COMMIT")
        reader.close()
        assert wait_until(lambda: wal_size(data_dir) == 0)  # truncated while the log is open
        log.append(EntryKind.AUDIT, "a", {"n": 1})
        assert log.size == 201
    finally:
        log.close()
    assert wal_size(data_dir) == 0


# -- bad input ---------------------------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(depth):
        body = {"x": body}
    return body


BAD_ITEMS = [
    pytest.param(
        EntryKind.CALL, "a", {"provider": "p", "model": "m"}, "log.entry_malformed", id="no-usage"
    ),
    pytest.param(
        EntryKind.CALL,
        "a",
        call_body(0) | {"usage": {"input_tokens": -1}},
        "log.entry_malformed",
        id="negative-tokens",
    ),
    pytest.param(
        EntryKind.CALL, "a", call_body(0) | {"prompt": "secret"}, "log.entry_malformed", id="extra"
    ),
    pytest.param("call", "a", call_body(0), "log.entry_malformed", id="kind-not-enum"),
    pytest.param(EntryKind.AUDIT, "", {"n": 1}, "log.entry_malformed", id="empty-agent"),
    pytest.param(EntryKind.AUDIT, "a" * 257, {"n": 1}, "log.entry_malformed", id="long-agent"),
    pytest.param(EntryKind.AUDIT, "a", ["not", "an", "object"], "log.entry_malformed", id="list"),
    pytest.param(EntryKind.AUDIT, "a", {"n": 2**60}, "input.unsafe_integer", id="unsafe-int"),
    pytest.param(EntryKind.AUDIT, "a", {"n": math.nan}, "input.not_canonicalizable", id="nan"),
    pytest.param(EntryKind.AUDIT, "a", {"n": {1, 2}}, "input.not_canonicalizable", id="set"),
    pytest.param(
        EntryKind.AUDIT, "a", {"s": "\ud800"}, "input.not_canonicalizable", id="surrogate"
    ),
    pytest.param(EntryKind.AUDIT, "a", _nested(70), "input.too_deep", id="deep"),
    pytest.param(EntryKind.AUDIT, "a", _nested(5000), "input.too_deep", id="very-deep"),
    pytest.param(EntryKind.AUDIT, "a", {"s": "x" * 70_000}, "log.entry_too_large", id="large"),
]


@pytest.mark.parametrize(("kind", "agent", "body", "code"), BAD_ITEMS)
def test_invalid_items_are_refused_and_nothing_is_written(
    open_log: Callable[..., Log], kind: Any, agent: Any, body: Any, code: str
) -> None:
    log = open_log(**QUIET)
    log.append(EntryKind.AUDIT, "a", {"n": 0})
    with pytest.raises(MalformedInput) as exc:
        log.append(kind, agent, body)
    assert exc.value.code == code
    with pytest.raises(MalformedInput) as exc:
        log.append_batch([(EntryKind.AUDIT, "a", {"n": 1}), (kind, agent, body)])
    assert exc.value.code == code
    assert log.size == 1
    # ... and the log goes on.
    assert log.append(EntryKind.AUDIT, "a", {"n": 1}) == 1


def test_malformed_batch_items_are_refused(open_log: Callable[..., Log]) -> None:
    log = open_log(**QUIET)
    with pytest.raises(MalformedInput) as exc:
        log.append_batch([(EntryKind.AUDIT, "a")])  # type: ignore[list-item]
    assert exc.value.code == "log.entry_malformed"
    assert log.append_batch([]) == []
    assert log.size == 0


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**62), max_value=2**62)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5))
def test_whatever_is_accepted_parses_back_exactly(
    tmp_path_factory: pytest.TempPathFactory, body: dict[str, Any]
) -> None:
    log = _shared_log(tmp_path_factory)
    size = log.size
    try:
        index = log.append(EntryKind.AUDIT, "fuzz", body)
    except MalformedInput:
        assert log.size == size
        return
    raw = log.entries(index, index + 1)[0]
    assert LogEntry.from_bytes(raw).to_bytes() == raw


_SHARED: dict[str, Log] = {}


def _shared_log(factory: pytest.TempPathFactory) -> Log:
    if "log" not in _SHARED:
        _SHARED["log"] = Log.open(factory.mktemp("fuzz") / "var", **QUIET)
    return _SHARED["log"]


@pytest.fixture(scope="module", autouse=True)
def _close_shared_log() -> Iterator[None]:
    yield
    if "log" in _SHARED:
        _SHARED.pop("log").close()


# -- the start-up self-check -----------------------------------------------------------------


def crashed_log(data_dir: Path, entries: int = 25, every: int = 10) -> None:
    """A log whose writer stopped without closing: checkpoints at 0, 10, 20; entries 20-24 after.

    The abandoned Log's writer stays idle (its thread is a daemon); nothing else writes.
    """
    log = Log.open(
        data_dir, clock_ms=Clock(), checkpoint_every_entries=every, checkpoint_every_ms=10**9
    )
    for n in range(entries):
        log.append(EntryKind.CALL, "agent-1", call_body(n))


def tamper(data_dir: Path, sql: str, *params: Any) -> None:
    with sqlite3.connect(data_dir / DB_FILENAME) as conn:
        assert conn.execute(sql, params).rowcount >= 1


def entry_bytes(data_dir: Path, index: int) -> bytes:
    with sqlite3.connect(data_dir / DB_FILENAME) as conn:
        (raw,) = conn.execute('SELECT entry FROM entries WHERE "index" = ?', (index,)).fetchone()
    return bytes(raw)


def rewritten_entry(data_dir: Path, index: int, **changes: Any) -> bytes:
    entry = LogEntry.from_bytes(entry_bytes(data_dir, index))
    fields = {
        "index": entry.index,
        "prev": entry.prev,
        "kind": entry.kind,
        "time_ms": entry.time_ms,
        "agent": entry.agent,
        "body": entry.body,
    } | changes
    return LogEntry(**fields).to_bytes()


def test_a_crashed_log_reopens_and_is_checkpointed(data_dir: Path) -> None:
    crashed_log(data_dir)
    assert len(stored_checkpoints(data_dir)) == 3
    with Log.open(data_dir) as log:
        assert log.size == 25
        assert "\n25\n" in log.latest_checkpoint()
        assert log.append(EntryKind.AUDIT, "a", {"after": "crash"}) == 25


def _edit_tail_entry(data_dir: Path) -> None:
    tamper(
        data_dir,
        'UPDATE entries SET entry = ? WHERE "index" = 22',
        rewritten_entry(data_dir, 22, agent="mallory"),
    )


def _edit_tail_entry_and_leaf(data_dir: Path) -> None:
    raw = rewritten_entry(data_dir, 22, agent="mallory")
    tamper(
        data_dir,
        'UPDATE entries SET entry = ?, leaf_hash = ? WHERE "index" = 22',
        raw,
        hash_leaf(raw),
    )


def _replace_checkpoint(data_dir: Path, note: str) -> None:
    tamper(data_dir, "UPDATE checkpoints SET note = ? WHERE size = 20", note)


def _foreign_checkpoint(data_dir: Path) -> None:
    with sqlite3.connect(data_dir / DB_FILENAME) as conn:
        origin = conn.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()[0]
        root = conn.execute("SELECT root FROM checkpoints WHERE size = 20").fetchone()[0]
    forger = NoteSigner(origin, PrivateKey.generate())
    _replace_checkpoint(data_dir, sign_checkpoint(Checkpoint(origin, 20, root), forger))


def _checkpoint_of_another_size(data_dir: Path) -> None:
    (note,) = [text for text in stored_checkpoints(data_dir) if "\n10\n" in text]
    _replace_checkpoint(data_dir, note)


def _delete_tail(data_dir: Path) -> None:
    # A consistent-looking truncation: entries and their nodes from 15 on are gone.
    tamper(data_dir, 'DELETE FROM entries WHERE "index" >= 15')
    tamper(data_dir, 'DELETE FROM nodes WHERE ("index" + 1) << level > 15')


TAMPERING = [
    pytest.param(_edit_tail_entry, "entry 22: stored leaf hash", id="edit-entry"),
    pytest.param(_edit_tail_entry_and_leaf, "chain: entry 23", id="edit-entry-and-leaf-hash"),
    pytest.param(
        lambda d: tamper(
            d, 'UPDATE nodes SET hash = ? WHERE level = 0 AND "index" = 22', bytes(32)
        ),
        "tree: node (0, 22)",
        id="leaf-node-after-checkpoint",
    ),
    pytest.param(
        lambda d: tamper(d, 'UPDATE entries SET entry = ? WHERE "index" = 23', b"not json"),
        "entry 23: not a valid entry",
        id="garbage-entry",
    ),
    pytest.param(
        lambda d: tamper(d, 'UPDATE entries SET entry = ? WHERE "index" = 21', entry_bytes(d, 22)),
        "entry 21: stored under 21 but says index 22",
        id="reorder",
    ),
    pytest.param(
        lambda d: tamper(d, 'DELETE FROM entries WHERE "index" = 5'),
        "entry 5 is missing",
        id="delete-old-row",
    ),
    pytest.param(
        lambda d: tamper(d, 'DELETE FROM entries WHERE "index" = 24'),
        "nodes stored",
        id="delete-last-row",
    ),
    pytest.param(_delete_tail, "checkpoint at size 20: only 15 entries", id="truncate"),
    pytest.param(
        lambda d: tamper(d, 'UPDATE nodes SET hash = ? WHERE level = 4 AND "index" = 0', bytes(32)),
        "stored tree's root at size 20",
        id="node-under-checkpoint",
    ),
    pytest.param(
        lambda d: tamper(
            d, 'UPDATE nodes SET hash = ? WHERE level = 1 AND "index" = 11', bytes(32)
        ),
        "tree: node (1, 11)",
        id="node-after-checkpoint",
    ),
    pytest.param(
        lambda d: tamper(d, 'DELETE FROM nodes WHERE level = 2 AND "index" = 4'),
        "nodes stored",
        id="node-deleted",
    ),
    pytest.param(_foreign_checkpoint, "checkpoint at size 20", id="checkpoint-foreign-key"),
    pytest.param(
        _checkpoint_of_another_size, "its signed note says size 10", id="checkpoint-swapped"
    ),
    pytest.param(
        lambda d: _replace_checkpoint(d, "not a note\n"),
        "checkpoint at size 20",
        id="checkpoint-garbage",
    ),
    pytest.param(
        lambda d: tamper(d, "UPDATE meta SET value = '2' WHERE key = 'format_version'"),
        "format version '2'",
        id="format-version",
    ),
    pytest.param(
        lambda d: (d / "log.pub").write_text(PrivateKey.generate().public_key.to_b64url() + "\n"),
        "log.pub is not the public half",
        id="log-pub",
    ),
    pytest.param(lambda d: (d / "log.key").unlink(), "log.key is missing", id="log-key-missing"),
]


@pytest.mark.parametrize(("damage", "message"), TAMPERING)
def test_the_self_check_refuses_a_damaged_log(
    data_dir: Path, damage: Callable[[Path], None], message: str
) -> None:
    crashed_log(data_dir)
    damage(data_dir)
    with pytest.raises(LogInconsistent) as exc:
        Log.open(data_dir)
    assert exc.value.code == "log.inconsistent"
    assert message in str(exc.value)


def test_the_full_check_also_reads_what_the_last_checkpoint_covers(data_dir: Path) -> None:
    crashed_log(data_dir)
    with Log.open(data_dir, full_check=True) as log:
        assert log.size == 25  # an undamaged log passes, and is checkpointed at 25
    # Below the last checkpoint the quick check trusts the tree; the full check reads it all.
    raw = rewritten_entry(data_dir, 3, agent="mallory")
    tamper(
        data_dir,
        'UPDATE entries SET entry = ?, leaf_hash = ? WHERE "index" = 3',
        raw,
        hash_leaf(raw),
    )
    with pytest.raises(LogInconsistent) as exc:
        Log.open(data_dir, full_check=True)
    assert "chain: entry 4" in str(exc.value)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        pytest.param(
            'UPDATE nodes SET hash = ? WHERE level = 1 AND "index" = 3',
            "tree: node (1, 3)",
            id="node",
        ),
        pytest.param(
            'UPDATE entries SET leaf_hash = ? WHERE "index" = 7',
            "entry 7: stored leaf hash",
            id="leaf",
        ),
        pytest.param(
            "UPDATE checkpoints SET root = ? WHERE size = 10", "checkpoint at size 10", id="old-cp"
        ),
    ],
)
def test_the_full_check_finds_damage_below_the_last_checkpoint(
    data_dir: Path, sql: str, message: str
) -> None:
    crashed_log(data_dir)
    tamper(data_dir, sql, bytes(32))
    with pytest.raises(LogInconsistent) as exc:
        Log.open(data_dir, full_check=True)
    assert message in str(exc.value)
