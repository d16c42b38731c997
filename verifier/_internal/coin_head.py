"""The CoIn commitment head (coin.md §4.3): a C2SP signed note whose text binds the count.

Unstable machinery behind :mod:`tallystick.verifier.coin`. The note text, one field a line::

    tallystick.coin/v1
    <origin>
    request_id <id>
    model <provider model id>
    tokenizer <id>@<revision>
    embedder <id>@<revision> sha256:<weights hash>
    block_size <tokens>
    reasoning_tokens <m>
    reported_usage input=<n> output=<n> reasoning=<n> cached=<n>
    prompt sha256:<hex>
    answer sha256:<hex>
    root <base64 32 bytes>
    sketch sha256:<hex>           # optional: the n-gram sketch (coin_sketch), when kept
    time <unix seconds>

Identifiers are 1 to 256 visible ASCII characters without spaces; integers are canonical
decimal (no sign, no leading zeros); a usage count the provider did not report is ``-``;
hashes are lowercase hex. Parsing is strict: the text must be exactly what :meth:`to_text`
writes for the fields it parses to.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from ..checkpoint import NoteSigner, NoteVerifier, SignedNote, sign_note
from ..errors import CheckpointInvalid, MalformedInput, TallystickError, UnsupportedVersion
from .encoding import b64_decode, b64_encode

#: The first line of every v1 head text.
HEAD_FORMAT = "tallystick.coin/v1"
#: The auditor's challenge nonce: at least 128 bits, at most 64 bytes.
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64

_OTHER_FORMAT = re.compile(r"tallystick\.coin/v[0-9]{1,9}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,256}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_UINT32_LIMIT = 1 << 32
_UINT64_LIMIT = 1 << 64
_TIME_LIMIT = 1 << 63
_USAGE_FIELDS = ("input", "output", "reasoning", "cached")
_LINE_COUNT = 13


class CommitmentMismatch(TallystickError):
    """A well-formed, authentic head that disagrees with the bill or the delivered text:
    ``coin.usage_mismatch``, ``coin.answer_mismatch`` or ``coin.prompt_mismatch``."""

    default_code = "coin.mismatch"


def _malformed(message: str) -> MalformedInput:
    return MalformedInput(f"head: {message}", code="coin.head_malformed")


def _check_int(value: object, what: str, limit: int, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < limit:
        raise _malformed(f"{what} must be an integer in [{low}, {limit})")
    return value


def _parse_int(text: str, what: str, limit: int, low: int = 0) -> int:
    if _DECIMAL.fullmatch(text) is None:
        raise _malformed(f"{what} must be canonical decimal")
    return _check_int(int(text), what, limit, low)


def sha256_hex(text: str) -> str:
    """Lowercase hex SHA-256 of ``text`` as UTF-8: how the head binds the prompt and answer.

    :raises MalformedInput: text that is not encodable as UTF-8 (``coin.bad_text``).
    """
    try:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    except (AttributeError, UnicodeEncodeError) as exc:
        raise MalformedInput("text: must be a UTF-8 string", code="coin.bad_text") from exc


@dataclass(frozen=True, slots=True)
class ReportedUsage:
    """The usage the provider billed for the call; ``None`` where it reported no figure."""

    input: int | None
    output: int | None
    reasoning: int | None
    cached: int | None

    def __post_init__(self) -> None:
        for name in _USAGE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                _check_int(value, f"reported_usage.{name}", _UINT64_LIMIT)

    def to_text(self) -> str:
        """``input=<n> output=<n> reasoning=<n> cached=<n>``, ``-`` for a missing figure."""
        parts = []
        for name in _USAGE_FIELDS:
            value = getattr(self, name)
            parts.append(f"{name}={'-' if value is None else value}")
        return " ".join(parts)

    @classmethod
    def from_text(cls, text: str) -> ReportedUsage:
        """Parse :meth:`to_text`'s form, fields in that order.

        :raises MalformedInput: any other form (``coin.head_malformed``).
        """
        parts = text.split(" ")
        if len(parts) != len(_USAGE_FIELDS):
            raise _malformed("reported_usage needs input, output, reasoning and cached")
        values: list[int | None] = []
        for name, part in zip(_USAGE_FIELDS, parts, strict=True):
            key, sep, value = part.partition("=")
            if key != name or not sep:
                raise _malformed(f"reported_usage: expected {name}=<n>")
            values.append(
                None if value == "-" else _parse_int(value, f"reported_usage.{name}", _UINT64_LIMIT)
            )
        return cls(*values)


@dataclass(frozen=True, slots=True)
class CommitmentHead:
    """The fields a provider signs over its reasoning tree; building one checks each field."""

    origin: str
    request_id: str
    model: str
    tokenizer: str
    embedder: str
    embedder_sha256: str
    block_size: int
    reasoning_tokens: int
    reported_usage: ReportedUsage
    prompt_sha256: str
    answer_sha256: str
    root: bytes
    time_s: int
    #: The hex SHA-256 of the provider's n-gram sketch (:mod:`.coin_sketch`), when it keeps one.
    sketch_sha256: str | None = None

    def __post_init__(self) -> None:
        for name in ("origin", "request_id", "model", "tokenizer", "embedder"):
            value = getattr(self, name)
            if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
                raise _malformed(f"{name} must be 1-256 visible ASCII characters, no spaces")
        for name in ("embedder_sha256", "prompt_sha256", "answer_sha256", "sketch_sha256"):
            value = getattr(self, name)
            if name == "sketch_sha256" and value is None:
                continue
            if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
                raise _malformed(f"{name} must be 64 lowercase hex digits")
        _check_int(self.block_size, "block_size", _UINT32_LIMIT, low=1)
        _check_int(self.reasoning_tokens, "reasoning_tokens", _UINT32_LIMIT)
        _check_int(self.time_s, "time", _TIME_LIMIT)
        if not isinstance(self.reported_usage, ReportedUsage):
            raise _malformed("reported_usage must be a ReportedUsage")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise _malformed("root must be 32 bytes")

    def to_text(self) -> str:
        """The note text the provider signs: 13 lines (14 with a sketch), each ending in "\\n"."""
        lines = (
            HEAD_FORMAT,
            self.origin,
            f"request_id {self.request_id}",
            f"model {self.model}",
            f"tokenizer {self.tokenizer}",
            f"embedder {self.embedder} sha256:{self.embedder_sha256}",
            f"block_size {self.block_size}",
            f"reasoning_tokens {self.reasoning_tokens}",
            f"reported_usage {self.reported_usage.to_text()}",
            f"prompt sha256:{self.prompt_sha256}",
            f"answer sha256:{self.answer_sha256}",
            f"root {b64_encode(self.root)}",
            *(() if self.sketch_sha256 is None else (f"sketch sha256:{self.sketch_sha256}",)),
            f"time {self.time_s}",
        )
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_text(cls, text: str) -> CommitmentHead:
        """Parse a head note text (the part the signatures cover).

        :raises UnsupportedVersion: a first line ``tallystick.coin/<other>``
            (``coin.head_version``).
        :raises MalformedInput: anything else that :meth:`to_text` would not write
            (``coin.head_malformed``).
        """
        if not isinstance(text, str) or not text.endswith("\n"):
            raise _malformed("must be text ending in a newline")
        lines = text[:-1].split("\n")
        if lines[0] != HEAD_FORMAT:
            if _OTHER_FORMAT.fullmatch(lines[0]) is not None:
                raise UnsupportedVersion(
                    f"head: format {lines[0][:40]!r} is not {HEAD_FORMAT}", code="coin.head_version"
                )
            raise _malformed(f"first line must be {HEAD_FORMAT}")
        sketch: str | None = None
        if len(lines) == _LINE_COUNT + 1:  # the optional sketch line, just before time
            sketch = _sha256_field(_value(lines.pop(-2), "sketch"), "sketch")
        if len(lines) != _LINE_COUNT:
            raise _malformed(f"{len(lines)} lines, expected {_LINE_COUNT} or {_LINE_COUNT + 1}")
        fields = [_value(line, key) for line, key in zip(lines[2:], _KEYS, strict=True)]
        request_id, model, tokenizer, embedder_line, block_size, tokens = fields[:6]
        usage, prompt, answer, root, time_s = fields[6:]
        embedder, sep, weights = embedder_line.partition(" ")
        if not sep:
            raise _malformed("embedder line needs <id> sha256:<hex>")
        head = cls(
            origin=lines[1],
            request_id=request_id,
            model=model,
            tokenizer=tokenizer,
            embedder=embedder,
            embedder_sha256=_sha256_field(weights, "embedder"),
            block_size=_parse_int(block_size, "block_size", _UINT32_LIMIT, low=1),
            reasoning_tokens=_parse_int(tokens, "reasoning_tokens", _UINT32_LIMIT),
            reported_usage=ReportedUsage.from_text(usage),
            prompt_sha256=_sha256_field(prompt, "prompt"),
            answer_sha256=_sha256_field(answer, "answer"),
            root=_root(root),
            time_s=_parse_int(time_s, "time", _TIME_LIMIT),
            sketch_sha256=sketch,
        )
        # Whatever slipped through field by field (a stray space, say) cannot survive this.
        if head.to_text() != text:
            raise _malformed("not in canonical form")
        return head


_KEYS = (
    "request_id",
    "model",
    "tokenizer",
    "embedder",
    "block_size",
    "reasoning_tokens",
    "reported_usage",
    "prompt",
    "answer",
    "root",
    "time",
)


def _value(line: str, key: str) -> str:
    prefix = key + " "
    if not line.startswith(prefix):
        raise _malformed(f"expected a {key!r} line")
    return line[len(prefix) :]


def _sha256_field(text: str, what: str) -> str:
    if not text.startswith("sha256:") or _HEX64.fullmatch(text[7:]) is None:
        raise _malformed(f"{what} must be sha256:<64 lowercase hex digits>")
    return text[7:]


def _root(text: str) -> bytes:
    try:
        root = b64_decode(text, what="head root", code="coin.head_malformed")
    except MalformedInput as exc:
        raise _malformed("root is not standard base64") from exc
    if len(root) != 32:
        raise _malformed("root must be 32 bytes")
    return root


def sign_head(head: CommitmentHead, signer: NoteSigner) -> str:
    """The C2SP signed note of ``head``: its text, an empty line, ``signer``'s signature line.

    :raises MalformedInput: ``head`` is not a :class:`CommitmentHead` (``coin.head_malformed``).
    """
    if not isinstance(head, CommitmentHead):
        raise _malformed("expected a CommitmentHead")
    return sign_note(head.to_text(), signer)


def _parse_note(note: object) -> SignedNote:
    try:
        return SignedNote.from_text(note)  # type: ignore[arg-type]  # checked inside
    except CheckpointInvalid as exc:
        raise _malformed(f"not a signed note: {exc}") from exc


def parse_head(note: str) -> CommitmentHead:
    """The head a signed note carries, WITHOUT checking any signature: for reading fields of a
    head that is verified elsewhere (or about to be), never for trusting them.

    :raises MalformedInput: not a signed note carrying a v1 head (``coin.head_malformed``).
    :raises UnsupportedVersion: another head format (``coin.head_version``).
    """
    return CommitmentHead.from_text(_parse_note(note).text)


def verify_head(
    note: str,
    verifier: NoteVerifier,
    *,
    answer: str | None = None,
    prompt: str | None = None,
    reasoning_tolerance: int = 0,
) -> CommitmentHead:
    """The head, once its signature by ``verifier`` holds and it is consistent (coin.md §4.3).

    Steps: (1) a signed note; (2) ``verifier``'s signature on it verifies (other signatures,
    such as the sidecar's countersignature, are ignored here); (3) the text is a v1 head;
    (4) ``reported_usage.reasoning`` equals ``reasoning_tokens``, within
    ``reasoning_tolerance`` tokens for a provider that re-tokenizes (default 0: exact, and a
    missing figure never matches); (5) ``answer`` and ``prompt``, when given, hash to the
    committed values. ``reasoning_tokens`` equal to the tree size is checked with each
    opening (:func:`~tallystick.verifier.coin.verify_opening`).

    :raises MalformedInput: not a signed note or not a head (``coin.head_malformed``).
    :raises UnsupportedVersion: another head format (``coin.head_version``).
    :raises CheckpointInvalid: no valid signature by ``verifier``
        (``coin.head_signature_invalid``).
    :raises CommitmentMismatch: ``coin.usage_mismatch``, ``coin.answer_mismatch`` or
        ``coin.prompt_mismatch``.
    """
    if not isinstance(verifier, NoteVerifier):
        raise MalformedInput("head: verifier must be a NoteVerifier", code="coin.head_malformed")
    tolerance = _check_int(reasoning_tolerance, "reasoning_tolerance", _UINT32_LIMIT)
    signed = _parse_note(note)  # (1)
    try:
        verified = signed.verify([verifier])  # (2)
    except CheckpointInvalid as exc:
        raise CheckpointInvalid(
            f"head: no valid signature by {verifier.label}", code="coin.head_signature_invalid"
        ) from exc
    head = CommitmentHead.from_text(verified.text)  # (3)
    reported = head.reported_usage.reasoning  # (4)
    if reported is None or abs(reported - head.reasoning_tokens) > tolerance:
        raise CommitmentMismatch(
            f"head: reported reasoning usage {reported} is not the committed "
            f"{head.reasoning_tokens} tokens",
            code="coin.usage_mismatch",
        )
    for text, committed, what in (
        (answer, head.answer_sha256, "answer"),
        (prompt, head.prompt_sha256, "prompt"),
    ):  # (5)
        if text is not None and not hmac.compare_digest(sha256_hex(text), committed):
            raise CommitmentMismatch(
                f"head: the delivered {what} does not hash to the committed one",
                code=f"coin.{what}_mismatch",
            )
    return head


def challenge_seed(head_note: str, auditor_nonce: bytes) -> bytes:
    """``SHA-256("coin/challenge/v1" || head text || auditor_nonce)`` (coin.md §4.4).

    The head text is the signed part of the note (UTF-8), so a countersignature added on
    receipt does not move the challenge. Draw the nonce only after the signed head is held
    (and logged): a provider that could predict it could keep just the opened leaves honest.

    :raises MalformedInput: not a signed head note (``coin.head_malformed``), or a nonce that is
        not 16 to 64 bytes (``coin.bad_nonce``).
    """
    if not isinstance(auditor_nonce, bytes) or not (
        MIN_NONCE_BYTES <= len(auditor_nonce) <= MAX_NONCE_BYTES
    ):
        raise MalformedInput(
            f"challenge: nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes",
            code="coin.bad_nonce",
        )
    text = parse_head(head_note).to_text()  # the canonical text is the signed text
    return hashlib.sha256(b"coin/challenge/v1" + text.encode("utf-8") + auditor_nonce).digest()
