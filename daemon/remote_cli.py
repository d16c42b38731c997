"""The ``tallystick`` commands that talk to a running tallystickd: record a call, read the log.

Registered through the ``tallystick.cli`` entry point (``register``); the offline CLI skips
them when grpc is not installed. Commands and what they print on standard output:

- ``tallystick record``: the new entry's index, one integer, and nothing else;
- ``tallystick log checkpoint``: the C2SP signed note exactly as the daemon signed it;
- ``tallystick log proof --json``: ``{"leaf_index", "tree_size", "leaf_hash", "hashes",
  "root_hash"}``; ``tallystick log consistency --json``: ``{"first", "second", "hashes",
  "first_root", "second_root"}``; hashes are lowercase hex;
- ``tallystick log export``: a bundle file for ``tallystick log verify``.

Nothing the daemon sends is printed before it is checked: the checkpoint's signature, and each
proof up to a signed checkpoint (fail closed: exit 1 when a check fails). Exit codes are the
CLI's: 0 success, 1 checked and rejected (by the daemon's authorisation or the local checks),
2 usage, input or connection error. A gRPC error prints one line with the daemon's
``tallystick-reason`` code.

``--daemon`` is ``unix:PATH`` or ``HOST:PORT``; TCP always uses mutual TLS, with
``--tls-cert``/``--tls-key`` (the agent's client certificate and key, e.g. from
``tallystickd certs init``) and ``--tls-ca`` (the CA that issued the daemon's certificate).
Over TCP the daemon records calls as the agent the client certificate names.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
from pydantic import TypeAdapter, ValidationError
from tallystick.proto import ledger_pb2, ledger_pb2_grpc, log_pb2, log_pb2_grpc
from tallystick.verifier import aip, hdp
from tallystick.verifier._cli import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    SubcommandGroups,
    UsageError,
    _read_input,
)
from tallystick.verifier._internal.encoding import b64url_decode, b64url_encode
from tallystick.verifier._progress import progress_for
from tallystick.verifier.canonical import parse_json
from tallystick.verifier.checkpoint import Checkpoint, NoteVerifier, verify_checkpoint
from tallystick.verifier.errors import (
    IdentityUnresolvable,
    KeyInvalid,
    MalformedInput,
    TallystickError,
)
from tallystick.verifier.keys import PublicKey, load_public_key
from tallystick.verifier.merkle import hash_leaf, verify_consistency, verify_inclusion

from .config import AgentId, split_host_port
from .tls import TlsError, TlsMaterial, agent_id_of

__all__ = [
    "DEFAULT_PROVIDER",
    "EXIT_BY_STATUS",
    "SHARED_SOCKET_NAME",
    "DaemonAddress",
    "TcpAddress",
    "agent_address",
    "delegation_id",
    "parse_address",
    "register",
]

#: The shared socket's file name in the data directory (tallystickd's default ``socket``).
SHARED_SOCKET_NAME: Final = "tallystickd.sock"
#: ``record`` without ``--provider``.
DEFAULT_PROVIDER: Final = "unknown"
#: gRPC statuses that mean "checked and rejected" (exit 1); every other error exits 2.
EXIT_BY_STATUS: Final = {
    grpc.StatusCode.PERMISSION_DENIED: EXIT_REJECTED,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_REJECTED,
    grpc.StatusCode.DATA_LOSS: EXIT_REJECTED,
}

_DEFAULT_TIMEOUT_S: Final = 30.0
_MAX_TOKENS: Final = 2**53 - 1
_AGENT_ID: Final = TypeAdapter(AgentId)

_ADDRESS_HELP = (
    "the daemon: unix:PATH (e.g. unix:var/tallystickd.sock) or HOST:PORT ([IPV6]:PORT), "
    "which needs --tls-cert, --tls-key and --tls-ca (mutual TLS)"
)
_TLS_OPTIONS = "--tls-cert, --tls-key and --tls-ca"
_LOG_KEY_HELP = (
    "verify checkpoints with this log key (e.g. DATA_DIR/log.pub; 64 hex or 43 base64url "
    "characters, or a .pub or PEM file); default: the key the daemon names, which proves the "
    "proofs consistent with a signed checkpoint but not who signed it"
)
_EXIT_EPILOG = (
    "Exit codes: 0 success, 1 checked and rejected (refused by the daemon's authorisation,\n"
    "or a checkpoint or proof that does not verify locally), 2 usage, input or connection error."
)


class _Failure(Exception):
    """A command failed; ``exit_code`` is 1 (rejected) or 2 (usage, input, connection)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- addresses and identity ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DaemonAddress:
    """Where a daemon listens: a Unix socket ``path``; gRPC's ``target`` names it."""

    path: Path

    @property
    def target(self) -> str:
        """The gRPC target, ``unix:PATH``."""
        return f"unix:{self.path}"

    def __str__(self) -> str:
        return self.target


@dataclass(frozen=True, slots=True)
class TcpAddress:
    """A daemon's TCP port, reached with mutual TLS: ``tls`` holds this client's certificate
    and key and the CA that must have issued the daemon's certificate."""

    host: str
    port: int
    tls: TlsMaterial

    @property
    def target(self) -> str:
        """The gRPC target, ``HOST:PORT`` (``[IPV6]:PORT``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.target


def parse_address(text: str, *, tls: TlsMaterial | None = None) -> DaemonAddress | TcpAddress:
    """Parse ``ADDR``: ``unix:PATH`` (also ``unix:///abs/path``) or ``HOST:PORT`` with ``tls``.

    :raises UsageError: neither form, ``HOST:PORT`` without ``tls`` (TCP needs mutual TLS),
        or ``tls`` with a Unix socket.
    """
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if path.startswith("//"):  # gRPC's URI form: unix:///absolute/path
            path = path[2:]
        if not path:
            raise UsageError(f"--daemon {text!r}: unix: needs a socket path")
        if tls is not None:
            raise UsageError(f"--daemon {text}: {_TLS_OPTIONS} are for HOST:PORT only")
        return DaemonAddress(Path(path))
    try:
        host, port = split_host_port(text)
    except ValueError:
        raise UsageError(f"--daemon {text!r}: expected unix:PATH or HOST:PORT") from None
    if tls is None:
        raise UsageError(
            f"--daemon {text}: TCP needs mutual TLS: give {_TLS_OPTIONS}, or use the "
            "daemon's Unix socket, unix:DATA_DIR/tallystickd.sock"
        )
    return TcpAddress(host, port, tls)


def agent_address(address: DaemonAddress | TcpAddress, agent_id: str) -> DaemonAddress | TcpAddress:
    """The address at which the daemon records calls as ``agent_id``.

    The daemon takes an agent's identity from the socket a call arrives on or, over TCP, from
    the client certificate, never from the request. Over TCP the certificate must name
    ``agent_id``. ``DATA_DIR/agents/ID.sock`` is agent ``ID``'s socket: it is used as given
    (its ``ID`` must be ``agent_id``); the shared socket ``DATA_DIR/tallystickd.sock`` leads
    to ``DATA_DIR/agents/<agent_id>.sock``.

    :raises UsageError: an invalid ``agent_id``, a certificate or agent socket of another
        agent, no socket for ``agent_id``, or a socket that is neither kind.
    """
    try:
        _AGENT_ID.validate_python(agent_id)
    except ValidationError:
        raise UsageError(
            f"--agent-id {agent_id!r}: an agent id is 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        ) from None
    if isinstance(address, TcpAddress):
        try:
            named = agent_id_of(address.tls.certificate)
        except TallystickError as exc:
            raise UsageError(f"--tls-cert: {exc}") from exc
        if named != agent_id:
            raise UsageError(
                f"--agent-id {agent_id} does not match --tls-cert, which names agent {named}: "
                "the daemon records TCP calls as the certificate's agent"
            )
        return address
    path = address.path
    if path.parent.name == "agents" and path.suffix == ".sock":
        if path.stem != agent_id:
            raise UsageError(
                f"--agent-id {agent_id} does not match {address}: the daemon records calls on "
                f"that socket as agent {path.stem}"
            )
        return address
    if path.name != SHARED_SOCKET_NAME:
        raise UsageError(
            f"{address} is neither DATA_DIR/{SHARED_SOCKET_NAME} nor an agent socket "
            "DATA_DIR/agents/ID.sock; pass the agent's own socket to --daemon"
        )
    derived = path.parent / "agents" / f"{agent_id}.sock"
    if not derived.exists():
        raise UsageError(
            f"agent {agent_id} has no socket at {derived}: start tallystickd with "
            f"--agent {agent_id}"
        )
    return DaemonAddress(derived)


# -- delegation tokens --------------------------------------------------------------------------


def _content_reference(token: str) -> str:
    return "sha256:" + b64url_encode(hashlib.sha256(token.encode("utf-8")).digest())


def _aip_malformed(message: str) -> MalformedInput:
    return MalformedInput(f"aip token: {message}", code="aip.token_malformed", step=1)


def _compact_jti(token: str) -> str | None:
    parts = token.split(".")
    if len(parts) != 3:
        raise _aip_malformed("a compact token has three dot-separated parts")
    try:
        claims = parse_json(b64url_decode(parts[1], what="aip token payload"))
    except MalformedInput as exc:
        raise _aip_malformed(f"payload: {exc}") from exc
    if not isinstance(claims, dict):
        raise _aip_malformed("the payload is not a JSON object")
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not 0 < len(jti) <= 256):
        raise _aip_malformed("jti must be a string of 1 to 256 characters")
    return jti


def delegation_id(token: str) -> str:
    """The id a call records for the token that authorised it (parsed, not verified).

    An HDP token (JSON, or the base64url ``HDP-Token`` header form): ``header.token_id``. A
    compact AIP token: its ``jti``. An AIP token without one (every chained token, and compact
    tokens issued without ``jti``): ``sha256:`` and the unpadded base64url SHA-256 of its text.

    :raises MalformedInput: not a readable HDP or AIP token (``hdp.schema_invalid``,
        ``aip.token_malformed``).
    """
    text = token.strip()
    if text.startswith("{"):
        return hdp.HdpToken.from_json(text).token_id
    if text.startswith("eyJ"):  # JSON text, base64url encoded: a JWT or an HDP header value
        if "." not in text:
            return hdp.HdpToken.from_header(text).token_id
        return _compact_jti(text) or _content_reference(text)
    # A readable Biscuit, or MalformedInput; an aip:web: issuer is readable, just not
    # self-certifying.
    with contextlib.suppress(IdentityUnresolvable):
        aip.unverified_root_key(text)
    return _content_reference(text)


def _token_delegation_id(spec: str) -> str:
    text = _read_input(spec, what="--token", is_literal=lambda _: False)
    try:
        return delegation_id(text)
    except TallystickError as exc:
        raise _Failure(f"--token {spec}: {exc.code}: {exc}", EXIT_REJECTED) from exc


# -- talking to the daemon ----------------------------------------------------------------------

_Reply = TypeVar("_Reply")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _rpc_failure(error: grpc.RpcError, address: DaemonAddress | TcpAddress) -> _Failure:
    if not isinstance(error, grpc.Call):  # every error grpc raises for a call is one
        return _Failure(f"{address}: {error!r}", EXIT_USAGE)
    from .server import REASON_KEY  # on use: the server module is slow to import

    status = error.code()
    details = _one_line(error.details() or "")
    reason = dict(error.trailing_metadata() or ()).get(REASON_KEY)
    if reason is None and status in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        hint = ""
        if isinstance(address, TcpAddress):
            hint = (
                " (is it listening there, did --tls-ca issue its certificate for that host, "
                "and did its client CA issue --tls-cert?)"
            )
        return _Failure(f"cannot reach tallystickd at {address}: {details}{hint}", EXIT_USAGE)
    code = f"{status.name} {reason}" if reason else status.name
    return _Failure(
        f"tallystickd at {address} refused: {code}: {details}",
        EXIT_BY_STATUS.get(status, EXIT_USAGE),
    )


class _Client:
    """One channel to a daemon; every call has the same deadline and error mapping."""

    def __init__(self, address: DaemonAddress | TcpAddress, timeout: float) -> None:
        self.address = address
        self._timeout = timeout
        if isinstance(address, TcpAddress):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=address.tls.trusted_roots,
                private_key=address.tls.private_key,
                certificate_chain=address.tls.certificate_chain,
            )
            self._channel = grpc.secure_channel(address.target, credentials)
        elif address.path.exists():
            self._channel = grpc.insecure_channel(address.target)
        else:
            raise _Failure(
                f"cannot reach tallystickd at {address}: no such socket (is it running?)",
                EXIT_USAGE,
            )
        self.ledger = ledger_pb2_grpc.LedgerStub(self._channel)
        self.log = log_pb2_grpc.LogStub(self._channel)

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._channel.close()

    def call(self, method: Callable[..., _Reply], request: object) -> _Reply:
        """``method(request)`` with the deadline.

        :raises _Failure: the call failed (exit code by status).
        """
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _rpc_failure(exc, self.address) from None

    def call_if_permitted(self, method: Callable[..., _Reply], request: object) -> _Reply | None:
        """As :meth:`call`, but None where the daemon refuses this caller (PERMISSION_DENIED)."""
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                return None
            raise _rpc_failure(exc, self.address) from None

    def export(self, out: Path) -> int:
        """Stream the bundle into ``out`` (staged, then renamed); return its entry count."""
        staged = out.with_name(out.name + ".partial")
        try:
            with staged.open("wb") as handle:
                stream = self.log.ExportBundle(log_pb2.ExportBundleRequest(), timeout=self._timeout)
                for chunk in stream:
                    handle.write(chunk.data)
            size = _bundle_size(staged)
            staged.replace(out)
        except grpc.RpcError as exc:
            raise _rpc_failure(exc, self.address) from None
        except OSError as exc:
            raise UsageError(f"--out: cannot write {exc.filename}: {exc.strerror}") from exc
        finally:
            staged.unlink(missing_ok=True)  # gone already once renamed
        return size


def _bundle_size(path: Path) -> int:
    with path.open("rb") as handle:
        header = handle.readline(4096)
    try:
        value = parse_json(header)
    except MalformedInput as exc:
        raise _Failure(f"the daemon sent a bundle without a header: {exc}", EXIT_USAGE) from exc
    size = value.get("size") if isinstance(value, dict) else None
    if type(size) is not int:
        raise _Failure("the daemon sent a bundle without a size in its header", EXIT_USAGE)
    return size


# -- checking what the daemon sends -------------------------------------------------------------


def _log_key(spec: str | None) -> PublicKey | None:
    if spec is None:
        return None
    try:
        return load_public_key(spec)
    except KeyInvalid as exc:
        raise UsageError(f"--log-key: {exc}") from exc


def _rejected(what: str, exc: TallystickError) -> _Failure:
    return _Failure(f"rejected: {what}: {exc.code}: {exc}", EXIT_REJECTED)


def _verified_checkpoint(
    reply: log_pb2.GetCheckpointResponse, log_key: PublicKey | None
) -> Checkpoint:
    """The checkpoint of ``reply``, once its note verifies (with ``log_key`` when given).

    :raises _Failure: the note does not verify, or does not say what ``reply`` says (exit 1).
    """
    try:
        if log_key is None:
            verifier = NoteVerifier.from_vkey(reply.log_vkey)
        else:
            verifier = NoteVerifier.from_public_key(reply.origin, log_key)
        checkpoint = verify_checkpoint(reply.checkpoint, verifiers=[verifier], origin=reply.origin)
    except TallystickError as exc:
        raise _rejected("checkpoint", exc) from exc
    if (checkpoint.size, checkpoint.root_hash) != (reply.tree_size, reply.root_hash):
        raise _Failure(
            "rejected: checkpoint: the signed note and the reply state different trees",
            EXIT_REJECTED,
        )
    return checkpoint


def _checkpoint_covering(client: _Client, size: int, log_key: PublicKey | None) -> Checkpoint:
    """A verified checkpoint of ``size`` entries or more (signing a fresh one if needed)."""
    checkpoint = _verified_checkpoint(
        client.call(client.log.GetCheckpoint, log_pb2.GetCheckpointRequest()), log_key
    )
    if checkpoint.size < size:
        request = log_pb2.GetCheckpointRequest(refresh=True)
        checkpoint = _verified_checkpoint(client.call(client.log.GetCheckpoint, request), log_key)
    if checkpoint.size < size:
        raise _Failure(
            f"rejected: no signed checkpoint covers size {size} (the newest has {checkpoint.size})",
            EXIT_REJECTED,
        )
    return checkpoint


def _bind_to_checkpoint(client: _Client, size: int, root: bytes, checkpoint: Checkpoint) -> None:
    """Check that the tree of ``size`` with ``root`` is a prefix of the signed ``checkpoint``.

    :raises _Failure: it is not, or the consistency proof does not verify (exit 1).
    """
    if size == checkpoint.size:
        if root != checkpoint.root_hash:
            raise _Failure(
                f"rejected: the root at size {size} is not the signed checkpoint's root",
                EXIT_REJECTED,
            )
        return
    request = log_pb2.GetConsistencyProofRequest(first=size, second=checkpoint.size)
    reply = client.call(client.log.GetConsistencyProof, request)
    proof = list(reply.hashes)
    try:
        verify_consistency(
            first_size=size,
            second_size=checkpoint.size,
            first_root=root,
            second_root=checkpoint.root_hash,
            proof=proof,
        )
    except TallystickError as exc:
        raise _rejected(f"consistency with the checkpoint of size {checkpoint.size}", exc) from exc


def _check_echo(what: str, got: Sequence[int], asked: Sequence[int]) -> None:
    if tuple(got) != tuple(asked):
        raise _Failure(
            f"rejected: {what}: the daemon answered for {tuple(got)}, not {tuple(asked)}",
            EXIT_REJECTED,
        )


def _print_json(value: dict[str, Any]) -> None:
    print(json.dumps(value))


# -- commands -----------------------------------------------------------------------------------


def _client_tls(args: argparse.Namespace) -> TlsMaterial | None:
    """The TLS files given on the command line, read and checked, or None when none is given.

    :raises UsageError: some but not all of them, or files that cannot be used.
    """
    files = (args.tls_cert, args.tls_key, args.tls_ca)
    if all(file is None for file in files):
        return None
    if any(file is None for file in files):
        raise UsageError(f"TCP with mutual TLS needs all of {_TLS_OPTIONS}")
    try:
        return TlsMaterial.load(
            certificate=Path(args.tls_cert), key=Path(args.tls_key), trusted=Path(args.tls_ca)
        )
    except TlsError as exc:
        raise UsageError(f"{exc.code}: {exc}") from exc


def _address(args: argparse.Namespace) -> DaemonAddress | TcpAddress:
    return parse_address(args.daemon, tls=_client_tls(args))


def _cmd_record(args: argparse.Namespace) -> int:
    address = agent_address(_address(args), args.agent_id)
    delegation = None if args.token is None else _token_delegation_id(args.token)
    cost = None
    if args.cost is not None:
        cost = ledger_pb2.Cost(amount=args.cost, currency=args.currency or "USD")
    elif args.currency is not None:
        raise UsageError("--currency needs --cost")
    call = ledger_pb2.CallRecord(
        provider=args.provider,
        model=args.model,
        request_id=args.request_id,
        usage=ledger_pb2.Usage(
            input_tokens=args.input_tokens,
            cache_read_input_tokens=args.cache_read_input_tokens,
            cache_creation_input_tokens=args.cache_creation_input_tokens,
            output_tokens=args.output_tokens,
            reasoning_output_tokens=args.reasoning_tokens,
        ),
        cost=cost,
        latency_ms=args.latency_ms,
        delegation_id=delegation,
        session_id=args.session_id,
    )
    with _Client(address, args.timeout) as client:
        reply = client.call(client.ledger.RecordCall, ledger_pb2.RecordCallRequest(call=call))
    print(reply.index)
    return EXIT_OK


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    log_key = _log_key(args.log_key)
    with _Client(_address(args), args.timeout) as client:
        request = log_pb2.GetCheckpointRequest(refresh=args.refresh)
        reply = client.call(client.log.GetCheckpoint, request)
    checkpoint = _verified_checkpoint(reply, log_key)
    if args.json:
        _print_json(
            {
                "origin": checkpoint.origin,
                "tree_size": checkpoint.size,
                "root_hash": checkpoint.root_hash.hex(),
                "checkpoint": reply.checkpoint,
            }
        )
    else:
        sys.stdout.write(reply.checkpoint)  # the note ends with its own newline
    return EXIT_OK


def _entry_if_readable(client: _Client, index: int) -> bytes | None:
    """Entry ``index``'s bytes, or None where this caller may not read raw entries.

    An agent without ``read_all`` still gets proofs (they reveal only hashes); the proof is
    then checked for the leaf hash the daemon names, without matching it to the entry's bytes.
    """
    reply = client.call_if_permitted(
        client.log.GetEntries, log_pb2.GetEntriesRequest(start=index, count=1)
    )
    if reply is None:
        return None
    entries = reply.entries
    if len(entries) != 1:
        raise _Failure(f"rejected: the daemon returned no entry {index}", EXIT_REJECTED)
    return bytes(entries[0])


def _cmd_proof(args: argparse.Namespace) -> int:
    index, size = args.index, args.size
    if index >= size:
        raise UsageError(f"--index {index} must be below --size {size}")
    log_key = _log_key(args.log_key)
    with _Client(_address(args), args.timeout) as client:
        request = log_pb2.GetInclusionProofRequest(leaf_index=index, tree_size=size)
        reply = client.call(client.log.GetInclusionProof, request)
        _check_echo("inclusion proof", (reply.leaf_index, reply.tree_size), (index, size))
        entry = _entry_if_readable(client, index)
        if entry is not None and hash_leaf(entry) != reply.leaf_hash:
            raise _Failure(
                f"rejected: the leaf hash is not the hash of entry {index}", EXIT_REJECTED
            )
        proof = list(reply.hashes)
        try:
            verify_inclusion(
                leaf_index=index,
                tree_size=size,
                leaf_hash=reply.leaf_hash,
                proof=proof,
                root_hash=reply.root_hash,
            )
        except TallystickError as exc:
            raise _rejected(f"inclusion of entry {index}", exc) from exc
        checkpoint = _checkpoint_covering(client, size, log_key)
        _bind_to_checkpoint(client, size, reply.root_hash, checkpoint)
    if args.json:
        _print_json(
            {
                "leaf_index": index,
                "tree_size": size,
                "leaf_hash": reply.leaf_hash.hex(),
                "hashes": [value.hex() for value in proof],
                "root_hash": reply.root_hash.hex(),
            }
        )
    else:
        print(
            f"valid: entry {index} is in the tree of size {size} (root "
            f"{reply.root_hash.hex()}), consistent with the checkpoint of size {checkpoint.size}"
        )
    return EXIT_OK


def _cmd_consistency(args: argparse.Namespace) -> int:
    first, second = args.first, args.second
    if first > second:
        raise UsageError(f"--from {first} must not exceed --to {second}")
    log_key = _log_key(args.log_key)
    with _Client(_address(args), args.timeout) as client:
        request = log_pb2.GetConsistencyProofRequest(first=first, second=second)
        reply = client.call(client.log.GetConsistencyProof, request)
        _check_echo("consistency proof", (reply.first, reply.second), (first, second))
        proof = list(reply.hashes)
        try:
            verify_consistency(
                first_size=first,
                second_size=second,
                first_root=reply.first_root,
                second_root=reply.second_root,
                proof=proof,
            )
        except TallystickError as exc:
            raise _rejected(f"consistency of sizes {first} and {second}", exc) from exc
        checkpoint = _checkpoint_covering(client, second, log_key)
        _bind_to_checkpoint(client, second, reply.second_root, checkpoint)
    if args.json:
        _print_json(
            {
                "first": first,
                "second": second,
                "hashes": [value.hex() for value in proof],
                "first_root": reply.first_root.hex(),
                "second_root": reply.second_root.hex(),
            }
        )
    else:
        print(
            f"valid: the tree of size {first} is a prefix of the tree of size {second}, "
            f"consistent with the checkpoint of size {checkpoint.size}"
        )
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.daemon is None and any((args.tls_cert, args.tls_key, args.tls_ca)):
        raise UsageError(f"{_TLS_OPTIONS} are for --daemon HOST:PORT, not --data-dir")
    with progress_for(as_json=args.json) as progress:
        if args.daemon is not None:
            progress.stage(f"export: receiving the bundle from {args.daemon}")
            with _Client(_address(args), args.timeout) as client:
                size = client.export(out)
        else:
            from .log import export_data_dir  # on use: sqlite_utils is slow to import

            progress.stage("export: entries")
            try:
                # Absolute: the store opens SQLite by file: URI, which a relative path cannot be.
                size = export_data_dir(Path(args.data_dir), out, progress=progress.update)
            except OSError as exc:
                raise UsageError(f"export: {exc.filename}: {exc.strerror}") from exc
    if args.json:
        _print_json({"out": str(out), "size": size})
    else:
        print(f"exported {size} {'entry' if size == 1 else 'entries'} to {out}")
    return EXIT_OK


def _handled(command: str, handler: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """``handler``, printing a failure as one line on standard error and returning its code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except _Failure as exc:
            print(f"tallystick: {command}: {exc}", file=sys.stderr)
            return exc.exit_code

    return run


# -- parser -------------------------------------------------------------------------------------


def _count(text: str) -> int:
    value = int(text)
    if not 0 <= value <= _MAX_TOKENS:
        raise argparse.ArgumentTypeError(f"must be between 0 and {_MAX_TOKENS}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _connection_options(parser: argparse.ArgumentParser, *, daemon: bool = True) -> None:
    if daemon:
        parser.add_argument("--daemon", required=True, metavar="ADDR", help=_ADDRESS_HELP)
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=_DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"deadline of each call to the daemon (default {_DEFAULT_TIMEOUT_S:g})",
    )
    tls = parser.add_argument_group("TCP with mutual TLS (--daemon HOST:PORT)")
    tls.add_argument("--tls-cert", metavar="FILE", help="this agent's client certificate (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="its private key (unencrypted PEM)")
    tls.add_argument(
        "--tls-ca", metavar="FILE", help="the CA certificate that issued the daemon's (PEM)"
    )


_RECORD_DESCRIPTION = """\
Record one agent call in the daemon's log and print the new entry's index (an integer, and
nothing else on standard output) once the entry is durable.

The agent is never named in the request: tallystickd decides who is calling by the socket the
call arrives on, or over TCP by the client certificate. DATA_DIR/agents/ID.sock is agent ID's
socket (tallystickd --agent ID). So:
  --daemon unix:DATA_DIR/tallystickd.sock   the shared socket: the call goes to
                                            DATA_DIR/agents/<--agent-id>.sock instead;
  --daemon unix:DATA_DIR/agents/ID.sock     used as given; --agent-id must be ID;
  --daemon HOST:PORT                        TCP with mutual TLS: --tls-cert must be a
                                            certificate for tallystick://agent/<--agent-id>.
Whoever may open an agent's socket, or holds its certificate and key, may record as it.

--token FILE (or - for standard input) names the delegation that authorised the call; it is
parsed, not verified, and recorded as the call's delegation id: an HDP token's
header.token_id, a compact AIP token's jti, or for an AIP token without one "sha256:" and the
base64url SHA-256 of the token text. An unreadable file exits 2; a token that does not parse
exits 1 with its code.
"""


def _add_record(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    record = commands.add_parser(
        "record",
        help="record an agent call in tallystickd's log (prints the entry index)",
        description=_RECORD_DESCRIPTION,
        epilog=_EXIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    record.add_argument(
        "--daemon",
        required=True,
        metavar="ADDR",
        help="unix:DATA_DIR/tallystickd.sock, unix:DATA_DIR/agents/ID.sock or HOST:PORT",
    )
    record.add_argument(
        "--agent-id",
        required=True,
        metavar="ID",
        help="the calling agent: selects (or must match) its socket, see above",
    )
    record.add_argument("--model", required=True, metavar="M", help="the model called")
    record.add_argument(
        "--provider",
        default=DEFAULT_PROVIDER,
        metavar="P",
        help=f"e.g. openai, anthropic (default {DEFAULT_PROVIDER})",
    )
    tokens = [
        ("--input-tokens", True, "all input tokens, cached ones included"),
        ("--output-tokens", True, "all output tokens, reasoning included"),
        ("--reasoning-tokens", False, "reasoning output tokens (part of --output-tokens)"),
        ("--cache-read-input-tokens", False, "input read from a cache (part of --input-tokens)"),
        ("--cache-creation-input-tokens", False, "input written to a cache (part of it too)"),
    ]
    for flag, required, text in tokens:
        record.add_argument(flag, type=_count, required=required, metavar="N", help=text)
    record.add_argument("--token", metavar="FILE", help="the HDP or AIP token (see above)")
    record.add_argument("--request-id", metavar="ID", help="the provider's request id")
    record.add_argument("--session-id", metavar="SID", help="the session the call belongs to")
    record.add_argument("--latency-ms", type=_count, metavar="MS", help="the call's latency")
    record.add_argument("--cost", metavar="AMOUNT", help='a decimal amount, e.g. "0.0042"')
    record.add_argument("--currency", metavar="CODE", help="ISO 4217 code of --cost (default USD)")
    _connection_options(record, daemon=False)
    record.set_defaults(handler=_handled("record", _cmd_record))


def _add_log_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    checkpoint = commands.add_parser(
        "checkpoint",
        help="print the daemon's latest signed checkpoint (a C2SP signed note)",
        description="Print the latest checkpoint exactly as signed: origin line, decimal tree "
        "size, base64 root hash, a blank line, then the signature lines. It is verified first.",
        epilog=_EXIT_EPILOG,
    )
    _connection_options(checkpoint)
    checkpoint.add_argument("--log-key", metavar="KEY", help=_LOG_KEY_HELP)
    checkpoint.add_argument(
        "--refresh", action="store_true", help="have the daemon sign one covering every entry"
    )
    checkpoint.add_argument(
        "--json",
        action="store_true",
        help='print {"origin", "tree_size", "root_hash" (hex), "checkpoint" (the note)}',
    )
    checkpoint.set_defaults(handler=_handled("log checkpoint", _cmd_checkpoint))

    proof = commands.add_parser(
        "proof",
        help="an inclusion proof of one entry, verified locally",
        description="Fetch the RFC 9162 inclusion proof of entry --index in the tree of "
        "--size entries and verify it, the entry's leaf hash, and the tree's consistency with "
        'a signed checkpoint. --json prints {"leaf_index": int, "tree_size": int, '
        '"leaf_hash": hex, "hashes": [hex, ...], "root_hash": hex} (SHA-256, lowercase hex).',
        epilog=_EXIT_EPILOG,
    )
    _connection_options(proof)
    proof.add_argument("--index", required=True, type=_count, metavar="I", help="entry index")
    proof.add_argument("--size", required=True, type=_count, metavar="N", help="tree size")
    proof.add_argument("--log-key", metavar="KEY", help=_LOG_KEY_HELP)
    proof.add_argument("--json", action="store_true", help="print one JSON object")
    proof.set_defaults(handler=_handled("log proof", _cmd_proof))

    consistency = commands.add_parser(
        "consistency",
        help="a consistency proof between two tree sizes, verified locally",
        description="Fetch the RFC 9162 consistency proof from the tree of --from entries to "
        "the tree of --to entries and verify it, and the second tree's consistency with a "
        'signed checkpoint. --json prints {"first": int, "second": int, "hashes": [hex, ...], '
        '"first_root": hex, "second_root": hex} (SHA-256, lowercase hex).',
        epilog=_EXIT_EPILOG,
    )
    _connection_options(consistency)
    consistency.add_argument(
        "--from", dest="first", required=True, type=_count, metavar="M", help="the older size"
    )
    consistency.add_argument(
        "--to", dest="second", required=True, type=_count, metavar="N", help="the newer size"
    )
    consistency.add_argument("--log-key", metavar="KEY", help=_LOG_KEY_HELP)
    consistency.add_argument("--json", action="store_true", help="print one JSON object")
    consistency.set_defaults(handler=_handled("log consistency", _cmd_consistency))

    export = commands.add_parser(
        "export",
        help="write the log as a bundle for `tallystick log verify`",
        description="Write the whole log as a tallystick.bundle/v1 file. With --daemon the "
        "daemon signs a fresh checkpoint and streams the bundle; with --data-dir the database "
        "is read directly (read-only, a daemon may be running), every stored row exactly as "
        "stored, signing nothing. Verify it with: tallystick log verify BUNDLE --log-key "
        "DATA_DIR/log.pub",
        epilog=_EXIT_EPILOG,
    )
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--daemon", metavar="ADDR", help=_ADDRESS_HELP)
    source.add_argument(
        "--data-dir", metavar="DIR", help="tallystickd's data directory (offline export)"
    )
    export.add_argument("--out", required=True, metavar="BUNDLE", help="the bundle file to write")
    _connection_options(export, daemon=False)
    export.add_argument("--json", action="store_true", help='print {"out": path, "size": entries}')
    export.set_defaults(handler=_handled("log export", _cmd_export))


def register(groups: SubcommandGroups) -> None:
    """Add ``record`` and ``log checkpoint|proof|consistency|export`` to the offline CLI."""
    _add_record(groups[""])
    _add_log_commands(groups["log"])
