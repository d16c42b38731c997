"""Who is calling: an agent's identity comes from the socket its call arrived on.

grpcio (checked with 1.85) does not expose Unix-socket peer credentials: on a ``unix:`` port
``context.peer()`` is just ``"unix:"``, and ``context.auth_context()`` holds only
``transport_security_type`` (``insecure``, or ``local`` with local credentials) and
``security_level``; no uid, gid or pid. So tallystickd gives every configured agent its own
socket, ``DATA_DIR/agents/<id>.sock``, owned and moded so that only that agent can connect,
and serves each socket with its own ``grpc.server`` whose services are bound to that agent.
The identity of a call is therefore fixed by the server that received it; no request field
can change it. The shared socket has no agent identity and serves only read-only calls.
"""

from __future__ import annotations

import contextlib
import grp
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tallystick.verifier.errors import IdentityUnresolvable

from .config import Config, ConfigError

__all__ = [
    "Caller",
    "Listener",
    "listeners",
    "private_umask",
    "secure_socket",
]


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity of the calls that arrive on one socket; no agent on the shared one."""

    agent: str | None

    def require_agent(self) -> str:
        """The agent id, for calls that write in an agent's name.

        :raises IdentityUnresolvable: the call came in on the shared socket
            (``auth.no_agent_identity``).
        """
        if self.agent is None:
            raise IdentityUnresolvable(
                "no agent identity: this socket is shared and read-only; "
                "record calls on the agent's own socket DATA_DIR/agents/<id>.sock",
                code="auth.no_agent_identity",
            )
        return self.agent


@dataclass(frozen=True, slots=True)
class Listener:
    """One Unix socket to serve, who may connect to it, and the identity it confers."""

    path: Path
    caller: Caller
    mode: int
    uid: int | None
    group: str | int | None

    @property
    def address(self) -> str:
        """The gRPC address, ``unix:/absolute/path``."""
        return f"unix:{self.path}"


def listeners(config: Config) -> list[Listener]:
    """The shared socket first, then one socket per configured agent, in id order."""
    shared = Listener(
        config.shared_socket,
        Caller(None),
        config.socket_mode,
        None,
        config.socket_group,
    )
    agents = [
        Listener(
            config.agent_socket(agent), Caller(agent), settings.mode, settings.uid, settings.group
        )
        for agent, settings in sorted(config.agents.items())
    ]
    return [shared, *agents]


def _gid(group: str | int) -> int:
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"group {group!r} does not exist", code="config.unknown_group") from None


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Create files with mode 0600 at most while the block runs (the umask is per process)."""
    previous = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(previous)


def secure_socket(listener: Listener) -> None:
    """Give a freshly bound socket file its configured owner, group and mode.

    :raises ConfigError: an unknown group, or an owner or group the daemon may not set
        (``config.socket_permissions``).
    """
    uid = -1 if listener.uid is None else listener.uid
    gid = -1 if listener.group is None else _gid(listener.group)
    try:
        if uid != -1 or gid != -1:
            os.chown(listener.path, uid, gid)
        listener.path.chmod(listener.mode)
    except OSError as exc:
        raise ConfigError(
            f"socket {str(listener.path)!r}: cannot set owner {uid}, group {gid}, "
            f"mode {listener.mode:#o}: {exc.strerror}",
            code="config.socket_permissions",
        ) from exc
