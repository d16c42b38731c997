"""Durable, atomic file writes for the daemon's keys and small state files.

Each write goes to ``NAME.new``, is fsynced, renamed over ``NAME`` and the folder fsynced, so a
crash leaves the old file or the whole new one, never a torn one; private keys are 0600 from
the moment the file exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from tallystick.verifier.keys import PrivateKey, save_private_key

__all__ = ["fsync_path", "replace_bytes", "replace_private_key"]


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's metadata and data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_bytes(path: Path, data: bytes, *, mode: int) -> None:
    """Atomically and durably make ``path`` hold ``data``, with permissions ``mode``."""
    staged = path.with_name(path.name + ".new")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    staged.replace(path)
    fsync_path(path.parent)


def replace_private_key(path: Path, key: PrivateKey) -> None:
    """Atomically and durably make ``path`` hold ``key`` as PKCS#8 PEM, mode 0600."""
    staged = path.with_name(path.name + ".new")
    staged.unlink(missing_ok=True)  # left by a crash before the rename below
    save_private_key(staged, key)
    fsync_path(staged)
    staged.replace(path)
    fsync_path(path.parent)
