"""Log key rotation: a real log rotated twice, reopened, exported and verified offline.

Real files, a real SQLite log, the real ``keys rotate`` command (its registered parser, as
the ``tallystick.cli`` entry point adds it) and the real offline ``tallystick log verify``.
"""

from __future__ import annotations

import argparse
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tallystick.daemon.errors import LogInconsistent, LogUnavailable
from tallystick.daemon.keys_cli import register, rotate_log_key
from tallystick.daemon.log import Log, export_data_dir
from tallystick.daemon.log_keys import (
    HISTORY_FILE,
    OVERLAP_MS,
    archived_key_path,
    read_history,
)
from tallystick.daemon.storage.sqlite import DB_FILENAME
from tallystick.verifier import _cli
from tallystick.verifier._internal.encoding import b64url_encode
from tallystick.verifier.canonical import canonicalize
from tallystick.verifier.checkpoint import (
    Checkpoint,
    NoteSigner,
    SignedCheckpoint,
    SignedNote,
    sign_checkpoint,
)
from tallystick.verifier.keys import (
    DocumentSignature,
    KeyDocument,
    PrivateKey,
    PublicKey,
    load_private_key,
)
from tallystick.verifier.logbundle import Bundle, DamageKind, verify_bundle
from tallystick.verifier.logentry import EntryKind

from .conftest import RunningDaemon

T0 = 1_700_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def body(n: int) -> dict[str, Any]:
    return {"provider": "openai", "model": "gpt-4o", "usage": {"input_tokens": n}}


def append(data_dir: Path, clock: Clock, count: int) -> None:
    with Log.open(data_dir, clock_ms=clock) as log:
        for n in range(count):
            clock.now += 1000
            log.append(EntryKind.CALL, "agent-1", body(n))
            log.checkpoint_now()


def keys_command(*argv: str) -> int:
    """``tallystick keys ARGV`` through the parser ``register`` builds."""
    parser = _cli._build_parser([register])
    args: argparse.Namespace = parser.parse_args(["keys", *argv])
    code: int = args.handler(args)
    return code


def pub(data_dir: Path) -> PublicKey:
    return PublicKey.from_text((data_dir / "log.pub").read_text())


def stored_notes(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / DB_FILENAME) as conn:
        return [row[0] for row in conn.execute("SELECT note FROM checkpoints ORDER BY size")]


@pytest.fixture
def rotated(tmp_path: Path) -> tuple[Path, Clock, list[PublicKey]]:
    """A log rotated twice (the API once, the command once), with entries around each."""
    data_dir, clock = tmp_path / "var", Clock()
    append(data_dir, clock, 3)
    keys = [pub(data_dir)]
    clock.now += 1000
    rotation = rotate_log_key(data_dir, now_ms=clock.now)
    assert (rotation.version, rotation.old_kid) == (2, keys[0].kid)
    keys.append(pub(data_dir))
    append(data_dir, clock, 2)
    clock.now = 2 * T0  # the command uses the wall clock: entries after it must be newer
    assert keys_command("rotate", "--data-dir", str(data_dir)) == 0
    keys.append(pub(data_dir))
    append(data_dir, clock, 2)
    return data_dir, clock, keys


def test_rotating_twice_keeps_every_checkpoint_verifiable(
    rotated: tuple[Path, Clock, list[PublicKey]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir, clock, keys = rotated
    assert len({key.kid for key in keys}) == 3
    history = read_history(data_dir)
    assert [doc.version for doc in history] == [1, 2, 3]
    assert [entry.kid for entry in history[-1].keys] == [key.kid for key in keys]
    with Log.open(data_dir, clock_ms=clock, full_check=True) as log:
        assert log.size == 7
        assert log.public_key == keys[2]
        origin = log.origin
        out = tmp_path / "api.bundle"
        log.export(out)
    assert origin == "tallystick.local/" + keys[0].to_b64url()[:16]  # the origin never changes
    export_data_dir(data_dir, tmp_path / "dir.bundle")
    for name in ("api.bundle", "dir.bundle"):
        bundle = Bundle.from_path(tmp_path / name)
        assert bundle.key_documents == tuple(history)
        for key in keys:
            report = verify_bundle(bundle, log_key=key)
            assert report.damage is None, (name, key.kid)
            assert report.checkpoints == len(stored_notes(data_dir))
        # The checkpoints signed before any rotation verify with the original key alone.
        first = SignedCheckpoint.from_text(bundle.checkpoints[1])
        assert first.note.signatures[0].name == origin
        assert len(first.note.signatures) == 1
    anchor = tmp_path / "anchor.pub"
    anchor.write_text(keys[0].to_b64url() + "\n")
    capsys.readouterr()
    assert _cli.main(["log", "verify", str(tmp_path / "dir.bundle"), "--log-key", str(anchor)]) == 0


def test_keys_are_private_and_every_key_is_kept(
    rotated: tuple[Path, Clock, list[PublicKey]],
) -> None:
    data_dir, _, keys = rotated
    assert stat.S_IMODE((data_dir / "keys").stat().st_mode) == 0o700
    for path in [
        data_dir / "log.key",
        data_dir / HISTORY_FILE,
        *(archived_key_path(data_dir, key.kid) for key in keys),
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for key in keys:
        assert load_private_key(archived_key_path(data_dir, key.kid)).public_key == key
    assert load_private_key(data_dir / "log.key").public_key == keys[2]


def test_the_retired_key_co_signs_only_during_the_overlap(tmp_path: Path) -> None:
    data_dir, clock = tmp_path / "var", Clock()
    append(data_dir, clock, 1)
    rotation = rotate_log_key(data_dir, now_ms=clock.now + 1)
    append(data_dir, clock, 1)
    during = SignedNote.from_text(stored_notes(data_dir)[-1])
    assert len(during.signatures) == 2
    clock.now = rotation.rotated_at + OVERLAP_MS
    append(data_dir, clock, 1)
    after = SignedNote.from_text(stored_notes(data_dir)[-1])
    assert len(after.signatures) == 1
    with Log.open(data_dir, clock_ms=clock, full_check=True) as log:
        assert log.size == 3


def test_a_data_dir_from_before_rotation_gets_version_1_on_its_first_rotation(
    tmp_path: Path,
) -> None:
    data_dir, clock = tmp_path / "var", Clock()
    append(data_dir, clock, 2)
    original = pub(data_dir)
    (data_dir / HISTORY_FILE).unlink()  # as a daemon from before rotation left it
    rotate_log_key(data_dir, now_ms=clock.now + 1)
    assert [doc.version for doc in read_history(data_dir)] == [1, 2]
    append(data_dir, clock, 1)
    out = tmp_path / "b"
    export_data_dir(data_dir, out)
    assert verify_bundle(Bundle.from_path(out), log_key=original).damage is None


def test_a_rotation_interrupted_after_its_commit_point_is_finished_on_start(
    tmp_path: Path,
) -> None:
    data_dir, clock = tmp_path / "var", Clock()
    append(data_dir, clock, 1)
    old_pem = (data_dir / "log.key").read_bytes()
    old_pub = (data_dir / "log.pub").read_text()
    rotate_log_key(data_dir, now_ms=clock.now + 1)
    new_pub = pub(data_dir)
    (data_dir / "log.key").write_bytes(old_pem)  # as if the key switch never happened
    (data_dir / "log.pub").write_text(old_pub)
    with Log.open(data_dir, clock_ms=clock) as log:
        assert log.public_key == new_pub
    assert pub(data_dir) == new_pub


# -- what the checks refuse -------------------------------------------------------------------


def sign_document(doc: KeyDocument, *keys: PrivateKey) -> KeyDocument:
    body = doc.signed_bytes()
    signatures = tuple(
        DocumentSignature(kid=key.kid, sig=b64url_encode(key.sign(body))) for key in keys
    )
    return doc.model_copy(update={"signatures": signatures})


def write_history(data_dir: Path, documents: list[KeyDocument]) -> None:
    raw = canonicalize([doc.model_dump(mode="json") for doc in documents]) + b"\n"
    (data_dir / HISTORY_FILE).write_bytes(raw)


def forged_by_new_key(data_dir: Path, history: list[KeyDocument]) -> list[KeyDocument]:
    """A version 3 adding an attacker's key, signed only by that key."""
    attacker = PrivateKey.generate()
    current = load_private_key(data_dir / "log.key")
    forged = history[-1].rotate(old_key=current, new_key=attacker, at_ms=3 * T0)
    return [*history, sign_document(forged, attacker)]


def broken_prev(data_dir: Path, history: list[KeyDocument]) -> list[KeyDocument]:
    """Version 3 re-signed by both of its keys, but naming the wrong predecessor."""
    old = load_private_key(archived_key_path(data_dir, history[-1].keys[1].kid))
    new = load_private_key(data_dir / "log.key")
    relinked = history[-1].model_copy(update={"prev": history[0].digest()})
    return [*history[:-1], sign_document(relinked, old, new)]


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        pytest.param(forged_by_new_key, "key.document_unsigned", id="signed-only-by-new-key"),
        pytest.param(broken_prev, "key.document_chain", id="broken-prev-link"),
        pytest.param(lambda _, history: history[1:], "key.document_chain", id="no-version-1"),
    ],
)
def test_a_tampered_key_history_is_refused_on_start_and_offline(
    rotated: tuple[Path, Clock, list[PublicKey]],
    tmp_path: Path,
    tamper: Callable[[Path, list[KeyDocument]], list[KeyDocument]],
    code: str,
) -> None:
    data_dir, clock, keys = rotated
    documents = tamper(data_dir, read_history(data_dir))
    out = tmp_path / "b"
    export_data_dir(data_dir, out)
    write_history(data_dir, documents)
    with pytest.raises(LogInconsistent) as exc:
        Log.open(data_dir, clock_ms=clock)
    assert exc.value.code == "log.keys_invalid"
    assert code in str(exc.value)
    bundle = Bundle.from_path(out)
    forged = Bundle(
        bundle.origin, bundle.log_vkey, bundle.entries, bundle.checkpoints, tuple(documents)
    )
    damage = verify_bundle(forged, log_key=keys[0]).damage
    assert damage is not None
    assert damage.kind is DamageKind.KEY_DOCUMENT_INVALID
    assert damage.detail.startswith(code)


def test_a_checkpoint_by_a_retired_key_after_its_retirement_is_refused(
    rotated: tuple[Path, Clock, list[PublicKey]], tmp_path: Path
) -> None:
    data_dir, clock, keys = rotated
    original = load_private_key(archived_key_path(data_dir, keys[0].kid))
    with sqlite3.connect(data_dir / DB_FILENAME) as conn:
        size, root = conn.execute(
            "SELECT size, root FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        origin = "tallystick.local/" + keys[0].to_b64url()[:16]
        note = sign_checkpoint(Checkpoint(origin, size, root), NoteSigner(origin, original))
        conn.execute("UPDATE checkpoints SET note = ? WHERE size = ?", (note, size))
    out = tmp_path / "b"
    export_data_dir(data_dir, out)
    with pytest.raises(LogInconsistent) as exc:
        Log.open(data_dir, clock_ms=clock)
    assert "checkpoint.retired_key" in str(exc.value)
    damage = verify_bundle(Bundle.from_path(out), log_key=keys[0]).damage
    assert damage is not None
    assert (damage.kind, damage.index) == (DamageKind.WRONG_KEY, size)


def test_rotation_refuses_while_the_daemon_runs(
    start_daemon: Callable[..., RunningDaemon],
) -> None:
    running = start_daemon()
    before = (running.data_dir / "log.key").read_bytes()
    with pytest.raises(LogUnavailable) as exc:
        keys_command("rotate", "--data-dir", str(running.data_dir))
    assert exc.value.code == "keys.daemon_running"
    assert (running.data_dir / "log.key").read_bytes() == before
    assert not (running.data_dir / HISTORY_FILE).exists() or [
        doc.version for doc in read_history(running.data_dir)
    ] == [1]


def test_rotation_refuses_a_directory_without_a_log(tmp_path: Path) -> None:
    with pytest.raises(LogUnavailable) as exc:
        rotate_log_key(tmp_path, now_ms=T0)
    assert exc.value.code == "log.not_found"
    assert list(tmp_path.iterdir()) == []
