"""Who is calling: an agent's identity comes from the socket its call arrived on, or on TCP
from the client certificate it presented.

grpcio (checked with 1.85) does not expose Unix-socket peer credentials: on a ``unix:`` port
``context.peer()`` is just ``"unix:"``, and ``context.auth_context()`` holds only
``transport_security_type`` (``insecure``, or ``local`` with local credentials) and
``security_level``; no uid, gid or pid. So tallystickd gives every configured agent its own
socket, ``DATA_DIR/agents/<id>.sock``, owned and moded so that only that agent can connect,
and serves each socket with its own ``grpc.server`` whose services are bound to that agent.
The identity of a call is therefore fixed by the server that received it; no request field
can change it. The shared socket has no agent identity and serves only read-only calls.

The TCP port (opt-in) requires mutual TLS: the handshake verifies the client certificate
against the configured client CA, and each call is resolved to the agent that certificate
names (:func:`certificate_caller`, via ``context.auth_context()``); an agent that is not
configured is refused with ``auth.unknown_agent``. Requests never carry an agent id.
"""

from __future__ import annotations

import contextlib
import grp
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tallystick.verifier.errors import IdentityUnresolvable

from .config import Config, ConfigError, split_host_port
from .tls import TlsMaterial, agent_id_from_pem

__all__ = [
    "Caller",
    "Listener",
    "TcpListener",
    "certificate_caller",
    "listeners",
    "private_umask",
    "secure_socket",
    "tcp_listener",
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


@dataclass(frozen=True, slots=True)
class TcpListener:
    """The TCP port with mutual TLS: ``host`` and ``port`` to bind, and the TLS files.

    ``port`` 0 binds a free port; the daemon reports the one bound.
    """

    host: str
    port: int
    tls_cert: Path
    tls_key: Path
    tls_client_ca: Path

    def address(self, port: int | None = None) -> str:
        """``HOST:PORT`` (``[IPV6]:PORT``), with ``port`` in place of the configured one."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port if port is None else port}"

    def load_tls(self) -> TlsMaterial:
        """The server's chain and key and the client CA, read and checked.

        :raises TlsError: a file is unreadable, not PEM, or the key is not the certificate's.
        """
        return TlsMaterial.load(
            certificate=self.tls_cert, key=self.tls_key, trusted=self.tls_client_ca
        )


def tcp_listener(config: Config) -> TcpListener | None:
    """The TCP port to serve, or None when ``listen_tcp`` is not set."""
    if config.listen_tcp is None:
        return None
    # The config validated listen_tcp and that every TLS file is named.
    assert config.tls_cert and config.tls_key and config.tls_client_ca
    host, port = split_host_port(config.listen_tcp)
    return TcpListener(host, port, config.tls_cert, config.tls_key, config.tls_client_ca)


def certificate_caller(
    auth_context: Mapping[str, Iterable[bytes]], agents: Collection[str]
) -> Caller:
    """The caller of a TCP call: the agent its verified client certificate names.

    ``auth_context`` is gRPC's ``context.auth_context()``; the handshake has verified the
    certificate (``require_client_auth``), so only the agent it names is read here.

    :raises IdentityUnresolvable: no client certificate (``auth.no_client_certificate``), a
        certificate naming no single agent (``auth.bad_client_certificate``), or an agent
        that is not configured (``auth.unknown_agent``).
    """
    pems = list(auth_context.get("x509_pem_cert", ()))
    if not pems:
        raise IdentityUnresolvable(
            "no client certificate: the TCP port needs mutual TLS",
            code="auth.no_client_certificate",
        )
    agent = agent_id_from_pem(bytes(pems[0]))
    if agent not in agents:
        raise IdentityUnresolvable(
            f"agent {agent!r}: named by the client certificate, but not configured "
            "(tallystickd --agent ID)",
            code="auth.unknown_agent",
        )
    return Caller(agent)


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
