"""The SDK's own rejections, as part of the :class:`~tallystick.verifier.errors.TallystickError`
hierarchy, each with a stable ``code``::

    TallystickError
    ├── SidecarUnavailable        sdk.sidecar_unavailable, sdk.buffer_full
    ├── SidecarRejected           the daemon's reason code (``ledger.call_invalid``, ...)
    ├── SpoolError                sdk.spool_locked, sdk.spool_mismatch, sdk.spool_unreadable
    ├── ClientClosed              sdk.client_closed
    ├── TokenRejected             the sidecar's verdict code (``hdp.revoked``, ...)
    ├── MalformedInput
    │   └── ClientConfigError     sdk.bad_address (and the daemon's ``tls.*`` codes)
    └── PolicyViolation
        ├── NoDelegation          sdk.no_delegation
        └── ScopeInsufficient
            └── ToolNotAuthorized sdk.tool_not_authorized (or the sidecar's verdict code)
"""

from __future__ import annotations

from typing import Final

from tallystick.verifier.errors import (
    MalformedInput,
    PolicyViolation,
    ScopeInsufficient,
    TallystickError,
)

__all__ = [
    "REASON_KEY",
    "ClientClosed",
    "ClientConfigError",
    "NoDelegation",
    "SidecarRejected",
    "SidecarUnavailable",
    "SpoolError",
    "TokenRejected",
    "ToolNotAuthorized",
]

#: The trailing-metadata key of the daemon's reason code (``tallystick.daemon.server.REASON_KEY``;
#: repeated here because the SDK must not import the daemon's server and its dependencies).
REASON_KEY: Final = "tallystick-reason"


class SidecarUnavailable(TallystickError):
    """The sidecar could not be reached (or answered UNAVAILABLE / missed the deadline).

    ``reason`` is the daemon's ``tallystick-reason`` when it sent one (``log.unavailable``).
    """

    default_code = "sdk.sidecar_unavailable"

    def __init__(self, message: str, *, code: str | None = None, reason: str | None = None) -> None:
        super().__init__(message, code=code)
        self.reason = reason


class SidecarRejected(TallystickError):
    """The sidecar answered with an error: ``code`` is its ``tallystick-reason`` (or
    ``grpc.<status>`` when it sent none) and ``status`` the gRPC status name."""

    default_code = "sdk.sidecar_rejected"

    def __init__(self, message: str, *, code: str | None = None, status: str) -> None:
        super().__init__(message, code=code)
        self.status = status


class SpoolError(TallystickError):
    """The durable local spool cannot be opened or used."""

    default_code = "sdk.spool_unreadable"


class ClientClosed(TallystickError):
    """A call on a client after :meth:`close`."""

    default_code = "sdk.client_closed"


class TokenRejected(TallystickError):
    """A token the sidecar found invalid: ``code`` and ``step`` are its verdict's."""

    default_code = "sdk.token_rejected"


class ClientConfigError(MalformedInput):
    """A client address, TLS file set or policy that cannot be used."""

    default_code = "sdk.bad_address"


class NoDelegation(PolicyViolation):
    """An action that needs a current delegation ran outside any."""

    default_code = "sdk.no_delegation"


class ToolNotAuthorized(ScopeInsufficient):
    """A tool call that the current delegation does not authorise; nothing ran."""

    default_code = "sdk.tool_not_authorized"
