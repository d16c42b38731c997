"""tallystickd end to end over real Unix sockets: record, prove, export, refuse, drain."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tallystick.daemon.cli import main
from tallystick.daemon.config import ConfigError
from tallystick.daemon.errors import LogInconsistent, LogUnavailable
from tallystick.daemon.log import export_data_dir
from tallystick.daemon.server import DaemonError, status_for
from tallystick.proto import ledger_pb2, ledger_pb2_grpc, log_pb2
from tallystick.verifier import errors
from tallystick.verifier._internal.encoding import b64_decode
from tallystick.verifier.checkpoint import Checkpoint, NoteVerifier, verify_checkpoint
from tallystick.verifier.keys import load_public_key
from tallystick.verifier.logentry import GENESIS_PREV, LogEntry
from tallystick.verifier.merkle import hash_leaf, verify_consistency, verify_inclusion

from .conftest import QUIET_CHECKPOINTS, DaemonProcess, RunningDaemon, make_call, reason

Code = grpc.StatusCode
StartDaemon = Callable[..., RunningDaemon]


def _verified(text: str, data_dir: Path, origin: str) -> Checkpoint:
    """Verify a checkpoint offline with nothing but DATA_DIR/log.pub."""
    public_key = load_public_key(str(data_dir / "log.pub"))
    verifier = NoteVerifier.from_public_key(origin, public_key)
    return verify_checkpoint(text, verifiers=[verifier], origin=origin)


def _checkpoint(served: RunningDaemon) -> tuple[Checkpoint, log_pb2.GetCheckpointResponse]:
    reply = served.log().GetCheckpoint(log_pb2.GetCheckpointRequest(refresh=True))
    return _verified(reply.checkpoint, served.data_dir, reply.origin), reply


def _raw_unary(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    """A call that sends request bytes as they are, to test what the server does with them."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


# --- recording ---------------------------------------------------------------------------


def test_record_call_returns_the_durable_entry_index(served: RunningDaemon) -> None:
    before = served.daemon.log.size
    reply = served.ledger("alice").RecordCall(ledger_pb2.RecordCallRequest(call=make_call()))
    assert reply.index == before
    assert served.daemon.log.size == before + 1
    (raw,) = served.log().GetEntries(log_pb2.GetEntriesRequest(start=reply.index, count=1)).entries
    entry = LogEntry.from_bytes(raw)
    assert (entry.index, entry.agent, entry.kind.value) == (reply.index, "alice", "call")
    assert entry.body["usage"] == {
        "input_tokens": 1200,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": None,  # unset is unknown, recorded as null, never 0
        "output_tokens": 300,
        "reasoning_output_tokens": 120,
    }
    assert entry.body["cost"] == {"amount": "0.0042", "currency": "USD"}
    assert entry.body["request_sha256"] == "ab" * 32


def test_unknown_usage_and_cost_are_null(served: RunningDaemon) -> None:
    call = ledger_pb2.CallRecord(provider="vllm", model="m", usage=ledger_pb2.Usage())
    index = served.ledger("alice").RecordCall(ledger_pb2.RecordCallRequest(call=call)).index
    (raw,) = served.daemon.log.entries(index, index + 1)
    body = LogEntry.from_bytes(raw).body
    assert set(body["usage"].values()) == {None}
    assert body["cost"] is None
    assert body["latency_ms"] is None


def test_identity_is_the_socket_not_a_field(served: RunningDaemon) -> None:
    index = served.ledger("bob").RecordCall(ledger_pb2.RecordCallRequest(call=make_call())).index
    (raw,) = served.daemon.log.entries(index, index + 1)
    assert LogEntry.from_bytes(raw).agent == "bob"


def test_record_calls_is_one_atomic_batch(served: RunningDaemon) -> None:
    before = served.daemon.log.size
    calls = [make_call(request_id=f"r{i}") for i in range(4)]
    reply = served.ledger("alice").RecordCalls(ledger_pb2.RecordCallsRequest(calls=calls))
    assert list(reply.indexes) == list(range(before, before + 4))
    bad = [
        *calls[:2],
        make_call(usage=ledger_pb2.Usage(output_tokens=1, reasoning_output_tokens=2)),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        served.ledger("alice").RecordCalls(ledger_pb2.RecordCallsRequest(calls=bad))
    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert reason(caught.value) == "ledger.call_invalid"
    assert served.daemon.log.size == before + 4  # none of the bad batch was written


def test_record_call_stream_returns_every_index(served: RunningDaemon) -> None:
    before = served.daemon.log.size
    requests = (ledger_pb2.RecordCallRequest(call=make_call(request_id=f"s{i}")) for i in range(7))
    reply = served.ledger("alice").RecordCallStream(requests)
    assert list(reply.indexes) == list(range(before, before + 7))


def test_record_call_stream_writes_nothing_on_a_bad_item(served: RunningDaemon) -> None:
    before = served.daemon.log.size
    requests = [ledger_pb2.RecordCallRequest(call=make_call()) for _ in range(3)]
    requests.append(ledger_pb2.RecordCallRequest(call=make_call(model="")))
    with pytest.raises(grpc.RpcError) as caught:
        served.ledger("alice").RecordCallStream(iter(requests))
    assert (caught.value.code(), reason(caught.value)) == (
        Code.INVALID_ARGUMENT,
        "ledger.call_invalid",
    )
    assert served.daemon.log.size == before


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        pytest.param(0, "ledger.empty_batch", id="empty"),
        pytest.param(51, "ledger.batch_too_large", id="over-max-batch"),
    ],
)
def test_batch_size_limits(served: RunningDaemon, count: int, expected: str) -> None:
    before = served.daemon.log.size
    calls = [make_call() for _ in range(count)]
    for attempt in (
        lambda: served.ledger("alice").RecordCalls(ledger_pb2.RecordCallsRequest(calls=calls)),
        lambda: served.ledger("alice").RecordCallStream(
            iter([ledger_pb2.RecordCallRequest(call=call) for call in calls])
        ),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            attempt()
        assert (caught.value.code(), reason(caught.value)) == (Code.INVALID_ARGUMENT, expected)
    assert served.daemon.log.size == before


def test_concurrent_records_get_distinct_consecutive_indexes(served: RunningDaemon) -> None:
    before = served.daemon.log.size
    stub = served.ledger("alice")
    found: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            index = stub.RecordCall(ledger_pb2.RecordCallRequest(call=make_call())).index
            with lock:
                found.append(index)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(found) == list(range(before, before + 120))


# --- the shared socket -------------------------------------------------------------------


def test_shared_socket_refuses_every_record(served: RunningDaemon) -> None:
    before = served.daemon.log.size
    stub = served.ledger(None)
    for attempt in (
        lambda: stub.RecordCall(ledger_pb2.RecordCallRequest(call=make_call())),
        lambda: stub.RecordCalls(ledger_pb2.RecordCallsRequest(calls=[make_call()])),
        lambda: stub.RecordCallStream(iter([ledger_pb2.RecordCallRequest(call=make_call())])),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            attempt()
        assert caught.value.code() == Code.PERMISSION_DENIED
        assert reason(caught.value) == "auth.no_agent_identity"
    assert served.daemon.log.size == before


def test_sockets_are_private_files(served: RunningDaemon) -> None:
    for listener in served.daemon.listeners:
        mode = listener.path.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600, listener.path
    assert served.daemon.listeners[1].path == served.data_dir / "agents" / "alice.sock"


def test_agent_socket_group_and_mode(start_daemon: StartDaemon) -> None:
    gid = os.getgid()
    running = start_daemon(agents={"alice": {"group": gid}, "carol": {"socket_mode": "0640"}})
    alice = running.daemon.listeners[1].path.stat()
    assert (stat.S_IMODE(alice.st_mode), alice.st_gid) == (0o660, gid)
    assert stat.S_IMODE(running.daemon.listeners[2].path.stat().st_mode) == 0o640


# --- checkpoints, proofs, entries, export ------------------------------------------------


def test_checkpoint_verifies_offline_with_log_pub(served: RunningDaemon) -> None:
    served.ledger("alice").RecordCall(ledger_pb2.RecordCallRequest(call=make_call()))
    checkpoint, reply = _checkpoint(served)
    assert checkpoint.size == reply.tree_size == served.daemon.log.size
    assert checkpoint.root_hash == reply.root_hash == served.daemon.log.root()
    assert reply.origin.startswith("tallystick.local/")
    assert (
        reply.log_vkey
        == NoteVerifier.from_public_key(
            reply.origin, load_public_key(str(served.data_dir / "log.pub"))
        ).vkey
    )
    other = NoteVerifier.from_public_key(reply.origin, load_public_key("ab" * 32))
    with pytest.raises(errors.CheckpointInvalid):
        verify_checkpoint(reply.checkpoint, verifiers=[other], origin=reply.origin)
    latest = served.log().GetCheckpoint(log_pb2.GetCheckpointRequest())
    assert latest.checkpoint == reply.checkpoint  # nothing new since the refresh


def test_agents_cannot_read_raw_entries_without_read_all(served: RunningDaemon) -> None:
    served.ledger("alice").RecordCall(ledger_pb2.RecordCallRequest(call=make_call()))
    log = served.log(served.agent("bob"))
    with pytest.raises(grpc.RpcError) as caught:
        log.GetEntries(log_pb2.GetEntriesRequest(start=0, count=1))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "auth.not_permitted"
    with pytest.raises(grpc.RpcError) as caught:
        list(log.ExportBundle(log_pb2.ExportBundleRequest()))
    assert reason(caught.value) == "auth.not_permitted"
    assert served.log().GetEntries(log_pb2.GetEntriesRequest(start=0, count=1)).entries


def test_inclusion_proofs_verify_against_the_signed_checkpoint(served: RunningDaemon) -> None:
    served.ledger("alice").RecordCalls(
        ledger_pb2.RecordCallsRequest(calls=[make_call() for _ in range(9)])
    )
    checkpoint, _ = _checkpoint(served)
    log = served.log(served.agent("bob"))  # proofs work on agent sockets too
    for index in (0, 1, checkpoint.size // 2, checkpoint.size - 1):
        proof = log.GetInclusionProof(
            log_pb2.GetInclusionProofRequest(leaf_index=index, tree_size=checkpoint.size)
        )
        request = log_pb2.GetEntriesRequest(start=index, count=1)
        (raw,) = served.log().GetEntries(request).entries  # raw entries: the shared socket
        assert proof.leaf_hash == hash_leaf(raw)
        assert proof.root_hash == checkpoint.root_hash
        verify_inclusion(
            leaf_index=index,
            tree_size=checkpoint.size,
            leaf_hash=hash_leaf(raw),
            proof=list(proof.hashes),
            root_hash=checkpoint.root_hash,
        )
    wrong_leaf = hash_leaf(raw + b" ")
    with pytest.raises(errors.ProofInvalid):
        verify_inclusion(
            leaf_index=checkpoint.size - 1,
            tree_size=checkpoint.size,
            leaf_hash=wrong_leaf,
            proof=list(proof.hashes),
            root_hash=checkpoint.root_hash,
        )


def test_consistency_proof_links_two_checkpoints(served: RunningDaemon) -> None:
    served.ledger("alice").RecordCall(ledger_pb2.RecordCallRequest(call=make_call()))
    old, _ = _checkpoint(served)
    served.ledger("bob").RecordCalls(
        ledger_pb2.RecordCallsRequest(calls=[make_call() for _ in range(5)])
    )
    new, _ = _checkpoint(served)
    reply = served.log().GetConsistencyProof(
        log_pb2.GetConsistencyProofRequest(first=old.size, second=new.size)
    )
    assert (reply.first_root, reply.second_root) == (old.root_hash, new.root_hash)
    verify_consistency(
        first_size=old.size,
        second_size=new.size,
        first_root=old.root_hash,
        second_root=new.root_hash,
        proof=list(reply.hashes),
    )
    with pytest.raises(errors.ProofInvalid):
        verify_consistency(
            first_size=old.size,
            second_size=new.size,
            first_root=new.root_hash,
            second_root=new.root_hash,
            proof=list(reply.hashes),
        )


def test_get_entries_pages_under_the_server_cap(served: RunningDaemon) -> None:
    served.ledger("alice").RecordCalls(
        ledger_pb2.RecordCallsRequest(calls=[make_call() for _ in range(7)])
    )
    size = served.daemon.log.size
    log = served.log()
    page = log.GetEntries(log_pb2.GetEntriesRequest(start=0, count=1000))
    assert (page.start, len(page.entries)) == (0, 5)  # max_entries_per_response = 5
    collected: list[bytes] = []
    while len(collected) < size:
        page = log.GetEntries(log_pb2.GetEntriesRequest(start=len(collected), count=1000))
        collected.extend(page.entries)
    assert collected == served.daemon.log.entries(0, size)


def test_export_bundle_is_the_logs_export(served: RunningDaemon, short_dir: Path) -> None:
    served.ledger("alice").RecordCall(ledger_pb2.RecordCallRequest(call=make_call()))
    streamed = b"".join(
        chunk.data for chunk in served.log().ExportBundle(log_pb2.ExportBundleRequest())
    )
    size = served.daemon.log.export(short_dir / "direct.jsonl")
    assert streamed == (short_dir / "direct.jsonl").read_bytes()
    lines = [json.loads(line) for line in streamed.decode().splitlines()]
    header, entries, checkpoints = lines[0], lines[1 : 1 + size], lines[1 + size :]
    assert header["format"] == "tallystick.bundle/v1"
    assert header["size"] == size == served.daemon.log.size
    prev = GENESIS_PREV
    for index, line in enumerate(entries):
        raw = b64_decode(line["entry"])
        entry = LogEntry.from_bytes(raw)
        assert (entry.index, entry.prev) == (index, prev)
        prev = hash_leaf(raw)
    assert checkpoints
    last = _verified(checkpoints[-1]["checkpoint"], served.data_dir, header["origin"])
    assert last.size == size


# --- refusals ----------------------------------------------------------------------------


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    """One protobuf field: tag then payload (varint payloads already encoded)."""
    tag = bytes([number << 3 | wire_type]) if number < 16 else _varint(number << 3 | wire_type)
    if wire_type == 2:
        return tag + _varint(len(payload)) + payload
    return tag + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


_CALL = make_call().SerializeToString()
_NEGATIVE = (1 << 64) - 1  # how int64 -1 arrives in a uint64 field


BAD_RECORDS = [
    pytest.param(
        ledger_pb2.RecordCallRequest(
            call=make_call(usage=ledger_pb2.Usage(input_tokens=10, cache_read_input_tokens=11))
        ).SerializeToString(),
        Code.INVALID_ARGUMENT,
        "ledger.call_invalid",
        id="cached-exceeds-input",
    ),
    pytest.param(
        ledger_pb2.RecordCallRequest(
            call=make_call(usage=ledger_pb2.Usage(output_tokens=2**53))
        ).SerializeToString(),
        Code.INVALID_ARGUMENT,
        "ledger.call_invalid",
        id="count-above-2^53-1",
    ),
    pytest.param(
        _field(
            1,
            2,
            _field(1, 2, b"openai")
            + _field(2, 2, b"m")
            + _field(4, 2, _field(1, 0, _varint(_NEGATIVE))),
        ),
        Code.INVALID_ARGUMENT,
        "ledger.call_invalid",
        id="negative-count",
    ),
    pytest.param(
        ledger_pb2.RecordCallRequest(call=make_call(latency_ms=_NEGATIVE)).SerializeToString(),
        Code.INVALID_ARGUMENT,
        "ledger.call_invalid",
        id="negative-latency",
    ),
    pytest.param(
        ledger_pb2.RecordCallRequest(
            call=ledger_pb2.CallRecord(provider="p", model="m")
        ).SerializeToString(),
        Code.INVALID_ARGUMENT,
        "ledger.call_invalid",
        id="no-usage",
    ),
    pytest.param(
        ledger_pb2.RecordCallRequest(call=make_call(request_sha256="AB" * 32)).SerializeToString(),
        Code.INVALID_ARGUMENT,
        "ledger.call_invalid",
        id="uppercase-hash",
    ),
    pytest.param(
        ledger_pb2.RecordCallRequest(
            call=make_call(cost=ledger_pb2.Cost(amount="1e-3", currency="USD"))
        ).SerializeToString(),
        Code.INVALID_ARGUMENT,
        "ledger.call_invalid",
        id="cost-not-decimal",
    ),
    pytest.param(
        ledger_pb2.RecordCallRequest(call=make_call(provider="p" * 129)).SerializeToString(),
        Code.INVALID_ARGUMENT,
        "ledger.call_invalid",
        id="provider-too-long",
    ),
    pytest.param(
        _field(1, 2, _CALL) + _field(99, 0, b"\x01"),
        Code.INVALID_ARGUMENT,
        "input.unknown_field",
        id="unknown-field",
    ),
    pytest.param(
        _field(1, 2, _CALL + _field(4, 2, _field(6, 0, b"\x05"))),
        Code.INVALID_ARGUMENT,
        "input.unknown_field",
        id="unknown-nested-field",
    ),
    pytest.param(
        b"\xff\xff\xff\xff",
        Code.INVALID_ARGUMENT,
        "input.malformed_message",
        id="garbage-bytes",
    ),
    pytest.param(
        _field(1, 2, _field(1, 2, b"\xff\xfe") + _field(2, 2, b"m")),
        Code.INVALID_ARGUMENT,
        "input.malformed_message",
        id="invalid-utf8",
    ),
    pytest.param(
        _field(1, 2, _CALL)[:-3],
        Code.INVALID_ARGUMENT,
        "input.malformed_message",
        id="truncated",
    ),
    pytest.param(
        ledger_pb2.RecordCallRequest(call=make_call(model="m" * (1 << 20))).SerializeToString(),
        Code.RESOURCE_EXHAUSTED,
        None,  # refused by gRPC itself before any handler runs: no reason trailer possible
        id="over-1MiB",
    ),
]


@pytest.mark.parametrize(("raw", "status", "expected_reason"), BAD_RECORDS)
def test_bad_record_is_refused_and_the_daemon_keeps_serving(
    served: RunningDaemon, raw: bytes, status: grpc.StatusCode, expected_reason: str | None
) -> None:
    before = served.daemon.log.size
    record = _raw_unary(served.channel(served.agent("alice")), "/tallystick.v1.Ledger/RecordCall")
    with pytest.raises(grpc.RpcError) as caught:
        record(raw)
    assert caught.value.code() == status
    assert reason(caught.value) == expected_reason
    assert served.daemon.log.size == before
    ok = served.ledger("alice").RecordCall(ledger_pb2.RecordCallRequest(call=make_call()))
    assert ok.index == before


@pytest.mark.parametrize(
    ("request_", "status", "expected_reason"),
    [
        pytest.param(
            log_pb2.GetInclusionProofRequest(leaf_index=0, tree_size=10**9),
            Code.OUT_OF_RANGE,
            "log.size_out_of_range",
            id="inclusion-size-beyond-log",
        ),
        pytest.param(
            log_pb2.GetInclusionProofRequest(leaf_index=3, tree_size=3),
            Code.INVALID_ARGUMENT,
            "log.index_out_of_range",
            id="inclusion-index-not-below-size",
        ),
        pytest.param(
            log_pb2.GetConsistencyProofRequest(first=0, second=1),
            Code.INVALID_ARGUMENT,
            "log.bad_range",
            id="consistency-from-empty",
        ),
        pytest.param(
            log_pb2.GetConsistencyProofRequest(first=3, second=2),
            Code.INVALID_ARGUMENT,
            "log.bad_range",
            id="consistency-backwards",
        ),
        pytest.param(
            log_pb2.GetConsistencyProofRequest(first=1, second=2**64 - 1),
            Code.OUT_OF_RANGE,
            "log.size_out_of_range",
            id="consistency-beyond-log",
        ),
        pytest.param(
            log_pb2.GetEntriesRequest(start=0, count=0),
            Code.INVALID_ARGUMENT,
            "log.bad_range",
            id="entries-count-0",
        ),
        pytest.param(
            log_pb2.GetEntriesRequest(start=10**9, count=1),
            Code.OUT_OF_RANGE,
            "log.start_out_of_range",
            id="entries-start-beyond-log",
        ),
    ],
)
def test_log_range_errors(
    served: RunningDaemon, request_: object, status: grpc.StatusCode, expected_reason: str
) -> None:
    served.ledger("alice").RecordCalls(
        ledger_pb2.RecordCallsRequest(calls=[make_call() for _ in range(3)])
    )
    log = served.log()
    method = {
        log_pb2.GetInclusionProofRequest: log.GetInclusionProof,
        log_pb2.GetConsistencyProofRequest: log.GetConsistencyProof,
        log_pb2.GetEntriesRequest: log.GetEntries,
    }[type(request_)]
    with pytest.raises(grpc.RpcError) as caught:
        method(request_)
    assert (caught.value.code(), reason(caught.value)) == (status, expected_reason)


def test_garbage_on_the_socket_does_not_stop_the_daemon(served: RunningDaemon) -> None:
    path = served.daemon.listeners[1].path
    for junk in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(4096),
        os.urandom(65536),
        b"",
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(5)
            raw.connect(str(path))
            try:
                raw.sendall(junk)
                raw.recv(1024)  # the server's GOAWAY or close; either is fine
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass
    reply = served.ledger("alice").RecordCall(ledger_pb2.RecordCallRequest(call=make_call()))
    assert reply.index == served.daemon.log.size - 1


# --- health, reflection, metrics ---------------------------------------------------------


def test_health_is_serving_on_every_socket(served: RunningDaemon) -> None:
    for listener in served.daemon.listeners:
        health = health_pb2_grpc.HealthStub(served.channel(listener.address))
        for service in ("", "tallystick.v1.Ledger", "tallystick.v1.Log"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="tallystick.v1.Nope"))
    assert caught.value.code() == Code.NOT_FOUND


def test_reflection_lists_the_services(served: RunningDaemon) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel(served.shared))
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="tallystick.v1.Ledger"),
    ]
    listing, described = list(stub.ServerReflectionInfo(iter(requests)))
    names = {service.name for service in listing.list_services_response.service}
    assert names == {
        "tallystick.v1.Ledger",
        "tallystick.v1.Log",
        "tallystick.v1.Delegation",
        "tallystick.v1.Query",
        "tallystick.v1.CoinAudit",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert described.file_descriptor_response.file_descriptor_proto


def test_metrics_count_records(start_daemon: StartDaemon) -> None:
    running = start_daemon(metrics_address="127.0.0.1:0")
    stub = running.ledger("alice")
    stub.RecordCalls(ledger_pb2.RecordCallsRequest(calls=[make_call(), make_call()]))
    stub.RecordCall(ledger_pb2.RecordCallRequest(call=make_call()))
    url = f"http://127.0.0.1:{running.daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    assert 'tallystick_records_total{agent="alice"} 3.0' in text
    assert "tallystick_log_size 3.0" in text
    assert 'tallystick_rpc_duration_seconds_count{method="RecordCall",status="OK"} 1.0' in text


# --- errors and lifecycle ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        pytest.param(errors.MalformedInput("x"), Code.INVALID_ARGUMENT, id="malformed"),
        pytest.param(errors.KeyInvalid("x"), Code.INVALID_ARGUMENT, id="key-invalid"),
        pytest.param(errors.SignatureInvalid("x"), Code.UNAUTHENTICATED, id="signature"),
        pytest.param(errors.IdentityUnresolvable("x"), Code.UNAUTHENTICATED, id="identity"),
        pytest.param(
            errors.IdentityUnresolvable("x", code="auth.no_agent_identity"),
            Code.PERMISSION_DENIED,
            id="no-agent-identity",
        ),
        pytest.param(errors.ScopeInsufficient("x"), Code.PERMISSION_DENIED, id="scope"),
        pytest.param(errors.Revoked("x"), Code.PERMISSION_DENIED, id="revoked"),
        pytest.param(errors.ReplayDetected("x"), Code.PERMISSION_DENIED, id="replay"),
        pytest.param(errors.Expired("x"), Code.UNAUTHENTICATED, id="expired"),
        pytest.param(errors.ProofInvalid("x"), Code.INVALID_ARGUMENT, id="proof"),
        pytest.param(
            errors.ProofInvalid("x", code="merkle.index_out_of_range"),
            Code.OUT_OF_RANGE,
            id="proof-out-of-range",
        ),
        pytest.param(LogInconsistent("x"), Code.DATA_LOSS, id="log-inconsistent"),
        pytest.param(LogUnavailable("x", code="log.closed"), Code.UNAVAILABLE, id="log-closed"),
        pytest.param(LogUnavailable("x", code="log.not_found"), Code.NOT_FOUND, id="not-found"),
        pytest.param(errors.TallystickError("x"), Code.INTERNAL, id="base"),
    ],
)
def test_error_table(error: errors.TallystickError, status: grpc.StatusCode) -> None:
    assert status_for(error) == status


def test_a_second_daemon_on_the_same_data_dir_is_refused(start_daemon: StartDaemon) -> None:
    first = start_daemon()
    with pytest.raises(DaemonError) as caught:
        start_daemon(first.data_dir)
    assert caught.value.code == "daemon.already_running"
    assert (
        first.ledger("alice").RecordCall(ledger_pb2.RecordCallRequest(call=make_call())).index == 0
    )


def test_restart_keeps_origin_key_and_entries(start_daemon: StartDaemon) -> None:
    first = start_daemon()
    first.ledger("alice").RecordCall(ledger_pb2.RecordCallRequest(call=make_call()))
    origin, pub = first.daemon.log.origin, (first.data_dir / "log.pub").read_text()
    first.close()
    second = start_daemon(first.data_dir)
    assert (second.daemon.log.origin, (second.data_dir / "log.pub").read_text()) == (origin, pub)
    assert (
        second.ledger("bob").RecordCall(ledger_pb2.RecordCallRequest(call=make_call())).index == 1
    )


def _watch_until(stream: Iterator[health_pb2.HealthCheckResponse], status: int) -> None:
    for reply in stream:
        if reply.status == status:
            return
    raise AssertionError(f"health stream ended before status {status}")


def test_sigterm_drains_signs_a_final_checkpoint_and_exits_0(
    spawn_daemon: Callable[..., DaemonProcess],
) -> None:
    running: DaemonProcess = spawn_daemon(
        "--agent",
        "alice",
        "--checkpoint-every-ms",
        str(QUIET_CHECKPOINTS["checkpoint_every_ms"]),
        "--checkpoint-every-entries",
        str(QUIET_CHECKPOINTS["checkpoint_every_entries"]),
        "--grace-seconds",
        "10",
    )
    data_dir = running.data_dir
    assert running.address("shared, read-only") == f"unix:{data_dir / 'tallystickd.sock'}"
    agent = running.address("agent alice")
    assert agent == f"unix:{data_dir / 'agents' / 'alice.sock'}"
    public_key = load_public_key(str(data_dir / "log.pub"))  # written on first start

    with grpc.insecure_channel(agent) as channel:
        stub = ledger_pb2_grpc.LedgerStub(channel)
        acknowledged = [
            stub.RecordCall(ledger_pb2.RecordCallRequest(call=make_call())).index for _ in range(5)
        ]
        acknowledged += stub.RecordCalls(
            ledger_pb2.RecordCallsRequest(calls=[make_call() for _ in range(4)])
        ).indexes

        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        _watch_until(watch, health_pb2.HealthCheckResponse.SERVING)

        # A stream in flight when SIGTERM arrives: it must finish within the grace period.
        sent_first = threading.Event()
        release = threading.Event()

        def in_flight() -> Iterator[ledger_pb2.RecordCallRequest]:
            yield ledger_pb2.RecordCallRequest(call=make_call(request_id="drain-1"))
            sent_first.set()
            release.wait(10)
            yield ledger_pb2.RecordCallRequest(call=make_call(request_id="drain-2"))

        pending = stub.RecordCallStream.future(in_flight())
        assert sent_first.wait(5)
        time.sleep(0.2)  # let the first message reach the server
        running.process.send_signal(signal.SIGTERM)
        _watch_until(watch, health_pb2.HealthCheckResponse.NOT_SERVING)
        watch.cancel()
        release.set()
        acknowledged += pending.result(timeout=10).indexes

    assert running.process.wait(timeout=15) == 0
    assert sorted(acknowledged) == list(range(11))

    bundle = data_dir.parent / "after.jsonl"
    size = export_data_dir(data_dir, bundle)  # reads the stored log; signs nothing
    lines = [json.loads(line) for line in bundle.read_text().splitlines()]
    final = lines[-1]["checkpoint"]
    origin = lines[0]["origin"]
    verifier = NoteVerifier.from_public_key(origin, public_key)
    checkpoint = verify_checkpoint(final, verifiers=[verifier], origin=origin)
    assert checkpoint.size == size == len(acknowledged)

    log_lines = running.stderr_path.read_text().splitlines()
    events = [json.loads(line)["event"] for line in log_lines]  # every stderr line is JSON
    assert "tallystickd.draining" in events
    assert events[-1] == "tallystickd.stopped"
    key_pem = (data_dir / "log.key").read_text()
    secret = "".join(key_pem.splitlines()[1:-1])
    assert secret not in running.stderr_path.read_text()


def test_a_start_failure_exits_1_with_the_reason(
    start_daemon: StartDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    held = start_daemon()
    try:
        assert main(["--data-dir", str(held.data_dir), "--log-level", "error"]) == 1
    finally:
        structlog.reset_defaults()  # main configured JSON logging for the process
    err = capsys.readouterr().err
    assert "tallystickd: daemon.already_running: data directory" in err
    assert json.loads(err.splitlines()[0])["reason"] == "daemon.already_running"


def test_every_declared_method_is_served(served: RunningDaemon) -> None:
    channel = served.channel(served.shared)
    for descriptor in (ledger_pb2.DESCRIPTOR, log_pb2.DESCRIPTOR):
        for service in descriptor.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                try:
                    if method.client_streaming:
                        channel.stream_unary(path)(iter([b""]))
                    elif method.server_streaming:
                        list(channel.unary_stream(path)(b""))
                    else:
                        channel.unary_unary(path)(b"")
                except grpc.RpcError as error:
                    assert error.code() != Code.UNIMPLEMENTED, path
                    assert reason(error) is not None, path


def test_a_closed_log_answers_unavailable(start_daemon: StartDaemon) -> None:
    running = start_daemon()
    running.daemon.log.close()
    with pytest.raises(grpc.RpcError) as caught:
        running.ledger("alice").RecordCall(ledger_pb2.RecordCallRequest(call=make_call()))
    assert (caught.value.code(), reason(caught.value)) == (Code.UNAVAILABLE, "log.closed")
    assert running.log().GetCheckpoint(log_pb2.GetCheckpointRequest()).tree_size == 0


@pytest.mark.parametrize(
    ("agents", "error", "code"),
    [
        pytest.param({"alice": {}}, DaemonError, "daemon.bind_failed", id="socket-path-taken"),
        pytest.param(
            {"bob": {"group": "no-such-group-tallystick"}},
            ConfigError,
            "config.unknown_group",
            id="unknown-group",
        ),
    ],
)
def test_a_failed_start_releases_everything(
    start_daemon: StartDaemon,
    short_dir: Path,
    agents: dict[str, dict[str, str]],
    error: type[errors.TallystickError],
    code: str,
) -> None:
    data_dir = short_dir / "d"
    (data_dir / "agents").mkdir(parents=True)
    (data_dir / "agents" / "alice.sock").write_text("not a socket")
    with pytest.raises(error) as caught:
        start_daemon(data_dir, agents=agents)
    assert caught.value.code == code
    (data_dir / "agents" / "alice.sock").unlink()
    running = start_daemon(data_dir)  # the lock was released and the log closed
    assert (
        running.ledger("alice").RecordCall(ledger_pb2.RecordCallRequest(call=make_call())).index
        == 0
    )
