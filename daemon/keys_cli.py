"""``tallystick keys rotate --data-dir DIR``: rotate tallystickd's log key (see ``log_keys``).

Registered through the ``tallystick.cli`` entry point (``register``). The daemon must be
stopped: the command takes the daemon's lock file (``DIR/tallystickd.lock``) for its whole run,
so it refuses (``keys.daemon_running``, exit 2) while a daemon serves ``DIR`` and a daemon
started meanwhile refuses to start. It prints ``rotated <old kid> -> <new kid>`` and the new
``log.pub`` line, or with ``--json`` one object ``{"version", "old_kid", "new_kid",
"rotated_at", "log_pub"}``. Exit codes are the CLI's: 0 rotated, 2 refused or failed.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tallystick.verifier._cli import EXIT_OK, SubcommandGroups
from tallystick.verifier.keys import PrivateKey, load_private_key
from tallystick.verifier.logentry import LogEntry

from .errors import LogUnavailable
from .log import Log
from .log_keys import KEY_FILE, rotate_files
from .storage.sqlite import DB_FILENAME

__all__ = ["LOCK_FILE", "Rotation", "register", "rotate_log_key"]

#: The lock file a running tallystickd holds (``flock``) in its data directory.
LOCK_FILE: Final = "tallystickd.lock"


@dataclass(frozen=True, slots=True)
class Rotation:
    """A finished rotation: the key document version it added and the keys it swapped."""

    version: int
    old_kid: str
    new_kid: str
    rotated_at: int
    log_pub: str

    def to_dict(self) -> dict[str, object]:
        """The ``--json`` object."""
        return {
            "version": self.version,
            "old_kid": self.old_kid,
            "new_kid": self.new_kid,
            "rotated_at": self.rotated_at,
            "log_pub": self.log_pub,
        }


@contextmanager
def _daemon_lock(data_dir: Path) -> Iterator[None]:
    with (data_dir / LOCK_FILE).open("ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise LogUnavailable(
                f"keys: a tallystickd holds {data_dir / LOCK_FILE}; stop it before rotating",
                code="keys.daemon_running",
            ) from exc
        yield  # closing the file releases the lock


def rotate_log_key(data_dir: Path, *, now_ms: int) -> Rotation:
    """Rotate the log key of the (stopped) log in ``data_dir`` at ``now_ms``.

    Opens the log first: the self-check runs and every entry gets a checkpoint by the old key.

    :raises LogUnavailable: no log there (``log.not_found``) or a daemon runs
        (``keys.daemon_running``).
    :raises LogInconsistent: the log or its key history fails its check; nothing changes.
    :raises KeyInvalid: ``log.key`` cannot be loaded.
    """
    data_dir = Path(data_dir)
    if not (data_dir / DB_FILENAME).is_file() or not (data_dir / KEY_FILE).is_file():
        raise LogUnavailable(f"keys: {data_dir} holds no log", code="log.not_found")
    with _daemon_lock(data_dir):
        with Log.open(data_dir) as log:
            origin, size = log.origin, log.size
            newest = LogEntry.from_bytes(log.entries(size - 1, size)[0]).time_ms if size else 0
        old_key = load_private_key(data_dir / KEY_FILE)
        new_key = PrivateKey.generate()
        document = rotate_files(
            data_dir,
            origin=origin,
            old_key=old_key,
            new_key=new_key,
            at_ms=max(now_ms, newest + 1),
        )
    return Rotation(
        document.version,
        old_key.kid,
        new_key.kid,
        document.issued_at,
        new_key.public_key.to_b64url(),
    )


def _cmd_rotate(args: argparse.Namespace) -> int:
    rotation = rotate_log_key(Path(args.data_dir), now_ms=time.time_ns() // 1_000_000)
    if args.json:
        print(json.dumps(rotation.to_dict(), sort_keys=True))
    else:
        print(
            f"rotated {rotation.old_kid} -> {rotation.new_kid} (key document v{rotation.version})"
        )
        print(f"log.pub: {rotation.log_pub}")
    return EXIT_OK


def register(groups: SubcommandGroups) -> None:
    """Add ``keys rotate`` to the top-level ``tallystick`` commands."""
    keys_parser = groups[""].add_parser("keys", help="tallystickd's log key")
    commands = keys_parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    rotate = commands.add_parser(
        "rotate",
        help="rotate the log key of a stopped tallystickd (old checkpoints still verify)",
        epilog="Exit codes: 0 rotated, 2 refused (daemon running, no log, damaged log).",
    )
    rotate.add_argument("--data-dir", required=True, metavar="DIR", help="the daemon's data dir")
    rotate.add_argument("--json", action="store_true", help="print one JSON object")
    rotate.set_defaults(handler=_cmd_rotate)
