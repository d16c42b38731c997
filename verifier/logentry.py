"""The entries of Tallystick's append-only log: their exact bytes, and what each kind holds.

An entry's bytes are the RFC 8785 canonical JSON of::

    {"v": 1, "index": n, "prev": "<hex leaf hash of entry n-1, or 64 zeros>",
     "kind": "call" | "delegation" | "revocation" | "audit" | "key_rotation",
     "time_ms": <ms since the epoch>, "agent": "<identity from the transport>",
     "body": {...}}

Those bytes are both a link of the hash chain (the next entry names their leaf
hash in ``prev``) and an RFC 9162 leaf (``merkle.hash_leaf(bytes)``), stored
verbatim so both can be recomputed offline. :meth:`LogEntry.from_bytes` refuses
bytes that are not exactly canonical, so an entry has one encoding only.

``body`` is validated per kind: a ``call`` carries :class:`CallBody` (usage as the
OpenTelemetry GenAI conventions name it, unknown as null, never 0); the other
kinds carry protocol objects (tokens, reports) that their own modules verify.
A ``delegation`` body is a :class:`DelegationBody`: the token as issued, in its
own format, and the issuer's public key, so an offline verifier can check the
token's signatures (:mod:`~tallystick.verifier.logbundle` does). A ``revocation``
body written by tallystickd is a :class:`RevocationBody` (checked with its
``from_body``; :class:`LogEntry` itself does not insist on either model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from json.encoder import encode_basestring
from typing import Any, Final, Self, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from . import canonical
from .canonical import _stdlib_canonical, canonicalize, parse_json
from .errors import KeyInvalid, MalformedInput
from .keys import PublicKey
from .merkle import hash_leaf

__all__ = [
    "ENTRY_VERSION",
    "GENESIS_PREV",
    "MAX_ENTRY_BYTES",
    "CallBody",
    "Cost",
    "DelegationAction",
    "DelegationBody",
    "DelegationFormat",
    "EntryKind",
    "LogEntry",
    "Recount",
    "RevocationBody",
    "Usage",
]

ENTRY_VERSION: Final = 1
#: ``prev`` of entry 0: there is no entry before it.
GENESIS_PREV: Final = bytes(32)
#: An entry must fit a C2SP tile entry bundle (uint16 length prefix).
MAX_ENTRY_BYTES: Final = 65_535

_MALFORMED = "log.entry_malformed"
_HEX64_LENGTH = 64


class EntryKind(StrEnum):
    """What an entry records."""

    CALL = "call"
    DELEGATION = "delegation"
    REVOCATION = "revocation"
    AUDIT = "audit"
    KEY_ROTATION = "key_rotation"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_Count = StrictInt | None


class Usage(_Strict):
    """Token counts of one call; ``None`` means the provider did not say (never 0)."""

    input_tokens: _Count = Field(default=None, ge=0, le=canonical.MAX_SAFE_INTEGER)
    cache_read_input_tokens: _Count = Field(default=None, ge=0, le=canonical.MAX_SAFE_INTEGER)
    cache_creation_input_tokens: _Count = Field(default=None, ge=0, le=canonical.MAX_SAFE_INTEGER)
    output_tokens: _Count = Field(default=None, ge=0, le=canonical.MAX_SAFE_INTEGER)
    reasoning_output_tokens: _Count = Field(default=None, ge=0, le=canonical.MAX_SAFE_INTEGER)

    @model_validator(mode="after")
    def _subsets(self) -> Usage:
        # usage_accounting.md §7.1: cache counts are subsets of input, reasoning of output.
        cached = (self.cache_read_input_tokens or 0) + (self.cache_creation_input_tokens or 0)
        if self.input_tokens is not None and cached > self.input_tokens:
            raise ValueError("cache_read + cache_creation input tokens exceed input_tokens")
        reasoning = self.reasoning_output_tokens
        if (
            self.output_tokens is not None
            and reasoning is not None
            and reasoning > self.output_tokens
        ):
            raise ValueError("reasoning_output_tokens exceed output_tokens")
        return self


class Cost(_Strict):
    """A cost as a decimal string (never a float) and an ISO 4217 currency code."""

    amount: StrictStr = Field(pattern=r"^(0|[1-9][0-9]{0,15})(\.[0-9]{1,12})?$")
    currency: StrictStr = Field(pattern=r"^[A-Z]{3}$")

    def decimal(self) -> Decimal:
        """The amount as a :class:`~decimal.Decimal`."""
        try:
            return Decimal(self.amount)
        except InvalidOperation as exc:  # unreachable past the pattern; kept as a guard
            raise MalformedInput("cost: not a decimal", code=_MALFORMED) from exc


class Recount(_Strict):
    """The recording side's own count of the visible output text, beside the provider's.

    ``visible_output_tokens`` is compared with ``output_tokens - reasoning_output_tokens``; a
    difference is a billing finding. ``tokenizer`` names the encoding used (``cl100k_base``).
    """

    tokenizer: StrictStr = Field(min_length=1, max_length=64)
    visible_output_tokens: StrictInt = Field(ge=0, le=canonical.MAX_SAFE_INTEGER)


class CallBody(_Strict):
    """One LLM or tool call. Prompt and response appear only as SHA-256 hashes."""

    provider: StrictStr = Field(min_length=1, max_length=128)
    model: StrictStr = Field(min_length=1, max_length=256)
    request_id: StrictStr | None = Field(default=None, max_length=256)
    usage: Usage
    cost: Cost | None = None
    latency_ms: StrictInt | None = Field(default=None, ge=0, le=canonical.MAX_SAFE_INTEGER)
    request_sha256: StrictStr | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    response_sha256: StrictStr | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    #: The HDP token id or AIP jti that authorised the call, when one was presented.
    delegation_id: StrictStr | None = Field(default=None, max_length=256)
    principal: StrictStr | None = Field(default=None, max_length=256)
    session_id: StrictStr | None = Field(default=None, max_length=256)
    #: ``gen_ai.operation.name``: ``chat``, ``text_completion``, ``execute_tool``, ...
    operation: StrictStr | None = Field(default=None, min_length=1, max_length=64)
    #: ``gen_ai.tool.name``, for ``execute_tool``.
    tool_name: StrictStr | None = Field(default=None, min_length=1, max_length=256)
    #: The provider's service tier from the response; it selects the price table.
    service_tier: StrictStr | None = Field(default=None, min_length=1, max_length=64)
    recount: Recount | None = None


class DelegationFormat(StrEnum):
    """The token format a ``delegation`` entry stores."""

    HDP = "hdp"
    AIP_COMPACT = "aip-compact"
    AIP_CHAINED = "aip-chained"


class DelegationAction(StrEnum):
    """What the sidecar did to produce the stored token."""

    #: A new root: an HDP root token or an AIP compact or chained token.
    ISSUE = "issue"
    #: An HDP token with one more hop.
    EXTEND = "extend"
    #: An AIP chained token with one more, narrower, delegation block.
    ATTENUATE = "attenuate"


#: An Ed25519 public key as ``.pub`` files write it: unpadded base64url of the 32 raw bytes.
_B64URL_KEY_PATTERN = r"^[A-Za-z0-9_-]{43}$"


class DelegationBody(_Strict):
    """A ``delegation`` entry's body: a token exactly as issued, and the key that verifies it.

    ``token`` is the HDP token's JSON object for ``hdp`` and the token text for the AIP
    formats (a compact token starts with ``eyJ``, a chained one does not). ``issuer_key``
    is the root issuer's public key (the HDP root signer, the AIP root key); ``audience``
    is the ``aud`` a compact AIP token was issued for, if any.
    """

    format: DelegationFormat
    action: DelegationAction
    token: dict[str, Any] | StrictStr
    issuer_key: StrictStr = Field(pattern=_B64URL_KEY_PATTERN)
    audience: StrictStr | None = Field(default=None, min_length=1, max_length=256)

    @field_validator("issuer_key")
    @classmethod
    def _key_decodes(cls, value: str) -> str:
        try:
            PublicKey.from_text(value)
        except KeyInvalid as exc:  # e.g. non-canonical trailing bits
            raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _token_fits_format(self) -> Self:
        if self.format is DelegationFormat.HDP:
            if not isinstance(self.token, dict):
                raise ValueError("an hdp token must be a JSON object")
        elif not isinstance(self.token, str) or not self.token:
            raise ValueError("an aip token must be a non-empty string")
        elif self.token.startswith("eyJ") != (self.format is DelegationFormat.AIP_COMPACT):
            raise ValueError("aip-compact tokens start with eyJ and aip-chained tokens do not")
        if self.audience is not None and self.format is not DelegationFormat.AIP_COMPACT:
            raise ValueError("audience applies to aip-compact tokens only")
        return self

    @property
    def public_key(self) -> PublicKey:
        """The issuer's public key."""
        return PublicKey.from_text(self.issuer_key)

    @classmethod
    def from_body(cls, body: Any) -> Self:
        """Validate a ``delegation`` entry's body.

        :raises MalformedInput: the body does not fit (``log.entry_malformed``).
        """
        return _validate(cls, body, "delegation")


class RevocationBody(_Strict):
    """A ``revocation`` entry's body: the id of a token the sidecar revoked, and why.

    ``token_id`` is the id the token was issued under: the HDP ``header.token_id``, the
    compact AIP ``jti``, or ``sha256:`` + base64url SHA-256 of a chained AIP token's text.
    """

    format: DelegationFormat
    token_id: StrictStr = Field(min_length=1, max_length=256)
    reason: StrictStr | None = Field(default=None, max_length=1024)

    @classmethod
    def from_body(cls, body: Any) -> Self:
        """Validate a ``revocation`` entry's body.

        :raises MalformedInput: the body does not fit (``log.entry_malformed``).
        """
        return _validate(cls, body, "revocation")


_Model = TypeVar("_Model", bound=_Strict)


def _validate(model: type[_Model], body: Any, what: str) -> _Model:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = " ".join([f"{what} body", ".".join(str(part) for part in first["loc"])]).rstrip()
        raise MalformedInput(f"log entry: {where}: {first['msg']}", code=_MALFORMED) from exc


def _check_fields(index: Any, prev: Any, kind: Any, time_ms: Any, agent: Any) -> None:
    if type(index) is not int or not 0 <= index <= canonical.MAX_SAFE_INTEGER:
        raise MalformedInput("log entry: index out of range", code=_MALFORMED)
    if type(time_ms) is not int or not 0 <= time_ms <= canonical.MAX_SAFE_INTEGER:
        raise MalformedInput("log entry: time_ms out of range", code=_MALFORMED)
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise MalformedInput("log entry: prev must be 32 bytes", code=_MALFORMED)
    if not isinstance(kind, EntryKind):
        raise MalformedInput("log entry: unknown kind", code=_MALFORMED)
    if not isinstance(agent, str) or not 0 < len(agent) <= 256:
        raise MalformedInput("log entry: agent must be 1-256 characters", code=_MALFORMED)


def _check_body(kind: EntryKind, body: Any) -> None:
    if not isinstance(body, dict):
        raise MalformedInput("log entry: body must be an object", code=_MALFORMED)
    if kind is EntryKind.CALL:
        _validate(CallBody, body, "call")


@dataclass(frozen=True, slots=True)
class _ValidatedCall:
    """A ``call`` body that :class:`CallBody` validated, as its canonical bytes.

    Private to tallystick: made only by :func:`_validated_call` from a :class:`CallBody`
    instance, so :meth:`LogEntry._call_bytes` may skip the body checks the constructor runs.
    """

    canonical: bytes


def _model_json_writer(model: type[_Strict]) -> Callable[[_Strict], str]:
    """A function writing an instance of ``model`` as RFC 8785 JSON text, every field present.

    ``model_dump`` and then an encoder walk build a dict per body and cost four times this on
    the daemon's hottest path. The text equals ``_stdlib_canonical(value.model_dump(mode="json"))``
    for models whose fields hold only nested such models, ``None``, ``str`` and validated ``int``
    (tests/test_logentry_fast_path.py checks it against the public constructor); member names are
    written in sorted order and strings with the stdlib's ``encode_basestring``, the escaping
    RFC 8785 specifies.
    """
    nested: dict[str, Callable[[_Strict], str]] = {}
    for name, info in model.model_fields.items():
        for part in (info.annotation, *get_args(info.annotation)):
            if isinstance(part, type) and issubclass(part, _Strict):
                nested[name] = _model_json_writer(part)
    members = tuple(
        (name, encode_basestring(name) + ":", nested.get(name))
        for name in sorted(model.model_fields)
    )

    def write(value: _Strict) -> str:
        parts = []
        for name, key, write_nested in members:
            field = getattr(value, name)
            if field is None:
                parts.append(key + "null")
            elif write_nested is not None:
                parts.append(key + write_nested(field))
            elif type(field) is str:
                parts.append(key + encode_basestring(field))
            else:  # a StrictInt, range-checked by the model
                parts.append(key + str(field))
        return "{" + ",".join(parts) + "}"

    return write


_write_call_json: Final = _model_json_writer(CallBody)


def _validated_call(body: CallBody) -> _ValidatedCall:
    """The canonical bytes of a validated call body, for :meth:`LogEntry._call_bytes`.

    Validation already refused lone surrogates, so the text always encodes.
    """
    if type(body) is not CallBody:  # a subclass could add fields or validators of its own
        raise MalformedInput("log entry: call body must be a CallBody", code=_MALFORMED)
    return _ValidatedCall(_write_call_json(body).encode("utf-8"))


#: The bytes of a call entry around its variable parts, in canonical (sorted) member order.
_CALL_ENTRY_FORMAT: Final = (
    b'{"agent":%b,"body":%b,"index":%d,"kind":"call","prev":"%b","time_ms":%d,"v":'
    + str(ENTRY_VERSION).encode("ascii")
    + b"}"
)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One log entry. Build with the constructor; parse stored bytes with :meth:`from_bytes`.

    :raises MalformedInput: on construction, for fields out of range or a body that does
        not fit its kind (code ``log.entry_malformed``).
    """

    index: int
    prev: bytes
    kind: EntryKind
    time_ms: int
    agent: str
    body: dict[str, Any]

    def __post_init__(self) -> None:
        _check_fields(self.index, self.prev, self.kind, self.time_ms, self.agent)
        _check_body(self.kind, self.body)

    @staticmethod
    def _call_bytes(
        index: int, prev: bytes, time_ms: int, agent: str, call: _ValidatedCall
    ) -> bytes:
        """``LogEntry(index, prev, EntryKind.CALL, time_ms, agent, body).to_bytes()`` for the
        body ``call`` was made from, without validating that body again or walking it.

        Private to tallystick (tallystickd's writer). ``call`` comes from
        :func:`_validated_call`; the other fields get the constructor's checks.

        :raises MalformedInput: as the constructor and :meth:`to_bytes`.
        """
        _check_fields(index, prev, EntryKind.CALL, time_ms, agent)
        if type(call) is not _ValidatedCall:
            raise MalformedInput("log entry: call body was not validated", code=_MALFORMED)
        raw = _CALL_ENTRY_FORMAT % (
            _stdlib_canonical(agent),
            call.canonical,
            index,
            prev.hex().encode("ascii"),
            time_ms,
        )
        if len(raw) > MAX_ENTRY_BYTES:
            raise MalformedInput(
                f"log entry: larger than {MAX_ENTRY_BYTES} bytes", code="log.entry_too_large"
            )
        return raw

    def to_bytes(self) -> bytes:
        """The canonical bytes: the hash-chain link and the Merkle leaf.

        :raises MalformedInput: the entry is larger than :data:`MAX_ENTRY_BYTES`.
        """
        raw = canonicalize(
            {
                "v": ENTRY_VERSION,
                "index": self.index,
                "prev": self.prev.hex(),
                "kind": self.kind.value,
                "time_ms": self.time_ms,
                "agent": self.agent,
                "body": self.body,
            }
        )
        if len(raw) > MAX_ENTRY_BYTES:
            raise MalformedInput(
                f"log entry: larger than {MAX_ENTRY_BYTES} bytes", code="log.entry_too_large"
            )
        return raw

    @property
    def leaf_hash(self) -> bytes:
        """``SHA-256(0x00 || bytes)``: the RFC 9162 leaf hash, and the next entry's ``prev``."""
        return hash_leaf(self.to_bytes())

    @classmethod
    def from_bytes(cls, raw: bytes) -> LogEntry:
        """Parse stored entry bytes, which must be exactly canonical.

        :raises MalformedInput: ``log.entry_malformed`` (not an entry) or
            ``log.entry_not_canonical`` (an entry, but not in its one encoding).
        """
        if not isinstance(raw, bytes) or len(raw) > MAX_ENTRY_BYTES:
            raise MalformedInput("log entry: not bytes, or too large", code=_MALFORMED)
        data = parse_json(raw)
        if not isinstance(data, dict) or set(data) != {
            "v",
            "index",
            "prev",
            "kind",
            "time_ms",
            "agent",
            "body",
        }:
            raise MalformedInput("log entry: wrong members", code=_MALFORMED)
        if data["v"] != ENTRY_VERSION or type(data["v"]) is not int:
            raise MalformedInput(f"log entry: unsupported version {data['v']!r}", code=_MALFORMED)
        prev = data["prev"]
        if not isinstance(prev, str) or len(prev) != _HEX64_LENGTH or prev != prev.lower():
            raise MalformedInput(
                "log entry: prev must be 64 lowercase hex characters", code=_MALFORMED
            )
        try:
            prev_bytes = bytes.fromhex(prev)
            kind = EntryKind(data["kind"])
        except (ValueError, TypeError) as exc:
            raise MalformedInput("log entry: bad prev or kind", code=_MALFORMED) from exc
        entry = cls(data["index"], prev_bytes, kind, data["time_ms"], data["agent"], data["body"])
        if entry.to_bytes() != raw:
            raise MalformedInput(
                "log entry: bytes are not canonical", code="log.entry_not_canonical"
            )
        return entry
