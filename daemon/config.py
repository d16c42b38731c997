"""tallystickd's settings: defaults < TOML file < ``TALLYSTICK_*`` environment < command-line flags.

Every setting is one field of :class:`Config`; its description is the ``--help`` text, its
environment variable is ``TALLYSTICK_`` + the upper-cased name and its flag is ``--`` + the name
with dashes. A setting takes the value of the highest-precedence source that sets it, as a whole
(``agents`` from flags replaces ``agents`` from the file; it is not merged). The result is
validated once, here, and is frozen.

A TOML file (``--config PATH`` or ``TALLYSTICK_CONFIG``) uses the field names as keys::

    data_dir = "/var/lib/tallystick"
    checkpoint_every_entries = 1000
    [agents.planner]             # the agent "planner" gets DATA_DIR/agents/planner.sock
    socket_mode = "0600"         # only the daemon's user may connect (the default)
    [agents.coder]
    group = "coder"              # the group "coder" may connect (mode 0660 by default)

Agents that run as other users must be able to traverse DATA_DIR (created 0700 on first start):
``chmod 0711 DATA_DIR`` lets them reach their own socket without listing or reading anything;
``log.key`` stays 0600.

TCP is opt-in (``listen_tcp = "HOST:PORT"``) and then always needs mutual TLS: ``tls_cert`` and
``tls_key`` (the daemon's certificate and unencrypted PEM key) and ``tls_client_ca`` (the CA that
issues agents' client certificates); any of them missing is ``config.tls_incomplete``, and TLS
settings without ``listen_tcp`` are ``config.tls_without_tcp``. A call over TCP is recorded as
the agent its verified client certificate names (a URI SAN ``tallystick://agent/<id>``, see
:mod:`.tls`), which must be a configured agent. Any host may be bound, not only loopback: the
client certificate is the access control, as a socket's mode is for the Unix sockets::

    listen_tcp = "127.0.0.1:7443"
    tls_cert = "/etc/tallystick/tls/server.crt"
    tls_key = "/etc/tallystick/tls/server.key"
    tls_client_ca = "/etc/tallystick/tls/ca.crt"
    [agents.planner]             # may connect with a certificate for tallystick://agent/planner
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from tallystick.verifier.errors import MalformedInput

__all__ = [
    "ENV_PREFIX",
    "MAX_SOCKET_PATH_BYTES",
    "AgentConfig",
    "Config",
    "ConfigError",
    "env_name",
    "flag_name",
    "load_config",
    "split_host_port",
]

ENV_PREFIX: Final = "TALLYSTICK_"
#: ``sun_path`` holds 108 bytes on Linux, one of them the terminating NUL.
MAX_SOCKET_PATH_BYTES: Final = 107
_MIB = 1024 * 1024


class ConfigError(MalformedInput):
    """A configuration that cannot be read or does not validate; the message names the source."""

    default_code = "config.invalid"


def _octal_mode(value: object) -> object:
    # "0600", "600" and "0o600" are octal; a TOML integer must be written 0o600.
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        try:
            return int(text, 8)
        except ValueError:
            raise ValueError(f"{value!r} is not an octal file mode such as 0600") from None
    return value


def _check_mode(mode: int) -> int:
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{mode} is not a file mode (in TOML write 0o600 or '0600', not 600)")
    if mode & 0o600 != 0o600:
        raise ValueError(f"{mode:#o} must give the owner read and write access")
    if mode & 0o007:
        raise ValueError(f"{mode:#o} lets every local user connect; remove the 'other' bits")
    return mode


_Mode = Annotated[int, BeforeValidator(_octal_mode)]
_Group = str | int
AgentId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
_PrincipalId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class AgentConfig(BaseModel):
    """One agent: its socket ``DATA_DIR/agents/<id>.sock`` and who may connect to it.

    The socket is the agent's identity (gRPC does not expose Unix peer credentials), so its
    file permissions are the access control: never let other users connect.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    uid: int | None = Field(default=None, ge=0, description="owner of the socket (needs root)")
    group: _Group | None = Field(default=None, description="group of the socket")
    socket_mode: _Mode | None = Field(
        default=None, description="octal mode; default 0600, or 0660 with a group"
    )
    principals: tuple[_PrincipalId, ...] = Field(
        default=(),
        description="principal ids this agent may issue HDP roots and AIP tokens for ('*': any)",
    )
    read_all: bool = Field(
        default=False, description="may query every principal's records, not only its own"
    )

    @field_validator("socket_mode")
    @classmethod
    def _mode(cls, mode: int | None) -> int | None:
        return None if mode is None else _check_mode(mode)

    @property
    def mode(self) -> int:
        """The socket's file mode."""
        if self.socket_mode is not None:
            return self.socket_mode
        return 0o660 if self.group is not None else 0o600


class Config(BaseModel):
    """The validated, frozen settings of one tallystickd process."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    data_dir: Path = Field(
        default=Path("var"),
        description="directory of the log, its key (log.key, log.pub) and the sockets",
    )
    socket: Path | None = Field(
        default=None,
        description="path of the shared, read-only socket",
    )
    socket_mode: _Mode = Field(default=0o600, description="octal file mode of the shared socket")
    socket_group: _Group | None = Field(default=None, description="group of the shared socket")
    agents: dict[AgentId, AgentConfig] = Field(
        default_factory=dict,
        description=(
            "agent ids; each gets the socket DATA_DIR/agents/ID.sock, and calls arriving there "
            "are recorded as that agent (TOML [agents.ID] tables set uid, group, socket_mode; "
            "the flag is repeated, the environment variable is comma-separated)"
        ),
    )
    listen_tcp: str | None = Field(
        default=None,
        description=(
            "HOST:PORT (IPv6 as [ADDR]:PORT; port 0 picks one) of a TCP port with mutual TLS; "
            "needs tls_cert, tls_key and tls_client_ca"
        ),
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate (chain) of the TCP port's server side"
    )
    tls_key: Path | None = Field(
        default=None, description="unencrypted PEM private key of tls_cert (keep it 0600)"
    )
    tls_client_ca: Path | None = Field(
        default=None,
        description="PEM CA certificate(s) that issue agents' client certificates",
    )
    origin: str | None = Field(
        default=None,
        description="checkpoint origin, used on first start only",
    )
    checkpoint_every_entries: int = Field(
        default=1000, ge=1, le=10_000_000, description="sign a checkpoint after this many entries"
    )
    checkpoint_every_ms: int = Field(
        default=1000, ge=1, le=86_400_000, description="or after this many milliseconds"
    )
    max_message_bytes: int = Field(
        default=_MIB, ge=4096, le=64 * _MIB, description="largest request message accepted"
    )
    max_batch: int = Field(
        default=1000, ge=1, le=100_000, description="most calls in one RecordCalls or stream"
    )
    max_entries_per_response: int = Field(
        default=1000, ge=1, le=100_000, description="most entries one GetEntries returns"
    )
    workers: int = Field(default=16, ge=1, le=1024, description="request handler threads")
    coin_pending_max: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="CoIn audits waiting for their openings, at most (when full, the oldest "
        "of the agent holding the most is dropped)",
    )
    coin_pending_ttl_s: float = Field(
        default=900.0,
        gt=0,
        le=86_400,
        description="seconds a CoIn audit waits for its openings (FinishAudit) before it expires",
    )
    grace_seconds: float = Field(
        default=10.0, ge=0, le=3600, description="on SIGTERM, how long in-flight calls may finish"
    )
    shared_totals: bool = Field(
        default=False,
        description="the shared, read-only socket may read usage totals (Query.GetTotals)",
    )
    metrics_address: str | None = Field(
        default=None,
        description="HOST:PORT of a Prometheus metrics endpoint, e.g. 127.0.0.1:9464",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="lowest level written to the JSON log on stderr"
    )

    @field_validator("data_dir", "socket", "tls_cert", "tls_key", "tls_client_ca")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().absolute()

    @field_validator("socket_mode")
    @classmethod
    def _mode(cls, mode: int) -> int:
        return _check_mode(mode)

    @field_validator("listen_tcp")
    @classmethod
    def _tcp_address(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @model_validator(mode="after")
    def _tls_complete(self) -> Config:
        tls = {
            "tls_cert": self.tls_cert,
            "tls_key": self.tls_key,
            "tls_client_ca": self.tls_client_ca,
        }
        if self.listen_tcp is None:
            given = [name for name, path in tls.items() if path is not None]
            if given:
                raise PydanticCustomError(
                    "config.tls_without_tcp",
                    "{given} set without listen_tcp: TLS is only for the TCP port",
                    {"given": ", ".join(given)},
                )
            return self
        missing = [name for name, path in tls.items() if path is None]
        if missing:
            raise PydanticCustomError(
                "config.tls_incomplete",
                "listen_tcp needs mutual TLS: set {missing}",
                {"missing": ", ".join(missing)},
            )
        return self

    @field_validator("metrics_address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT")
        return value

    @model_validator(mode="after")
    def _socket_paths_fit(self) -> Config:
        paths = [self.shared_socket, *(self.agent_socket(agent) for agent in self.agents)]
        for path in paths:
            if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
                raise ValueError(
                    f"socket path {str(path)!r} is longer than {MAX_SOCKET_PATH_BYTES} bytes, "
                    "the Unix limit; use a shorter data_dir"
                )
        return self

    @property
    def shared_socket(self) -> Path:
        """Where the shared, read-only socket listens."""
        return self.socket or self.data_dir / "tallystickd.sock"

    def agent_socket(self, agent: str) -> Path:
        """Where the socket of ``agent`` listens."""
        return self.data_dir / "agents" / f"{agent}.sock"


def split_host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPV6]:PORT`` for IPv6) as host (without brackets) and port.

    :raises ValueError: not that form, or a port outside 0-65535.
    """
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address must be bracketed
    if not (sep and host and port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"{address!r} is not HOST:PORT (an IPv6 host as [ADDR]:PORT)")
    return host, int(port)


def env_name(field: str) -> str:
    """The environment variable of a setting."""
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    """The command-line flag of a setting."""
    return "--" + field.replace("_", "-")


def _agents_from_list(text: str) -> dict[str, dict[str, Any]]:
    return {name.strip(): {} for name in text.split(",") if name.strip()}


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in Config.model_fields:
        raw = environ.get(env_name(field), "")
        if raw == "":  # an empty variable counts as unset
            continue
        values[field] = _agents_from_list(raw) if field == "agents" else raw
    return values


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(
            f"config file {str(path)!r}: {exc.strerror}", code="config.unreadable"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r}: not TOML: {exc}") from exc
    return data


def load_config(
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Config:
    """Merge the sources (flags > environment > TOML file > defaults) and validate the result.

    ``flags`` maps field names to the values given on the command line (absent when not
    given); ``config_file`` defaults to ``TALLYSTICK_CONFIG`` when that is set.

    :raises ConfigError: an unreadable or invalid file, an unknown key, or a value that does not
        validate; the message names the setting and the source it came from.
    """
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(env_name("config")):
        config_file = Path(environ[env_name("config")])
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((f"config file {str(config_file)!r}", _from_toml(config_file)))
    layers.append(("environment", _from_env(environ)))
    layers.append(("flags", dict(flags or {})))
    merged: dict[str, Any] = {}
    source: dict[str, str] = {}
    for where, values in layers:
        merged.update(values)
        source.update(dict.fromkeys(values, where))
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source), code=_code(exc)) from exc


def _code(exc: ValidationError) -> str | None:
    # Checks that name their own code raise PydanticCustomError with it as the error type.
    codes = [error["type"] for error in exc.errors() if error["type"].startswith("config.")]
    return codes[0] if codes else None


def _explain(exc: ValidationError, source: Mapping[str, str]) -> str:
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        message = str(error["msg"]).removeprefix("Value error, ")
        if not loc:  # a check across settings
            problems.append(message)
            continue
        field = loc[0]
        where = source.get(field, "default")
        if where == "flags":
            where = f"flag {flag_name(field)}"
        elif where == "environment":
            where = f"environment {env_name(field)}"
        problems.append(f"{'.'.join(loc)} ({where}): {message}")
    return "invalid configuration: " + "; ".join(problems)
