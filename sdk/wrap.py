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

**CoIn audits.** With ``coin_audit=`` (the sidecar :class:`~tallystick.sdk.client.Client`, or a
:class:`CoinAuditor` on it), an ``openai`` ``chat.completions.create`` whose response carries
a cooperating provider's offer (the top-level member ``"tallystick_coin"``,
:class:`~tallystick.verifier.coin.CoinOffer`) is audited once the call is recorded
(:func:`tallystick.sdk.coin.audit_offer`): the prompt is
:func:`~tallystick.verifier.coin.prompt_text` of the request's messages as sent, the answer the
one choice's content, the provider's request id the head's own (the response id when the head
does not parse), and ``call_request_id`` the recorded call's ``request_id``. A stream carries
the offer as the top-level member of a chunk (the last chunk that carries one wins; normally
the final one, the usage chunk even when the wrapper hides it), its answer is the one choice's
``delta.content`` strings concatenated in order, and it is audited when it ends; a stream
closed before its end is recorded, but its offer is not audited (the answer is cut short:
``sdk.coin_not_auditable``). The sidecar logs the head, the challenge, the evidence and the
verdict. Audits run on background daemon threads, at most ``max_in_flight`` at a time (more
are logged and skipped), never block nor fail the caller, and never change what it sees:
failures are logged on this module's logger (WARNING, with their code) and kept in
:meth:`CoinAuditor.outcomes`. :meth:`CoinAuditor.wait` waits for the audits in flight; call it
before the sidecar client closes or the process exits (daemon threads die with it)::

    with Client("unix:var/agents/me.sock") as sidecar:
        auditor = CoinAuditor(sidecar)
        llm = wrap(OpenAI(base_url=provider), recorder=sidecar, coin_audit=auditor)
        llm.chat.completions.create(model="o3", messages=[...])   # recorded, then audited
        auditor.wait(60)
        [outcome.verdict for outcome in auditor.outcomes()]

Not audited: ``responses.create``, ``anthropic`` calls, responses and streams with several
choices or without text content (logged as ``sdk.coin_not_auditable``). With a deferred
recorder the audit starts when the record is built, so the head entry may precede the call's.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from tallystick.verifier.canonical import canonicalize
from tallystick.verifier.coin import DEFAULT_OPEN_TIMEOUT_S, OFFER_MEMBER, CoinOffer
from tallystick.verifier.errors import MalformedInput, TallystickError
from tallystick.verifier.logentry import CallBody, Usage
from tallystick.verifier.pricing import PriceTable

from .adapters import (
    AnswerReader,
    CallSite,
    CoinTexts,
    Observation,
    PreparedRequest,
    StreamReader,
    adapter_for,
)
from .coin import CoinVerdict, audit_offer, head_request_id
from .context import current
from .recorder import AsyncRecorder, DeferredRecorder, Recorder
from .recount import Recounter

if TYPE_CHECKING:
    from .client import Client

__all__ = ["CoinAuditOutcome", "CoinAuditor", "wrap"]

_log = logging.getLogger(__name__)
_Client = TypeVar("_Client")
#: The SDKs' per-request transport options: not part of the request body.
_TRANSPORT_OPTIONS: Final = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})
_WRAPPED: Final = "__tallystick_wrapped__"
#: Audits a :class:`CoinAuditor` runs at once by default: each holds a thread, and the sidecar
#: runs the embedding model for each.
DEFAULT_MAX_IN_FLIGHT: Final = 4
#: Outcomes a :class:`CoinAuditor` keeps by default (the oldest go first).
DEFAULT_KEEP_OUTCOMES: Final = 1000
#: Builds a finished call's record (None: not recorded), with a function giving the answer a
#: CoIn head binds (None: no single text answer); both may run off the caller's path.
_Build = Callable[[], tuple[CallBody | None, Callable[[], str | None]]]


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


def _no_answer() -> str | None:
    return None


def _unrecorded() -> tuple[CallBody | None, Callable[[], str | None]]:
    return None, _no_answer


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

    def response_call(
        self, start: _CallStart, response: Any, ended_ns: int
    ) -> tuple[CallBody | None, Callable[[], str | None]]:
        """The record of a whole (non-streamed) response, and the answer its CoIn head binds."""
        try:
            body = _json_body(response)
            response_sha256 = _sha256(body)
        except Exception:
            _log.warning("tallystick: cannot read %s response", self.provider, exc_info=True)
            return None, _no_answer
        call = self.call(start, lambda: start.site.read_response(body), response_sha256, ended_ns)
        coin = start.site.coin
        return call, (_no_answer if coin is None else functools.partial(coin.answer, body))

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
    """Follows one stream's events: which reach the caller, their hash, the final record, and
    the CoIn offer ``coin`` watches for (None: none is audited)."""

    def __init__(
        self, accounting: _Accounting, start: _CallStart, coin: _StreamOffer | None = None
    ) -> None:
        self._accounting = accounting
        self._start = start
        self._reader: StreamReader | None = start.site.stream_reader(start.request)
        self._coin = coin
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
            shown = self._reader.feed(body)
        except Exception:
            _log.warning("tallystick: cannot read a %s stream", self._accounting.provider)
            self._reader = None
            return True
        if self._coin is not None:
            self._coin.feed(body)
        return shown

    def finish(self, *, complete: bool) -> tuple[_Build, _Offered | None]:
        """The function building the record, once (later calls, or an unreadable stream: None),
        and the offer to audit once it is recorded; ``complete``: the stream ran to its end."""
        if self.finished:
            return _unrecorded, None
        self.finished = True
        coin = self._coin
        offered = None if coin is None else coin.offered(complete=complete)
        answer = _no_answer if coin is None else coin.answer
        if self._reader is None:
            return (lambda: (None, answer)), offered
        self._hash.update(b"]")
        reader, digest, ended_ns = self._reader, self._hash.hexdigest(), time.perf_counter_ns()
        accounting, start = self._accounting, self._start
        return (lambda: (accounting.call(start, reader.result, digest, ended_ns), answer)), offered


class _RecordedStream:
    """The caller's stream, unchanged except for hidden events; records when it ends."""

    def __init__(
        self,
        inner: Any,
        tally: _StreamAccounting,
        record: Callable[[_Build, _Offered | None], None],
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
                self._record(*self._tally.finish(complete=True))
                raise
            if self._tally.feed(event):
                return event

    def close(self) -> None:
        """Close the underlying stream; a stream closed early is recorded with what it said
        (and its CoIn offer, the answer being cut short, is not audited)."""
        self._inner.close()
        self._record(*self._tally.finish(complete=False))

    def __enter__(self) -> _RecordedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _RecordedAsyncStream:
    """The asyncio form of :class:`_RecordedStream`."""

    def __init__(
        self,
        inner: Any,
        tally: _StreamAccounting,
        record: Callable[[_Build, _Offered | None], Awaitable[None]],
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
                await self._record(*self._tally.finish(complete=True))
                raise
            if self._tally.feed(event):
                return event

    async def close(self) -> None:
        """Close the underlying stream; a stream closed early is recorded with what it said
        (and its CoIn offer, the answer being cut short, is not audited)."""
        await self._inner.close()
        await self._record(*self._tally.finish(complete=False))

    async def __aenter__(self) -> _RecordedAsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass(frozen=True, slots=True)
class CoinAuditOutcome:
    """How one offered audit ended: ``verdict`` when the sidecar judged the openings (a failed
    opening is a verdict too, see :class:`~tallystick.sdk.coin.CoinVerdict`), else the
    ``error_code`` of why it did not: the sidecar's or the provider's ``coin.*`` code,
    ``sdk.*`` for the SDK's own, ``sdk.coin_audits_busy`` and ``sdk.coin_not_auditable`` for
    skipped ones."""

    call_request_id: str | None
    verdict: CoinVerdict | None
    error_code: str | None


class CoinAuditor:
    """Audits providers' CoIn offers through the sidecar on background daemon threads; what
    :func:`wrap` hands each offered call to (see the module docstring).

    **Parameters:**

    - ``sidecar``: the blocking sidecar :class:`~tallystick.sdk.client.Client` (an agent's
      socket: the shared one cannot audit).
    - ``max_in_flight``: audits running at once; an offer arriving when that many run is
      logged and skipped (``sdk.coin_audits_busy``).
    - ``timeout``: seconds to wait for a provider's openings.
    - ``keep``: outcomes kept for :meth:`outcomes`, the newest.

    :raises TypeError: ``sidecar`` is an asyncio client (its calls would never run).
    :raises ValueError: ``max_in_flight`` or ``keep`` below 1.
    """

    def __init__(
        self,
        sidecar: Client,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout: float = DEFAULT_OPEN_TIMEOUT_S,
        keep: int = DEFAULT_KEEP_OUTCOMES,
    ) -> None:
        if inspect.iscoroutinefunction(getattr(sidecar, "begin_coin_audit", None)):
            raise TypeError("coin auditor: needs a blocking Client, not an AsyncClient")
        if max_in_flight < 1 or keep < 1:
            raise ValueError("coin auditor: max_in_flight and keep must be at least 1")
        self.sidecar = sidecar
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self._in_flight = 0
        self._outcomes: collections.deque[CoinAuditOutcome] = collections.deque(maxlen=keep)
        self._changed = threading.Condition()

    def __repr__(self) -> str:
        return f"CoinAuditor({self.sidecar!r}, in_flight={self.in_flight})"

    @property
    def in_flight(self) -> int:
        """Audits running now."""
        with self._changed:
            return self._in_flight

    def outcomes(self) -> list[CoinAuditOutcome]:
        """The finished (and skipped) audits' outcomes, oldest first."""
        with self._changed:
            return list(self._outcomes)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no audit is in flight (None: however long it takes); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._in_flight == 0, timeout)

    def submit(
        self,
        offer: Any,
        *,
        prompt: str,
        answer: str,
        response_id: str | None,
        call_request_id: str | None,
    ) -> bool:
        """Start auditing ``offer`` (the response's ``"tallystick_coin"`` member, unparsed) on
        a daemon thread; False when it was skipped (too many in flight). Never raises."""
        with self._changed:
            if self._in_flight >= self.max_in_flight:
                busy = True
            else:
                busy = False
                self._in_flight += 1
        if busy:
            self._finished(
                CoinAuditOutcome(call_request_id, None, "sdk.coin_audits_busy"),
                f"{self.max_in_flight} audits in flight",
                counted=False,
            )
            return False
        thread = threading.Thread(
            target=self._run,
            args=(offer, prompt, answer, response_id, call_request_id),
            name="tallystick-coin-audit",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had: the caller's call goes on
            self._finished(
                CoinAuditOutcome(call_request_id, None, "sdk.coin_audit_failed"), str(exc)
            )
            return False
        return True

    def skip(self, call_request_id: str | None, why: str) -> None:
        """Note an offer that cannot be audited (``sdk.coin_not_auditable``). Never raises."""
        outcome = CoinAuditOutcome(call_request_id, None, "sdk.coin_not_auditable")
        self._finished(outcome, why, counted=False)

    def _run(
        self,
        raw_offer: Any,
        prompt: str,
        answer: str,
        response_id: str | None,
        call_request_id: str | None,
    ) -> None:
        try:
            offer = CoinOffer.from_json(raw_offer)
            request_id: str | None
            try:
                request_id = head_request_id(offer.head_note)
            except TallystickError:  # the sidecar refuses the head with its own code
                request_id = response_id
            if request_id != response_id:
                _log.warning(
                    "tallystick: coin head names request %s for response %s",
                    request_id,
                    response_id,
                )
            verdict = audit_offer(
                self.sidecar,
                offer,
                request_id=request_id,
                prompt=prompt,
                answer=answer,
                call_request_id=call_request_id,
                timeout=self.timeout,
            )
        except TallystickError as exc:
            self._finished(CoinAuditOutcome(call_request_id, None, exc.code), str(exc))
        except Exception as exc:  # a bug must not escape the thread unlogged
            _log.warning("tallystick: coin audit of %s crashed", call_request_id, exc_info=True)
            self._finished(
                CoinAuditOutcome(call_request_id, None, "sdk.coin_audit_failed"),
                type(exc).__name__,
            )
        else:
            if not verdict.consistent:
                _log.warning(
                    "tallystick: coin audit of %s: inconsistent (%s), verdict entry %d",
                    call_request_id,
                    verdict.error_code or ", ".join(verdict.flagged),
                    verdict.verdict_entry_index,
                )
            self._finished(CoinAuditOutcome(call_request_id, verdict, None), "")

    def _finished(self, outcome: CoinAuditOutcome, why: str, *, counted: bool = True) -> None:
        if outcome.error_code is not None:
            _log.warning(
                "tallystick: coin audit of %s not done (%s): %s",
                outcome.call_request_id,
                outcome.error_code,
                why,
            )
        with self._changed:
            self._outcomes.append(outcome)
            if counted:
                self._in_flight -= 1
            self._changed.notify_all()


@dataclass(frozen=True, slots=True)
class _Offered:
    """A call's CoIn offer, with the prompt as sent (None: ``why_not`` it cannot be audited):
    taken on the caller's path, since the caller may change its messages as soon as the call
    returns."""

    auditor: CoinAuditor
    offer: Any
    prompt: str | None
    why_not: str | None

    def submit(self, call: CallBody | None, answer: Callable[[], str | None]) -> None:
        """Audit the offer of the recorded ``call``, whose answer ``answer()`` gives (None: no
        single text answer). Never raises."""
        if call is None:
            self.auditor.skip(None, "the call was not recorded")
            return
        try:
            text = None if self.prompt is None else answer()
        except Exception:
            text = None
        if self.prompt is None or text is None:
            self.auditor.skip(call.request_id, self.why_not or "no single text answer")
            return
        self.auditor.submit(
            self.offer,
            prompt=self.prompt,
            answer=text,
            response_id=call.request_id,
            call_request_id=call.request_id,
        )


def _offer_member(response: Any) -> Any:
    """The response's ``"tallystick_coin"`` member, or None, without converting the response
    (SDK models keep unknown members in pydantic's ``model_extra``)."""
    if isinstance(response, Mapping):
        return response.get(OFFER_MEMBER)
    extra = getattr(response, "model_extra", None)
    return extra.get(OFFER_MEMBER) if isinstance(extra, Mapping) else None


def _coin_prompt(coin: CoinTexts, request: PreparedRequest) -> tuple[str | None, str | None]:
    """The prompt a call's CoIn head binds, else None and why not. Never raises."""
    try:
        return coin.prompt(request.kwargs), None
    except MalformedInput as exc:
        return None, f"{exc.code}: {exc}"
    except Exception as exc:
        return None, type(exc).__name__


def _offered(auditor: CoinAuditor | None, start: _CallStart, response: Any) -> _Offered | None:
    """What to audit after a non-streamed call, or None (no auditor, no offer). Never raises."""
    coin = start.site.coin
    if auditor is None or coin is None:
        return None
    try:
        offer = _offer_member(response)
    except Exception:
        return None
    if offer is None:
        return None
    return _Offered(auditor, offer, *_coin_prompt(coin, start.request))


class _StreamOffer:
    """Watches a stream for a CoIn offer (the last ``"tallystick_coin"`` member its events
    carry) and reads the answer as it goes; the prompt is taken when the call is made."""

    def __init__(self, auditor: CoinAuditor, coin: CoinTexts, start: _CallStart) -> None:
        self._auditor = auditor
        self._prompt, self._why_not = _coin_prompt(coin, start.request)
        self._reader: AnswerReader | None = None
        if coin.stream_answer is not None:
            self._reader = coin.stream_answer()
        self._offer: Any = None

    def feed(self, body: Any) -> None:
        """Take one event's JSON body. Never raises."""
        try:
            offer = _offer_member(body)
            if offer is not None:
                self._offer = offer
            if self._reader is not None:
                self._reader.feed(body)
        except Exception:  # an adapter bug: no answer, the stream goes on
            self._reader = None

    def answer(self) -> str | None:
        """The answer streamed (None: no single text answer)."""
        return None if self._reader is None else self._reader.answer()

    def offered(self, *, complete: bool) -> _Offered | None:
        """What to audit once the call is recorded, or None (no offer); an offer in a stream
        closed before its end is not auditable (its answer is cut short)."""
        if self._offer is None:
            return None
        if not complete:
            return _Offered(self._auditor, self._offer, None, "the stream was closed early")
        return _Offered(self._auditor, self._offer, self._prompt, self._why_not)


def _stream_offer(auditor: CoinAuditor | None, start: _CallStart) -> _StreamOffer | None:
    """What watches a stream for an offer, or None (no auditor, or this site's streams are
    not audited)."""
    coin = start.site.coin
    if auditor is None or coin is None or coin.stream_answer is None:
        return None
    return _StreamOffer(auditor, coin, start)


def _built_then_audited(build: _Build, offered: _Offered | None) -> CallBody | None:
    """``build()``'s record, after starting the audit of ``offered`` (a deferred recorder's
    build: the head entry may precede the call's)."""
    call, answer = build()
    if offered is not None:
        offered.submit(call, answer)
    return call


def _sync_method(
    original: Callable[..., Any],
    site: CallSite,
    accounting: _Accounting,
    recorder: Recorder | DeferredRecorder,
    auditor: CoinAuditor | None,
) -> Callable[..., Any]:
    def record(build: _Build, offered: _Offered | None) -> None:
        if isinstance(recorder, DeferredRecorder):
            recorder.record_later(functools.partial(_built_then_audited, build, offered))
            return
        call, answer = build()
        if call is not None:
            recorder.record(call)
        if offered is not None:
            offered.submit(call, answer)

    @functools.wraps(original)
    def create(*args: Any, **kwargs: Any) -> Any:
        start = accounting.start(site, kwargs)
        result = original(*args, **start.request.kwargs)
        if start.request.kwargs.get("stream") is True:
            tally = _StreamAccounting(accounting, start, _stream_offer(auditor, start))
            return _RecordedStream(result, tally, record)
        offered = _offered(auditor, start, result)
        ended_ns = time.perf_counter_ns()
        record(functools.partial(accounting.response_call, start, result, ended_ns), offered)
        return result

    setattr(create, _WRAPPED, True)
    return create


def _async_method(
    original: Callable[..., Any],
    site: CallSite,
    accounting: _Accounting,
    recorder: Recorder | AsyncRecorder,
    auditor: CoinAuditor | None,
) -> Callable[..., Any]:
    async def record(build: _Build, offered: _Offered | None) -> None:
        call, answer = build()
        if call is not None:
            outcome = recorder.record(call)
            if inspect.isawaitable(outcome):
                await outcome
        if offered is not None:
            offered.submit(call, answer)

    @functools.wraps(original)
    async def create(*args: Any, **kwargs: Any) -> Any:
        start = accounting.start(site, kwargs)
        result = await original(*args, **start.request.kwargs)
        if start.request.kwargs.get("stream") is True:
            tally = _StreamAccounting(accounting, start, _stream_offer(auditor, start))
            return _RecordedAsyncStream(result, tally, record)
        offered = _offered(auditor, start, result)
        ended_ns = time.perf_counter_ns()
        await record(functools.partial(accounting.response_call, start, result, ended_ns), offered)
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
    coin_audit: Client | CoinAuditor | None = None,
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
    :param coin_audit: audit the CoIn offers providers attach to responses (see the module
        docstring): a :class:`CoinAuditor`, or the blocking sidecar
        :class:`~tallystick.sdk.client.Client` to audit through with default settings (for
        sync and async LLM clients alike; the audits run on threads). None: no audits.
    :raises TypeError: no adapter knows ``client``, an async recorder was given for a sync
        client, ``coin_audit`` is an asyncio client, or the client is already wrapped.
    """
    adapter, is_async = adapter_for(client)
    if not is_async and inspect.iscoroutinefunction(getattr(recorder, "record", None)):
        raise TypeError("wrap: a sync client needs a sync recorder")
    auditor = (
        coin_audit
        if coin_audit is None or isinstance(coin_audit, CoinAuditor)
        else CoinAuditor(coin_audit)
    )
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
            method = _async_method(original, site, accounting, recorder, auditor)
        else:
            method = _sync_method(
                original,
                site,
                accounting,
                recorder,  # type: ignore[arg-type]
                auditor,
            )
        setattr(resource, site.method, method)
    return client
