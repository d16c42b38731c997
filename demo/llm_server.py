"""A local OpenAI- and Anthropic-compatible LLM server on loopback that bills hidden reasoning.

It answers ``POST /v1/chat/completions``, ``POST /v1/responses`` and Anthropic's
``POST /v1/messages`` (each streamed as server-sent events when the request says
``"stream": true``) from real reasoning traces (``../shared/data/reasoning_traces/dev.jsonl``):
the trace whose prompt equals the last user message, else the next one round-robin. The
answer is the content; the reasoning stays hidden, but its tokens are billed: usage reports
``completion_tokens`` = answer + reasoning tokens, with ``reasoning_tokens`` in
``completion_tokens_details`` (Responses: ``output_tokens_details``; Anthropic: in
``output_tokens``, as Claude bills thinking). Counts use ``cl100k_base`` (offline), computed
once per trace at start; input tokens are the cl100k tokens of the message texts plus 4 per
message. Cached input is always 0. The response model is the request model, or its dated
snapshot when :data:`SNAPSHOTS` names one (as OpenAI answers).

The server keeps its own invoice (:meth:`LLMServer.invoice_rows`), priced with
:class:`tallystick.verifier.pricing.PriceTable`, and can be made to cheat in two ways:
:meth:`LLMServer.overbill` adds hidden reasoning tokens (output and reasoning both) to one
billed call on the invoice only, and :meth:`LLMServer.inflate_reasoning` pads one call's hidden
reasoning with copies of itself and bills the padded count everywhere (the usage in the
response, the invoice and, for a cooperating provider, the commitment), so that only a CoIn
audit can tell. Three invoice formats, the input of ``tallystick billing reconcile``:

1. **Per-request CSV** (:meth:`LLMServer.write_csv`), one row per call, header::

       request_id,timestamp,model,input_tokens,cached_input_tokens,output_tokens,reasoning_tokens,cost_usd

   ``timestamp`` is ISO 8601 UTC (``2025-06-01T12:00:00Z``); ``output_tokens`` includes
   ``reasoning_tokens``; ``input_tokens`` includes ``cached_input_tokens``; ``cost_usd`` is a
   decimal string (up to 12 decimals). ``request_id`` is the response id the SDK records.
2. **OpenAI usage export** (:meth:`LLMServer.write_usage_export`), the shape of
   ``GET /v1/organization/usage/completions?bucket_width=1d&group_by=model``: a page
   ``{"object": "page", "data": [bucket...], "has_more": false, "next_page": null}`` with
   one bucket per UTC day ``{"object": "bucket", "start_time": s, "end_time": s + 86400,
   "results": [{"object": "organization.usage.completions.result", "input_tokens",
   "input_cached_tokens", "output_tokens", "input_audio_tokens": 0, "output_audio_tokens": 0,
   "num_model_requests", "model", "project_id": null, "user_id": null, "api_key_id": null,
   "batch": null}]}`` per model. Per-day aggregates: no request ids, no reasoning split.
3. **OpenAI costs export** (:meth:`LLMServer.write_costs_export`), the shape of
   ``GET /v1/organization/costs?bucket_width=1d&group_by=line_item``: the same page and
   buckets, with results ``{"object": "organization.costs.result", "amount": {"value": float,
   "currency": "usd"}, "line_item": "<model>, input" | "<model>, cached input" |
   "<model>, output", "project_id": null}``. Amounts are JSON numbers as OpenAI sends them:
   compare with a tolerance.

**Cooperating provider.** With ``coin_provider_url`` (the base URL of a
``tallystick.daemon.coin.provider_server.ProviderServer``), each chat completion commits its
hidden reasoning there (``POST /coin/v1/commit``: request id = the response id, the response
model, prompt = :func:`tallystick.verifier.coin.prompt_text` of the messages, the reasoning,
the answer, and the usage it bills) and carries the returned offer as the top-level member
``"tallystick_coin"``, for the client's sidecar to audit: of the response, or of a stream's
final chunk (the usage chunk when ``stream_options.include_usage`` is set, else the one with
the finish reason). A commit that fails is logged and the response goes out without an offer.
Without it, responses are unchanged.

Manual use: ``python -m demo.llm_server --port 8765 [--coin-provider URL]`` (then point
``OpenAI(base_url="http://127.0.0.1:8765/v1", api_key="x")`` at it).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from tallystick.verifier._internal.offline_encodings import offline_encoding
from tallystick.verifier.coin import OFFER_MEMBER, prompt_text
from tallystick.verifier.errors import TallystickError
from tallystick.verifier.invoice import CSV_COLUMNS
from tallystick.verifier.logentry import Usage
from tallystick.verifier.pricing import PriceTable

__all__ = [
    "DEFAULT_TRACES",
    "SNAPSHOTS",
    "InvoiceRow",
    "LLMServer",
    "Trace",
    "load_traces",
    "main",
]

#: Default trace file: ``../shared/...`` relative to the repository root.
DEFAULT_TRACES: Final = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "reasoning_traces" / "dev.jsonl"
)
#: Request model -> the dated snapshot the server answers with.
SNAPSHOTS: Final[Mapping[str, str]] = {
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "o3": "o3-2025-04-16",
    "claude-sonnet-4": "claude-sonnet-4-20250514",
}
_TOKENIZER: Final = "cl100k_base"
_TOKENS_PER_MESSAGE: Final = 4
_CHUNK_CHARS: Final = 96
_DAY: Final = 86_400
#: The provider server's commit path (``tallystick.daemon.coin.provider_server.COMMIT_PATH``;
#: repeated so that the demo server does not import the embedding engine).
_COMMIT_PATH: Final = "/coin/v1/commit"
#: Seconds a commit may take: the provider embeds the reasoning (a cold cache takes longest).
_COMMIT_TIMEOUT_S: Final = 300.0
#: Tokens per CoIn block (``tallystick.daemon.coin.provider.DEFAULT_BLOCK_SIZE``): what
#: :meth:`LLMServer.inflate_reasoning` repeats whole.
_BLOCK_TOKENS: Final = 256

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Trace:
    """One reasoning trace with its cl100k token counts (and the hidden reasoning itself, for
    a cooperating provider's commitments)."""

    id: str
    prompt: str
    answer: str
    answer_tokens: int
    reasoning_tokens: int
    reasoning: str = field(default="", repr=False)


def load_traces(path: Path = DEFAULT_TRACES, *, limit: int | None = None) -> tuple[Trace, ...]:
    """The traces of a ``dev.jsonl``-shaped file, token counts precomputed.

    :raises ValueError: the file has no traces or a line is not a trace object.
    """
    rows = []
    with path.open(encoding="utf-8") as lines:
        for line in itertools.islice(lines, limit):
            row = json.loads(line)
            if not all(isinstance(row.get(key), str) for key in ("id", "prompt", "answer")):
                raise ValueError(f"{path}: not a trace: {line[:80]!r}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no traces")
    encoding = offline_encoding(_TOKENIZER)
    answers = encoding.encode_ordinary_batch([row["answer"] for row in rows])
    reasoning = encoding.encode_ordinary_batch([row.get("reasoning") or "" for row in rows])
    return tuple(
        Trace(
            row["id"],
            row["prompt"],
            row["answer"],
            len(answer),
            len(hidden),
            row.get("reasoning") or "",
        )
        for row, answer, hidden in zip(rows, answers, reasoning, strict=True)
    )


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    """What the server billed for one call; ``output_tokens`` includes ``reasoning_tokens``."""

    request_id: str
    timestamp: float
    provider: str
    model: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: str | None

    @property
    def day(self) -> str:
        """The UTC day, ``YYYY-MM-DD``."""
        return datetime.fromtimestamp(self.timestamp, UTC).strftime("%Y-%m-%d")


def _texts(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                yield part["text"]


def _messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Chat ``messages``, or Responses ``input`` (text or items), as role/content objects."""
    raw = body.get("messages", body.get("input"))
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not all(isinstance(item, Mapping) for item in raw):
        raise ValueError("messages must be a list of objects")
    system = body.get("system")  # Anthropic's system prompt is a sibling of messages
    head: list[Mapping[str, Any]] = [{"role": "system", "content": system}] if system else []
    return head + raw


def _sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        out.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
    return "".join(out).encode("utf-8")


def _pieces(text: str) -> list[str]:
    return [text[i : i + _CHUNK_CHARS] for i in range(0, len(text), _CHUNK_CHARS)] or [""]


def _inflated(trace: Trace, encoding: Any, block_tokens: int) -> Trace:
    """``trace`` with its reasoning's whole blocks of ``block_tokens`` tokens written twice
    (all of it when it is shorter than a block), and its reasoning count the padded text's."""
    ids = encoding.encode_ordinary(trace.reasoning)
    end = len(ids) // block_tokens * block_tokens or len(ids)
    copy = encoding.decode(ids[:end])
    while end and not trace.reasoning.startswith(copy):  # a block edge inside a character
        end -= 1
        copy = encoding.decode(ids[:end])
    reasoning = copy + trace.reasoning
    return replace(
        trace,
        reasoning=reasoning,
        reasoning_tokens=len(encoding.encode_ordinary(reasoning)),
    )


class LLMServer:
    """The server, in a background thread on ``127.0.0.1`` (port 0: a free one).

    ``base_url`` is for ``openai`` clients (``.../v1``), ``anthropic_base_url`` for
    ``anthropic`` ones. ``clock`` gives the billing time (seconds since the epoch).
    ``coin_provider_url``: a CoIn provider server's base URL, to act as a cooperating
    provider (see the module docstring); None: no offers.
    """

    def __init__(
        self,
        traces: tuple[Trace, ...] | None = None,
        *,
        traces_path: Path = DEFAULT_TRACES,
        port: int = 0,
        prices: PriceTable | None = None,
        clock: Callable[[], float] = time.time,
        coin_provider_url: str | None = None,
    ) -> None:
        self._traces = traces if traces is not None else load_traces(traces_path)
        self._commit_url = (
            None if coin_provider_url is None else coin_provider_url.rstrip("/") + _COMMIT_PATH
        )
        self._by_prompt = {trace.prompt: trace for trace in self._traces}
        self._next = itertools.count()
        self._encoding = offline_encoding(_TOKENIZER)
        self._prices = prices or PriceTable.load(None)
        self._clock = clock
        self._lock = threading.Lock()
        self._invoice: dict[str, InvoiceRow] = {}
        self._inflate: dict[str, int] = {}  # prompt -> block size, for one call each
        self._http = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LLMServer:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self._http.server_address[1])

    @property
    def base_url(self) -> str:
        """``base_url`` for an ``openai`` client."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """``base_url`` for an ``anthropic`` client."""
        return f"http://127.0.0.1:{self.port}"

    # -- the invoice -------------------------------------------------------------------------
    def invoice_rows(self) -> list[InvoiceRow]:
        """What the server billed, one row per call, in call order."""
        with self._lock:
            return list(self._invoice.values())

    def overbill(self, request_id: str, extra_output_tokens: int) -> InvoiceRow:
        """Bill ``extra_output_tokens`` more hidden reasoning tokens for one call.

        :raises KeyError: no call has this request id.
        :raises ValueError: ``extra_output_tokens`` is not positive.
        """
        if extra_output_tokens <= 0:
            raise ValueError("overbill: extra_output_tokens must be positive")
        with self._lock:
            row = self._invoice[request_id]
            row = self._priced(
                replace(
                    row,
                    output_tokens=row.output_tokens + extra_output_tokens,
                    reasoning_tokens=row.reasoning_tokens + extra_output_tokens,
                )
            )
            self._invoice[request_id] = row
            return row

    def inflate_reasoning(self, prompt: str, *, block_tokens: int = _BLOCK_TOKENS) -> None:
        """Pad the hidden reasoning of the next non-streamed chat completion whose last user
        message is ``prompt``, and bill the padding honestly.

        The reasoning that call answers with gets its whole blocks of ``block_tokens`` tokens
        written twice (the first blocks copied in front: the ``duplicate_blocks`` attack of
        :mod:`tallystick.daemon.coin.attacks` at an inflation ratio of about 1); a reasoning
        shorter than a block is written twice whole. The padded count is what the response's
        usage, the invoice and the CoIn commitment all say, so the bill agrees with the log and
        only an audit of the commitment shows the copies. Later calls with ``prompt`` are
        answered as usual.

        :raises ValueError: ``block_tokens`` is not positive.
        """
        if block_tokens <= 0:
            raise ValueError("inflate_reasoning: block_tokens must be positive")
        with self._lock:
            self._inflate[prompt] = block_tokens

    def write_csv(self, path: Path) -> None:
        """The per-request CSV invoice (columns :data:`tallystick.verifier.invoice.CSV_COLUMNS`)."""
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(CSV_COLUMNS)
            for row in self.invoice_rows():
                stamp = datetime.fromtimestamp(row.timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                writer.writerow(
                    (
                        row.request_id,
                        stamp,
                        row.model,
                        row.input_tokens,
                        row.cached_input_tokens,
                        row.output_tokens,
                        row.reasoning_tokens,
                        row.cost_usd if row.cost_usd is not None else "",
                    )
                )

    def _buckets(self, results: Callable[[list[InvoiceRow]], list[dict[str, Any]]]) -> Any:
        by_day: dict[int, list[InvoiceRow]] = defaultdict(list)
        for row in self.invoice_rows():
            by_day[int(row.timestamp) // _DAY * _DAY].append(row)
        data = [
            {
                "object": "bucket",
                "start_time": day,
                "end_time": day + _DAY,
                "results": results(rows),
            }
            for day, rows in sorted(by_day.items())
        ]
        return {"object": "page", "data": data, "has_more": False, "next_page": None}

    def write_usage_export(self, path: Path) -> None:
        """The OpenAI usage (completions) export, per UTC day and model."""

        def results(rows: list[InvoiceRow]) -> list[dict[str, Any]]:
            by_model: dict[str, list[InvoiceRow]] = defaultdict(list)
            for row in rows:
                by_model[row.model].append(row)
            return [
                {
                    "object": "organization.usage.completions.result",
                    "input_tokens": sum(row.input_tokens for row in group),
                    "input_cached_tokens": sum(row.cached_input_tokens for row in group),
                    "output_tokens": sum(row.output_tokens for row in group),
                    "input_audio_tokens": 0,
                    "output_audio_tokens": 0,
                    "num_model_requests": len(group),
                    "model": model,
                    "project_id": None,
                    "user_id": None,
                    "api_key_id": None,
                    "batch": None,
                }
                for model, group in sorted(by_model.items())
            ]

        path.write_text(json.dumps(self._buckets(results), indent=1), encoding="utf-8")

    def write_costs_export(self, path: Path) -> None:
        """The OpenAI costs export, per UTC day and line item (model and token kind)."""

        def results(rows: list[InvoiceRow]) -> list[dict[str, Any]]:
            amounts: dict[str, Decimal] = defaultdict(Decimal)
            for row in rows:
                rates = self._prices.rates(row.provider, row.model, input_tokens=row.input_tokens)
                if rates is None:
                    continue
                uncached = row.input_tokens - row.cached_input_tokens
                amounts[f"{row.model}, input"] += uncached * rates.input / 1_000_000
                amounts[f"{row.model}, cached input"] += (
                    row.cached_input_tokens * (rates.cache_read or rates.input) / 1_000_000
                )
                amounts[f"{row.model}, output"] += row.output_tokens * rates.output / 1_000_000
            return [
                {
                    "object": "organization.costs.result",
                    "amount": {"value": float(amount), "currency": "usd"},
                    "line_item": item,
                    "project_id": None,
                }
                for item, amount in sorted(amounts.items())
            ]

        path.write_text(json.dumps(self._buckets(results), indent=1), encoding="utf-8")

    # -- answering ---------------------------------------------------------------------------
    def _priced(self, row: InvoiceRow) -> InvoiceRow:
        usage = Usage(
            input_tokens=row.input_tokens,
            cache_read_input_tokens=row.cached_input_tokens,
            output_tokens=row.output_tokens,
            reasoning_output_tokens=row.reasoning_tokens,
        )
        cost = self._prices.price(row.provider, row.model, usage)
        return replace(row, cost_usd=None if cost is None else cost.amount)

    def _bill(
        self, provider: str, body: Mapping[str, Any], prefix: str, *, may_inflate: bool = False
    ) -> tuple[InvoiceRow, Trace]:
        messages = _messages(body)
        requested = body.get("model")
        if not isinstance(requested, str) or not requested:
            raise ValueError("model is required")
        input_tokens = sum(
            _TOKENS_PER_MESSAGE + len(self._encoding.encode_ordinary(text))
            for message in messages
            for text in _texts(message.get("content"))
        )
        last_user = next(
            (m for m in reversed(messages) if m.get("role") == "user"), {"content": ""}
        )
        asked = "".join(_texts(last_user.get("content")))
        trace = self._by_prompt.get(asked)
        if trace is None:
            trace = self._traces[next(self._next) % len(self._traces)]
        if may_inflate and self._inflate:
            with self._lock:
                block_tokens = self._inflate.pop(asked, None)
            if block_tokens is not None:
                trace = _inflated(trace, self._encoding, block_tokens)
        row = self._priced(
            InvoiceRow(
                request_id=f"{prefix}{uuid.uuid4().hex}",
                timestamp=self._clock(),
                provider=provider,
                model=SNAPSHOTS.get(requested, requested),
                input_tokens=input_tokens,
                cached_input_tokens=0,
                output_tokens=trace.answer_tokens + trace.reasoning_tokens,
                reasoning_tokens=trace.reasoning_tokens,
                cost_usd=None,
            )
        )
        with self._lock:
            self._invoice[row.request_id] = row
        return row, trace

    def chat(self, body: Mapping[str, Any]) -> tuple[str, bytes]:
        """``/v1/chat/completions``: (content type, body). :raises ValueError: a bad request."""
        row, trace = self._bill(
            "openai", body, "chatcmpl-", may_inflate=body.get("stream") is not True
        )
        usage = {
            "prompt_tokens": row.input_tokens,
            "completion_tokens": row.output_tokens,
            "total_tokens": row.input_tokens + row.output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": row.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        head = {"id": row.request_id, "created": int(row.timestamp), "model": row.model}
        head |= {"service_tier": "default", "system_fingerprint": None}
        offer = None
        if self._commit_url is not None:
            offer = self._coin_offer(self._commit_url, row, trace, body)
        if body.get("stream") is not True:
            message = {"role": "assistant", "content": trace.answer, "refusal": None}
            choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
            whole = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            if offer is not None:
                whole[OFFER_MEMBER] = offer
            return "application/json", json.dumps(whole).encode("utf-8")
        chunk = {**head, "object": "chat.completion.chunk"}

        def delta(content: dict[str, Any], finish: str | None = None) -> Any:
            choice = {"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}
            return None, {**chunk, "choices": [choice]}

        events = [delta({"role": "assistant", "content": ""})]
        events += [delta({"content": piece}) for piece in _pieces(trace.answer)]
        events.append(delta({}, "stop"))
        options = body.get("stream_options")
        if isinstance(options, Mapping) and options.get("include_usage") is True:
            events.append((None, {**chunk, "choices": [], "usage": usage}))
        if offer is not None:
            _, final = events[-1]
            final[OFFER_MEMBER] = offer
        events.append((None, "[DONE]"))
        return "text/event-stream", _sse(events)

    def _coin_offer(
        self, commit_url: str, row: InvoiceRow, trace: Trace, body: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Commit the call's hidden reasoning at the provider server: its offer, or None (the
        failure is logged)."""
        try:
            prompt = prompt_text(body.get("messages"))  # checked inside
        except TallystickError as exc:
            _log.warning("coin: no offer for %s: %s", row.request_id, exc.code)
            return None
        commit = {
            "request_id": row.request_id,
            "model": row.model,
            "prompt": prompt,
            "reasoning": trace.reasoning,
            "answer": trace.answer,
            "reported_usage": {
                "input": row.input_tokens,
                "output": row.output_tokens,
                "reasoning": row.reasoning_tokens,
                "cached": row.cached_input_tokens,
            },
        }
        request = urllib.request.Request(  # noqa: S310  # the URL the server was given
            commit_url,
            data=json.dumps(commit).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=_COMMIT_TIMEOUT_S) as answer:  # noqa: S310
                offer = json.loads(answer.read())["offer"]
        except urllib.error.HTTPError as exc:
            detail = exc.read(1024).decode("utf-8", "replace")
            _log.warning("coin: no offer for %s: HTTP %d %s", row.request_id, exc.code, detail)
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.warning("coin: no offer for %s: %s", row.request_id, type(exc).__name__)
            return None
        return offer if isinstance(offer, dict) else None

    def responses(self, body: Mapping[str, Any]) -> tuple[str, bytes]:
        """``/v1/responses``: (content type, body). :raises ValueError: a bad request."""
        row, trace = self._bill("openai", body, "resp_")
        usage = {
            "input_tokens": row.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": row.output_tokens,
            "output_tokens_details": {"reasoning_tokens": row.reasoning_tokens},
            "total_tokens": row.input_tokens + row.output_tokens,
        }
        text = {"type": "output_text", "text": trace.answer, "annotations": []}
        message = {
            "type": "message",
            "id": f"msg_{row.request_id[5:]}",
            "status": "completed",
            "role": "assistant",
            "content": [text],
        }
        reasoning = {"type": "reasoning", "id": f"rs_{row.request_id[5:]}", "summary": []}
        response: dict[str, Any] = {
            "id": row.request_id,
            "object": "response",
            "created_at": int(row.timestamp),
            "status": "completed",
            "model": row.model,
            "output": [reasoning, message],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "service_tier": "default",
            "usage": usage,
        }
        if body.get("stream") is not True:
            return "application/json", json.dumps(response).encode("utf-8")
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        events: list[tuple[str | None, Any]] = [("response.created", {"response": started})]
        for piece in _pieces(trace.answer):
            events.append(
                (
                    "response.output_text.delta",
                    {
                        "item_id": message["id"],
                        "output_index": 1,
                        "content_index": 0,
                        "delta": piece,
                        "logprobs": [],
                    },
                )
            )
        events.append(("response.completed", {"response": response}))
        numbered = [
            (name, {"type": name, "sequence_number": number, **data})
            for number, (name, data) in enumerate(events)
        ]
        return "text/event-stream", _sse(numbered)

    def messages(self, body: Mapping[str, Any]) -> tuple[str, bytes]:
        """Anthropic ``/v1/messages``: (content type, body). :raises ValueError: a bad request."""
        row, trace = self._bill("anthropic", body, "msg_")
        usage = {
            "input_tokens": row.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": row.output_tokens,
            "service_tier": "standard",
        }
        message = {
            "id": row.request_id,
            "type": "message",
            "role": "assistant",
            "model": row.model,
            "content": [{"type": "text", "text": trace.answer}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if body.get("stream") is not True:
            return "application/json", json.dumps(message).encode("utf-8")
        start_usage = {**usage, "output_tokens": 1}
        events: list[tuple[str | None, Any]] = [
            (
                "message_start",
                {"message": {**message, "content": [], "stop_reason": None, "usage": start_usage}},
            ),
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ]
        for piece in _pieces(trace.answer):
            text_delta = {"type": "text_delta", "text": piece}
            events.append(("content_block_delta", {"index": 0, "delta": text_delta}))
        events.append(("content_block_stop", {"index": 0}))
        # Two cumulative deltas: a reader must keep the last, not add them up.
        half = {"output_tokens": row.output_tokens // 2}
        stop = {"stop_reason": "end_turn", "stop_sequence": None}
        events.append(("message_delta", {"delta": stop, "usage": half}))
        events.append(
            ("message_delta", {"delta": stop, "usage": {"output_tokens": row.output_tokens}})
        )
        events.append(("message_stop", {}))
        return "text/event-stream", _sse([(name, {"type": name, **data}) for name, data in events])


def _handler_for(server: LLMServer) -> type[BaseHTTPRequestHandler]:
    routes: dict[str, Callable[[Mapping[str, Any]], tuple[str, bytes]]] = {
        "/v1/chat/completions": server.chat,
        "/v1/responses": server.responses,
        "/v1/messages": server.messages,
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the SDK clients reuse connections

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: without this, Nagle's algorithm and the
            # client's delayed ACK add about 40 ms to every call.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if route is None:
                self._send(404, "application/json", _error("not found"))
                return
            try:
                body = json.loads(raw)
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                content_type, payload = route(body)
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                self._send(400, "application/json", _error(str(exc)))
                return
            self._send(200, content_type, payload)

        def _send(self, status: int, content_type: str, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the benchmark makes 10,000 calls

    return Handler


def _error(message: str) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "code": None, "param": None}
    return json.dumps({"error": error, "type": "error"}).encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    """``python -m demo.llm_server``: serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m demo.llm_server", description=__doc__)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    parser.add_argument(
        "--coin-provider",
        metavar="URL",
        help="base URL of a CoIn provider server: commit each chat completion's reasoning there",
    )
    args = parser.parse_args(argv)
    server = LLMServer(
        traces_path=args.traces, port=args.port, coin_provider_url=args.coin_provider
    ).start()
    print(f"serving on {server.base_url} (Anthropic: {server.anthropic_base_url})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
