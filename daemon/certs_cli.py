"""``tallystickd certs``: a local CA and certificates for a mutual-TLS test set-up.

``tallystickd certs init --dir DIR --agent ID ... [--host H ...]`` writes a new CA, a server
certificate for the hosts and one client certificate per agent (layout in :mod:`.tls`);
``tallystickd certs agent --dir DIR --agent ID ...`` adds agents' certificates signed by the CA
already in ``DIR``. Keys are ECDSA P-256, written with mode 0600; nothing is overwritten.
Exit codes: 0 written, 2 usage error or files that exist or cannot be read or written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from .tls import (
    CA_CERT,
    DEFAULT_HOSTS,
    SERVER_CERT,
    SERVER_KEY,
    TlsError,
    agent_files,
    init_test_setup,
    issue_agents,
    load_ca,
)

__all__ = ["build_parser", "main"]

_EXIT_OK: Final = 0
_EXIT_USAGE: Final = 2

_EPILOG = """\
The agent id is written in each client certificate as the URI subject alternative name
tallystick://agent/ID; tallystickd records a TCP call as that agent (which must also be
configured with --agent ID). The CA key DIR/ca.key signs new agents' certificates: keep it
off the machines that run agents. Exit codes: 0 written, 2 usage error or files that exist
or cannot be read or written (nothing is overwritten).
"""


def _days(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 36500:
        raise argparse.ArgumentTypeError("must be between 1 and 36500 days")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``tallystickd certs``."""
    parser = argparse.ArgumentParser(
        prog="tallystickd certs",
        description="Create a local CA and certificates for tallystickd's TCP port\n"
        "(mutual TLS), for a test set-up.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = commands.add_parser(
        "init",
        help="a new CA, a server certificate and agents' client certificates",
        description="Write DIR/ca.crt, DIR/ca.key, DIR/server.crt, DIR/server.key, and\n"
        "DIR/agents/ID.crt and DIR/agents/ID.key for each --agent.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument(
        "--host",
        action="append",
        metavar="H",
        help="a DNS name or IP address clients connect to (repeat; default: "
        f"{', '.join(DEFAULT_HOSTS)})",
    )
    agent = commands.add_parser(
        "agent",
        help="client certificates for more agents, signed by the CA in DIR",
        description="Write DIR/agents/ID.crt and DIR/agents/ID.key for each --agent,\n"
        "signed by DIR/ca.crt and DIR/ca.key.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for command, agents_required in ((init, False), (agent, True)):
        command.add_argument(
            "--dir", required=True, type=Path, metavar="DIR", help="where the files go"
        )
        command.add_argument(
            "--agent",
            dest="agents",
            action="append",
            default=[],
            required=agents_required,
            metavar="ID",
            help="an agent id to issue a client certificate for (repeat)",
        )
        command.add_argument(
            "--days",
            type=_days,
            default=365,
            metavar="N",
            help="validity of the server and agent certificates (default 365; the CA: "
            "at least 10 years)",
        )
        command.add_argument(
            "--json", action="store_true", help='print {"files": [path, ...]} on success'
        )
    return parser


def _hint(directory: Path, agents: Sequence[str]) -> str:
    lines = [
        "serve:  tallystickd --listen-tcp 127.0.0.1:7443 "
        f"--tls-cert {directory / SERVER_CERT} --tls-key {directory / SERVER_KEY} "
        f"--tls-client-ca {directory / CA_CERT}" + "".join(f" --agent {agent}" for agent in agents)
    ]
    for agent in agents:
        certificate, key = agent_files(directory, agent)
        lines.append(
            f"record: tallystick record --daemon 127.0.0.1:7443 --agent-id {agent} "
            f"--tls-cert {certificate} --tls-key {key} --tls-ca {directory / CA_CERT} ..."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tallystickd certs``; returns the exit code."""
    args = build_parser().parse_args(argv)
    directory: Path = args.dir
    agents: list[str] = list(dict.fromkeys(args.agents))
    now = datetime.now(UTC)
    try:
        if args.command == "init":
            hosts = args.host or list(DEFAULT_HOSTS)
            written = init_test_setup(
                directory, agents=agents, hosts=hosts, now=now, days=args.days
            )
        else:
            written = issue_agents(directory, load_ca(directory), agents, now=now, days=args.days)
    except TlsError as exc:
        print(f"tallystickd certs: {exc.code}: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    if args.json:
        print(json.dumps({"files": [str(path) for path in written]}))
        return _EXIT_OK
    for path in written:
        print(f"wrote {path}")
    if args.command == "init":
        print(_hint(directory, agents))
    return _EXIT_OK
