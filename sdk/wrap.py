"""Record every LLM call a client makes, without changing what the caller sees.

::

    from openai import OpenAI
    from tallystick.sdk.client import Client
    from tallystick.sdk.wrap import wrap

    with Client("unix:var/agents/me.sock") as tally:
        llm = wrap(OpenAI(), recorder=tally)
        llm.chat.completions.create(model="gpt-4.1", messages=[...])  # recorded

:func:`wrap` patches the client's own resource objects (an adapter per library, see
:mod:`tallystick.sdk.adapters`) and returns the same client. Recorded: ``openai``
``chat.completions.create`` and ``responses.create``, ``anthropic`` ``messages.create``,
sync and async, streams included. Not recorded: ``with_raw_response`` / ``with_streaming_response``
calls, helpers such as ``responses.stream()`` or ``messages.stream()``, and clients copied with
``with_options()`` (wrap the copy), and calls that raise (nothing was billed by a failed request).

Each call becomes one :class:`~tallystick.verifier.logentry.CallBody`: the provider, the
RESPONSE model (the request's when the response names none), the response id, the normalized
usage, the cost from the price table (``None`` if unknown), the latency (to the end of a
stream), the service tier, the local recount, and the delegation from
:func:`tallystick.sdk.context.current` at the time of the call. Content is never stored, only:

* ``request_sha256``: SHA-256 of the RFC 8785 canonical JSON of the keyword arguments sent to
  ``create`` (with ``stream_options`` as the wrapper sent it), ``extra_body`` merged in, and
  the SDK's transport options (``extra_headers``, ``extra_query``, ``timeout``) left out;
* ``response_sha256``: SHA-256 of the canonical JSON of the response body as received (the SDK
  object's ``to_dict()``: the fields the server sent); for a stream, of the JSON array of every
  event's body in order, including any usage-only event hidden from the caller.

So an auditor holding the raw HTTP bodies recomputes both with ``canonicalize(json.loads(body))``.

Accounting never changes the result or raises into the caller: a usage object that contradicts
itself is logged (``tallystick.sdk.wrap`` logger, WARNING) and recorded as unknown usage, other
accounting failures are logged and the call is not recorded. What the recorder itself raises
(its fail-closed policy) does propagate.

Overhead: building a record costs about 0.05 ms (p50); the offline recount adds about 0.2 us
per character of visible output (0.4 ms for a 1,800-character math answer), and a blocking
recorder its round trip. A :class:`~tallystick.sdk.recorder.DeferredRecorder` such as
:class:`~tallystick.sdk.background.BackgroundRecorder` takes the call's record unbuilt, so the
caller waits for neither: ``wrap(OpenAI(), recorder=BackgroundRecorder(sidecar))``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from tallystick.verifier.canonical import canonicalize
from tallystick.verifier.errors import MalformedInput
from tallystick.verifier.logentry import CallBody, Usage
from tallystick.verifier.pricing import PriceTable

from .adapters import CallSite, Observation, PreparedRequest, StreamReader, adapter_for
from .context import current
from .recorder import AsyncRecorder, DeferredRecorder, Recorder
from .recount import Recounter

__all__ = ["wrap"]

_log = logging.getLogger(__name__)
_Client = TypeVar("_Client")
#: The SDKs' per-request transport options: not part of the request body.
_TRANSPORT_OPTIONS: Final = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})
_WRAPPED: Final = "__tallystick_wrapped__"


def _sha256(value: Any) -> str:
    return hashlib.sha256(canonicalize(value)).hexdigest()


def _request_body(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    body = {key: value for key, value in kwargs.items() if key not in _TRANSPORT_OPTIONS}
    extra = kwargs.get("extra_body")
    if isinstance(extra, Mapping):
        body.update(extra)
    return body


def _json_body(obj: Any) -> Any:
    """The JSON body an SDK object was parsed from (openai and anthropic models: ``to_dict``)."""
    to_dict = getattr(obj, "to_dict", None)
    return to_dict() if callable(to_dict) else obj


@dataclass(frozen=True, slots=True)
class _CallStart:
    """What is known when a call is made."""

    site: CallSite
    request: PreparedRequest
    request_sha256: str | None
    delegation: tuple[str | None, str | None, str | None]
    started_ns: int


class _Accounting:
    """Builds the record of one call. Never raises: failures are logged, the call goes on."""

    def __init__(self, provider: str, prices: PriceTable, recounter: Recounter | None) -> None:
        self.provider = provider
        self.prices = prices
        self.recounter = recounter

    def start(self, site: CallSite, kwargs: Mapping[str, Any]) -> _CallStart:
        try:
            request = site.prepare(kwargs)
        except Exception:  # an adapter bug must not break the call: send it unchanged
            _log.warning("tallystick: cannot prepare %s request", self.provider, exc_info=True)
            request = PreparedRequest(dict(kwargs))
        try:
            request_sha256: str | None = _sha256(_request_body(request.kwargs))
        except (MalformedInput, TypeError, ValueError):  # e.g. a pydantic class as a format
            request_sha256 = None
        active = current()
        delegation = (
            (None, None, None)
            if active is None
            else (active.token_id, active.principal, active.session_id)
        )
        return _CallStart(site, request, request_sha256, delegation, time.perf_counter_ns())

    def response_call(self, start: _CallStart, response: Any, ended_ns: int) -> CallBody | None:
        """The record of a whole (non-streamed) response."""
        try:
            body = _json_body(response)
            response_sha256 = _sha256(body)
        except Exception:
            _log.warning("tallystick: cannot read %s response", self.provider, exc_info=True)
            return None
        return self.call(start, lambda: start.site.read_response(body), response_sha256, ended_ns)

    def call(
        self,
        start: _CallStart,
        observe: Callable[[], Observation],
        response_sha256: str | None,
        ended_ns: int,
    ) -> CallBody | None:
        try:
            return self._call(start, observe, response_sha256, ended_ns)
        except Exception:
            _log.warning("tallystick: cannot record a %s call", self.provider, exc_info=True)
            return None

    def _call(
        self,
        start: _CallStart,
        observe: Callable[[], Observation],
        response_sha256: str | None,
        ended_ns: int,
    ) -> CallBody:
        try:
            observation = observe()
        except MalformedInput as exc:
            # The provider's numbers contradict themselves: keep the call, usage unknown.
            _log.warning("tallystick: %s usage rejected (%s): %s", self.provider, exc.code, exc)
            observation = Observation(None, None, Usage(), None, None)
        usage = observation.usage or Usage()
        requested = start.request.kwargs.get("model")
        model = observation.model or (requested if isinstance(requested, str) else None)
        model = model or "unknown"
        cost = (
            None
            if observation.usage is None
            else self.prices.price(self.provider, model, usage, observation.service_tier)
        )
        recount = None
        if self.recounter is not None and observation.visible_text is not None:
            recount = self.recounter.recount(self.provider, model, observation.visible_text)
        delegation_id, principal, session_id = start.delegation
        return CallBody(
            provider=self.provider,
            model=model,
            request_id=observation.request_id,
            usage=usage,
            cost=cost,
            latency_ms=(ended_ns - start.started_ns) // 1_000_000,
            request_sha256=start.request_sha256,
            response_sha256=response_sha256,
            delegation_id=delegation_id,
            principal=principal,
            session_id=session_id,
            operation=start.site.operation,
            service_tier=observation.service_tier,
            recount=recount,
        )


class _StreamAccounting:
    """Follows one stream's events: which reach the caller, their hash, and the final record."""

    def __init__(self, accounting: _Accounting, start: _CallStart) -> None:
        self._accounting = accounting
        self._start = start
        self._reader: StreamReader | None = start.site.stream_reader(start.request)
        self._hash: Any = hashlib.sha256(b"[")
        self._events = 0
        self.finished = False

    def feed(self, event: Any) -> bool:
        """True when the caller sees ``event``."""
        if self._reader is None:
            return True
        try:
            body = _json_body(event)
            self._hash.update((b"," if self._events else b"") + canonicalize(body))
            self._events += 1
            return self._reader.feed(body)
        except Exception:
            _log.warning("tallystick: cannot read a %s stream", self._accounting.provider)
            self._reader = None
            return True

    def finish(self) -> Callable[[], CallBody | None]:
        """A function building the record, once (later calls, or an unreadable stream: None)."""
        if self.finished or self._reader is None:
            self.finished = True
            return lambda: None
        self.finished = True
        self._hash.update(b"]")
        reader, digest, ended_ns = self._reader, self._hash.hexdigest(), time.perf_counter_ns()
        return lambda: self._accounting.call(self._start, reader.result, digest, ended_ns)


class _RecordedStream:
    """The caller's stream, unchanged except for hidden events; records when it ends."""

    def __init__(
        self, inner: Any, tally: _StreamAccounting, record: Callable[[Callable[[], Any]], None]
    ):
        self._inner = inner
        self._iterator = iter(inner)
        self._tally = tally
        self._record = record

    def __iter__(self) -> _RecordedStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                event = next(self._iterator)
            except StopIteration:
                self._finish()
                raise
            if self._tally.feed(event):
                return event

    def _finish(self) -> None:
        self._record(self._tally.finish())

    def close(self) -> None:
        """Close the underlying stream; a stream closed early is recorded with what it said."""
        self._inner.close()
        self._finish()

    def __enter__(self) -> _RecordedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _RecordedAsyncStream:
    """The asyncio form of :class:`_RecordedStream`."""

    def __init__(
        self, inner: Any, tally: _StreamAccounting, record: Callable[[CallBody], Awaitable[None]]
    ):
        self._inner = inner
        self._iterator = inner.__aiter__()
        self._tally = tally
        self._record = record

    def __aiter__(self) -> _RecordedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                event = await self._iterator.__anext__()
            except StopAsyncIteration:
                await self._finish()
                raise
            if self._tally.feed(event):
                return event

    async def _finish(self) -> None:
        call = self._tally.finish()()
        if call is not None:
            await self._record(call)

    async def close(self) -> None:
        """Close the underlying stream; a stream closed early is recorded with what it said."""
        await self._inner.close()
        await self._finish()

    async def __aenter__(self) -> _RecordedAsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _sync_method(
    original: Callable[..., Any],
    site: CallSite,
    accounting: _Accounting,
    recorder: Recorder | DeferredRecorder,
) -> Callable[..., Any]:
    def record(build: Callable[[], CallBody | None]) -> None:
        if isinstance(recorder, DeferredRecorder):
            recorder.record_later(build)
            return
        call = build()
        if call is not None:
            recorder.record(call)

    @functools.wraps(original)
    def create(*args: Any, **kwargs: Any) -> Any:
        start = accounting.start(site, kwargs)
        result = original(*args, **start.request.kwargs)
        if start.request.kwargs.get("stream") is True:
            return _RecordedStream(result, _StreamAccounting(accounting, start), record)
        ended_ns = time.perf_counter_ns()
        record(lambda: accounting.response_call(start, result, ended_ns))
        return result

    setattr(create, _WRAPPED, True)
    return create


def _async_method(
    original: Callable[..., Any],
    site: CallSite,
    accounting: _Accounting,
    recorder: Recorder | AsyncRecorder,
) -> Callable[..., Any]:
    async def record(call: CallBody) -> None:
        outcome = recorder.record(call)
        if inspect.isawaitable(outcome):
            await outcome

    @functools.wraps(original)
    async def create(*args: Any, **kwargs: Any) -> Any:
        start = accounting.start(site, kwargs)
        result = await original(*args, **start.request.kwargs)
        if start.request.kwargs.get("stream") is True:
            return _RecordedAsyncStream(result, _StreamAccounting(accounting, start), record)
        call = accounting.response_call(start, result, time.perf_counter_ns())
        if call is not None:
            await record(call)
        return result

    setattr(create, _WRAPPED, True)
    return create


@functools.cache
def _packaged_prices() -> PriceTable:
    return PriceTable.load(None)


def wrap(
    client: _Client,
    *,
    recorder: Recorder | AsyncRecorder,
    prices: PriceTable | None = None,
    recount: bool | Recounter = True,
) -> _Client:
    """Record every LLM call ``client`` makes through ``recorder``; returns ``client`` itself.

    :param client: an ``openai.OpenAI`` / ``AsyncOpenAI`` or ``anthropic.Anthropic`` /
        ``AsyncAnthropic`` client (Azure subclasses included).
    :param recorder: a :class:`~tallystick.sdk.recorder.Recorder` (or, for an async client, an
        :class:`~tallystick.sdk.recorder.AsyncRecorder`), e.g. the sidecar ``Client``; for a
        sync client, a :class:`~tallystick.sdk.recorder.DeferredRecorder` (e.g.
        :class:`~tallystick.sdk.background.BackgroundRecorder`) builds and sends each record
        off the caller's path, in call order.
    :param prices: the price table; default the packaged one (``PriceTable.load(None)``).
    :param recount: recount visible output tokens offline (a :class:`Recounter` to map more
        models to encodings); False to skip.
    :raises TypeError: no adapter knows ``client``, an async recorder was given for a sync
        client, or the client is already wrapped.
    """
    adapter, is_async = adapter_for(client)
    if not is_async and inspect.iscoroutinefunction(getattr(recorder, "record", None)):
        raise TypeError("wrap: a sync client needs a sync recorder")
    recounter = recount if isinstance(recount, Recounter) else (Recounter() if recount else None)
    accounting = _Accounting(adapter.provider, prices or _packaged_prices(), recounter)
    targets = []
    for site in adapter.call_sites:
        resource: Any = client
        for name in site.path:
            resource = getattr(resource, name)
        original = getattr(resource, site.method)
        if getattr(original, _WRAPPED, False):
            raise TypeError("wrap: this client is already wrapped")
        targets.append((resource, site, original))
    for resource, site, original in targets:
        if is_async:
            method = _async_method(original, site, accounting, recorder)
        else:
            method = _sync_method(
                original,
                site,
                accounting,
                recorder,  # type: ignore[arg-type]
            )
        setattr(resource, site.method, method)
    return client
