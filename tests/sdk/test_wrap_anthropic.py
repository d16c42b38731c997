"""wrap() on the real ``anthropic`` clients against the local LLM server's /v1/messages."""

from __future__ import annotations

import asyncio

import anthropic
from tallystick.sdk.wrap import wrap
from tallystick.verifier.logentry import CallBody

from ._llm import TRACES, AsyncListRecorder, ListRecorder, LLMServer, llm_server_fixture  # noqa: F401 (the fixture)

MESSAGES = [{"role": "user", "content": TRACES[1].prompt}]  # answered from TRACES[1]


def _client(server: LLMServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="t", max_retries=0)


def _assert_matches_invoice(call: CallBody, server: LLMServer) -> None:
    (row,) = [row for row in server.invoice_rows() if row.request_id == call.request_id]
    assert (call.provider, call.model, call.operation) == ("anthropic", row.model, "chat")
    assert call.model == "claude-sonnet-4-20250514" and call.service_tier == "standard"
    # Anthropic's output includes thinking; it sends no thinking count: reasoning unknown.
    assert call.usage.output_tokens == row.output_tokens
    assert call.usage.reasoning_output_tokens is None
    assert call.usage.input_tokens == row.input_tokens
    assert call.usage.cache_read_input_tokens == 0 == call.usage.cache_creation_input_tokens
    assert call.cost is not None and call.cost.amount == row.cost_usd
    assert call.recount is None  # never recount Claude output (summarized thinking, §2)


def test_messages_create(llm_server: LLMServer) -> None:
    recorder = ListRecorder()
    client = wrap(_client(llm_server), recorder=recorder)
    message = client.messages.create(model="claude-sonnet-4", max_tokens=64, messages=MESSAGES)
    (call,) = recorder.calls
    assert call.request_id == message.id
    assert message.content[0].text == TRACES[1].answer  # type: ignore[union-attr]
    _assert_matches_invoice(call, llm_server)


def test_stream_takes_the_last_cumulative_delta_not_the_sum(llm_server: LLMServer) -> None:
    recorder = ListRecorder()
    client = wrap(_client(llm_server), recorder=recorder)
    events = list(
        client.messages.create(
            model="claude-sonnet-4", max_tokens=64, messages=MESSAGES, stream=True
        )
    )
    deltas = [event for event in events if event.type == "message_delta"]
    assert len(deltas) == 2  # the server sends a half-way and a final cumulative count
    (call,) = recorder.calls
    assert call.usage.output_tokens == deltas[-1].usage.output_tokens
    _assert_matches_invoice(call, llm_server)


def test_async_stream_and_message(llm_server: LLMServer) -> None:
    recorder = AsyncListRecorder()

    async def run() -> None:
        client = wrap(
            anthropic.AsyncAnthropic(
                base_url=llm_server.anthropic_base_url, api_key="t", max_retries=0
            ),
            recorder=recorder,
        )
        await client.messages.create(model="claude-sonnet-4", max_tokens=8, messages=MESSAGES)
        stream = await client.messages.create(
            model="claude-sonnet-4", max_tokens=8, messages=MESSAGES, stream=True
        )
        async with stream:
            types = [event.type async for event in stream]
        assert types[0] == "message_start" and types[-1] == "message_stop"
        await client.close()

    asyncio.run(run())
    whole, streamed = recorder.calls
    assert whole.usage == streamed.usage  # §7.3: streamed total equals the non-streamed one
    for call in recorder.calls:
        _assert_matches_invoice(call, llm_server)
