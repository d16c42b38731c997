"""The durable spool: order, persistence across reopening, privacy, one owner, one target."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tallystick.sdk.errors import SpoolError
from tallystick.sdk.spool import Spool

from .conftest import make_call

TARGET = "unix:/run/tallystick/agents/alice.sock"


def test_records_come_back_in_order_and_go_only_when_removed(short_dir: Path) -> None:
    spool = Spool.open(short_dir / "s", target=TARGET)
    spool.append([make_call("a"), make_call("b")])
    spool.append([make_call("c")])
    records, corrupt = spool.head(2)
    assert [r.call.model for r in records] == ["a", "b"] and corrupt == []
    assert len(spool) == 3
    spool.remove_through(records[-1].id)
    assert [r.call.model for r in spool.head(10)[0]] == ["c"]
    spool.close()


def test_records_survive_reopening_and_the_files_are_private(short_dir: Path) -> None:
    directory = short_dir / "s"
    spool = Spool.open(directory, target=TARGET)
    spool.append([make_call("kept")])
    spool.close()
    assert directory.stat().st_mode & 0o777 == 0o700
    assert spool.path.stat().st_mode & 0o777 == 0o600
    again = Spool.open(directory, target=TARGET)
    ((record), *_), _ = again.head(5)
    assert record.call == make_call("kept")
    again.append([make_call("next")])
    ids = [r.id for r in again.head(5)[0]]
    assert ids == sorted(ids) and len(set(ids)) == 2
    again.close()


def test_a_second_owner_is_refused(short_dir: Path) -> None:
    first = Spool.open(short_dir / "s", target=TARGET)
    with pytest.raises(SpoolError) as caught:
        Spool.open(short_dir / "s", target=TARGET)
    assert caught.value.code == "sdk.spool_locked"
    first.close()
    Spool.open(short_dir / "s", target=TARGET).close()  # free again


def test_a_file_of_another_target_is_refused(short_dir: Path) -> None:
    spool = Spool.open(short_dir / "s", target=TARGET)
    path = spool.path
    spool.close()
    other = "unix:/run/tallystick/agents/bob.sock"
    moved = Spool.open(short_dir / "t", target=other)
    moved_path = moved.path
    moved.close()
    path.replace(moved_path)  # alice's records under bob's name
    with pytest.raises(SpoolError) as caught:
        Spool.open(short_dir / "t", target=other)
    assert caught.value.code == "sdk.spool_mismatch"


def test_rejected_and_corrupt_rows_are_set_aside_not_lost(short_dir: Path) -> None:
    spool = Spool.open(short_dir / "s", target=TARGET)
    spool.append([make_call("bad"), make_call("good")])
    with sqlite3.connect(spool.path) as db:
        db.execute("UPDATE pending SET body = '{\"not\": 1}' WHERE id = 2")
    records, corrupt = spool.head(10)
    assert [r.call.model for r in records] == ["bad"]
    assert [c.code for c in corrupt] == ["sdk.spool_corrupt"]
    spool.reject(records[0], "ledger.call_invalid")
    assert len(spool) == 0
    assert [r.code for r in spool.rejected()] == ["ledger.call_invalid", "sdk.spool_corrupt"]
    spool.close()


def test_an_unwritable_directory_is_a_typed_error(short_dir: Path) -> None:
    blocker = short_dir / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError) as caught:
        Spool.open(blocker / "s", target=TARGET)
    assert caught.value.code == "sdk.spool_unreadable"
