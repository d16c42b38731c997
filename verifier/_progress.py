"""Progress on a terminal for long CLI work; silent when stderr is not a terminal or for --json.

A :class:`Progress` writes one line to standard error and rewrites it in place (``\\r``), at
most every ``interval`` seconds, then erases it when done, so standard output stays exactly
what scripts read. Progress that is not shown costs one comparison per update.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

__all__ = ["Progress", "progress_for"]


class Progress:
    """A progress line for one task. Use as a context manager; call :meth:`stage` and
    :meth:`update` (itself a ``(done, total)`` callback) while it runs."""

    def __init__(
        self,
        stream: TextIO,
        *,
        enabled: bool,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Report on ``stream`` when ``enabled``; ``clock`` is for tests."""
        self._stream = stream
        self.enabled = enabled
        self._interval = interval
        self._clock = clock
        self._label = ""
        self._shown_at: float | None = None
        self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def stage(self, label: str) -> None:
        """Start a named stage (shown at once)."""
        self._label = label
        if self.enabled:
            self._write(f"{label} ...")

    def update(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` items of the current stage (throttled)."""
        if not self.enabled:
            return
        now = self._clock()
        if done < total and self._shown_at is not None and now - self._shown_at < self._interval:
            return
        percent = 100 * done // total if total else 100
        self._write(f"{self._label}: {done}/{total} ({percent}%)")

    def close(self) -> None:
        """Erase the line."""
        if self.enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

    def _write(self, text: str) -> None:
        self._shown_at = self._clock()
        padding = " " * max(0, self._width - len(text))
        self._stream.write("\r" + text + padding)
        self._stream.flush()
        self._width = len(text)


def progress_for(*, as_json: bool, stream: TextIO | None = None) -> Progress:
    """A progress shown only when ``stream`` (default stderr) is a terminal and not ``--json``."""
    stream = sys.stderr if stream is None else stream
    try:
        is_tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        is_tty = False
    return Progress(stream, enabled=is_tty and not as_json)
