"""The daemon's own rejections, in the verifier's hierarchy so one code table maps them all.

::

    TallystickError
    ├── LogInconsistent      code "log.inconsistent" (or "log.origin_mismatch"): the stored log
    │                        fails its self-check; the daemon refuses to serve it
    └── LogUnavailable       "log.closed", "log.storage_failed", "log.not_found": the log cannot
                             take or answer the request now; nothing was written
"""

from __future__ import annotations

from tallystick.verifier.errors import TallystickError

__all__ = ["LogInconsistent", "LogUnavailable"]


class LogInconsistent(TallystickError):
    """The stored log contradicts itself (chain, tree or checkpoint); the message says where."""

    default_code = "log.inconsistent"


class LogUnavailable(TallystickError):
    """The log is closed, missing, or its storage failed; the request had no effect."""

    default_code = "log.storage_failed"
