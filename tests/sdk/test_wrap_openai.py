"""wrap() on the real ``openai`` clients against the local LLM server (and a real tallystickd)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from tallystick.sdk.background import BackgroundRecorder
from tallystick.sdk.client import Client
from tallystick.sdk.context import Delegation, use
from tallystick.sdk.recount import Recounter
from tallystick.sdk.wrap import wrap
from tallystick.verifier.canonical import canonicalize
from tallystick.verifier.logentry import CallBody, LogEntry

from ._llm import TRACES, AsyncListRecorder, ListRecorder, LLMServer, llm_server_fixture  # noqa: F401 (the fixture)
from .conftest import Sidecar

MESSAGES = [{"role": "user", "content": TRACES[0].prompt}]  # answered from TRACES[0]
#: The local server counts with cl100k_base, whatever the model is called.
RECOUNT = Recounter({"gpt-4.1-mini": "cl100k_base", "o3": "cl100k_base"})


def _sha(body: bytes) -> str:
    return hashlib.sha256(canonicalize(json.loads(body))).hexdigest()


class _Wire:
    """httpx event hooks keeping the raw request and (non-streamed) response bodies."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.responses: list[bytes] = []

    def client(self) -> httpx.Client:
        def on_request(request: httpx.Request) -> None:
            self.requests.append(request.content)

        def on_response(response: httpx.Response) -> None:
            if response.headers["content-type"] == "application/json":
                self.responses.append(response.read())

        return httpx.Client(event_hooks={"request": [on_request], "response": [on_response]})


def _client(server: LLMServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0, **kwargs)


def _assert_matches_invoice(call: CallBody, server: LLMServer) -> None:
    (row,) = [row for row in server.invoice_rows() if row.request_id == call.request_id]
    assert call.model == row.model
    assert call.usage.input_tokens == row.input_tokens
    assert call.usage.output_tokens == row.output_tokens
    assert call.usage.reasoning_output_tokens == row.reasoning_tokens
    assert call.cost is not None and call.cost.amount == row.cost_usd
    # The local recount of the visible answer is exactly output - reasoning.
    assert call.recount is not None and call.recount.tokenizer == "cl100k_base"
    assert call.recount.visible_output_tokens == row.output_tokens - row.reasoning_tokens


def test_chat_completion_recorded_with_hashes_of_the_wire_bodies(llm_server: LLMServer) -> None:
    wire, recorder = _Wire(), ListRecorder()
    client = _client(llm_server, http_client=wire.client())
    assert wrap(client, recorder=recorder, recount=RECOUNT) is client
    response = client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, seed=7)
    (call,) = recorder.calls
    assert (call.provider, call.operation, call.service_tier) == ("openai", "chat", "default")
    assert call.request_id == response.id and call.model == "gpt-4.1-mini-2025-04-14"
    assert call.usage.output_tokens == response.usage.completion_tokens  # type: ignore[union-attr]
    assert call.usage.cache_read_input_tokens == 0
    _assert_matches_invoice(call, llm_server)
    assert call.request_sha256 == _sha(wire.requests[-1])
    assert call.response_sha256 == _sha(wire.responses[-1])
    assert call.latency_ms is not None and call.latency_ms >= 0
    assert call.delegation_id is None and call.principal is None


def test_chat_stream_usage_chunk_hidden_from_a_caller_who_did_not_ask(
    llm_server: LLMServer,
) -> None:
    plain = list(
        _client(llm_server).chat.completions.create(
            model="gpt-4.1-mini", messages=MESSAGES, stream=True
        )
    )
    recorder = ListRecorder()
    client = wrap(_client(llm_server), recorder=recorder, recount=RECOUNT)
    stream = client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, stream=True)
    assert recorder.calls == []  # recorded when the stream ends
    seen = list(stream)
    assert len(seen) == len(plain)
    assert all(chunk.choices and chunk.usage is None for chunk in seen)
    (call,) = recorder.calls
    assert call.request_id == seen[0].id
    assert call.usage.output_tokens is not None and call.usage.reasoning_output_tokens
    _assert_matches_invoice(call, llm_server)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in seen)
    assert text == TRACES[0].answer


def test_chat_stream_usage_chunk_kept_for_a_caller_who_asked(llm_server: LLMServer) -> None:
    recorder = ListRecorder()
    client = wrap(_client(llm_server), recorder=recorder, recount=RECOUNT)
    with client.chat.completions.create(
        model="gpt-4.1-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        seen = list(stream)
    last = seen[-1]
    assert last.choices == [] and last.usage is not None
    (call,) = recorder.calls
    assert call.usage.output_tokens == last.usage.completion_tokens
    assert call.usage.input_tokens == last.usage.prompt_tokens


def test_stream_closed_early_is_recorded_once(llm_server: LLMServer) -> None:
    recorder = ListRecorder()
    client = wrap(_client(llm_server), recorder=recorder, recount=RECOUNT)
    with client.chat.completions.create(
        model="gpt-4.1-mini", messages=MESSAGES, stream=True
    ) as stream:
        next(iter(stream))
    (call,) = recorder.calls
    assert call.usage.output_tokens is None  # usage never arrived: unknown, not 0
    assert call.cost is None


def test_responses_create_and_stream(llm_server: LLMServer) -> None:
    recorder = ListRecorder()
    client = wrap(_client(llm_server), recorder=recorder, recount=RECOUNT)
    response = client.responses.create(model="o3", input="What is 2 + 2?")
    events = list(client.responses.create(model="o3", input="What is 2 + 2?", stream=True))
    whole, streamed = recorder.calls
    assert whole.request_id == response.id and whole.model == "o3-2025-04-16"
    assert streamed.request_id == events[-1].response.id  # type: ignore[union-attr]
    for call in (whole, streamed):
        assert call.usage.reasoning_output_tokens is not None
        _assert_matches_invoice(call, llm_server)


def test_async_client_records_under_the_current_delegation(llm_server: LLMServer) -> None:
    recorder = AsyncListRecorder()
    delegation = Delegation(
        token="t", token_id="hdp-123", format="hdp", principal="alice@example.com", session_id="s1"
    )

    async def run() -> list[str]:
        client = wrap(
            openai.AsyncOpenAI(base_url=llm_server.base_url, api_key="test", max_retries=0),
            recorder=recorder,
            recount=RECOUNT,
        )
        with use(delegation):
            response = await client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES)
            stream = await client.chat.completions.create(
                model="gpt-4.1-mini", messages=MESSAGES, stream=True
            )
            chunks = [chunk async for chunk in stream]
        assert all(chunk.choices for chunk in chunks)
        await client.close()
        return [response.id, chunks[0].id]

    ids = asyncio.run(run())
    assert [call.request_id for call in recorder.calls] == ids
    for call in recorder.calls:
        assert (call.delegation_id, call.principal, call.session_id) == (
            "hdp-123",
            "alice@example.com",
            "s1",
        )
        _assert_matches_invoice(call, llm_server)


@pytest.fixture(scope="module")
def lying_server() -> Iterator[str]:
    """A real HTTP server whose usage contradicts itself (reasoning above completion)."""
    body = json.dumps(
        {
            "id": "chatcmpl-lie",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4.1",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "4"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 102,
                "total_tokens": 105,
                "completion_tokens_details": {"reasoning_tokens": 109},
            },
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http.server_address[1]}/v1"
    http.shutdown()
    http.server_close()


def test_contradicting_usage_is_logged_and_recorded_as_unknown(
    lying_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = ListRecorder()
    client = wrap(
        openai.OpenAI(base_url=lying_server, api_key="t", max_retries=0), recorder=recorder
    )
    response = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert response.choices[0].message.content == "4"  # the caller's result is untouched
    (call,) = recorder.calls
    assert call.usage.output_tokens is None and call.cost is None
    assert "usage.reasoning_exceeds_output" in caplog.text


def test_recorder_policy_errors_propagate(llm_server: LLMServer) -> None:
    class FailClosed:
        def record(self, call: CallBody) -> int | None:
            raise RuntimeError("sidecar unreachable and policy is fail-closed")

    client = wrap(_client(llm_server), recorder=FailClosed())
    with pytest.raises(RuntimeError, match="fail-closed"):
        client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES)


def test_wrap_refuses_what_it_cannot_record(llm_server: LLMServer) -> None:
    client = wrap(_client(llm_server), recorder=ListRecorder())
    with pytest.raises(TypeError, match="already wrapped"):
        wrap(client, recorder=ListRecorder())
    with pytest.raises(TypeError, match="no adapter"):
        wrap(object(), recorder=ListRecorder())
    with pytest.raises(TypeError, match="sync recorder"):
        wrap(_client(llm_server), recorder=AsyncListRecorder())
    assert wrap(
        anthropic.Anthropic(base_url=llm_server.anthropic_base_url, api_key="t"),
        recorder=ListRecorder(),
    )


def test_unknown_model_costs_unknown_and_no_offline_tokenizer_no_recount(
    llm_server: LLMServer,
) -> None:
    recorder = ListRecorder()
    client = wrap(_client(llm_server), recorder=recorder)  # default Recounter: gpt-4.1 is o200k
    client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES)
    client.chat.completions.create(model="house-model", messages=MESSAGES)
    known, unknown = recorder.calls
    assert known.cost is not None and known.recount is None  # o200k_base is not offline
    assert unknown.model == "house-model" and unknown.cost is None


def test_recorded_into_a_real_sidecar(llm_server: LLMServer) -> None:
    from tallystick.daemon.config import load_config
    from tallystick.daemon.server import Daemon
    from tallystick.proto import log_pb2, log_pb2_grpc
    from tallystick.sdk.client import Client

    with tempfile.TemporaryDirectory(prefix="tsw-") as name:
        quiet = {"checkpoint_every_ms": 3_600_000, "checkpoint_every_entries": 10_000_000}
        flags = {"data_dir": Path(name) / "d", "agents": {"alice": {}}, **quiet}
        daemon = Daemon.start(load_config(flags=flags, environ={}))
        try:
            (agent,) = [item for item in daemon.listeners if item.caller.agent == "alice"]
            with Client(agent.address) as tally:
                client = wrap(_client(llm_server), recorder=tally, recount=RECOUNT)
                response = client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES)
                tally.flush()
            import grpc

            with grpc.insecure_channel(daemon.listeners[0].address) as channel:
                request = log_pb2.GetEntriesRequest(start=0, count=1)
                (raw,) = log_pb2_grpc.LogStub(channel).GetEntries(request).entries
        finally:
            daemon.stop(grace=0)
    entry = LogEntry.from_bytes(raw)
    assert entry.agent == "alice"
    body = CallBody.model_validate(entry.body)
    assert body.request_id == response.id
    _assert_matches_invoice(body, llm_server)


def test_a_deferred_recorder_builds_records_off_the_callers_path_in_order(
    llm_server: LLMServer, short_dir: Path
) -> None:
    sidecar = Sidecar(short_dir / "d").start()
    try:
        with Client(sidecar.address("alice")) as tally, BackgroundRecorder(tally) as recorder:
            client = wrap(_client(llm_server), recorder=recorder, recount=RECOUNT)
            ids = [client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES).id]
            chunks = list(
                client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, stream=True)
            )
            ids.append(chunks[0].id)
            recorder.flush()
            calls = [CallBody.model_validate(entry.body) for entry in sidecar.calls()]
    finally:
        sidecar.stop()
    assert [call.request_id for call in calls] == ids
    for call in calls:
        assert call.recount is not None  # built on the sending thread, recount included
        _assert_matches_invoice(call, llm_server)
