"""Shared fixtures for the CoIn tests: one real engine per session, real dev traces, real keys.

The engine runs on the CPU (the reference path) with its per-token cache in a session
temporary folder, so tests never touch ``~/.cache``. The dev traces are read where they live,
``../shared/data/reasoning_traces/dev.jsonl`` beside the checkout (``$TALLYSTICK_COIN_TRACES``
overrides it); they are never copied into the repository.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tallystick.daemon.coin.embedding import EmbeddingEngine
from tallystick.daemon.coin.tokenizer import Tokenizer, default_tokenizer
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.keys import PrivateKey

REPO = Path(__file__).resolve().parents[2]
DEV_TRACES = Path(
    os.environ.get(
        "TALLYSTICK_COIN_TRACES", REPO.parent / "shared" / "data" / "reasoning_traces" / "dev.jsonl"
    )
)
#: The origin line test heads are signed under.
TEST_ORIGIN = "provider.test/coin"


@pytest.fixture(scope="session")
def coin_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session engine's per-token cache folder (empty at the start of the session)."""
    return tmp_path_factory.mktemp("coin-cache")


@pytest.fixture(scope="session")
def engine(coin_cache_dir: Path) -> EmbeddingEngine:
    """The one CPU float32 engine of the session (loading the model takes seconds)."""
    return EmbeddingEngine(device="cpu", cache_dir=coin_cache_dir)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """cl100k_base, offline."""
    return default_tokenizer()


@pytest.fixture(scope="session")
def dev_traces() -> list[dict[str, Any]]:
    """All 300 dev traces (id, domain, prompt, reasoning, answer, ...), in file order."""
    if not DEV_TRACES.is_file():
        raise FileNotFoundError(
            f"dev traces missing: {DEV_TRACES} (is ../shared beside the checkout?)"
        )
    with DEV_TRACES.open(encoding="utf-8") as handle:
        traces = [json.loads(line) for line in handle if line.strip()]
    assert len(traces) >= 10, "dev traces file is nearly empty"
    return traces


@pytest.fixture(scope="session")
def short_traces(dev_traces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Six short dev traces: the three shortest math and the three shortest safety ones
    (by reasoning length; a few hundred tokens each, so tests stay fast)."""
    picked: list[dict[str, Any]] = []
    for domain in ("math", "safety"):
        in_domain = [trace for trace in dev_traces if trace["domain"] == domain]
        picked.extend(sorted(in_domain, key=lambda trace: len(trace["reasoning"]))[:3])
    assert len(picked) == 6, "expected math and safety traces in the dev set"
    return picked


@pytest.fixture
def make_signer() -> Callable[[str], NoteSigner]:
    """A factory of fresh Ed25519 note signers: ``make_signer(origin)``."""

    def make(origin: str = TEST_ORIGIN) -> NoteSigner:
        return NoteSigner(origin, PrivateKey.generate())

    return make


@pytest.fixture(scope="session")
def signer() -> NoteSigner:
    """The session's provider signer, named :data:`TEST_ORIGIN` (signers are immutable)."""
    return NoteSigner(TEST_ORIGIN, PrivateKey.generate())
