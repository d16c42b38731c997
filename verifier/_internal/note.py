"""The C2SP signed-note text layer: note text checks, the text/signature split, signature lines.

Unstable machinery behind :mod:`tallystick.verifier.checkpoint`. Every failure raises
:class:`CheckpointInvalid` with the ``code`` the caller passes (``note.malformed`` or
``checkpoint.malformed``), so a checkpoint's format errors say "checkpoint".
"""

from __future__ import annotations

import hashlib
import re

from ..errors import CheckpointInvalid, MalformedInput
from .encoding import b64_decode, b64_encode

#: Every signature line starts with an em dash (U+2014) and a space (c2sp.org/signed-note).
SIGNATURE_PREFIX = "\u2014 "
#: The Go reference (golang.org/x/mod/sumdb/note) rejects more; C2SP requires accepting 16.
MAX_SIGNATURES = 100
#: A checkpoint is a few hundred bytes; this bounds the work a hostile note can cause.
MAX_NOTE_BYTES = 1 << 20
#: C2SP: no ASCII control characters (below U+0020) other than newline.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")

RawSignature = tuple[str, int, bytes]
"""A parsed signature line: key name, key id, and the signature bytes after the key id."""


def key_id(name: str, key_type: int, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` as a big-endian uint32."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([key_type]) + public_key)
    return int.from_bytes(digest.digest()[:4], "big")


def is_valid_key_name(name: object) -> bool:
    """Non-empty, valid UTF-8, no Unicode spaces, no ``+`` and no control characters."""
    if not isinstance(name, str) or not name or "+" in name or _CONTROL.search(name):
        return False
    if any(char.isspace() for char in name):
        return False
    return _is_utf8_encodable(name)


def _is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _decode_note(raw: object, *, code: str) -> str:
    """The whole signed note as text, after the byte-level checks (size, UTF-8, controls).

    :raises CheckpointInvalid: not str/bytes, too large, invalid UTF-8 or a control character.
    """
    if isinstance(raw, bytes | bytearray):
        if len(raw) > MAX_NOTE_BYTES:
            raise CheckpointInvalid("note: larger than 1 MiB", code=code)
        try:
            note = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointInvalid("note: not valid UTF-8", code=code) from exc
    elif isinstance(raw, str):
        if len(raw) > MAX_NOTE_BYTES:
            raise CheckpointInvalid("note: larger than 1 MiB", code=code)
        try:
            encoded_size = len(raw.encode("utf-8"))
        except UnicodeEncodeError as exc:  # lone surrogates
            raise CheckpointInvalid("note: not valid UTF-8", code=code) from exc
        if encoded_size > MAX_NOTE_BYTES:
            raise CheckpointInvalid("note: larger than 1 MiB", code=code)
        note = raw
    else:
        raise CheckpointInvalid("note: must be text", code=code)
    if _CONTROL.search(note):
        raise CheckpointInvalid("note: contains a control character", code=code)
    return note


def check_text(text: object, *, code: str) -> str:
    """A note text as C2SP requires it: UTF-8, ending in a newline, no control characters.

    :raises CheckpointInvalid: otherwise (with ``code``).
    """
    if not isinstance(text, str) or not text.endswith("\n"):
        raise CheckpointInvalid("note text: must be a string ending in a newline", code=code)
    return _decode_note(text, code=code)


def parse_signature_line(line: str, *, code: str) -> RawSignature:
    """``— <name> <base64(key id || signature)>`` without its newline.

    :raises CheckpointInvalid: any other shape, a bad name, non-canonical base64, or fewer than
        five signature bytes.
    """
    if not line.startswith(SIGNATURE_PREFIX):
        raise CheckpointInvalid("note: signature line must start with an em dash", code=code)
    name, separator, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not separator or not is_valid_key_name(name):
        raise CheckpointInvalid("note: signature line has no valid key name", code=code)
    try:
        blob = b64_decode(encoded, what="note signature", code=code)
    except MalformedInput as exc:
        raise CheckpointInvalid("note: signature is not standard base64", code=code) from exc
    if len(blob) < 5:
        raise CheckpointInvalid("note: signature shorter than a key id and one byte", code=code)
    return name, int.from_bytes(blob[:4], "big"), blob[4:]


def parse_note(raw: object, *, code: str) -> tuple[str, list[RawSignature]]:
    """Split a signed note into its text and signatures (c2sp.org/signed-note "Format").

    The text ends at the *last* empty line, so it may itself contain empty lines.

    :raises CheckpointInvalid: with ``code``, for anything that is not a well-formed signed note.
    """
    note = _decode_note(raw, code=code)
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointInvalid("note: no empty line before the signatures", code=code)
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise CheckpointInvalid("note: must end with a newline-terminated signature", code=code)
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointInvalid(f"note: more than {MAX_SIGNATURES} signatures", code=code)
    return text, [parse_signature_line(line, code=code) for line in lines]


def format_signature_line(name: str, key_id_value: int, signature: bytes) -> str:
    """The signature line, without its newline."""
    return f"{SIGNATURE_PREFIX}{name} {b64_encode(key_id_value.to_bytes(4, 'big') + signature)}"
