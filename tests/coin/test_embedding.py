"""The embedding engine and the tokenizer: the real model, the real vocabulary, real files."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tallystick.daemon.coin.embedding import (
    EMBEDDING_DIM,
    MODEL_ID,
    EmbeddingEngine,
    TokenEmbeddingCache,
    default_cache_dir,
    model_path,
)
from tallystick.daemon.coin.tokenizer import (
    DEFAULT_TOKENIZER_ID,
    TiktokenTokenizer,
    Tokenizer,
)
from tallystick.verifier.coin import quantize, within_tolerance
from tallystick.verifier.errors import MalformedInput, TallystickError


def fresh_tokenizer(tokenizer: Tokenizer) -> TiktokenTokenizer:
    """cl100k_base under a never-seen id: its token cache starts empty (the key holds the id)."""
    assert isinstance(tokenizer, TiktokenTokenizer)
    return TiktokenTokenizer(tokenizer._encoding, f"cl100k_base@test-{uuid.uuid4().hex}")


@pytest.fixture(scope="module")
def second_engine(coin_cache_dir: Path) -> EmbeddingEngine:
    """Another CPU engine over the SAME cache folder as the session engine."""
    return EmbeddingEngine(device="cpu", cache_dir=coin_cache_dir, batch_size=7)


# -- tokenizer --------------------------------------------------------------------------------


def test_default_tokenizer_is_cl100k_offline(tokenizer: Tokenizer) -> None:
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.id == DEFAULT_TOKENIZER_ID == "cl100k_base@tiktoken"
    ids = tokenizer.encode("Let me think step by step.")
    assert ids == [10267, 757, 1781, 3094, 555, 3094, 13]
    assert "".join(tokenizer.token_text(i) for i in ids) == "Let me think step by step."
    # Special-token strings are text, not control tokens.
    assert 100257 not in tokenizer.encode("<|endoftext|>")


def test_token_text_of_a_character_fragment_is_replacement(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("日本語")
    fragments = [tokenizer.token_text(i) for i in ids]
    assert len(ids) == 4 and "\ufffd" in fragments


@pytest.mark.parametrize("bad", [-1, 100_256, 10**12, True, "5", 1.0], ids=repr)
def test_unknown_token_ids_are_refused(tokenizer: Tokenizer, bad: Any) -> None:
    with pytest.raises(MalformedInput) as exc:
        tokenizer.token_text(bad)
    assert exc.value.code == "coin.token_unknown"


# -- sentence embeddings ----------------------------------------------------------------------


def test_engine_identity(engine: EmbeddingEngine) -> None:
    weights = model_path() / "model.safetensors"
    assert engine.model_id == MODEL_ID == "sentence-transformers/all-MiniLM-L6-v2"
    assert engine.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (engine.device, engine.precision) == ("cpu", "float32")


def test_equals_sentence_transformers_on_cpu(
    engine: EmbeddingEngine, short_traces: list[dict[str, Any]]
) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_path()), device="cpu")
    texts = [
        "",
        " the",
        "\ufffd",
        short_traces[0]["answer"],
        short_traces[3]["prompt"],
        short_traces[0]["reasoning"],  # longer than 256 word pieces: truncated by both
    ]
    ours = engine.embed_texts(texts)
    theirs = reference.encode(texts, convert_to_numpy=True)
    assert ours.shape == (len(texts), EMBEDDING_DIM) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_embeddings_are_deterministic_and_batch_independent(
    engine: EmbeddingEngine, second_engine: EmbeddingEngine
) -> None:
    texts = ["a block of reasoning", "x = 3", "so the answer is 42", "", "Hmm, wait."]
    first = engine.embed_texts(texts)
    assert np.array_equal(first, engine.embed_texts(texts))
    # Another batch size, another order, other neighbours: the same bits on the CPU.
    assert np.array_equal(second_engine.embed_texts(texts[::-1])[::-1], first)
    assert np.array_equal(second_engine.embed_texts([texts[2]])[0], first[2])
    assert engine.embed_texts([]).shape == (0, EMBEDDING_DIM)


def test_embed_texts_refuses_non_text(engine: EmbeddingEngine) -> None:
    for bad in ("a single string", ["ok", b"bytes"], [None]):
        with pytest.raises(MalformedInput) as exc:
            engine.embed_texts(bad)  # type: ignore[arg-type]
        assert exc.value.code == "coin.input_invalid"


# -- per-token embeddings and their cache -----------------------------------------------------


def test_token_embeddings_cache_miss_then_hit(
    engine: EmbeddingEngine, tokenizer: Tokenizer
) -> None:
    vocab = fresh_tokenizer(tokenizer)
    ids = vocab.encode("The derivative of x^2 is 2x, so the slope is 2x.")
    before = (engine.cache_stats.hits, engine.cache_stats.misses)
    cold = engine.token_embeddings(vocab, ids)
    distinct = len(set(ids))
    assert (engine.cache_stats.hits, engine.cache_stats.misses) == (before[0], before[1] + distinct)
    warm = engine.token_embeddings(vocab, ids)
    assert engine.cache_stats.hits == before[0] + distinct
    assert np.array_equal(cold, warm)  # bit for bit: the cache stores float32 exactly
    direct = engine.embed_texts([vocab.token_text(i) for i in ids])
    assert np.array_equal(cold, direct)
    # Repeated ids get identical rows.
    first, again = ids.index(ids[-2]), len(ids) - 2
    assert first != again
    assert np.array_equal(cold[first], cold[again])


def test_token_cache_persists_across_engines(
    engine: EmbeddingEngine, second_engine: EmbeddingEngine, tokenizer: Tokenizer
) -> None:
    vocab = fresh_tokenizer(tokenizer)
    ids = vocab.encode("persisted across processes and engines")
    written = engine.token_embeddings(vocab, ids)
    hits = second_engine.cache_stats.hits
    read = second_engine.token_embeddings(vocab, ids)
    assert second_engine.cache_stats.hits == hits + len(set(ids))
    assert np.array_equal(written, read)


def _cache_file(engine: EmbeddingEngine, vocab: Tokenizer) -> Path:
    folders = [p for p in engine.cache_dir.iterdir() if vocab.id in (p / "key.txt").read_text()]
    assert len(folders) == 1
    return folders[0] / "vectors.bin"


@pytest.mark.parametrize("where", ["vector", "digest"])
def test_corrupted_cache_row_is_rebuilt_never_used(
    engine: EmbeddingEngine, tokenizer: Tokenizer, where: str
) -> None:
    vocab = fresh_tokenizer(tokenizer)
    ids = vocab.encode(" integral")
    good = engine.token_embeddings(vocab, ids)
    path = _cache_file(engine, vocab)
    row_bytes = 16 + 4 * EMBEDDING_DIM
    offset = ids[0] * row_bytes + (16 + 4 * 7 if where == "vector" else 3)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))
    rebuilt = engine.cache_stats.rebuilt
    again = engine.token_embeddings(vocab, ids)
    assert engine.cache_stats.rebuilt == rebuilt + 1
    assert np.array_equal(again, good)
    # ... and the row was rewritten: the next read is a clean hit.
    engine.token_embeddings(vocab, ids)
    assert engine.cache_stats.rebuilt == rebuilt + 1


def test_cache_rows_from_another_key_are_never_used(tmp_path: Path) -> None:
    vector = np.linspace(-1, 1, EMBEDDING_DIM, dtype=np.float32)[None, :]
    TokenEmbeddingCache(tmp_path / "a", "key a").put([5], vector)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "vectors.bin").write_bytes((tmp_path / "a" / "vectors.bin").read_bytes())
    vectors, missing, rebuilt = TokenEmbeddingCache(tmp_path / "b", "key b").get([5])
    assert (missing, rebuilt) == ([0], 1)
    vectors, missing, rebuilt = TokenEmbeddingCache(tmp_path / "a", "key a").get([5, 9, 10**6])
    assert (missing, rebuilt) == ([1, 2], 0) and np.array_equal(vectors[0], vector[0])


def test_truncated_cache_file_reads_as_missing(tmp_path: Path) -> None:
    vector = np.ones((2, EMBEDDING_DIM), dtype=np.float32)
    cache = TokenEmbeddingCache(tmp_path, "key")
    cache.put([0, 3], vector)
    path = tmp_path / "vectors.bin"
    path.write_bytes(path.read_bytes()[: 3 * (16 + 4 * EMBEDDING_DIM) + 100])
    _, missing, _ = TokenEmbeddingCache(tmp_path, "key").get([0, 3])
    assert missing == [1]


def test_two_processes_share_one_cache(tmp_path: Path) -> None:
    """Two writers growing and filling the same file at once: every row ends up valid."""
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import numpy as np
        from tallystick.daemon.coin.embedding import EMBEDDING_DIM, TokenEmbeddingCache
        cache = TokenEmbeddingCache(Path(sys.argv[1]), "shared key")
        start = int(sys.argv[2])
        for low in range(start, 30000, 3000):
            ids = list(range(low, low + 500))
            vectors = np.repeat(np.array(ids, dtype=np.float32)[:, None], EMBEDDING_DIM, axis=1)
            cache.put(ids, vectors)
        """
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(start)])
        for start in (0, 1500)
    ]
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]
    expected = [i for low in range(0, 30000, 1500) for i in range(low, low + 500)]
    vectors, missing, rebuilt = TokenEmbeddingCache(tmp_path, "shared key").get(expected)
    assert (missing, rebuilt) == ([], 0)
    assert np.array_equal(vectors[:, 0], np.array(expected, dtype=np.float32))


def test_token_fingerprints_are_the_quantized_embeddings(
    engine: EmbeddingEngine, tokenizer: Tokenizer
) -> None:
    vocab = fresh_tokenizer(tokenizer)
    ids = vocab.encode("fingerprints, fingerprints and more fingerprints")
    expected = [quantize(v.tolist()) for v in engine.token_embeddings(vocab, ids)]
    assert engine.token_fingerprints(vocab, ids) == expected
    assert engine.token_fingerprints(vocab, ids[::-1]) == expected[::-1]  # from memory
    assert all(len(fp) == EMBEDDING_DIM for fp in expected)


@pytest.mark.parametrize("bad", [-1, 1 << 24, True, 2.0, "7"], ids=repr)
def test_token_embeddings_refuse_bad_ids(
    engine: EmbeddingEngine, tokenizer: Tokenizer, bad: Any
) -> None:
    for lookup in (engine.token_embeddings, engine.token_fingerprints):
        with pytest.raises(MalformedInput) as exc:
            lookup(tokenizer, [791, bad])
        assert exc.value.code == "coin.token_unknown"


def test_token_embeddings_refuse_ids_outside_the_vocabulary(
    engine: EmbeddingEngine, tokenizer: Tokenizer
) -> None:
    vocab = fresh_tokenizer(tokenizer)
    for lookup in (engine.token_embeddings, engine.token_fingerprints):
        with pytest.raises(MalformedInput) as exc:
            lookup(vocab, [791, 100_256])
        assert exc.value.code == "coin.token_unknown"


def test_fingerprints_are_stable_across_engines(
    engine: EmbeddingEngine,
    second_engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    short_traces: list[dict[str, Any]],
) -> None:
    """Quantized bytes agree across two engines, one computing every token afresh (an empty
    cache, another batch size)."""
    ids = tokenizer.encode(short_traces[4]["reasoning"])[:120]
    mine = [quantize(v.tolist()) for v in engine.token_embeddings(tokenizer, ids)]
    hits = second_engine.cache_stats.hits
    cold = second_engine.token_embeddings(fresh_tokenizer(tokenizer), ids)
    assert second_engine.cache_stats.hits == hits
    assert mine == [quantize(v.tolist()) for v in cold]
    block = "".join(tokenizer.token_text(i) for i in ids)
    assert quantize(engine.embed_texts([block])[0].tolist()) == quantize(
        second_engine.embed_texts([block, "other", "texts"])[0].tolist()
    )


# -- device selection -------------------------------------------------------------------------


def test_device_from_environment_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLYSTICK_COIN_DEVICE", "no-such-device")
    with pytest.raises(MalformedInput) as exc:
        EmbeddingEngine()
    assert exc.value.code == "coin.device_invalid"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_requested_without_cuda_is_refused() -> None:
    with pytest.raises(TallystickError) as exc:
        EmbeddingEngine(device="cuda")
    assert exc.value.code == "coin.device_unavailable"


def test_bad_batch_size_is_refused() -> None:
    with pytest.raises(MalformedInput) as exc:
        EmbeddingEngine(device="cpu", batch_size=0)
    assert exc.value.code == "coin.config_invalid"


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tallystick" / "coin"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_half_precision_agrees_with_cpu_within_tolerance(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    short_traces: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    gpu = EmbeddingEngine(cache_dir=tmp_path)
    assert (gpu.device.startswith("cuda"), gpu.precision) == (True, "float16")
    ids = tokenizer.encode(short_traces[0]["reasoning"])[:256]
    block = "".join(tokenizer.token_text(i) for i in ids)
    pairs = list(
        zip(
            engine.token_embeddings(tokenizer, ids).tolist() + engine.embed_texts([block]).tolist(),
            gpu.token_embeddings(tokenizer, ids).tolist() + gpu.embed_texts([block]).tolist(),
            strict=True,
        )
    )
    assert all(within_tolerance(quantize(cpu), quantize(cuda)) for cpu, cuda in pairs)
