"""Strict base64 and hex codecs.

The standard library's decoders accept padding in unpadded forms, ignore
non-alphabet characters unless asked not to, and accept non-canonical trailing
bits. Every one of those lets two different strings mean the same bytes, so a
signature or key could be altered without detection. These wrappers reject
them all and raise :class:`MalformedInput`.
"""

from __future__ import annotations

import base64
import binascii
import re

from ..errors import MalformedInput

_B64URL_UNPADDED = re.compile(r"[A-Za-z0-9_-]*")
_B64_STD_PADDED = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_HEX = re.compile(r"[0-9a-fA-F]*")


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 §5), as HDP, JWT and Tallystick keys write it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, what: str = "value", code: str = "input.bad_base64") -> bytes:
    """Decode unpadded base64url, rejecting padding, foreign characters and non-canonical bits."""
    if not isinstance(text, str) or _B64URL_UNPADDED.fullmatch(text) is None or len(text) % 4 == 1:
        raise MalformedInput(f"{what}: not unpadded base64url", code=code)
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedInput(f"{what}: not unpadded base64url", code=code) from exc
    if b64url_encode(data) != text:
        raise MalformedInput(f"{what}: non-canonical base64url", code=code)
    return data


def b64_encode(data: bytes) -> str:
    """Standard padded base64 (RFC 4648 §4), as C2SP notes and Merkle vectors write it."""
    return base64.b64encode(data).decode("ascii")


def b64_decode(text: str, *, what: str = "value", code: str = "input.bad_base64") -> bytes:
    """Decode standard padded base64, rejecting foreign characters and non-canonical bits."""
    if not isinstance(text, str) or _B64_STD_PADDED.fullmatch(text) is None:
        raise MalformedInput(f"{what}: not standard base64", code=code)
    data = base64.b64decode(text, validate=True)
    if b64_encode(data) != text:
        raise MalformedInput(f"{what}: non-canonical base64", code=code)
    return data


def hex_decode(text: str, *, what: str = "value", code: str = "input.bad_hex") -> bytes:
    """Decode an even-length hex string (either case)."""
    if not isinstance(text, str) or len(text) % 2 or _HEX.fullmatch(text) is None:
        raise MalformedInput(f"{what}: not hex", code=code)
    return bytes.fromhex(text)
