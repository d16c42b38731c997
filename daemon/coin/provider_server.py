"""The provider's side of CoIn audits as a small HTTP server, for a cooperating provider.

A provider that serves a reasoning model (a vLLM deployment, say) runs this next to it. After
each response, its glue code posts the hidden reasoning here and attaches the returned offer
to the response body as ``"tallystick_coin"``; the client's sidecar verifies and logs the
head, draws its challenge and posts the challenged indices to the offer's ``openings_url``::

    POST /coin/v1/commit  {"request_id": str, "model": str, "prompt": str, "reasoning": str,
                           "answer": str,
                           "reported_usage": {"input", "output", "reasoning", "cached"} | null}
                       -> 200 {"offer": {"format": "tallystick.coin.offer/v1", "head_note",
                                         "provider_vkey", "sketch", "openings_url"}}
    POST /coin/v1/open?c=<capability>   {"request_id": str, "indices": [int, ...]}
                       -> 200 {"openings": [opening, ...], "sketch_key": base64}

The JSON is :mod:`tallystick.verifier.coin`'s wire format (``CoinOffer``,
``openings_to_json``). ``prompt`` is what the head binds: for chat requests, ``prompt_text``
of the messages. ``reported_usage`` members are integers or null; null (or no member) bills
exactly the committed count. Errors are ``{"error": {"code": "coin.*", "message": str}}``:

====== ================================ ==============================================
status code                             when
====== ================================ ==============================================
400    ``coin.request_malformed``       not JSON, not an object, a member missing,
                                        extra or of the wrong type, repeated indices
400    ``coin.too_many_indices``        more than :data:`MAX_OPEN_INDICES` indices
400    ``coin.index_out_of_range``      an index not in ``[0, reasoning_tokens)``
400    ``coin.head_malformed`` etc.     the head format refuses a field (a request id
                                        or model with spaces), or another ``coin.*``
                                        refusal of :func:`~.provider.commit_tokens`
404    ``coin.commitment_unknown``      no commitment by that request id and
                                        capability: never committed, evicted (see
                                        below), or the capability is missing or wrong
404    ``coin.not_found``               another path
405    ``coin.method_not_allowed``      not POST (``Allow: POST``)
409    ``coin.commitment_exists``       a second commit of a request id still held
409    ``coin.commitment_opened``       an open with other indices than the first open
411    ``coin.length_required``         no ``Content-Length`` (chunked bodies are refused)
413    ``coin.body_too_large``          a body over :data:`MAX_BODY_BYTES`
413    ``coin.reasoning_too_long``      reasoning over :data:`MAX_REASONING_TOKENS`
415    ``coin.unsupported_media_type``  a ``Content-Type`` other than application/json
500    ``coin.internal``                a bug; the message says nothing more
====== ================================ ==============================================

Rules the server keeps:

- Openings reveal token ids of the hidden reasoning, so only the holder of the offer may ask
  for them: each commitment gets a random capability (128 bits), carried as the ``c`` query
  parameter of its offer's ``openings_url``. An open without it, or with another, answers 404
  exactly as an unknown request id does.
- A commitment opens one set of indices: the first valid open fixes it, repeating that open
  returns the same answer (a retry is safe), and any other set is refused (409). An auditor
  gets the challenge it drew, not the whole reasoning piecewise.
- Commitments live in memory only, least recently used first out, bounded by count
  (:data:`MAX_COMMITMENTS`) and by committed tokens (:data:`MAX_HELD_TOKENS`; a commitment
  holds about 300 bytes a token). An evicted commitment answers 404 like an unknown one, and
  its request id may be committed again; a restart forgets every commitment. Auditors should
  open within seconds of the response, so the bounds only matter under heavy load.
- Reasoning, prompt and answer texts are never logged nor echoed in an error; a failure
  never sends a traceback. The log has request ids, token counts and status codes.
- Commits run one at a time (the embedding engine is not shared between threads); opens run
  concurrently.

It listens on loopback unless told otherwise: put it behind the provider's TLS proxy and pass
``public_url`` so that offers name the address clients reach.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from tallystick.verifier.canonical import parse_json
from tallystick.verifier.checkpoint import NoteSigner

# The wire format is not exported from tallystick.verifier.coin yet.
from tallystick.verifier.coin import (
    MAX_SKETCH_BYTES,
    SKETCH_ENTRY_BYTES,
    CoinOffer,
    ReportedUsage,
    openings_to_json,
)
from tallystick.verifier.errors import MalformedInput, TallystickError

from .embedding import EmbeddingEngine
from .provider import DEFAULT_BLOCK_SIZE, Commitment, commit_tokens
from .tokenizer import Tokenizer

__all__ = [
    "COMMIT_PATH",
    "MAX_BODY_BYTES",
    "MAX_COMMITMENTS",
    "MAX_HELD_TOKENS",
    "MAX_OPEN_INDICES",
    "MAX_REASONING_TOKENS",
    "OPEN_PATH",
    "ProviderServer",
]

_log = logging.getLogger(__name__)

#: Where the provider's glue posts each response's hidden reasoning.
COMMIT_PATH: Final = "/coin/v1/commit"
#: Where auditors post challenged indices (the offer's ``openings_url``).
OPEN_PATH: Final = "/coin/v1/open"
#: Commitments held in memory, at most (least recently used evicted first).
MAX_COMMITMENTS: Final = 10_000
#: Committed reasoning tokens held in memory, at most: about 4.5 GB at ~280 bytes a token
#: (measured: leaves, tree and sketch of a 3,883-token dev trace, CPU engine, cl100k_base).
MAX_HELD_TOKENS: Final = 16_000_000
#: Largest request body: reasoning traces run to a few hundred KB of text.
MAX_BODY_BYTES: Final = 8 << 20
#: Most reasoning tokens one commit takes: what the largest offer sketch can carry.
MAX_REASONING_TOKENS: Final = MAX_SKETCH_BYTES // SKETCH_ENTRY_BYTES
#: Most indices one open takes: a few hundred is a normal challenge, and 4,096 openings are
#: about 8 MB of JSON.
MAX_OPEN_INDICES: Final = 4096
#: Seconds a connection may sit idle or trickle a request before it is dropped.
READ_TIMEOUT_S: Final = 30.0
#: Random bytes of a commitment's open capability.
_CAPABILITY_BYTES: Final = 16

_COMMIT_KEYS: Final = frozenset({"request_id", "model", "prompt", "reasoning", "answer"})
_USAGE_KEYS: Final = ("input", "output", "reasoning", "cached")
_OPEN_KEYS: Final = frozenset({"request_id", "indices"})


class _HttpError(Exception):
    """An answer other than 200, with its ``coin.*`` code and a message safe to send."""

    def __init__(self, status: HTTPStatus, code: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.close = close


def _bad_request(message: str, code: str = "coin.request_malformed") -> _HttpError:
    return _HttpError(HTTPStatus.BAD_REQUEST, code, message)


@dataclass
class _Held:
    """A commitment, the capability that opens it, and the indices its first open fixed."""

    commitment: Commitment
    capability: str
    opened: frozenset[int] | None = None


def _object(body: bytes, required: frozenset[str], optional: frozenset[str]) -> dict[str, Any]:
    try:
        document = parse_json(body, max_bytes=MAX_BODY_BYTES)
    except MalformedInput as exc:
        raise _bad_request(f"body is not strict JSON ({exc.code})") from None
    if not isinstance(document, dict):
        raise _bad_request("body must be a JSON object")
    extra = sorted(set(document) - required - optional)
    missing = sorted(required - set(document))
    if extra or missing:
        raise _bad_request(f"unexpected members {extra}, missing {missing}")
    return document


def _text(document: Mapping[str, Any], name: str, *, nonempty: bool = False) -> str:
    value = document[name]
    if not isinstance(value, str) or (nonempty and not value):
        raise _bad_request(f"{name} must be a{' non-empty' if nonempty else ''} string")
    return value


def _usage(value: object) -> ReportedUsage | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(_USAGE_KEYS):
        raise _bad_request(f"reported_usage must be null or an object of {list(_USAGE_KEYS)}")
    for name in _USAGE_KEYS:
        figure = value[name]
        if figure is not None and (isinstance(figure, bool) or not isinstance(figure, int)):
            raise _bad_request(f"reported_usage.{name} must be an integer or null")
    try:
        return ReportedUsage(*(value[name] for name in _USAGE_KEYS))
    except MalformedInput as exc:
        raise _bad_request(exc.detail, exc.code) from None


def _indices(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(index, int) and not isinstance(index, bool) for index in value
    ):
        raise _bad_request("indices must be an array of integers")
    if len(value) > MAX_OPEN_INDICES:
        raise _bad_request(
            f"at most {MAX_OPEN_INDICES} indices can be opened at once", "coin.too_many_indices"
        )
    if len(set(value)) != len(value):
        raise _bad_request("indices must be distinct")
    return tuple(value)


class ProviderServer:
    """The CoIn provider server, in a background thread (see the module docstring).

    ``ProviderServer(engine, tokenizer, signer).start()`` serves on ``127.0.0.1`` at a free
    port; ``with`` starts and closes it. ``url`` is its base URL; offers name ``open_url``.

    **Parameters:**

    - ``engine``, ``tokenizer``: embed and tokenize the reasoning (:func:`~.provider.commit`).
    - ``signer``: the provider's note key; its name is each head's origin, its ``vkey`` goes
      into every offer.
    - ``host``, ``port``: where to listen (port 0: a free one). A host other than loopback
      exposes the server to the network: put TLS in front of it.
    - ``public_url``: the base URL clients reach the server at (behind a proxy), for the
      offers' ``openings_url``; default ``url``.
    - ``block_size``: tokens per block (default 256, what the packaged calibration expects).
    - ``max_commitments``, ``max_held_tokens``: the memory bounds.

    :raises OSError: the address cannot be bound.
    :raises MalformedInput: a ``public_url`` that is not an absolute http(s) URL without a
        query (``coin.offer_malformed``).
    """

    def __init__(
        self,
        engine: EmbeddingEngine,
        tokenizer: Tokenizer,
        signer: NoteSigner,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        public_url: str | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_commitments: int = MAX_COMMITMENTS,
        max_held_tokens: int = MAX_HELD_TOKENS,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.signer = signer
        self.block_size = block_size
        self.max_commitments = max_commitments
        self.max_held_tokens = max_held_tokens
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._held_tokens = 0
        self._committing: set[str] = set()
        self._lock = threading.Lock()  # guards _held, _held_tokens, _committing
        self._engine_lock = threading.Lock()
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        if public_url is not None:  # fail before binding if offers could not carry it
            CoinOffer("x", signer.vkey, b"", public_url.rstrip("/") + OPEN_PATH)
            if urlsplit(public_url).query:
                raise MalformedInput(
                    "public_url must not have a query", code="coin.offer_malformed"
                )
        self._http = server_class((host, port), _handler_for(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="coin-provider", daemon=True
        )
        self._public_url = (public_url or self.url).rstrip("/")

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ProviderServer:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port. Held commitments are dropped."""
        if self._thread.is_alive():
            self._http.shutdown()
        self._http.server_close()
        with self._lock:
            self._held.clear()
            self._held_tokens = 0

    def __enter__(self) -> ProviderServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """``http://host:port``, where the server listens."""
        host, port = self._http.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def commit_url(self) -> str:
        """Where the provider's glue posts commits."""
        return f"{self.url}{COMMIT_PATH}"

    @property
    def open_url(self) -> str:
        """``public_url`` (default ``url``) + the open path; each offer's ``openings_url`` adds
        its commitment's capability."""
        return f"{self._public_url}{OPEN_PATH}"

    @property
    def held(self) -> int:
        """How many commitments are held now."""
        with self._lock:
            return len(self._held)

    # -- the two calls -----------------------------------------------------------------------
    def handle_commit(self, body: bytes, query: str = "") -> dict[str, Any]:
        """``POST /coin/v1/commit``: commit, hold, return the offer."""
        document = _object(body, _COMMIT_KEYS, frozenset({"reported_usage"}))
        request_id = _text(document, "request_id", nonempty=True)
        model = _text(document, "model", nonempty=True)
        prompt, answer = _text(document, "prompt"), _text(document, "answer")
        reasoning_ids = self.tokenizer.encode(_text(document, "reasoning"))
        usage = _usage(document.get("reported_usage"))
        if len(reasoning_ids) > MAX_REASONING_TOKENS:
            raise _HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "coin.reasoning_too_long",
                f"reasoning has {len(reasoning_ids)} tokens, at most {MAX_REASONING_TOKENS}",
            )
        with self._lock:
            if request_id in self._held or request_id in self._committing:
                raise _HttpError(
                    HTTPStatus.CONFLICT,
                    "coin.commitment_exists",
                    "this request id is already committed",
                )
            self._committing.add(request_id)
        try:
            started = time.monotonic()
            with self._engine_lock:
                commitment = commit_tokens(
                    self.engine,
                    self.tokenizer,
                    reasoning_ids=reasoning_ids,
                    prompt=prompt,
                    answer=answer,
                    request_id=request_id,
                    model=model,
                    reported_usage=usage,
                    signer=self.signer,
                    block_size=self.block_size,
                )
            capability = secrets.token_urlsafe(_CAPABILITY_BYTES)
            with self._lock:
                self._hold(request_id, _Held(commitment, capability))
        except TallystickError as exc:
            raise _bad_request(exc.detail, exc.code) from None
        finally:
            with self._lock:
                self._committing.discard(request_id)
        _log.info(
            "committed %s: %d reasoning tokens in %.0f ms",
            request_id,
            commitment.head.reasoning_tokens,
            (time.monotonic() - started) * 1000,
        )
        offer = CoinOffer(
            head_note=commitment.head_note,
            provider_vkey=self.signer.vkey,
            sketch=commitment.sketch,
            openings_url=f"{self.open_url}?c={capability}",
        )
        return {"offer": offer.to_json()}

    def handle_open(self, body: bytes, query: str = "") -> dict[str, Any]:
        """``POST /coin/v1/open?c=<capability>``: the openings of the challenged indices and
        the sketch key."""
        document = _object(body, _OPEN_KEYS, frozenset())
        request_id = _text(document, "request_id", nonempty=True)
        indices = _indices(document["indices"])
        given = parse_qs(query).get("c", [])
        with self._lock:
            held = self._held.get(request_id)
            if (
                held is None
                or len(given) != 1
                or not hmac.compare_digest(given[0].encode(), held.capability.encode())
            ):
                raise _HttpError(
                    HTTPStatus.NOT_FOUND,
                    "coin.commitment_unknown",
                    "no commitment for this request id and capability",
                )
            self._held.move_to_end(request_id)
            size = held.commitment.head.reasoning_tokens
            outside = [index for index in indices if not 0 <= index < size]
            if outside:
                raise _bad_request(
                    f"index {outside[0]} is not in [0, {size})", "coin.index_out_of_range"
                )
            if held.opened is not None and held.opened != frozenset(indices):
                raise _HttpError(
                    HTTPStatus.CONFLICT,
                    "coin.commitment_opened",
                    "this commitment was already opened at other indices",
                )
            held.opened = frozenset(indices)
        openings, key = held.commitment.answer_challenge(indices)
        _log.info("opened %s: %d leaves", request_id, len(openings))
        return openings_to_json(openings, key)

    def _hold(self, request_id: str, held: _Held) -> None:
        """Hold a new commitment and evict the least recently used past the bounds (the
        newest always stays). Caller holds ``_lock``."""
        self._held[request_id] = held
        self._held_tokens += held.commitment.head.reasoning_tokens
        while len(self._held) > 1 and (
            len(self._held) > self.max_commitments or self._held_tokens > self.max_held_tokens
        ):
            evicted_id, evicted = self._held.popitem(last=False)
            self._held_tokens -= evicted.commitment.head.reasoning_tokens
            _log.info("evicted %s", evicted_id)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _handler_for(app: ProviderServer) -> type[BaseHTTPRequestHandler]:
    routes = {COMMIT_PATH: app.handle_commit, OPEN_PATH: app.handle_open}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tallystick-coin/1"
        sys_version = ""
        timeout = READ_TIMEOUT_S

        def do_POST(self) -> None:
            target = urlsplit(self.path)
            route = routes.get(target.path)
            try:
                if route is None:
                    raise _HttpError(HTTPStatus.NOT_FOUND, "coin.not_found", "no such path")
                body = self._read_body()
                self._send(HTTPStatus.OK, route(body, target.query))
            except _HttpError as exc:
                self._send(exc.status, _error_body(exc.code, exc.message), close=exc.close)
            except TallystickError as exc:  # a coin.* refusal; its message quotes no text
                self._send(HTTPStatus.BAD_REQUEST, _error_body(exc.code, exc.detail))
            except (TimeoutError, ConnectionError):
                self.close_connection = True  # the client went away mid-request
            except Exception as exc:
                # Never a traceback, nor an exception's text (it could quote the input).
                _log.error("internal error on %s: %s", self.path, type(exc).__name__)
                self._send(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    _error_body("coin.internal", "internal error"),
                    close=True,
                )

        def _not_post(self) -> None:
            if urlsplit(self.path).path in routes:
                status, code = HTTPStatus.METHOD_NOT_ALLOWED, "coin.method_not_allowed"
                message = "use POST"
            else:
                status, code, message = HTTPStatus.NOT_FOUND, "coin.not_found", "no such path"
            self._send(status, _error_body(code, message), close=True, allow=True)

        do_GET = do_PUT = do_DELETE = do_PATCH = _not_post  # noqa: N815

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding") is not None:
                raise _HttpError(
                    HTTPStatus.LENGTH_REQUIRED,
                    "coin.length_required",
                    "send a Content-Length; chunked bodies are not accepted",
                    close=True,
                )
            media = self.headers.get("Content-Type")
            if media is not None and media.split(";")[0].strip().lower() != "application/json":
                raise _HttpError(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    "coin.unsupported_media_type",
                    "the body must be application/json",
                    close=True,
                )
            length_text = self.headers.get("Content-Length")
            if length_text is None:
                raise _HttpError(
                    HTTPStatus.LENGTH_REQUIRED,
                    "coin.length_required",
                    "send a Content-Length",
                    close=True,
                )
            if not length_text.isdigit() or not length_text.isascii():
                raise _HttpError(
                    HTTPStatus.BAD_REQUEST,
                    "coin.request_malformed",
                    "Content-Length is not a number",
                    close=True,
                )
            length = int(length_text)
            if length > MAX_BODY_BYTES:
                raise _HttpError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "coin.body_too_large",
                    f"the body is over {MAX_BODY_BYTES} bytes",
                    close=True,
                )
            body = self.rfile.read(length)
            if len(body) != length:
                raise ConnectionError("short body")
            return body

        def _send(
            self,
            status: HTTPStatus,
            document: dict[str, Any],
            *,
            close: bool = False,
            allow: bool = False,
        ) -> None:
            payload = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if allow:
                self.send_header("Allow", "POST")
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(payload)

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """http.server's own refusals (a bad request line, an unknown method), as JSON."""
            status = HTTPStatus(code)
            self._send(
                status,
                _error_body("coin.http_error", message or status.phrase),
                close=True,
            )

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            # Method, path and status only: no body, and no query (it holds capabilities).
            _log.debug("%s %s %s", self.command, urlsplit(self.path).path, code)

        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("%s %s", self.address_string(), format % args)

    return Handler
