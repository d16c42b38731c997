"""The JSON a cooperating provider's CoIn audit sends over HTTP: offers, openings, the prompt.

Unstable machinery behind :mod:`tallystick.verifier.coin`. The flow::

    provider's API response  {..., "tallystick_coin": {"format": "tallystick.coin.offer/v1",
                              "head_note", "provider_vkey", "sketch", "openings_url",
                              "attestation"?}}
    client's sidecar         verifies and logs head_note, draws the challenge
    POST openings_url        {"request_id": str, "indices": [int, ...]}
    provider answers         {"openings": [{"index", "leaf", "salt", "token_id", "proof"}, ...],
                              "sketch_key": base64}

A streamed chat completion carries the offer as the same top-level member of a chunk: the last
chunk that carries one wins, normally the final one (the ``usage`` chunk when
``stream_options.include_usage`` is set, else the last content chunk); the answer the head
binds is the single choice's ``delta.content`` strings concatenated in order, the prompt
:func:`prompt_text` of the messages as for a whole response.

The optional ``attestation`` is the provider's hardware evidence (:class:`Attestation`), which
the sidecar records by digest and does not verify.

Byte strings are standard base64 with padding (RFC 4648 §4); the opening object is exactly the
one :class:`~tallystick.verifier.coin.Evidence` documents carry. :func:`prompt_text` defines
the prompt whose SHA-256 the head binds for chat-style requests. :class:`HttpOpener` is the
auditor's client for ``openings_url``: standard library only, so the SDK can use it without
torch or grpc.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from ..canonical import parse_json
from ..checkpoint import NoteVerifier
from ..errors import MalformedInput, TallystickError, UnsupportedVersion
from .coin_challenge import Opening
from .coin_leaf import Leaf, require_uint
from .encoding import b64_decode, b64_encode

#: The ``format`` member of every v1 offer.
OFFER_FORMAT: Final = "tallystick.coin.offer/v1"
#: The top-level member of an OpenAI-compatible response body (or stream chunk) that carries
#: the offer.
OFFER_MEMBER: Final = "tallystick_coin"
#: Longest ``openings_url`` accepted (browsers' and proxies' common limit is about 2 KB).
MAX_URL_CHARS: Final = 2048
#: Longest ``head_note`` an offer may carry: a head is about 600 bytes plus signature lines.
MAX_HEAD_NOTE_CHARS: Final = 16 << 10
#: Largest n-gram sketch an offer may carry: 8 bytes a reasoning token, so 512 Ki tokens.
MAX_SKETCH_BYTES: Final = 4 << 20
#: Largest attestation document an offer may carry: an Intel TDX quote with its certificate
#: chain is about 5 KB, an NVIDIA confidential-computing report a few KB.
MAX_ATTESTATION_BYTES: Final = 32 << 10
#: Largest offer text :meth:`CoinOffer.from_json` parses: the base64 sketch and attestation
#: document, and the head.
MAX_OFFER_BYTES: Final = (
    MAX_SKETCH_BYTES * 4 // 3 + MAX_ATTESTATION_BYTES * 4 // 3 + 2 * MAX_HEAD_NOTE_CHARS
)
#: Largest openings response :class:`HttpOpener` reads: an opening is about 1.2 KB of JSON plus
#: 46 bytes a proof node (under 2 KB at a million leaves), and an audit opens a few hundred
#: leaves; 16 MiB leaves room for the 4,096 a provider server opens at most.
MAX_OPENINGS_BYTES: Final = 16 << 20
#: Largest error body :class:`HttpOpener` reads from a failed request.
_MAX_ERROR_BYTES: Final = 64 << 10
#: Seconds :class:`HttpOpener` waits for the provider by default.
DEFAULT_OPEN_TIMEOUT_S: Final = 30.0

_OPENING_KEYS = frozenset({"index", "leaf", "salt", "token_id", "proof"})
_OFFER_KEYS = frozenset({"format", "head_note", "provider_vkey", "sketch", "openings_url"})
_OPTIONAL_OFFER_KEYS = frozenset({"attestation"})
_ATTESTATION_KEYS = frozenset({"format", "document"})
# A lowercase token naming the kind of document, such as "intel-tdx-quote".
_ATTESTATION_FORMAT = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_OPENINGS_KEYS = frozenset({"openings", "sketch_key"})
_PROMPT_SEPARATOR = "\n\n"
_USER_AGENT = "tallystick-coin/1"


class OpeningsUnavailable(TallystickError):
    """The provider's ``openings_url`` did not answer with openings: a network failure, a
    timeout, a redirect or an HTTP error status.

    ``status`` is the HTTP status when one came back (else None); ``remote_code`` is the
    ``error.code`` the provider's JSON error body named, if any. It is the provider's word,
    not one of Tallystick's stable codes.
    """

    default_code = "coin.openings_unavailable"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        remote_code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.remote_code = remote_code


# -- openings ---------------------------------------------------------------------------------


def opening_to_json(opening: Opening) -> dict[str, Any]:
    """The JSON object of one opening:
    ``{"index": int, "leaf": b64, "salt": b64, "token_id": int, "proof": [b64, ...]}``."""
    return {
        "index": opening.index,
        "leaf": b64_encode(opening.leaf.to_bytes()),
        "salt": b64_encode(opening.salt),
        "token_id": opening.token_id,
        "proof": [b64_encode(node) for node in opening.proof],
    }


def _opening_error(message: str) -> MalformedInput:
    return MalformedInput(f"opening: {message}", code="coin.opening_malformed")


def _b64_field(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise _opening_error(f"{what} must be a base64 string")
    try:
        return b64_decode(value, what=what)
    except MalformedInput as exc:
        raise _opening_error(f"{what} is not standard base64") from exc


def _uint32_field(value: object, what: str) -> int:
    try:
        return require_uint(value, what)
    except MalformedInput as exc:
        raise _opening_error(f"{what} must be an integer in [0, 2^32)") from exc


def opening_from_json(value: object) -> Opening:
    """Parse one opening object strictly: exactly its five members, with their types.

    Only the form is checked here; :func:`~tallystick.verifier.coin.verify_opening` checks the
    salt and proof sizes and that the opening is the committed leaf.

    :raises MalformedInput: not an object, a member missing or extra, an index or token id that
        is not a uint32, or a byte string that is not standard padded base64
        (``coin.opening_malformed``); leaf bytes that are not a v1 leaf
        (``coin.leaf_malformed``).
    :raises UnsupportedVersion: a leaf of another version (``coin.leaf_version``).
    """
    if not isinstance(value, dict):
        raise _opening_error("must be an object")
    if set(value) != _OPENING_KEYS:
        extra, missing = sorted(set(value) - _OPENING_KEYS), sorted(_OPENING_KEYS - set(value))
        raise _opening_error(f"unexpected members {extra}, missing {missing}")
    proof = value["proof"]
    if not isinstance(proof, list):
        raise _opening_error("proof must be an array")
    return Opening(
        index=_uint32_field(value["index"], "index"),
        leaf=Leaf.from_bytes(_b64_field(value["leaf"], "leaf")),
        salt=_b64_field(value["salt"], "salt"),
        token_id=_uint32_field(value["token_id"], "token_id"),
        proof=tuple(_b64_field(node, "proof node") for node in proof),
    )


# -- offers -----------------------------------------------------------------------------------


def _url_problem(url: object) -> str | None:
    """Why ``url`` is not an absolute http(s) URL we will POST to, or None when it is."""
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL_CHARS:
        return f"must be a URL of 1-{MAX_URL_CHARS} characters"
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        return "must be printable ASCII without spaces"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http or https URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.fragment:
        return "must not have a fragment"
    return None


def _offer_error(message: str) -> MalformedInput:
    return MalformedInput(f"offer: {message}", code="coin.offer_malformed")


def _attestation_error(message: str) -> MalformedInput:
    return MalformedInput(f"attestation: {message}", code="coin.offer_malformed")


@dataclass(frozen=True, slots=True)
class Attestation:
    """Evidence from outside the provider's software that the reasoning ran where it says
    (coin.md §4.9), such as an Intel TDX quote or an NVIDIA confidential-computing report::

        {"format": "intel-tdx-quote", "document": base64}

    ``format`` names the kind of document: a lowercase token of 1-64 characters,
    ``[a-z0-9][a-z0-9._-]*`` (``"intel-tdx-quote"``, ``"nvidia-cc-report"``). ``document`` is
    its bytes, 1 to :data:`MAX_ATTESTATION_BYTES`.

    Tallystick does NOT verify it: checking a quote needs the hardware vendor's roots and
    revocation data, which an offline verifier does not hold, so it stays a claim. The sidecar
    logs its format and the SHA-256 of the document in the head entry (:meth:`digest_json`),
    not the document: that binds the document the provider presented at audit time, which the
    customer keeps, so whoever can verify it later checks it against the logged digest.

    :raises MalformedInput: on construction, a format that is not such a token, or a document
        that is not bytes of 1 to :data:`MAX_ATTESTATION_BYTES` (``coin.offer_malformed``).
    """

    format: str
    document: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.format, str) or not _ATTESTATION_FORMAT.fullmatch(self.format):
            raise _attestation_error(
                "format must be a lowercase token of 1-64 characters ([a-z0-9][a-z0-9._-]*)"
            )
        if not isinstance(self.document, bytes) or not 0 < len(self.document) <= (
            MAX_ATTESTATION_BYTES
        ):
            raise _attestation_error(f"document must be 1-{MAX_ATTESTATION_BYTES} bytes")

    def __repr__(self) -> str:
        return f"Attestation({self.format!r}, {len(self.document)} bytes)"

    @property
    def sha256(self) -> str:
        """The document's SHA-256, lowercase hex."""
        return hashlib.sha256(self.document).hexdigest()

    def digest_json(self) -> dict[str, str]:
        """What the log records of it, in the head entry: ``{"format": str, "sha256": hex}``."""
        return {"format": self.format, "sha256": self.sha256}

    @staticmethod
    def digest_from_json(value: object) -> dict[str, str]:
        """Check a logged :meth:`digest_json` record: exactly ``format`` (as above) and
        ``sha256`` (64 lowercase hex digits).

        :raises MalformedInput: anything else (``coin.offer_malformed``).
        """
        if (
            not isinstance(value, Mapping)
            or set(value) != {"format", "sha256"}
            or not isinstance(value["format"], str)
            or not _ATTESTATION_FORMAT.fullmatch(value["format"])
            or not isinstance(value["sha256"], str)
            or not _SHA256_HEX.fullmatch(value["sha256"])
        ):
            raise _attestation_error('expected exactly {"format": token, "sha256": hex}')
        return {"format": value["format"], "sha256": value["sha256"]}

    def to_json(self) -> dict[str, str]:
        """The offer's ``attestation`` object: ``{"format": str, "document": base64}``."""
        return {"format": self.format, "document": b64_encode(self.document)}

    @classmethod
    def from_json(cls, value: object) -> Attestation:
        """Parse an ``attestation`` object strictly: exactly its two members.

        :raises MalformedInput: not an object of exactly ``format`` and ``document``, a
            document that is not standard padded base64, or a bad field
            (``coin.offer_malformed``).
        """
        if not isinstance(value, Mapping) or set(value) != _ATTESTATION_KEYS:
            raise _attestation_error('expected exactly {"format": str, "document": base64}')
        document = value["document"]
        if not isinstance(document, str) or len(document) > MAX_ATTESTATION_BYTES * 4 // 3 + 4:
            raise _attestation_error(
                f"document must be base64 of at most {MAX_ATTESTATION_BYTES} bytes"
            )
        raw = b64_decode(document, what="attestation: document", code="coin.offer_malformed")
        return cls(format=value["format"], document=raw)


@dataclass(frozen=True, slots=True)
class CoinOffer:
    """What a cooperating provider attaches to an API response so that the client's sidecar
    can audit its hidden reasoning (OpenAI-compatible bodies carry it as the top-level member
    ``"tallystick_coin"``)::

        {"format": "tallystick.coin.offer/v1", "head_note": str, "provider_vkey": str,
         "sketch": base64, "openings_url": str,
         "attestation": {"format": str, "document": base64}}    # optional

    ``head_note`` is the provider's signed commitment head, ``provider_vkey`` the C2SP verifier
    key that signed it, ``sketch`` the n-gram sketch the head binds (its ``sketch`` line; empty
    when the reasoning is shorter than one n-gram), and ``openings_url`` where the auditor
    POSTs the challenged indices. ``attestation`` is the provider's hardware evidence when it
    offers some (:class:`Attestation`; the member is absent, never null, when it does not),
    recorded by digest and not verified. The offer is a claim, not evidence: the auditor MUST
    verify the head and the sketch against it (and SHOULD pin the provider's key) before
    trusting anything in it.

    :raises MalformedInput: on construction, a field of the wrong type, an empty or oversized
        head note, a vkey that does not parse, a sketch over :data:`MAX_SKETCH_BYTES`, an
        ``openings_url`` that is not an absolute http(s) URL without credentials or fragment,
        or an ``attestation`` that is neither None nor an :class:`Attestation`
        (``coin.offer_malformed``).
    """

    head_note: str
    provider_vkey: str
    sketch: bytes
    openings_url: str
    attestation: Attestation | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.head_note, str) or not 0 < len(self.head_note) <= (
            MAX_HEAD_NOTE_CHARS
        ):
            raise _offer_error(f"head_note must be a string of 1-{MAX_HEAD_NOTE_CHARS} characters")
        if not isinstance(self.provider_vkey, str):
            raise _offer_error("provider_vkey must be a string")
        try:
            NoteVerifier.from_vkey(self.provider_vkey)
        except MalformedInput as exc:
            raise _offer_error(f"provider_vkey is not a note verifier key ({exc.code})") from exc
        if not isinstance(self.sketch, bytes) or len(self.sketch) > MAX_SKETCH_BYTES:
            raise _offer_error(f"sketch must be at most {MAX_SKETCH_BYTES} bytes")
        problem = _url_problem(self.openings_url)
        if problem is not None:
            raise _offer_error(f"openings_url {problem}")
        if self.attestation is not None and not isinstance(self.attestation, Attestation):
            raise _offer_error("attestation must be an Attestation or None")

    def __repr__(self) -> str:
        attested = "" if self.attestation is None else f", attestation={self.attestation!r}"
        return (
            f"CoinOffer(openings_url={self.openings_url!r}, sketch={len(self.sketch)} bytes"
            f"{attested})"
        )

    def to_json(self) -> dict[str, Any]:
        """The offer object, with its ``format`` member (and ``attestation`` only when set)."""
        document: dict[str, Any] = {
            "format": OFFER_FORMAT,
            "head_note": self.head_note,
            "provider_vkey": self.provider_vkey,
            "sketch": b64_encode(self.sketch),
            "openings_url": self.openings_url,
        }
        if self.attestation is not None:
            document["attestation"] = self.attestation.to_json()
        return document

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | str | bytes) -> CoinOffer:
        """Parse an offer strictly: a decoded JSON object, or its JSON text.

        :raises MalformedInput: text that is not JSON, not an object, a member missing or
            extra, a sketch or attestation document that is not standard padded base64, or a
            bad field (``coin.offer_malformed``).
        :raises UnsupportedVersion: a ``format`` string other than ``tallystick.coin.offer/v1``
            (``coin.offer_version``).
        """
        if isinstance(value, str | bytes):
            try:
                value = parse_json(value, max_bytes=MAX_OFFER_BYTES)
            except MalformedInput as exc:
                raise _offer_error(f"not JSON ({exc.code})") from exc
        if not isinstance(value, Mapping):
            raise _offer_error("must be an object")
        if isinstance(value.get("format"), str) and value["format"] != OFFER_FORMAT:
            raise UnsupportedVersion(
                f"offer: format is not {OFFER_FORMAT}", code="coin.offer_version"
            )
        if not _OFFER_KEYS <= set(value) <= _OFFER_KEYS | _OPTIONAL_OFFER_KEYS:
            extra = sorted(set(value) - _OFFER_KEYS - _OPTIONAL_OFFER_KEYS)
            missing = sorted(_OFFER_KEYS - set(value))
            raise _offer_error(f"unexpected members {extra}, missing {missing}")
        if value["format"] != OFFER_FORMAT:
            raise _offer_error("format must be a string")
        sketch = value["sketch"]
        if not isinstance(sketch, str) or len(sketch) > MAX_SKETCH_BYTES * 4 // 3 + 4:
            raise _offer_error(f"sketch must be base64 of at most {MAX_SKETCH_BYTES} bytes")
        try:
            raw_sketch = b64_decode(sketch, what="offer: sketch", code="coin.offer_malformed")
        except MalformedInput as exc:
            raise _offer_error("sketch is not standard base64") from exc
        attested = "attestation" in value  # absent means none; null is malformed
        return cls(
            head_note=value["head_note"],
            provider_vkey=value["provider_vkey"],
            sketch=raw_sketch,
            openings_url=value["openings_url"],
            attestation=Attestation.from_json(value["attestation"]) if attested else None,
        )

    @classmethod
    def from_response(cls, body: Mapping[str, Any]) -> CoinOffer | None:
        """The offer in an API response body's ``"tallystick_coin"`` member; None without one.

        :raises MalformedInput: the member is present but is not a valid offer
            (``coin.offer_malformed``).
        :raises UnsupportedVersion: another offer format (``coin.offer_version``).
        """
        if not isinstance(body, Mapping) or OFFER_MEMBER not in body:
            return None
        return cls.from_json(body[OFFER_MEMBER])


# -- the prompt -------------------------------------------------------------------------------


def _prompt_error(message: str) -> MalformedInput:
    return MalformedInput(f"prompt: {message}", code="coin.prompt_malformed")


def prompt_text(messages: str | Sequence[Mapping[str, Any]]) -> str:
    """THE prompt a CoIn head binds (``prompt sha256:...``) for a chat-style request.

    The text pieces of the messages, in order, joined by ``"\\n\\n"``:

    - a message whose ``content`` is a string gives that string;
    - a message whose ``content`` is a list gives the ``"text"`` member of each part that has
      a string one (OpenAI ``text`` and ``input_text`` parts, Anthropic ``text`` blocks), in
      order; other parts (images, audio, tool calls) give nothing;
    - a missing or null ``content`` gives nothing;
    - empty pieces are skipped, so ``""``, ``null`` and ``[]`` contents all mean the same.

    Roles and names are not part of it. A bare string (a Responses-style ``input``) is its own
    prompt. Anthropic's top-level ``system`` prompt is not a message: pass it first as
    ``{"role": "system", "content": system}``. The provider and the client MUST both compute
    the prompt with this function (or its exact equivalent), or the head will not verify.

    :raises MalformedInput: ``messages`` not a string or a list of objects, a ``content`` that
        is not a string, list or null, a part that is not an object, or a part's ``"text"``
        that is not a string (``coin.prompt_malformed``).
    """
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, Sequence) or isinstance(messages, bytes | bytearray):
        raise _prompt_error("messages must be a string or a list of message objects")
    pieces: list[str] = []
    for position, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise _prompt_error(f"message {position} is not an object")
        content = message.get("content")
        if content is None:
            continue
        if isinstance(content, str):
            pieces.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, Mapping):
                    raise _prompt_error(f"message {position}: a content part is not an object")
                text = part.get("text")
                if text is not None and not isinstance(text, str):
                    raise _prompt_error(f"message {position}: a part's text is not a string")
                if text is not None:
                    pieces.append(text)
        else:
            raise _prompt_error(f"message {position}: content must be a string, list or null")
    return _PROMPT_SEPARATOR.join(piece for piece in pieces if piece)


# -- the openings response --------------------------------------------------------------------


def _response_error(message: str) -> MalformedInput:
    return MalformedInput(f"openings response: {message}", code="coin.response_malformed")


def openings_to_json(openings: Sequence[Opening], sketch_key: bytes) -> dict[str, Any]:
    """The provider's answer to a challenge:
    ``{"openings": [opening, ...], "sketch_key": base64}``."""
    return {
        "openings": [opening_to_json(opening) for opening in openings],
        "sketch_key": b64_encode(sketch_key),
    }


def openings_from_json(value: object) -> tuple[list[Opening], bytes]:
    """Parse the answer to a challenge strictly: ``(openings, sketch_key)``, in the order sent.

    Sizes and the match with the challenge are the auditor's checks (``Auditor.finish``).

    :raises MalformedInput: not an object of exactly ``openings`` and ``sketch_key``, a
        ``sketch_key`` that is not standard padded base64 (``coin.response_malformed``), or a
        malformed opening (see :func:`opening_from_json`).
    :raises UnsupportedVersion: an opened leaf of another version (``coin.leaf_version``).
    """
    if not isinstance(value, dict) or set(value) != _OPENINGS_KEYS:
        raise _response_error('expected exactly {"openings": [...], "sketch_key": base64}')
    openings, key = value["openings"], value["sketch_key"]
    if not isinstance(openings, list):
        raise _response_error("openings must be an array")
    if not isinstance(key, str):
        raise _response_error("sketch_key must be a base64 string")
    try:
        sketch_key = b64_decode(key, what="sketch_key", code="coin.response_malformed")
    except MalformedInput as exc:
        raise _response_error("sketch_key is not standard base64") from exc
    return [opening_from_json(item) for item in openings], sketch_key


# -- the auditor's HTTP client ----------------------------------------------------------------


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: openings come from the URL the offer named, or not at all
    (urllib would turn a redirected POST into a GET to wherever the response points)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> None:
        return None


def _remote_error(body: bytes) -> tuple[str | None, str]:
    """The ``(code, message)`` of a ``{"error": {"code", "message"}}`` body, printable and
    truncated; ``(None, "")`` for anything else."""
    try:
        error = json.loads(body.decode("utf-8")).get("error")
        code, message = error.get("code"), error.get("message", "")
    except (ValueError, AttributeError, RecursionError):
        return None, ""
    if not isinstance(code, str) or not isinstance(message, str):
        return None, ""

    def clean(text: str, limit: int) -> str:
        return "".join(c if c.isprintable() else "?" for c in text[:limit])

    return clean(code, 64), clean(message, 200)


class HttpOpener:
    """The auditor's side of ``openings_url``:
    ``opener(indices) -> (list[Opening], sketch_key)``, the shape ``Auditor.audit`` and the
    SDK's ``audit_commitment`` call.

    Each call POSTs ``{"request_id", "indices"}`` as JSON and parses the answer with
    :func:`openings_from_json` (at most :data:`MAX_OPENINGS_BYTES`). Redirects are never
    followed. It does not check the openings against the head; the auditor does::

        offer = CoinOffer.from_response(body)
        outcome = auditor.audit(head_note=offer.head_note, provider_vkey=offer.provider_vkey,
                                sketch=offer.sketch, opener=HttpOpener(offer, request_id),
                                prompt=prompt_text(messages), answer=answer)

        audit_commitment(client, ..., opener=HttpOpener(offer, request_id))  # through the SDK

    **Parameters:**

    - ``offer_or_url``: a :class:`CoinOffer` (its ``openings_url``) or the URL itself.
    - ``request_id``: the head's ``request_id``, which names the commitment to the provider.
    - ``timeout``: seconds to wait for the provider (to connect, and for each read).

    :raises MalformedInput: on construction, a URL that is not an absolute http(s) URL
        (``coin.url_invalid``), a request id that is not a non-empty string or a timeout that
        is not positive (``coin.input_invalid``).
    """

    __slots__ = ("_opener", "request_id", "timeout", "url")

    def __init__(
        self,
        offer_or_url: CoinOffer | str,
        request_id: str,
        *,
        timeout: float = DEFAULT_OPEN_TIMEOUT_S,
    ) -> None:
        url = offer_or_url.openings_url if isinstance(offer_or_url, CoinOffer) else offer_or_url
        problem = _url_problem(url)
        if problem is not None:
            raise MalformedInput(f"openings url {problem}", code="coin.url_invalid")
        if not isinstance(request_id, str) or not request_id:
            raise MalformedInput(
                "opener: request_id must be a non-empty string", code="coin.input_invalid"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise MalformedInput("opener: timeout must be positive", code="coin.input_invalid")
        self.url: str = url
        self.request_id = request_id
        self.timeout = float(timeout)
        self._opener = urllib.request.build_opener(_RefuseRedirects())

    def __repr__(self) -> str:
        return f"HttpOpener({self.url!r}, request_id={self.request_id!r})"

    def __call__(self, indices: Sequence[int]) -> tuple[list[Opening], bytes]:
        """Ask the provider to open ``indices``: the openings in the order it sent them, and
        the sketch key it revealed with them.

        :raises OpeningsUnavailable: no answer came back: a connection failure, a timeout, a
            redirect or an HTTP error status (``coin.openings_unavailable``; ``status`` and
            ``remote_code`` say more).
        :raises MalformedInput: an index that is not a uint32 (``coin.bad_int``); an answer
            that is not JSON within the size limit (``coin.response_malformed``), or that
            :func:`openings_from_json` refuses.
        :raises UnsupportedVersion: an opened leaf of another version (``coin.leaf_version``).
        """
        wanted = [require_uint(index, "opener: index") for index in indices]
        # S310: the URL's scheme is http or https, checked on construction.
        request = urllib.request.Request(  # noqa: S310
            self.url,
            data=json.dumps({"request_id": self.request_id, "indices": wanted}).encode(),
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": _USER_AGENT,
            },
            method="POST",
        )
        body = self._post(request)
        if len(body) > MAX_OPENINGS_BYTES:
            raise _response_error(f"larger than {MAX_OPENINGS_BYTES} bytes")
        try:
            document = parse_json(body, max_bytes=MAX_OPENINGS_BYTES)
        except MalformedInput as exc:
            raise _response_error(f"not JSON ({exc.code})") from exc
        return openings_from_json(document)

    def _post(self, request: urllib.request.Request) -> bytes:
        where = f"openings: {self.url}"
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                data: bytes = response.read(MAX_OPENINGS_BYTES + 1)
                return data
        except urllib.error.HTTPError as exc:
            try:
                error_body = exc.read(_MAX_ERROR_BYTES)
            except (OSError, http.client.HTTPException):
                error_body = b""
            finally:
                exc.close()
            remote_code, remote_message = _remote_error(error_body)
            detail = f" {remote_code}: {remote_message}" if remote_code else ""
            raise OpeningsUnavailable(
                f"{where} answered HTTP {exc.code}{detail}",
                status=exc.code,
                remote_code=remote_code,
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise OpeningsUnavailable(
                f"{where} unreachable: {type(exc).__name__}: {reason}"
            ) from exc
