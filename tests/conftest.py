"""Shared fixtures. Vectors are data, opened one way: :func:`load_vectors`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
#: External conformance vectors live beside the checkout (../shared), never copied in.
SHARED_VECTORS = Path(
    os.environ.get("TALLYSTICK_SHARED_VECTORS", REPO.parent / "shared" / "data" / "vectors")
)
#: Tallystick's own golden vectors, checked in.
OWN_VECTORS = REPO / "tests" / "vectors"


def vector_path(family: str, name: str = "") -> Path:
    """Path of an external vector file or folder; fails loudly if the data is missing."""
    path = SHARED_VECTORS / family / name
    if not path.exists():
        raise FileNotFoundError(
            f"conformance vectors missing: {path} (is ../shared beside the checkout?)"
        )
    return path


def load_vectors(family: str, pattern: str, parser: Callable[[Path], Any]) -> list[Any]:
    """Every file of ``family`` matching ``pattern``, parsed, as pytest params with file-name ids.

    Fails loudly when nothing matches, so a moved vector folder cannot silently skip tests.
    """
    base = vector_path(family)
    files = sorted(base.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no vectors match {family}/{pattern}")
    return [pytest.param(parser(path), id=str(path.relative_to(base))) for path in files]
