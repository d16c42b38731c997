"""tallystickd over TCP with mutual TLS, end to end: real certificates from ``tallystickd certs``
code, a real daemon on an ephemeral loopback port, real gRPC TLS handshakes; nothing mocked.
"""

from __future__ import annotations

import json
import logging
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tallystick.daemon import cli as daemon_cli
from tallystick.daemon.config import ConfigError, load_config
from tallystick.daemon.remote_cli import TcpAddress, agent_address, parse_address
from tallystick.daemon.server import Daemon
from tallystick.daemon.tls import (
    AGENT_URI_PREFIX,
    CA_CERT,
    SERVER_CERT,
    SERVER_KEY,
    Issued,
    TlsError,
    TlsMaterial,
    agent_files,
    agent_id_of,
    create_ca,
    init_test_setup,
    issue_agent,
    issue_agents,
    load_ca,
    write_issued,
)
from tallystick.proto import ledger_pb2, ledger_pb2_grpc, log_pb2, log_pb2_grpc
from tallystick.verifier._cli import UsageError
from tallystick.verifier._cli import main as tallystick
from tallystick.verifier.errors import IdentityUnresolvable
from tallystick.verifier.logentry import LogEntry

from .conftest import QUIET_CHECKPOINTS, DaemonProcess, make_call, reason

NOW = datetime(2026, 1, 1, tzinfo=UTC)
USAGE = ["--model", "gpt-4o", "--input-tokens", "120", "--output-tokens", "30"]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(autouse=True)
def quiet_daemon() -> Iterator[None]:
    """The in-process daemon logs to standard output, where the CLI's output is checked."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    yield
    structlog.reset_defaults()


@dataclass
class Certs:
    """A test set-up from ``init_test_setup`` (agents alice, bob, mallory), a foreign CA, and
    an expired alice certificate from the right CA."""

    directory: Path
    foreign: Path  # another CA's set-up, with an alice certificate of its own
    expired: Path  # DIR/agents/alice.*, issued by ``directory``'s CA, expired

    def client(self, agent: str, *, directory: Path | None = None) -> list[str]:
        """``--tls-cert/--tls-key/--tls-ca`` for ``agent``'s certificate."""
        certificate, key = agent_files(directory or self.directory, agent)
        ca = self.directory / CA_CERT
        return ["--tls-cert", str(certificate), "--tls-key", str(key), "--tls-ca", str(ca)]

    def material(self, agent: str, *, directory: Path | None = None) -> TlsMaterial:
        certificate, key = agent_files(directory or self.directory, agent)
        return TlsMaterial.load(certificate=certificate, key=key, trusted=self.directory / CA_CERT)

    def tls_settings(self) -> dict[str, Path]:
        return {
            "tls_cert": self.directory / SERVER_CERT,
            "tls_key": self.directory / SERVER_KEY,
            "tls_client_ca": self.directory / CA_CERT,
        }


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    with tempfile.TemporaryDirectory(prefix="tsd-certs-") as name:
        root = Path(name)
        init_test_setup(root / "ca", agents=["alice", "bob", "mallory"], now=NOW)
        init_test_setup(root / "foreign", agents=["alice"], now=NOW)
        long_ago = datetime.now(UTC) - timedelta(days=30)
        issue_agents(root / "expired", load_ca(root / "ca"), ["alice"], now=long_ago, days=1)
        yield Certs(root / "ca", root / "foreign", root / "expired")


@dataclass
class TcpDaemon:
    daemon: Daemon
    data_dir: Path
    certs: Certs

    @property
    def address(self) -> str:
        assert self.daemon.tcp_address is not None
        return self.daemon.tcp_address

    def channel(self, credentials: grpc.ChannelCredentials) -> grpc.Channel:
        return grpc.secure_channel(self.address, credentials)

    def agent_channel(self, agent: str, *, directory: Path | None = None) -> grpc.Channel:
        tls = self.certs.material(agent, directory=directory)
        credentials = grpc.ssl_channel_credentials(
            tls.trusted_roots, tls.private_key, tls.certificate_chain
        )
        return self.channel(credentials)


def _start(data_dir: Path, certs: Certs, listen: str = "127.0.0.1:0") -> Daemon:
    flags = {
        "data_dir": data_dir,
        # alice also audits: read_all lets her read raw entries and export over TCP.
        "agents": {"alice": {"read_all": True}, "bob": {}},
        "listen_tcp": listen,
        **certs.tls_settings(),
        **QUIET_CHECKPOINTS,
    }
    return Daemon.start(load_config(flags=flags, environ={}))


@pytest.fixture(scope="module")
def tcp(certs: Certs) -> Iterator[TcpDaemon]:
    """One daemon (agents alice and bob; mallory has a certificate but is not configured)."""
    with tempfile.TemporaryDirectory(prefix="tsd-") as name:
        daemon = _start(Path(name) / "d", certs)
        yield TcpDaemon(daemon, Path(name) / "d", certs)
        daemon.stop(grace=0)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``tallystick ARGV`` in-process: exit code, standard output, standard error."""
    try:
        code = tallystick(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def entry(daemon: Daemon, index: int) -> LogEntry:
    (raw,) = daemon.log.entries(index, index + 1)
    return LogEntry.from_bytes(raw)


# --- certificates ------------------------------------------------------------------------


def test_certs_init_writes_a_ca_server_and_agent_certificates_with_private_keys(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = short_dir / "tls"
    argv = ["certs", "init", "--dir", str(out_dir), "--agent", "alice", "--agent", "bob"]
    assert daemon_cli.main([*argv, "--host", "127.0.0.1", "--host", "tsd.test", "--json"]) == 0
    files = [Path(path) for path in json.loads(capsys.readouterr().out)["files"]]
    assert sorted(path.relative_to(out_dir).as_posix() for path in files) == [
        "agents/alice.crt",
        "agents/alice.key",
        "agents/bob.crt",
        "agents/bob.key",
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
    ]
    for path in files:
        expected = 0o600 if path.suffix == ".key" else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o700

    ca = load_ca(out_dir)
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    assert ca.key.curve.name == "secp256r1"
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)

    server = x509.load_pem_x509_certificate((out_dir / SERVER_CERT).read_bytes())
    server.verify_directly_issued_by(ca.certificate)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["tsd.test"]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]

    alice = x509.load_pem_x509_certificate(agent_files(out_dir, "alice")[0].read_bytes())
    alice.verify_directly_issued_by(ca.certificate)
    assert agent_id_of(alice) == "alice"
    names = alice.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["tallystick://agent/alice"]
    usage = alice.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_certs_init_never_overwrites_and_certs_agent_extends_the_ca(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = short_dir / "tls"
    assert daemon_cli.main(["certs", "init", "--dir", str(out_dir), "--agent", "alice"]) == 0
    before = {path: path.read_bytes() for path in out_dir.rglob("*") if path.is_file()}
    assert "tallystickd --listen-tcp" in capsys.readouterr().out  # the how-to-use hint

    argv = ["certs", "init", "--dir", str(out_dir), "--agent", "carol"]
    assert daemon_cli.main(argv) == 2
    assert "tallystickd certs: tls.exists:" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in out_dir.rglob("*") if path.is_file()} == before

    assert daemon_cli.main(["certs", "agent", "--dir", str(out_dir), "--agent", "carol"]) == 0
    carol_cert, carol_key = agent_files(out_dir, "carol")
    assert stat.S_IMODE(carol_key.stat().st_mode) == 0o600
    carol = x509.load_pem_x509_certificate(carol_cert.read_bytes())
    carol.verify_directly_issued_by(load_ca(out_dir).certificate)
    assert agent_id_of(carol) == "carol"
    capsys.readouterr()

    assert daemon_cli.main(["certs", "agent", "--dir", str(out_dir), "--agent", "alice"]) == 2
    assert "tls.exists" in capsys.readouterr().err
    assert daemon_cli.main(["certs", "agent", "--dir", str(short_dir), "--agent", "x"]) == 2
    assert "tls.unreadable" in capsys.readouterr().err  # no CA there
    argv = ["certs", "init", "--dir", str(short_dir / "t2"), "--agent", "../etc"]
    assert daemon_cli.main(argv) == 2
    assert "agent id '../etc'" in capsys.readouterr().err
    assert not (short_dir / "t2").exists()
    argv = ["certs", "init", "--dir", str(short_dir / "t3"), "--host", "bad host"]
    assert daemon_cli.main(argv) == 2
    assert "host 'bad host': not a DNS name or an IP address" in capsys.readouterr().err
    assert not (short_dir / "t3").exists()


def _client_certificate(ca: Issued, names: list[x509.GeneralName]) -> Issued:
    """A client certificate with the CN "alice" and the SANs ``names``, valid today."""
    key = ec.generate_private_key(ec.SECP256R1())
    today = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(today - timedelta(days=1))
        .not_valid_after(today + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(certificate, key)


@pytest.mark.parametrize(
    "names",
    [
        pytest.param([x509.DNSName("alice")], id="no-uri-only-a-dns-name-and-the-cn"),
        pytest.param([x509.UniformResourceIdentifier("spiffe://x/alice")], id="other-uri"),
        pytest.param(
            [
                x509.UniformResourceIdentifier(AGENT_URI_PREFIX + "alice"),
                x509.UniformResourceIdentifier(AGENT_URI_PREFIX + "bob"),
            ],
            id="two-agents",
        ),
        pytest.param(
            [x509.UniformResourceIdentifier(AGENT_URI_PREFIX + "../root")], id="invalid-id"
        ),
        pytest.param([x509.UniformResourceIdentifier(AGENT_URI_PREFIX)], id="empty-id"),
    ],
)
def test_a_certificate_names_exactly_one_agent_by_uri_san(
    names: list[x509.GeneralName],
) -> None:
    ca = create_ca(now=NOW)
    with pytest.raises(IdentityUnresolvable) as caught:
        agent_id_of(_client_certificate(ca, names).certificate)
    assert caught.value.code == "auth.bad_client_certificate"
    # The accepting twin: one agent URI among other names (the CN is never read).
    accepted = [
        x509.UniformResourceIdentifier("spiffe://x/bob"),
        x509.DNSName("bob"),
        x509.UniformResourceIdentifier(AGENT_URI_PREFIX + "carol"),
    ]
    assert agent_id_of(_client_certificate(ca, accepted).certificate) == "carol"


def test_tls_files_are_checked_when_loaded(certs: Certs, short_dir: Path) -> None:
    alice_cert, alice_key = agent_files(certs.directory, "alice")
    _, bob_key = agent_files(certs.directory, "bob")
    ca = certs.directory / CA_CERT
    with pytest.raises(TlsError) as caught:
        TlsMaterial.load(certificate=alice_cert, key=bob_key, trusted=ca)
    assert caught.value.code == "tls.key_mismatch"
    with pytest.raises(TlsError) as caught:
        TlsMaterial.load(certificate=short_dir / "absent.crt", key=alice_key, trusted=ca)
    assert caught.value.code == "tls.unreadable"
    with pytest.raises(TlsError) as caught:
        TlsMaterial.load(certificate=alice_key, key=alice_key, trusted=ca)
    assert caught.value.code == "tls.invalid"
    with pytest.raises(TlsError) as caught:
        TlsMaterial.load(certificate=alice_cert, key=alice_cert, trusted=ca)
    assert caught.value.code == "tls.invalid"
    with pytest.raises(TlsError) as caught:
        write_issued(issue_agent(load_ca(certs.directory), "x", now=NOW), alice_cert, alice_key)
    assert caught.value.code == "tls.exists"


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "code", "message"),
    [
        pytest.param(
            {"listen_tcp": "127.0.0.1:7443"},
            "config.tls_incomplete",
            "listen_tcp needs mutual TLS: set tls_cert, tls_key, tls_client_ca",
            id="tcp-without-tls",
        ),
        pytest.param(
            {"listen_tcp": "127.0.0.1:7443", "tls_cert": "s.crt", "tls_key": "s.key"},
            "config.tls_incomplete",
            "set tls_client_ca",
            id="no-client-ca",
        ),
        pytest.param(
            {"listen_tcp": "127.0.0.1:7443", "tls_cert": "s.crt", "tls_client_ca": "ca.crt"},
            "config.tls_incomplete",
            "set tls_key",
            id="no-key",
        ),
        pytest.param(
            {"tls_cert": "s.crt", "tls_key": "s.key", "tls_client_ca": "ca.crt"},
            "config.tls_without_tcp",
            "tls_cert, tls_key, tls_client_ca set without listen_tcp",
            id="tls-without-tcp",
        ),
        pytest.param(
            {"listen_tcp": "127.0.0.1:65536"}, "config.invalid", "is not HOST:PORT", id="port"
        ),
    ],
)
def test_incomplete_tls_settings_are_config_errors_and_tallystickd_exits_2(
    settings: dict[str, str], code: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(flags=settings, environ={})
    assert caught.value.code == code
    assert message in str(caught.value)
    argv = [
        arg for name, value in settings.items() for arg in (f"--{name.replace('_', '-')}", value)
    ]
    assert daemon_cli.main(argv) == 2
    assert f"tallystickd: {code}: " in capsys.readouterr().err


def test_tls_settings_from_toml_and_environment(tmp_path: Path) -> None:
    file = tmp_path / "tallystickd.toml"
    file.write_text(
        'listen_tcp = "[::1]:7443"\ntls_cert = "/etc/t/server.crt"\ntls_key = "/etc/t/server.key"\n'
    )
    config = load_config(config_file=file, environ={"TALLYSTICK_TLS_CLIENT_CA": "/etc/t/ca.crt"})
    assert config.listen_tcp == "[::1]:7443"
    assert (config.tls_cert, config.tls_client_ca) == (
        Path("/etc/t/server.crt"),
        Path("/etc/t/ca.crt"),
    )


@pytest.mark.parametrize(
    ("swap", "code"),
    [
        pytest.param({"tls_key": "agents/alice.key"}, "tls.key_mismatch", id="key-mismatch"),
        pytest.param({"tls_client_ca": "absent.crt"}, "tls.unreadable", id="no-client-ca-file"),
        pytest.param({"tls_cert": "ca.key"}, "tls.invalid", id="key-as-certificate"),
    ],
)
def test_unusable_tls_files_stop_tallystickd_with_exit_2(
    certs: Certs,
    short_dir: Path,
    capsys: pytest.CaptureFixture[str],
    swap: dict[str, str],
    code: str,
) -> None:
    settings = {name: str(path) for name, path in certs.tls_settings().items()}
    settings.update({name: str(certs.directory / file) for name, file in swap.items()})
    argv = ["--data-dir", str(short_dir / "d"), "--listen-tcp", "127.0.0.1:0", "--agent", "alice"]
    argv += [
        arg for name, value in settings.items() for arg in (f"--{name.replace('_', '-')}", value)
    ]
    try:
        assert daemon_cli.main(argv) == 2
    finally:
        structlog.reset_defaults()
    assert f"tallystickd: {code}: " in capsys.readouterr().err


# --- end to end over TCP with mutual TLS --------------------------------------------------


def test_record_prove_export_and_verify_offline_over_tcp(
    tcp: TcpDaemon, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = tcp.certs.client("alice")
    before = tcp.daemon.log.size
    code, out, err = run(
        capsys, "record", "--daemon", tcp.address, "--agent-id", "alice", *alice, *USAGE
    )
    assert (code, out, err) == (0, f"{before}\n", "")
    assert entry(tcp.daemon, before).agent == "alice"  # the certificate decided

    bob = tcp.certs.client("bob")
    code, out, _ = run(capsys, "record", "--daemon", tcp.address, "--agent-id", "bob", *bob, *USAGE)
    assert (code, out) == (0, f"{before + 1}\n")
    assert entry(tcp.daemon, before + 1).agent == "bob"
    size = before + 2

    log_key = str(tcp.data_dir / "log.pub")
    code, out, _ = run(
        capsys, "log", "checkpoint", "--daemon", tcp.address, *alice, "--refresh",
        "--log-key", log_key, "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["tree_size"] == size

    code, out, _ = run(
        capsys, "log", "proof", "--daemon", tcp.address, *bob, "--index", str(before),
        "--size", str(size), "--log-key", log_key, "--json",
    )  # fmt: skip
    assert code == 0
    proof = json.loads(out)
    assert (proof["leaf_index"], proof["tree_size"]) == (before, size)

    code, out, _ = run(
        capsys, "log", "consistency", "--daemon", tcp.address, *alice, "--from", "1",
        "--to", str(size), "--log-key", log_key, "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["second"] == size

    bundle = short_dir / "bundle.jsonl"
    code, out, _ = run(
        capsys, "log", "export", "--daemon", tcp.address, *alice, "--out", str(bundle), "--json"
    )
    assert (code, json.loads(out)) == (0, {"out": str(bundle), "size": size})
    code, out, _ = run(capsys, "log", "verify", str(bundle), "--log-key", log_key, "--json")
    assert code == 0 and json.loads(out)["valid"] is True


def test_grpc_services_over_tcp_take_the_agent_from_the_certificate(tcp: TcpDaemon) -> None:
    with tcp.agent_channel("bob") as channel:
        ledger = ledger_pb2_grpc.LedgerStub(channel)
        one = ledger.RecordCall(ledger_pb2.RecordCallRequest(call=make_call())).index
        batch = ledger.RecordCalls(ledger_pb2.RecordCallsRequest(calls=[make_call()] * 2)).indexes
        stream = ledger.RecordCallStream(
            iter([ledger_pb2.RecordCallRequest(call=make_call())] * 2)
        ).indexes
        for index in [one, *batch, *stream]:
            assert entry(tcp.daemon, index).agent == "bob"
        checkpoint = log_pb2_grpc.LogStub(channel).GetCheckpoint(
            log_pb2.GetCheckpointRequest(refresh=True)
        )
        assert checkpoint.tree_size == tcp.daemon.log.size
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_raw_entries_need_read_all(tcp: TcpDaemon) -> None:
    with tcp.agent_channel("bob") as channel, pytest.raises(grpc.RpcError) as caught:
        list(log_pb2_grpc.LogStub(channel).ExportBundle(log_pb2.ExportBundleRequest(), timeout=5))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "auth.not_permitted"


def test_no_request_field_or_header_overrides_the_certificate(tcp: TcpDaemon) -> None:
    with tcp.agent_channel("alice") as channel:
        ledger = ledger_pb2_grpc.LedgerStub(channel)
        call = make_call(request_id="bob", session_id="bob", delegation_id="agent:bob")
        metadata = (("x-tallystick-agent", "bob"), ("agent", "bob"))
        index = ledger.RecordCall(ledger_pb2.RecordCallRequest(call=call), metadata=metadata)
        assert entry(tcp.daemon, index.index).agent == "alice"

        # A field the server does not know (a client that tries to name its agent): refused.
        before = tcp.daemon.log.size
        raw = ledger_pb2.RecordCallRequest(call=make_call()).SerializeToString()
        raw += bytes([15 << 3 | 2, 3]) + b"bob"
        record = channel.unary_unary("/tallystick.v1.Ledger/RecordCall")
        with pytest.raises(grpc.RpcError) as caught:
            record(raw, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason(caught.value) == "input.unknown_field"
        assert tcp.daemon.log.size == before


@pytest.mark.parametrize(
    "stub_call",
    [
        pytest.param(
            lambda channel: ledger_pb2_grpc.LedgerStub(channel).RecordCall(
                ledger_pb2.RecordCallRequest(call=make_call()), timeout=5
            ),
            id="record",
        ),
        pytest.param(
            lambda channel: log_pb2_grpc.LogStub(channel).GetCheckpoint(
                log_pb2.GetCheckpointRequest(), timeout=5
            ),
            id="read-only",
        ),
        pytest.param(
            lambda channel: list(
                log_pb2_grpc.LogStub(channel).ExportBundle(log_pb2.ExportBundleRequest(), timeout=5)
            ),
            id="stream",
        ),
    ],
)
def test_a_valid_certificate_of_an_unconfigured_agent_is_permission_denied(
    tcp: TcpDaemon, stub_call: Callable[[grpc.Channel], object]
) -> None:
    before = tcp.daemon.log.size
    with tcp.agent_channel("mallory") as channel, pytest.raises(grpc.RpcError) as caught:
        stub_call(channel)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "auth.unknown_agent"
    assert tcp.daemon.log.size == before
    with tcp.agent_channel("alice") as channel:  # the daemon keeps serving
        log = log_pb2_grpc.LogStub(channel)
        assert log.GetCheckpoint(log_pb2.GetCheckpointRequest()).origin == tcp.daemon.log.origin


def test_a_certificate_without_an_agent_is_unauthenticated(tcp: TcpDaemon, short_dir: Path) -> None:
    # Issued by the trusted CA, CN "alice", but no tallystick://agent/ URI.
    issued = _client_certificate(load_ca(tcp.certs.directory), [x509.DNSName("alice")])
    write_issued(issued, short_dir / "x.crt", short_dir / "x.key")
    tls = TlsMaterial.load(
        certificate=short_dir / "x.crt",
        key=short_dir / "x.key",
        trusted=tcp.certs.directory / CA_CERT,
    )
    credentials = grpc.ssl_channel_credentials(
        tls.trusted_roots, tls.private_key, tls.certificate_chain
    )
    with tcp.channel(credentials) as channel, pytest.raises(grpc.RpcError) as caught:
        ledger_pb2_grpc.LedgerStub(channel).RecordCall(
            ledger_pb2.RecordCallRequest(call=make_call()), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(caught.value) == "auth.bad_client_certificate"


def _no_client_certificate(certs: Certs) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials((certs.directory / CA_CERT).read_bytes())


def _foreign_ca_client(certs: Certs) -> grpc.ChannelCredentials:
    # A certificate for "alice" issued by another CA; the server's CA is trusted.
    tls = certs.material("alice", directory=certs.foreign)
    return grpc.ssl_channel_credentials(tls.trusted_roots, tls.private_key, tls.certificate_chain)


def _expired_client(certs: Certs) -> grpc.ChannelCredentials:
    tls = certs.material("alice", directory=certs.expired)
    return grpc.ssl_channel_credentials(tls.trusted_roots, tls.private_key, tls.certificate_chain)


def _foreign_server_trust(certs: Certs) -> grpc.ChannelCredentials:
    # A valid alice certificate, but the client trusts another CA for the server.
    tls = certs.material("alice")
    foreign_root = (certs.foreign / CA_CERT).read_bytes()
    return grpc.ssl_channel_credentials(foreign_root, tls.private_key, tls.certificate_chain)


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param(_no_client_certificate, id="no-client-certificate"),
        pytest.param(_foreign_ca_client, id="client-certificate-from-another-ca"),
        pytest.param(_expired_client, id="expired-client-certificate"),
        pytest.param(_foreign_server_trust, id="server-not-trusted-by-the-client"),
    ],
)
def test_the_handshake_fails_without_a_certificate_both_sides_trust(
    tcp: TcpDaemon, credentials: Callable[[Certs], grpc.ChannelCredentials]
) -> None:
    before = tcp.daemon.log.size
    with tcp.channel(credentials(tcp.certs)) as channel, pytest.raises(grpc.RpcError) as caught:
        ledger_pb2_grpc.LedgerStub(channel).RecordCall(
            ledger_pb2.RecordCallRequest(call=make_call()), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # no connection, no handler ran
    assert reason(caught.value) is None
    assert tcp.daemon.log.size == before


def test_plaintext_tcp_is_refused(tcp: TcpDaemon) -> None:
    with grpc.insecure_channel(tcp.address) as channel, pytest.raises(grpc.RpcError) as caught:
        log_pb2_grpc.LogStub(channel).GetCheckpoint(log_pb2.GetCheckpointRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# --- the client's options ------------------------------------------------------------------


def test_client_tls_options_are_checked_before_connecting(
    tcp: TcpDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = tcp.certs.client("alice")
    # --agent-id must be the certificate's agent: the daemon would record it as alice anyway.
    code, out, err = run(
        capsys, "record", "--daemon", tcp.address, "--agent-id", "bob", *alice, *USAGE
    )
    assert (code, out) == (2, "")
    assert "does not match --tls-cert, which names agent alice" in err
    code, _, err = run(capsys, "log", "checkpoint", "--daemon", tcp.address, *alice[:4])
    assert code == 2 and "needs all of --tls-cert, --tls-key and --tls-ca" in err
    unix = f"unix:{tcp.data_dir / 'tallystickd.sock'}"
    code, _, err = run(capsys, "log", "checkpoint", "--daemon", unix, *alice)
    assert code == 2 and "are for HOST:PORT only" in err
    code, _, err = run(
        capsys, "log", "export", "--data-dir", str(tcp.data_dir), *alice, "--out", "x"
    )
    assert code == 2 and "not --data-dir" in err
    # An unconfigured agent's certificate: the daemon's refusal, exit 1 with the reason.
    mallory = tcp.certs.client("mallory")
    code, out, err = run(
        capsys, "record", "--daemon", tcp.address, "--agent-id", "mallory", *mallory, *USAGE
    )
    assert (code, out) == (1, "")
    assert "PERMISSION_DENIED auth.unknown_agent" in err
    # A certificate the daemon does not trust: no connection, exit 2.
    foreign = tcp.certs.client("alice", directory=tcp.certs.foreign)
    code, _, err = run(capsys, "log", "checkpoint", "--daemon", tcp.address, *foreign)
    assert code == 2 and "cannot reach tallystickd" in err


def test_parse_tcp_addresses(certs: Certs) -> None:
    tls = certs.material("alice")
    address = parse_address("[::1]:7443", tls=tls)
    assert isinstance(address, TcpAddress)
    assert (address.host, address.port, address.target) == ("::1", 7443, "[::1]:7443")
    assert agent_address(address, "alice") is address
    with pytest.raises(UsageError, match="TCP needs mutual TLS"):
        parse_address("127.0.0.1:7443")
    with pytest.raises(UsageError, match="expected unix:PATH or HOST:PORT"):
        parse_address("::1:7443", tls=tls)


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_loopback(certs: Certs, short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    daemon = _start(short_dir / "d", certs, listen="[::1]:0")
    try:
        assert daemon.tcp_address is not None and daemon.tcp_address.startswith("[::1]:")
        code, out, _ = run(
            capsys, "record", "--daemon", daemon.tcp_address, "--agent-id", "alice",
            *certs.client("alice"), *USAGE,
        )  # fmt: skip
        assert (code, out) == (0, "0\n")
        assert entry(daemon, 0).agent == "alice"
    finally:
        daemon.stop(grace=0)


def test_tallystickd_process_serves_tcp_and_the_installed_cli_records(
    certs: Certs, spawn_daemon: Callable[..., DaemonProcess]
) -> None:
    settings = certs.tls_settings()
    running = spawn_daemon(
        "--agent", "alice", "--listen-tcp", "127.0.0.1:0",
        "--tls-cert", str(settings["tls_cert"]), "--tls-key", str(settings["tls_key"]),
        "--tls-client-ca", str(settings["tls_client_ca"]),
    )  # fmt: skip
    address = running.address("tcp, mutual TLS")
    assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    script = Path(sys.executable).with_name("tallystick")
    result = subprocess.run(
        [str(script), "record", "--daemon", address, "--agent-id", "alice",
         *certs.client("alice"), *USAGE],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "0\n", "")
    assert running.terminate() == 0
