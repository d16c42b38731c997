"""OpenTelemetry export with the real OTel SDK's in-memory span exporter and metric reader."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tallystick.sdk.otel import AsyncOtelRecorder, OtelRecorder, with_otel
from tallystick.sdk.wrap import wrap
from tallystick.verifier.logentry import CallBody, Usage

from ._llm import TRACES, AsyncListRecorder, ListRecorder, LLMServer, llm_server_fixture  # noqa: F401 (the fixture)


def _providers() -> tuple[
    InMemorySpanExporter, TracerProvider, InMemoryMetricReader, MeterProvider
]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    return spans, tracer_provider, reader, MeterProvider(metric_readers=[reader])


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    if data is None:  # nothing recorded at all
        return []
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_wrapped_call_emits_a_span_and_token_usage_points(llm_server: LLMServer) -> None:
    spans, tracer_provider, reader, meter_provider = _providers()
    inner = ListRecorder()
    recorder = with_otel(inner, tracer_provider=tracer_provider, meter_provider=meter_provider)
    assert isinstance(recorder, OtelRecorder)
    client = wrap(
        openai.OpenAI(base_url=llm_server.base_url, api_key="t", max_retries=0), recorder=recorder
    )
    response = client.chat.completions.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": TRACES[2].prompt}]
    )
    (call,) = inner.calls
    (span,) = spans.get_finished_spans()
    assert span.name == "chat gpt-4.1-mini-2025-04-14"
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.response.id"] == response.id
    assert attributes["gen_ai.usage.output_tokens"] == call.usage.output_tokens
    assert attributes["gen_ai.usage.reasoning.output_tokens"] == call.usage.reasoning_output_tokens
    assert "gen_ai.system" not in attributes and "gen_ai.usage.completion_tokens" not in attributes
    points = {
        p.attributes["gen_ai.token.type"]: p.sum
        for p in _points(reader, "gen_ai.client.token.usage")
    }
    assert points == {"input": call.usage.input_tokens, "output": call.usage.output_tokens}
    (duration,) = _points(reader, "gen_ai.client.operation.duration")
    assert duration.count == 1


def test_openlit_1476_output_point_is_output_not_output_plus_reasoning() -> None:
    _, tracer_provider, reader, meter_provider = _providers()
    recorder = OtelRecorder(
        ListRecorder(), tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    usage = Usage(input_tokens=10, output_tokens=1000, reasoning_output_tokens=700)
    recorder.record(CallBody(provider="openai", model="o3", usage=usage, operation="chat"))
    types = sorted(
        p.attributes["gen_ai.token.type"] for p in _points(reader, "gen_ai.client.token.usage")
    )
    assert types == ["input", "output"]
    (output,) = [
        p
        for p in _points(reader, "gen_ai.client.token.usage")
        if p.attributes["gen_ai.token.type"] == "output"
    ]
    assert output.sum == 1000


def test_async_recorder_and_no_op_without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    spans, tracer_provider, reader, meter_provider = _providers()
    inner = AsyncListRecorder()
    recorder = with_otel(inner, tracer_provider=tracer_provider, meter_provider=meter_provider)
    assert isinstance(recorder, AsyncOtelRecorder)
    call = CallBody(provider="anthropic", model="m", usage=Usage(), operation="chat")
    assert asyncio.run(recorder.record(call)) == 0
    assert len(spans.get_finished_spans()) == 1 and inner.calls == [call]
    assert _points(reader, "gen_ai.client.token.usage") == []  # unknown counts: no points

    real_import = builtins.__import__

    def no_otel(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("opentelemetry"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    plain = ListRecorder()
    assert with_otel(plain) is plain
