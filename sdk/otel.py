"""Optional OpenTelemetry export of recorded calls: a span and GenAI metrics per call.

::

    recorder = with_otel(Client("unix:var/agents/me.sock"))
    llm = wrap(OpenAI(), recorder=recorder)

:func:`with_otel` returns a recorder that, for each call, emits a CLIENT span named
``"{operation} {model}"`` with the ``gen_ai.*`` attributes of
:func:`tallystick.verifier.usage.otel_attributes` (plus ``gen_ai.response.id``), and records
the ``gen_ai.client.token.usage`` histogram (one data point per ``gen_ai.token.type``,
``input`` and ``output`` only: reasoning and cache are subsets, never extra types) and
``gen_ai.client.operation.duration``, then hands the call to the recorder it wraps. It uses
the global tracer and meter providers unless given others, so configuring the OTel SDK (an
OTLP exporter, say) is all it takes. When ``opentelemetry`` is not installed it returns the
recorder unchanged. Export problems are logged, never raised.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any, Final

from tallystick.verifier.logentry import CallBody
from tallystick.verifier.usage import otel_attributes, token_usage_points

from .recorder import AsyncRecorder, Recorder

__all__ = ["AsyncOtelRecorder", "OtelRecorder", "with_otel"]

_log = logging.getLogger(__name__)
_SCOPE: Final = "tallystick.sdk"


class _Emitter:
    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import metrics, trace

        self._tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        self._span_kind = trace.SpanKind.CLIENT
        meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per call"
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration"
        )

    def emit(self, call: CallBody) -> None:
        try:
            self._emit(call)
        except Exception:  # telemetry must never break the call or its record
            _log.warning("tallystick: cannot export a call to OpenTelemetry", exc_info=True)

    def _emit(self, call: CallBody) -> None:
        operation = call.operation or "chat"
        attributes: dict[str, Any] = otel_attributes(
            call.usage, provider=call.provider, operation=operation, response_model=call.model
        )
        if call.request_id is not None:
            attributes["gen_ai.response.id"] = call.request_id
        if call.tool_name is not None:
            attributes["gen_ai.tool.name"] = call.tool_name
        end_ns = time.time_ns()
        start_ns = end_ns - (call.latency_ms or 0) * 1_000_000
        span = self._tracer.start_span(
            f"{operation} {call.model}",
            kind=self._span_kind,
            attributes=attributes,
            start_time=start_ns,
        )
        span.end(end_time=end_ns)
        common = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": call.provider,
            "gen_ai.response.model": call.model,
        }
        for point in token_usage_points(call.usage):
            self._tokens.record(point.value, {**common, "gen_ai.token.type": point.token_type})
        if call.latency_ms is not None:
            self._duration.record(call.latency_ms / 1000, common)


class OtelRecorder:
    """A :class:`~tallystick.sdk.recorder.Recorder` that exports each call, then records it."""

    def __init__(
        self, inner: Recorder, *, tracer_provider: Any = None, meter_provider: Any = None
    ) -> None:
        self._inner = inner
        self._emitter = _Emitter(tracer_provider, meter_provider)

    def record(self, call: CallBody) -> int | None:
        """Export ``call``, then ``inner.record(call)`` (whose errors propagate)."""
        self._emitter.emit(call)
        return self._inner.record(call)


class AsyncOtelRecorder:
    """The asyncio form of :class:`OtelRecorder`."""

    def __init__(
        self, inner: AsyncRecorder, *, tracer_provider: Any = None, meter_provider: Any = None
    ) -> None:
        self._inner = inner
        self._emitter = _Emitter(tracer_provider, meter_provider)

    async def record(self, call: CallBody) -> int | None:
        """Export ``call``, then ``await inner.record(call)`` (whose errors propagate)."""
        self._emitter.emit(call)
        return await self._inner.record(call)


def with_otel(
    recorder: Recorder | AsyncRecorder, *, tracer_provider: Any = None, meter_provider: Any = None
) -> Recorder | AsyncRecorder:
    """``recorder`` with OpenTelemetry export, or ``recorder`` itself without ``opentelemetry``."""
    try:
        import opentelemetry.metrics
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return recorder
    if inspect.iscoroutinefunction(recorder.record):
        return AsyncOtelRecorder(
            recorder,  # type: ignore[arg-type]
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
    return OtelRecorder(
        recorder,  # type: ignore[arg-type]
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
