#!/usr/bin/env python3
"""Exit 0 if tallystickd's gRPC health service answers SERVING, 1 otherwise (2: bad usage).

The container's HEALTHCHECK and the Kubernetes probes run it: neither can speak gRPC over a Unix
socket by itself. It asks the shared, read-only socket, so it needs no agent identity. A
draining daemon (after SIGTERM) answers NOT_SERVING; a stopped one does not answer.

Address, first found: --address, unix:$TALLYSTICK_SOCKET (the daemon's own setting), then
unix:/var/lib/tallystick/tallystickd.sock (the image's data directory).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

# gRPC's C core prints its own lines to stderr; read when grpc is imported, so set it first.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["DEFAULT_ADDRESS", "check", "default_address", "main"]

DEFAULT_ADDRESS = "unix:/var/lib/tallystick/tallystickd.sock"
_SERVING = health_pb2.HealthCheckResponse.SERVING


def default_address(environ: Mapping[str, str]) -> str:
    """The address to ask when --address is not given."""
    socket = environ.get("TALLYSTICK_SOCKET", "")
    return f"unix:{socket}" if socket else DEFAULT_ADDRESS


def check(address: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """Ask ``address`` whether ``service`` ("" is the whole server) is SERVING.

    Returns whether it is, and the status name or the gRPC error that came back instead.
    """
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            reply = stub.Check(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            return False, f"{getattr(code, 'name', 'ERROR')}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == _SERVING, status


def main(argv: Sequence[str] | None = None) -> int:
    """Check once and report on one line: standard output if serving, standard error if not."""
    parser = argparse.ArgumentParser(
        prog="tallystick-healthcheck", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--address",
        default=default_address(os.environ),
        help="unix:PATH of tallystickd's shared socket (default: %(default)s)",
    )
    parser.add_argument("--service", default="", help="a service name; default: the server")
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    serving, status = check(args.address, args.service, args.timeout)
    print(f"tallystickd at {args.address}: {status}", file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
