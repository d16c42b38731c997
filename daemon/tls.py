"""Mutual TLS for tallystickd's TCP port: a local CA, its certificates, and who a client is.

An agent's identity on TCP is the client certificate it presents, verified against the
configured client CA during the handshake. The agent id is the one URI subject alternative
name of the form ``tallystick://agent/<id>`` (:data:`AGENT_URI_PREFIX`); the subject's common
name is set to the id for people reading the certificate, and is never consulted. A
certificate with no such URI, or with more than one, names no agent.

Every key is ECDSA P-256 (what every TLS stack, gRPC's BoringSSL included, accepts for both
ends); every private key file is written with mode 0600 from the start and never overwritten.
:func:`init_test_setup` lays out a directory for a test set-up::

    DIR/ca.crt  DIR/ca.key                 the local CA (trust it on both sides)
    DIR/server.crt  DIR/server.key         tallystickd's certificate (SANs: the --host names)
    DIR/agents/ID.crt  DIR/agents/ID.key   one client certificate per agent
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import TypeAdapter, ValidationError
from tallystick.verifier.errors import IdentityUnresolvable

from .config import AgentId, ConfigError

__all__ = [
    "AGENTS_DIR",
    "AGENT_URI_PREFIX",
    "CA_CERT",
    "CA_KEY",
    "DEFAULT_HOSTS",
    "SERVER_CERT",
    "SERVER_KEY",
    "Issued",
    "TlsError",
    "TlsMaterial",
    "agent_files",
    "agent_id_from_pem",
    "agent_id_of",
    "agent_uri",
    "create_ca",
    "init_test_setup",
    "issue_agent",
    "issue_agents",
    "issue_server",
    "load_ca",
    "write_issued",
]

#: The URI SAN that names an agent: this prefix, then the agent id.
AGENT_URI_PREFIX: Final = "tallystick://agent/"
CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
SERVER_CERT: Final = "server.crt"
SERVER_KEY: Final = "server.key"
AGENTS_DIR: Final = "agents"
#: The server certificate's names when none are given: loopback by name, IPv4 and IPv6.
DEFAULT_HOSTS: Final = ("localhost", "127.0.0.1", "::1")

_PRIVATE_MODE: Final = 0o600
_PUBLIC_MODE: Final = 0o644
#: Certificates start this long before "now", so a client whose clock lags still accepts them.
_BACKDATE: Final = timedelta(minutes=5)
_AGENT_ID: Final = TypeAdapter(AgentId)


class TlsError(ConfigError):
    """TLS files that cannot be read, parsed, matched or written.

    Codes: ``tls.unreadable``, ``tls.invalid`` (not PEM of the expected kind, or an encrypted
    key), ``tls.key_mismatch`` (the key is not the certificate's), ``tls.exists`` (refusing to
    overwrite), ``tls.unwritable``. A :class:`~.config.ConfigError`, so tallystickd exits 2.
    """

    default_code = "tls.invalid"


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


# -- identity -----------------------------------------------------------------------------------


def agent_uri(agent_id: str) -> str:
    """The URI SAN that names ``agent_id``.

    :raises TlsError: not a valid agent id (``tls.invalid``).
    """
    return AGENT_URI_PREFIX + _checked_agent_id(agent_id)


def _checked_agent_id(agent_id: str) -> str:
    try:
        return _AGENT_ID.validate_python(agent_id)
    except ValidationError:
        raise TlsError(
            f"agent id {agent_id!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        ) from None


def agent_id_of(certificate: x509.Certificate) -> str:
    """The agent a certificate names: its one ``tallystick://agent/<id>`` URI SAN.

    :raises IdentityUnresolvable: no such URI, more than one, or an invalid id
        (``auth.bad_client_certificate``).
    """
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except (x509.DuplicateExtension, ValueError) as exc:  # malformed extensions
        raise IdentityUnresolvable(
            "client certificate: unreadable extensions", code="auth.bad_client_certificate"
        ) from exc
    agents = [
        uri.removeprefix(AGENT_URI_PREFIX) for uri in uris if uri.startswith(AGENT_URI_PREFIX)
    ]
    if len(agents) != 1:
        raise IdentityUnresolvable(
            f"client certificate: names {len(agents)} agents; it needs exactly one "
            f"{AGENT_URI_PREFIX}<id> subject alternative name",
            code="auth.bad_client_certificate",
        )
    try:
        return _AGENT_ID.validate_python(agents[0])
    except ValidationError:
        raise IdentityUnresolvable(
            f"client certificate: {AGENT_URI_PREFIX}{agents[0]!r} is not a valid agent id",
            code="auth.bad_client_certificate",
        ) from None


@functools.lru_cache(maxsize=1024)
def agent_id_from_pem(pem: bytes) -> str:
    """The agent a PEM certificate names (cached: called on every TCP request).

    :raises IdentityUnresolvable: not a certificate, or it names no single agent
        (``auth.bad_client_certificate``).
    """
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise IdentityUnresolvable(
            "client certificate: not a PEM certificate", code="auth.bad_client_certificate"
        ) from exc
    return agent_id_of(certificate)


# -- issuing ------------------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tallystick"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def create_ca(
    *, now: datetime, days: int = 3650, common_name: str = "Tallystick local CA"
) -> Issued:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = _new_key()
    name = _name(common_name)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def _issue(
    ca: Issued,
    *,
    common_name: str,
    names: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    now: datetime,
    days: int,
) -> Issued:
    key = _new_key()
    public = key.public_key()
    ca_public = ca.key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(certificate, key)


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not host or not host.isascii() or any(c.isspace() or c in "/:@[]" for c in host):
        raise TlsError(f"host {host!r}: not a DNS name or an IP address")
    return x509.DNSName(host)


def issue_server(
    ca: Issued, *, hosts: Sequence[str] = DEFAULT_HOSTS, now: datetime, days: int = 365
) -> Issued:
    """tallystickd's certificate: server authentication for each of ``hosts`` (DNS names or IPs).

    :raises TlsError: no hosts, or a host that is neither a DNS name nor an IP address.
    """
    if not hosts:
        raise TlsError("server certificate: at least one host name or IP address is needed")
    names = list(dict.fromkeys(_host_name(host) for host in hosts))
    return _issue(
        ca,
        common_name="tallystickd",  # clients check the SANs; a CN is at most 64 characters
        names=names,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        now=now,
        days=days,
    )


def issue_agent(ca: Issued, agent_id: str, *, now: datetime, days: int = 365) -> Issued:
    """A client certificate naming ``agent_id`` (URI SAN ``tallystick://agent/<id>``).

    :raises TlsError: not a valid agent id.
    """
    return _issue(
        ca,
        common_name=_checked_agent_id(agent_id),
        names=[x509.UniformResourceIdentifier(agent_uri(agent_id))],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        now=now,
        days=days,
    )


# -- files --------------------------------------------------------------------------------------


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite; the mode applies from creation, so a key is never readable by
    # others, and fchmod undoes a umask that would have made it stricter than documented.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise TlsError(f"{path}: exists; refusing to overwrite", code="tls.exists") from None
    except OSError as exc:
        raise TlsError(f"{path}: cannot create: {exc.strerror}", code="tls.unwritable") from exc
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def write_issued(issued: Issued, certificate_path: Path, key_path: Path) -> None:
    """Write the key (PKCS#8 PEM, mode 0600) and the certificate (PEM, mode 0644).

    :raises TlsError: either file exists (``tls.exists``) or cannot be created.
    """
    for path in (certificate_path, key_path):
        if path.exists():
            raise TlsError(f"{path}: exists; refusing to overwrite", code="tls.exists")
    key = issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(key_path, key, _PRIVATE_MODE)
    _write_new(
        certificate_path, issued.certificate.public_bytes(serialization.Encoding.PEM), _PUBLIC_MODE
    )


def agent_files(directory: Path, agent_id: str) -> tuple[Path, Path]:
    """Where :func:`init_test_setup` puts an agent's certificate and key."""
    agents = directory / AGENTS_DIR
    return agents / f"{agent_id}.crt", agents / f"{agent_id}.key"


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise TlsError(f"{path}: cannot create: {exc.strerror}", code="tls.unwritable") from exc


def _refuse_existing(paths: Sequence[Path]) -> None:
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise TlsError(f"refusing to overwrite {', '.join(existing)}", code="tls.exists")


def issue_agents(
    directory: Path, ca: Issued, agents: Sequence[str], *, now: datetime, days: int = 365
) -> list[Path]:
    """Write ``DIR/agents/ID.crt`` and ``ID.key`` for each agent; returns the files written.

    Every file is checked first: nothing is written if any exists.

    :raises TlsError: an invalid agent id, a file that exists, or one that cannot be created.
    """
    for agent in agents:
        _checked_agent_id(agent)
    paths = [path for agent in agents for path in agent_files(directory, agent)]
    _refuse_existing(paths)
    _make_dir(directory / AGENTS_DIR)
    for agent in agents:
        write_issued(issue_agent(ca, agent, now=now, days=days), *agent_files(directory, agent))
    return paths


def init_test_setup(
    directory: Path,
    *,
    agents: Sequence[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    now: datetime,
    days: int = 365,
) -> list[Path]:
    """Create a local CA, a server certificate and one client certificate per agent in
    ``directory`` (created 0700); returns the files written. Nothing is overwritten, and
    nothing is written if any of the files exists.

    :raises TlsError: an invalid agent id or host, an existing file, or one that cannot be
        created.
    """
    for agent in agents:
        _checked_agent_id(agent)
    ca = create_ca(now=now, days=max(days, 3650))
    server = issue_server(ca, hosts=hosts, now=now, days=days)
    own = [directory / name for name in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)]
    _refuse_existing([*own, *(path for agent in agents for path in agent_files(directory, agent))])
    _make_dir(directory)
    write_issued(ca, directory / CA_CERT, directory / CA_KEY)
    write_issued(server, directory / SERVER_CERT, directory / SERVER_KEY)
    return [*own, *issue_agents(directory, ca, agents, now=now, days=days)]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(
            f"{what} {path}: cannot read: {exc.strerror}", code="tls.unreadable"
        ) from exc


def _certificates(path: Path, what: str) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsError(f"{what} {path}: not PEM certificates") from exc
    return data, certificates


def _private_key(path: Path, what: str) -> tuple[bytes, PrivateKeyTypes]:
    data = _read(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise TlsError(f"{what} {path}: encrypted; give an unencrypted PEM key") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsError(f"{what} {path}: not a PEM private key") from exc
    return data, key


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_ca(directory: Path) -> Issued:
    """The CA that :func:`init_test_setup` wrote in ``directory``.

    :raises TlsError: missing, unreadable, not an ECDSA key, or a key that is not the CA's.
    """
    _, certificates = _certificates(directory / CA_CERT, "CA certificate")
    _, key = _private_key(directory / CA_KEY, "CA key")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"CA key {directory / CA_KEY}: not an ECDSA key")
    if _spki(key.public_key()) != _spki(certificates[0].public_key()):
        raise TlsError(
            f"CA key {directory / CA_KEY}: not the key of {CA_CERT}", code="tls.key_mismatch"
        )
    return Issued(certificates[0], key)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """One side's TLS files, read and checked: its chain and key, and the roots it trusts.

    Build it with :meth:`load`; the bytes are PEM as gRPC's credentials take them.
    """

    certificate_chain: bytes
    private_key: bytes
    trusted_roots: bytes
    certificate: x509.Certificate

    @classmethod
    def load(cls, *, certificate: Path, key: Path, trusted: Path) -> TlsMaterial:
        """Read ``certificate`` (PEM, leaf first), ``key`` (unencrypted PEM) and ``trusted``
        (PEM CA certificates), and check that the key is the certificate's.

        :raises TlsError: ``tls.unreadable``, ``tls.invalid`` or ``tls.key_mismatch``.
        """
        chain, certificates = _certificates(certificate, "certificate")
        key_pem, private = _private_key(key, "private key")
        roots, _ = _certificates(trusted, "CA certificate")
        leaf = certificates[0]
        if _spki(private.public_key()) != _spki(leaf.public_key()):
            raise TlsError(
                f"private key {key}: not the key of the certificate {certificate}",
                code="tls.key_mismatch",
            )
        return cls(chain, key_pem, roots, leaf)
