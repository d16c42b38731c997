"""tallystickd's gRPC server: the Ledger and Log services, health, reflection and the error table.

Every handler takes the same path: parse the request bytes strictly (unknown fields refused),
take the caller's identity from the socket the call arrived on (:mod:`.identity`), call the
log, and map any :class:`~tallystick.verifier.errors.TallystickError` to a gRPC status through
one table, :data:`STATUS_BY_CODE` then :data:`STATUS_BY_TYPE`. Every non-OK status carries the
stable reason code as trailing metadata ``tallystick-reason``. Request content is never logged.

One ``grpc.server`` serves each socket (the shared one and one per agent); all of them share
one thread pool, one log and one health service. The optional TCP port is one more server,
with mutual TLS: each of its calls runs with the handlers of the agent its verified client
certificate names (:class:`_ByClientCertificate`).
"""

from __future__ import annotations

import fcntl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import grpc
import structlog
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from pydantic import ValidationError
from tallystick.proto import audit_pb2, delegation_pb2, ledger_pb2, log_pb2, query_pb2
from tallystick.verifier import errors
from tallystick.verifier.checkpoint import SignedCheckpoint
from tallystick.verifier.logentry import CallBody
from tallystick.verifier.merkle import hash_leaf

from .agent_keys import AgentKeys
from .coin_audit import CACHE_DIR_NAME, CoinAudits, CoinAuditService, PendingAudits
from .config import Config
from .delegation import Access, DelegationService, TokenBook
from .errors import LogInconsistent, LogUnavailable
from .identity import (
    Caller,
    Listener,
    TcpListener,
    certificate_caller,
    listeners,
    private_umask,
    secure_socket,
    tcp_listener,
)
from .log import Log
from .query import QueryService

__all__ = [
    "EXPORT_CHUNK_BYTES",
    "MAX_ENTRIES_RESPONSE_BYTES",
    "REASON_KEY",
    "STATUS_BY_CODE",
    "STATUS_BY_TYPE",
    "Daemon",
    "DaemonError",
    "LedgerService",
    "Limits",
    "LogService",
    "call_body",
    "parse_request",
    "status_for",
]

#: Trailing-metadata key of the stable reason code on every error status.
REASON_KEY: Final = "tallystick-reason"
#: GetEntries answers at most this many entry bytes (below gRPC's default 4 MiB client limit).
MAX_ENTRIES_RESPONSE_BYTES: Final = 3 * 1024 * 1024
EXPORT_CHUNK_BYTES: Final = 64 * 1024

_LEDGER: Final = ledger_pb2.DESCRIPTOR.services_by_name["Ledger"]
_LOG: Final = log_pb2.DESCRIPTOR.services_by_name["Log"]
_DELEGATION: Final = delegation_pb2.DESCRIPTOR.services_by_name["Delegation"]
_QUERY: Final = query_pb2.DESCRIPTOR.services_by_name["Query"]
_COIN_AUDIT: Final = audit_pb2.DESCRIPTOR.services_by_name["CoinAudit"]
_SERVICES: Final = (
    _LEDGER.full_name,
    _LOG.full_name,
    _DELEGATION.full_name,
    _QUERY.full_name,
    _COIN_AUDIT.full_name,
)
_HEALTH: Final = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

_logger = structlog.get_logger("tallystickd")
_Reply = TypeVar("_Reply")


class DaemonError(errors.TallystickError):
    """The daemon cannot start or serve: ``daemon.already_running``, ``daemon.bind_failed``."""

    default_code = "daemon.error"


_Status = grpc.StatusCode

#: Exact reason codes whose status differs from their exception type's.
STATUS_BY_CODE: Final[Mapping[str, grpc.StatusCode]] = {
    "auth.no_agent_identity": _Status.PERMISSION_DENIED,
    "auth.unknown_agent": _Status.PERMISSION_DENIED,
    "log.size_out_of_range": _Status.OUT_OF_RANGE,
    "log.start_out_of_range": _Status.OUT_OF_RANGE,
    "merkle.index_out_of_range": _Status.OUT_OF_RANGE,
    "merkle.bad_size": _Status.OUT_OF_RANGE,
    "log.not_found": _Status.NOT_FOUND,
    "delegation.unknown_token": _Status.NOT_FOUND,
    "delegation.unknown_agent": _Status.NOT_FOUND,
    "query.index_out_of_range": _Status.OUT_OF_RANGE,
    "coin.audit_unknown": _Status.NOT_FOUND,
    "coin.unavailable": _Status.FAILED_PRECONDITION,
}

#: Status by exception type; the most specific class in an error's MRO wins.
STATUS_BY_TYPE: Final[Mapping[type[errors.TallystickError], grpc.StatusCode]] = {
    errors.MalformedInput: _Status.INVALID_ARGUMENT,
    errors.UnsupportedVersion: _Status.INVALID_ARGUMENT,
    errors.ChainBroken: _Status.INVALID_ARGUMENT,
    errors.CheckpointInvalid: _Status.INVALID_ARGUMENT,
    errors.ProofInvalid: _Status.INVALID_ARGUMENT,
    errors.SignatureInvalid: _Status.UNAUTHENTICATED,
    errors.IdentityUnresolvable: _Status.UNAUTHENTICATED,
    errors.Expired: _Status.UNAUTHENTICATED,
    errors.PolicyViolation: _Status.PERMISSION_DENIED,
    errors.Revoked: _Status.PERMISSION_DENIED,
    errors.ReplayDetected: _Status.PERMISSION_DENIED,
    LogInconsistent: _Status.DATA_LOSS,
    LogUnavailable: _Status.UNAVAILABLE,
    DaemonError: _Status.UNAVAILABLE,
    errors.TallystickError: _Status.INTERNAL,
}


def status_for(error: errors.TallystickError) -> grpc.StatusCode:
    """The gRPC status of ``error``: by its exact code first, then by its closest type."""
    if error.code in STATUS_BY_CODE:
        return STATUS_BY_CODE[error.code]
    for cls in type(error).__mro__:
        if cls in STATUS_BY_TYPE:
            return STATUS_BY_TYPE[cls]
    return _Status.INTERNAL


# --- requests ---------------------------------------------------------------------------


def _drop_unknown_fields(message: Message) -> bool:
    """Drop every unknown field, at any depth; True if there was one.

    ``DiscardUnknownFields`` walks every sub-message in C (a Python walk cost more than the
    parse itself), and serialised size tells whether it dropped anything: every field,
    unknown ones included, takes at least its tag byte.
    """
    size = message.ByteSize()
    message.DiscardUnknownFields()
    return message.ByteSize() != size


_M = TypeVar("_M", bound=Message)


def parse_request(message_type: type[_M], raw: bytes) -> _M:
    """Parse request bytes strictly: valid protobuf, and no fields this server does not know.

    A newer client's unknown field is refused rather than dropped: the log must not silently
    lose what an agent meant to record.

    :raises MalformedInput: ``input.malformed_message`` or ``input.unknown_field``.
    """
    try:
        message: _M = message_type.FromString(raw)
    except DecodeError as exc:
        raise errors.MalformedInput(
            f"{message_type.DESCRIPTOR.name}: not a valid protobuf message",
            code="input.malformed_message",
        ) from exc
    if _drop_unknown_fields(message):
        raise errors.MalformedInput(
            f"{message_type.DESCRIPTOR.name}: has fields this server does not know",
            code="input.unknown_field",
        )
    return message


#: CallRecord fields with presence that the body holds under the same name, as they are.
_RECORD_OPTIONALS: Final = (
    "request_id",
    "latency_ms",
    "request_sha256",
    "response_sha256",
    "delegation_id",
    "session_id",
    "operation",
    "tool_name",
    "service_tier",
)
#: Every Usage field has presence, and is the same-named member of the body's usage.
_USAGE_FIELDS: Final = tuple(field.name for field in ledger_pb2.Usage.DESCRIPTOR.fields)


def call_body(record: ledger_pb2.CallRecord) -> CallBody:
    """The log-entry body of an agent's call record, validated (once) as a ``call`` body.

    :raises MalformedInput: no usage, or a field that breaks the call-body rules (usage subsets,
        counts above 2^53 - 1, hash or cost formats) (``ledger.call_invalid``).
    """
    if not record.HasField("usage"):
        raise errors.MalformedInput(
            "call: usage is required (leave a count unset inside it when it is unknown)",
            code="ledger.call_invalid",
        )
    # Only what the agent set: an unset field takes the model's default (None), so the model
    # is the one an explicit None for each unset field would give.
    usage = record.usage
    fields: dict[str, Any] = {
        "provider": record.provider,
        "model": record.model,
        "usage": {name: getattr(usage, name) for name in _USAGE_FIELDS if usage.HasField(name)},
    }
    for name in _RECORD_OPTIONALS:
        if record.HasField(name):
            fields[name] = getattr(record, name)
    if record.HasField("cost"):
        cost = record.cost
        fields["cost"] = {"amount": cost.amount, "currency": cost.currency}
    if record.HasField("recount"):
        recount = record.recount
        fields["recount"] = {
            "tokenizer": recount.tokenizer,
            "visible_output_tokens": recount.visible_output_tokens,
        }
    try:
        body = CallBody.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "call"
        raise errors.MalformedInput(
            f"call: {where}: {str(first['msg']).removeprefix('Value error, ')}",
            code="ledger.call_invalid",
        ) from exc
    return body


# --- services ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-request caps: calls in one batch or stream, entries in one GetEntries answer."""

    max_batch: int
    max_entries: int


class LedgerService:
    """Ledger RPCs for one socket: calls are recorded in the name of that socket's agent."""

    def __init__(self, log: Log, caller: Caller, limits: Limits) -> None:
        self._log = log
        self._caller = caller
        self._limits = limits

    def record_call(self, raw: bytes) -> ledger_pb2.RecordCallResponse:
        """:raises TallystickError: no agent identity, a malformed call, or a log failure."""
        agent = self._caller.require_agent()
        request = parse_request(ledger_pb2.RecordCallRequest, raw)
        (index,) = self._log.append_calls(agent, [call_body(request.call)])
        return ledger_pb2.RecordCallResponse(index=index)

    def record_calls(self, raw: bytes) -> ledger_pb2.RecordCallsResponse:
        """:raises TallystickError: as :meth:`record_call`, or an empty or oversized batch."""
        agent = self._caller.require_agent()
        request = parse_request(ledger_pb2.RecordCallsRequest, raw)
        self._check_batch_size(len(request.calls))
        return self._append(agent, [call_body(call) for call in request.calls])

    def record_call_stream(self, raws: Iterator[bytes]) -> ledger_pb2.RecordCallsResponse:
        """:raises TallystickError: as :meth:`record_calls`; nothing is written on any error."""
        agent = self._caller.require_agent()
        bodies: list[CallBody] = []
        for raw in raws:
            self._check_batch_size(len(bodies) + 1)
            bodies.append(call_body(parse_request(ledger_pb2.RecordCallRequest, raw).call))
        self._check_batch_size(len(bodies))
        return self._append(agent, bodies)

    def _check_batch_size(self, count: int) -> None:
        if count == 0:
            raise errors.MalformedInput("batch: no calls", code="ledger.empty_batch")
        if count > self._limits.max_batch:
            raise errors.MalformedInput(
                f"batch: more than {self._limits.max_batch} calls", code="ledger.batch_too_large"
            )

    def _append(self, agent: str, bodies: list[CallBody]) -> ledger_pb2.RecordCallsResponse:
        return ledger_pb2.RecordCallsResponse(indexes=self._log.append_calls(agent, bodies))


class LogService:
    """Log RPCs: read-only, the same on every socket."""

    def __init__(self, log: Log, limits: Limits, scratch: Path) -> None:
        self._log = log
        self._limits = limits
        self._scratch = scratch

    def get_checkpoint(self, raw: bytes) -> log_pb2.GetCheckpointResponse:
        """:raises TallystickError: a malformed request or a log failure."""
        request = parse_request(log_pb2.GetCheckpointRequest, raw)
        text = self._log.checkpoint_now() if request.refresh else self._log.latest_checkpoint()
        checkpoint = SignedCheckpoint.from_text(text).checkpoint
        return log_pb2.GetCheckpointResponse(
            checkpoint=text,
            tree_size=checkpoint.size,
            root_hash=checkpoint.root_hash,
            origin=checkpoint.origin,
            log_vkey=self._log.vkey,
        )

    def _check_size(self, size: int, what: str) -> None:
        if size > self._log.size:
            raise errors.ProofInvalid(
                f"{what} {size} is beyond the log's size {self._log.size}",
                code="log.size_out_of_range",
            )

    def get_inclusion_proof(self, raw: bytes) -> log_pb2.GetInclusionProofResponse:
        """:raises TallystickError: ``log.size_out_of_range``, ``log.index_out_of_range``."""
        request = parse_request(log_pb2.GetInclusionProofRequest, raw)
        index, size = request.leaf_index, request.tree_size
        self._check_size(size, "tree size")
        if index >= size:
            raise errors.ProofInvalid(
                f"leaf index {index} is not below tree size {size}", code="log.index_out_of_range"
            )
        (leaf,) = self._log.entries(index, index + 1)
        return log_pb2.GetInclusionProofResponse(
            leaf_index=index,
            tree_size=size,
            leaf_hash=hash_leaf(leaf),
            hashes=self._log.inclusion_proof(index, size),
            root_hash=self._log.root(size),
        )

    def get_consistency_proof(self, raw: bytes) -> log_pb2.GetConsistencyProofResponse:
        """:raises TallystickError: ``log.size_out_of_range``, ``log.bad_range``."""
        request = parse_request(log_pb2.GetConsistencyProofRequest, raw)
        first, second = request.first, request.second
        self._check_size(second, "second size")
        if not 0 < first <= second:
            raise errors.ProofInvalid(
                f"consistency needs 0 < first <= second, got {first} and {second}",
                code="log.bad_range",
            )
        return log_pb2.GetConsistencyProofResponse(
            first=first,
            second=second,
            hashes=self._log.consistency_proof(first, second),
            first_root=self._log.root(first),
            second_root=self._log.root(second),
        )

    def get_entries(self, raw: bytes) -> log_pb2.GetEntriesResponse:
        """:raises TallystickError: ``log.bad_range`` (count 0), ``log.start_out_of_range``."""
        request = parse_request(log_pb2.GetEntriesRequest, raw)
        if request.count == 0:
            raise errors.MalformedInput("entries: count must be at least 1", code="log.bad_range")
        size = self._log.size
        if request.start >= size:
            raise errors.MalformedInput(
                f"entries: start {request.start} is not below the log's size {size}",
                code="log.start_out_of_range",
            )
        end = min(size, request.start + min(request.count, self._limits.max_entries))
        entries: list[bytes] = []
        total = 0
        for entry in self._log.entries(request.start, end):
            total += len(entry)
            if entries and total > MAX_ENTRIES_RESPONSE_BYTES:
                break
            entries.append(entry)
        return log_pb2.GetEntriesResponse(start=request.start, entries=entries)

    def export_bundle(self, raw: bytes) -> Iterator[log_pb2.BundleChunk]:
        """The bundle in chunks; the export is written before this returns.

        :raises TallystickError: a malformed request or a log failure.
        """
        parse_request(log_pb2.ExportBundleRequest, raw)
        with tempfile.TemporaryDirectory(dir=self._scratch, prefix="export-") as work:
            out = Path(work) / "bundle.jsonl"
            self._log.export(out)
            handle = out.open("rb")  # stays readable once the directory is removed
        return _chunks(handle)


def _chunks(handle: IO[bytes]) -> Iterator[log_pb2.BundleChunk]:
    with handle:
        while chunk := handle.read(EXPORT_CHUNK_BYTES):
            yield log_pb2.BundleChunk(data=chunk)


# --- plumbing ---------------------------------------------------------------------------


class _Metrics:
    """Prometheus metrics in a registry of their own, served on a separate HTTP port."""

    def __init__(self, log: Log) -> None:
        self.registry = CollectorRegistry()
        self.records = Counter(
            "tallystick_records", "Log entries recorded", ["agent"], registry=self.registry
        )
        self.request_bytes = Counter(
            "tallystick_request_bytes",
            "Bytes of request messages",
            ["method"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tallystick_rpc_duration_seconds",
            "Time to answer an RPC, by method and status",
            ["method", "status"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0),
            registry=self.registry,
        )
        size = Gauge("tallystick_log_size", "Entries in the log", registry=self.registry)
        size.set_function(lambda: log.size)
        age = Gauge(
            "tallystick_checkpoint_age_seconds",
            "Seconds since the latest checkpoint changed, as seen by the daemon's scrapes",
            registry=self.registry,
        )
        age.set_function(_CheckpointAge(log).seconds)


class _CheckpointAge:
    """When the log's latest checkpoint text last changed (checked at each scrape)."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self._text = ""
        self._since = time.monotonic()
        self._lock = threading.Lock()

    def seconds(self) -> float:
        text = self._log.latest_checkpoint()
        with self._lock:
            now = time.monotonic()
            if text != self._text:
                self._text, self._since = text, now
            return now - self._since


class _Rpc:
    """Wraps service methods as gRPC handlers: error table, reason trailer, log lines, metrics."""

    def __init__(self, caller: Caller, metrics: _Metrics | None) -> None:
        self._caller = caller
        self._metrics = metrics

    def _observe(self, method: str, started: float, status: str, reply: object) -> None:
        if self._metrics is None:
            return
        self._metrics.latency.labels(method, status).observe(time.perf_counter() - started)
        agent = self._caller.agent
        if agent is not None and isinstance(reply, ledger_pb2.RecordCallResponse):
            self._metrics.records.labels(agent).inc()
        elif agent is not None and isinstance(reply, ledger_pb2.RecordCallsResponse):
            self._metrics.records.labels(agent).inc(len(reply.indexes))

    def _run(
        self, context: grpc.ServicerContext, method: str, call: Callable[[], _Reply]
    ) -> _Reply:
        started = time.perf_counter()
        try:
            reply = call()
        except errors.TallystickError as exc:
            failure = exc
        except Exception:
            # A bug, not a rejection: log the traceback (never request content) and answer
            # INTERNAL, so one bad call cannot take the daemon down.
            _logger.exception("rpc.internal_error", method=method, agent=self._caller.agent)
            failure = errors.TallystickError(f"{method}: internal error", code="internal")
        else:
            self._observe(method, started, "OK", reply)
            return reply
        status = status_for(failure)
        self._observe(method, started, status.name, None)
        _logger.info(
            "rpc.rejected",
            method=method,
            agent=self._caller.agent,
            status=status.name,
            reason=failure.code,
            detail=str(failure),
        )
        context.set_trailing_metadata(((REASON_KEY, failure.code),))
        context.abort(status, str(failure))
        raise AssertionError("ServicerContext.abort returns only by raising")

    def _size(self, method: str, raw: bytes) -> bytes:
        if self._metrics is not None:
            self._metrics.request_bytes.labels(method).inc(len(raw))
        return raw

    def unary(self, method: str, handler: Callable[[bytes], Message]) -> grpc.RpcMethodHandler:
        """A unary-unary handler; the request arrives as raw bytes, parsed by ``handler``."""

        def behavior(raw: bytes, context: grpc.ServicerContext) -> Message:
            return self._run(context, method, lambda: handler(self._size(method, raw)))

        return grpc.unary_unary_rpc_method_handler(behavior, response_serializer=_serialize)

    def stream_in(
        self, method: str, handler: Callable[[Iterator[bytes]], Message]
    ) -> grpc.RpcMethodHandler:
        """A client-streaming handler."""

        def behavior(raws: Iterator[bytes], context: grpc.ServicerContext) -> Message:
            sized = (self._size(method, raw) for raw in raws)
            return self._run(context, method, lambda: handler(sized))

        return grpc.stream_unary_rpc_method_handler(behavior, response_serializer=_serialize)

    def stream_out(
        self, method: str, handler: Callable[[bytes], Iterator[Message]]
    ) -> grpc.RpcMethodHandler:
        """A server-streaming handler; ``handler`` does its failing work before it returns."""

        def behavior(raw: bytes, context: grpc.ServicerContext) -> Iterator[Message]:
            return self._run(context, method, lambda: handler(self._size(method, raw)))

        return grpc.unary_stream_rpc_method_handler(behavior, response_serializer=_serialize)


def _serialize(message: Message) -> bytes:
    data: bytes = message.SerializeToString()
    return data


_Methods = Mapping[str, tuple[type[Message], Callable[[Any], Message]]]


def _parsing(
    request_type: type[Message], handler: Callable[[Any], Message]
) -> Callable[[bytes], Message]:
    return lambda raw: handler(parse_request(request_type, raw))


def _generic_handlers(
    caller: Caller,
    ledger: LedgerService,
    log: LogService,
    metrics: _Metrics | None,
    services: Sequence[tuple[str, _Methods]] = (),
    *,
    reads_entries: bool,
) -> list[grpc.GenericRpcHandler]:
    rpc = _Rpc(caller, metrics)
    get_entries, export_bundle = log.get_entries, log.export_bundle
    if not reads_entries:
        get_entries, export_bundle = _refused_entries, _refused_export
    ledger_methods = {
        "RecordCall": rpc.unary("RecordCall", ledger.record_call),
        "RecordCalls": rpc.unary("RecordCalls", ledger.record_calls),
        "RecordCallStream": rpc.stream_in("RecordCallStream", ledger.record_call_stream),
    }
    log_methods = {
        "GetCheckpoint": rpc.unary("GetCheckpoint", log.get_checkpoint),
        "GetInclusionProof": rpc.unary("GetInclusionProof", log.get_inclusion_proof),
        "GetConsistencyProof": rpc.unary("GetConsistencyProof", log.get_consistency_proof),
        "GetEntries": rpc.unary("GetEntries", get_entries),
        "ExportBundle": rpc.stream_out("ExportBundle", export_bundle),
    }
    # Services whose handlers take the parsed request (Delegation, Query): all unary.
    unary = [
        grpc.method_handlers_generic_handler(
            name,
            {
                method: rpc.unary(method, _parsing(request_type, handler))
                for method, (request_type, handler) in methods.items()
            },
        )
        for name, methods in services
    ]
    return [
        grpc.method_handlers_generic_handler(_LEDGER.full_name, ledger_methods),
        grpc.method_handlers_generic_handler(_LOG.full_name, log_methods),
        *unary,
    ]


def _entries_not_permitted() -> errors.PolicyViolation:
    return errors.PolicyViolation(
        "raw entries hold every principal's records: read them on the shared socket, or "
        "configure this agent with read_all = true",
        code="auth.not_permitted",
    )


def _refused_entries(raw: bytes) -> log_pb2.GetEntriesResponse:
    raise _entries_not_permitted()


def _refused_export(raw: bytes) -> Iterator[log_pb2.BundleChunk]:
    raise _entries_not_permitted()


_HANDLER_KINDS: Final = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _find(
    handlers: Sequence[grpc.GenericRpcHandler], details: grpc.HandlerCallDetails
) -> grpc.RpcMethodHandler | None:
    for handler in handlers:
        found = handler.service(details)
        if found is not None:
            return found
    return None


class _ByClientCertificate(grpc.GenericRpcHandler):
    """The TCP port's services: each call runs with the handlers of the agent its verified
    client certificate names (``by_agent``); ``template`` (the shared socket's handlers) gives
    the methods served and their shapes. A certificate naming no configured agent is refused
    before any service runs, with the reason trailer like every other rejection.
    """

    def __init__(
        self,
        template: Sequence[grpc.GenericRpcHandler],
        by_agent: Mapping[str, Sequence[grpc.GenericRpcHandler]],
    ) -> None:
        self._template = template
        self._by_agent = by_agent

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        shape = _find(self._template, handler_call_details)
        if shape is None:
            return None

        def route(request: Any, context: grpc.ServicerContext) -> Any:
            handler = self._agent_handler(context, handler_call_details)
            behavior = (
                handler.unary_unary
                or handler.unary_stream
                or handler.stream_unary
                or handler.stream_stream
            )
            return behavior(request, context)

        kind = _HANDLER_KINDS[(shape.request_streaming, shape.response_streaming)]
        return kind(
            route,
            request_deserializer=shape.request_deserializer,
            response_serializer=shape.response_serializer,
        )

    def _agent_handler(
        self, context: grpc.ServicerContext, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        try:
            caller = certificate_caller(context.auth_context(), self._by_agent)
        except errors.TallystickError as exc:
            method = details.method.rpartition("/")[2]
            status = status_for(exc)
            _logger.info(
                "rpc.rejected",
                method=method,
                transport="tcp",
                status=status.name,
                reason=exc.code,
                detail=str(exc),
            )
            context.set_trailing_metadata(((REASON_KEY, exc.code),))
            context.abort(status, str(exc))
            raise AssertionError("ServicerContext.abort returns only by raising") from exc
        assert caller.agent is not None
        handler = _find(self._by_agent[caller.agent], details)
        assert handler is not None  # every agent serves the template's methods
        return handler


# --- the daemon -------------------------------------------------------------------------


def _lock(data_dir: Path) -> IO[bytes]:
    handle = (data_dir / "tallystickd.lock").open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise DaemonError(
            f"data directory {str(data_dir)!r} is in use by another tallystickd",
            code="daemon.already_running",
        ) from exc
    return handle


class Daemon:
    """A running tallystickd: the log, one gRPC server per socket, health, optional metrics.

    Build it with :meth:`start`; end it with :meth:`stop` (idempotent).
    """

    def __init__(
        self,
        config: Config,
        log: Log,
        lock: IO[bytes],
        pool: futures.ThreadPoolExecutor,
        health_servicer: health.HealthServicer,
        metrics: _Metrics | None,
    ) -> None:
        self.config = config
        self.log = log
        self._lock_handle = lock
        self._pool = pool
        self._health = health_servicer
        self._metrics = metrics
        self._metrics_http: Any = None
        self._servers: list[tuple[Listener, grpc.Server]] = []
        self._tcp_server: grpc.Server | None = None
        self._tcp_address: str | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @classmethod
    def start(cls, config: Config) -> Daemon:
        """Open (or create) the log in ``config.data_dir`` and serve every socket.

        :raises DaemonError: ``daemon.already_running`` or ``daemon.bind_failed``.
        :raises ConfigError: socket owner, group or mode cannot be set; TLS files that cannot
            be read or do not match (:class:`~.tls.TlsError`, ``tls.*``).
        :raises LogInconsistent: the stored log fails its start-up check.
        """
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = _lock(config.data_dir)
        try:
            log = Log.open(
                config.data_dir,
                origin=config.origin,
                checkpoint_every_entries=config.checkpoint_every_entries,
                checkpoint_every_ms=config.checkpoint_every_ms,
            )
        except BaseException:
            lock.close()
            raise
        pool = futures.ThreadPoolExecutor(config.workers, thread_name_prefix="tallystickd-rpc")
        health_servicer = health.HealthServicer(experimental_non_blocking=True)
        metrics = _Metrics(log) if config.metrics_address else None
        daemon = cls(config, log, lock, pool, health_servicer, metrics)
        try:
            daemon._serve()
        except BaseException:
            daemon.stop(grace=0)
            raise
        return daemon

    def _serve(self) -> None:
        config = self.config
        limits = Limits(config.max_batch, config.max_entries_per_response)
        log_service = LogService(self.log, limits, config.data_dir)
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
        ]
        agents_dir = config.data_dir / "agents"
        if config.agents and not agents_dir.exists():
            agents_dir.mkdir()
            agents_dir.chmod(0o711)  # agents of other users reach their own socket, list nothing
        self._keys = AgentKeys.open(config.data_dir, config.agents)
        self._book = TokenBook(self.log, self._keys)
        self._access = Access.from_config(config)
        self._coin = CoinAudits(
            self.log,
            cache_dir=config.data_dir / CACHE_DIR_NAME,
            pending=PendingAudits(
                capacity=config.coin_pending_max, ttl_s=config.coin_pending_ttl_s
            ),
        )
        for listener in listeners(config):
            server = grpc.server(self._pool, options=options)
            self._add_services(server, self._rpc_handlers(listener.caller, limits, log_service))
            self._servers.append((listener, server))
            try:
                with private_umask():
                    server.add_insecure_port(listener.address)
            except RuntimeError as exc:
                raise DaemonError(
                    f"cannot listen on {listener.address}: bind failed", code="daemon.bind_failed"
                ) from exc
            secure_socket(listener)
        tcp = tcp_listener(config)
        if tcp is not None:
            self._bind_tcp(tcp, options, limits, log_service)
        for server in self._grpc_servers:
            server.start()
        for service in ("", *_SERVICES):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if config.metrics_address and self._metrics is not None:
            host, _, port = config.metrics_address.rpartition(":")
            self._metrics_http, _thread = start_http_server(
                int(port), host, registry=self._metrics.registry
            )
        _logger.info(
            "tallystickd.serving",
            data_dir=str(config.data_dir),
            origin=self.log.origin,
            log_size=self.log.size,
            sockets=[listener.address for listener in self.listeners],
            tcp=self._tcp_address,
            agents=sorted(config.agents),
            metrics=config.metrics_address,
        )

    def _rpc_handlers(
        self, caller: Caller, limits: Limits, log_service: LogService
    ) -> list[grpc.GenericRpcHandler]:
        """The RPC services as ``caller`` sees them (on its socket, or over TCP)."""
        ledger = LedgerService(self.log, caller, limits)
        delegation = DelegationService(self._book, self._keys, self.log, self._access, caller)
        query = QueryService(self._book, self.log, self._access, caller)
        coin_audit = CoinAuditService(self._coin, caller)
        services = [
            (_DELEGATION.full_name, delegation.methods()),
            (_QUERY.full_name, query.methods()),
            (_COIN_AUDIT.full_name, coin_audit.methods()),
        ]
        # Raw entries hold every principal's records: the shared socket (the operator's, by its
        # file mode) may read them, an agent only when configured with read_all.
        reads_entries = caller.agent is None or caller.agent in self._access.read_all
        return _generic_handlers(
            caller, ledger, log_service, self._metrics, services, reads_entries=reads_entries
        )

    def _add_services(
        self, server: grpc.Server, handlers: Sequence[grpc.GenericRpcHandler]
    ) -> None:
        server.add_generic_rpc_handlers(tuple(handlers))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((*_SERVICES, _HEALTH, reflection.SERVICE_NAME), server)

    def _bind_tcp(
        self,
        tcp: TcpListener,
        options: Sequence[tuple[str, Any]],
        limits: Limits,
        log_service: LogService,
    ) -> None:
        material = tcp.load_tls()
        credentials = grpc.ssl_server_credentials(
            [(material.private_key, material.certificate_chain)],
            root_certificates=material.trusted_roots,
            require_client_auth=True,  # no client certificate, no handshake
        )
        by_agent = {
            agent: self._rpc_handlers(Caller(agent), limits, log_service)
            for agent in sorted(self.config.agents)
        }
        template = self._rpc_handlers(Caller(None), limits, log_service)
        server = grpc.server(self._pool, options=options)
        self._add_services(server, [_ByClientCertificate(template, by_agent)])
        self._tcp_server = server
        try:
            port = server.add_secure_port(tcp.address(), credentials)
        except RuntimeError:
            port = 0
        if port == 0:
            raise DaemonError(
                f"cannot listen on {tcp.address()}: bind failed", code="daemon.bind_failed"
            )
        self._tcp_address = tcp.address(port)

    @property
    def _grpc_servers(self) -> list[grpc.Server]:
        tcp = [] if self._tcp_server is None else [self._tcp_server]
        return [server for _, server in self._servers] + tcp

    @property
    def tcp_address(self) -> str | None:
        """The TCP port served with mutual TLS, ``HOST:PORT`` as bound, or None when off."""
        return self._tcp_address

    @property
    def listeners(self) -> list[Listener]:
        """The sockets served, the shared one first."""
        return [listener for listener, _ in self._servers]

    @property
    def metrics_port(self) -> int | None:
        """The bound metrics port (useful when configured as port 0), or None when off."""
        if self._metrics_http is None:
            return None
        return int(self._metrics_http.server_port)

    def stop(self, grace: float | None = None) -> None:
        """Drain and shut down: health NOT_SERVING, refuse new calls, let in-flight calls
        finish for ``grace`` seconds (default: the configured grace), close the log (which
        signs a final checkpoint), release the data directory."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.config.grace_seconds if grace is None else grace
            _logger.info("tallystickd.draining", grace_seconds=grace)
            self._health.enter_graceful_shutdown()
            done = [server.stop(grace) for server in self._grpc_servers]
            for event in done:
                event.wait()
            # Handlers cut off by the grace period may still be running; wait for them
            # before the log closes under them.
            self._pool.shutdown(wait=True)
            if self._metrics_http is not None:
                self._metrics_http.shutdown()
                self._metrics_http.server_close()
            size = self.log.size
            try:
                self.log.close()
                _logger.info("tallystickd.stopped", log_size=size)
            finally:
                self._lock_handle.close()
                self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` has finished; False if ``timeout`` passed first."""
        return self._stopped.wait(timeout)
