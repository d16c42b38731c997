"""The provider's side of a CoIn audit: commit to hidden reasoning, then open challenged leaves.

A provider (or a sidecar playing one for a cooperating deployment) calls :func:`commit` once
per request, publishes :attr:`Commitment.head_note`, and later answers the auditor's challenge
with :meth:`Commitment.open`::

    commitment = commit(engine, default_tokenizer(), prompt=p, reasoning=r, answer=a,
                        request_id="req-1", model="my-model", reported_usage=None, signer=signer)
    send(commitment.head_note)                            # the auditor logs it, then challenges
    openings = commitment.open(indices)                   # leaf, salt, token id, inclusion proof

The steps (coin.md §4.2-4.3):

1. tokenize the reasoning (one leaf per token, so the count is the tree size m);
2. cut it into blocks of ``block_size`` tokens; a block's text is its tokens' texts joined
   (:meth:`Tokenizer.token_text`), and its embedding is one forward pass (the model reads at
   most 256 word pieces of it, as the sentence embedding always does);
3. per-token embeddings come from the engine's on-disk cache (they depend only on the id);
4. both are quantized (:func:`~tallystick.verifier.coin.quantize`); leaf ``i`` gets the salt
   ``leaf_salt(trace_secret, i)`` and the salted token commitment;
5. the leaf hashes form an RFC 9162 tree; the signed head binds its root and size to the
   request, model, tokenizer, embedder and weights hash, block size, usage, the prompt and
   answer hashes, the n-gram sketch (:func:`~tallystick.verifier.coin.ngram_sketch`, keyed by
   ``sketch_key(trace_secret)``) and the time.

The provider publishes :attr:`Commitment.sketch` with the head and reveals
:attr:`Commitment.sketch_key` with the openings, after the challenge.

The trace secret is 32 random bytes unless given; it never leaves the :class:`Commitment`
(only the salts of opened leaves do), so unopened leaves cannot be inverted over the vocabulary.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
from tallystick.verifier import merkle
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.coin import (
    CommitmentHead,
    Leaf,
    Opening,
    ReportedUsage,
    leaf_salt,
    ngram_sketch,
    quantize,
    sha256_hex,
    sign_head,
    sketch_key,
    sketch_sha256,
    token_commitment,
)
from tallystick.verifier.errors import MalformedInput

from .embedding import EmbeddingEngine
from .tokenizer import Tokenizer

__all__ = ["DEFAULT_BLOCK_SIZE", "TRACE_SECRET_BYTES", "Commitment", "commit", "commit_tokens"]

#: CoIn's released block size, in tokens of the provider's tokenizer.
DEFAULT_BLOCK_SIZE: Final = 256
#: Size of the random per-trace secret the salts are derived from.
TRACE_SECRET_BYTES: Final = 32
_UINT32_LIMIT: Final = 1 << 32


class Commitment:
    """A signed commitment to one trace's hidden reasoning, able to open any of its leaves.

    Built by :func:`commit` or :func:`commit_tokens`; ``__init__`` is private. It holds the
    trace secret: keep it on the provider's side. ``repr`` shows neither secret nor tokens.

    :ivar head: the committed fields; ``head.reasoning_tokens`` is the tree size.
    :ivar head_note: the C2SP signed note of ``head``, what the provider publishes.
    :ivar blocks: the token ids of each block, in order (the last block may be short).
    :ivar leaves: every leaf, in token order.
    :ivar sketch: the n-gram sketch the head binds, published with the head.
    """

    def __init__(
        self,
        *,
        head: CommitmentHead,
        head_note: str,
        blocks: tuple[tuple[int, ...], ...],
        leaves: tuple[Leaf, ...],
        tree: merkle.MerkleTree,
        trace_secret: bytes,
        sketch: bytes,
    ) -> None:
        self.head = head
        self.head_note = head_note
        self.blocks = blocks
        self.leaves = leaves
        self._tree = tree
        self._trace_secret = trace_secret
        self.sketch = sketch

    @property
    def sketch_key(self) -> bytes:
        """The key of :attr:`sketch`: reveal it with the openings, never before the challenge."""
        return sketch_key(self._trace_secret)

    @property
    def token_ids(self) -> tuple[int, ...]:
        """All committed token ids, in order (the blocks concatenated)."""
        return tuple(token_id for block in self.blocks for token_id in block)

    def __repr__(self) -> str:
        return (
            f"Commitment(request_id={self.head.request_id!r}, "
            f"reasoning_tokens={self.head.reasoning_tokens}, blocks={len(self.blocks)})"
        )

    def answer_challenge(self, indices: Iterable[int]) -> tuple[list[Opening], bytes]:
        """The provider's whole answer to a challenge: :meth:`open` and :attr:`sketch_key`."""
        return self.open(indices), self.sketch_key

    def open(self, indices: Iterable[int]) -> list[Opening]:
        """The opening of each index, in the order given: leaf, salt, token id and the RFC 9162
        inclusion proof at tree size ``head.reasoning_tokens``.

        :raises MalformedInput: an index that is not an int in [0, reasoning_tokens)
            (``coin.index_out_of_range``).
        """
        size = self.head.reasoning_tokens
        block_size = self.head.block_size
        openings = []
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
                raise MalformedInput(
                    f"open: index {index!r} is not in [0, {size})", code="coin.index_out_of_range"
                )
            openings.append(
                Opening(
                    index=index,
                    leaf=self.leaves[index],
                    salt=leaf_salt(self._trace_secret, index),
                    token_id=self.blocks[index // block_size][index % block_size],
                    proof=tuple(self._tree.inclusion_proof(index, size)),
                )
            )
        return openings


def _check_block_size(block_size: object) -> int:
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or not 1 <= block_size < _UINT32_LIMIT
    ):
        raise MalformedInput("commit: block_size must be a positive integer", code="coin.bad_int")
    return block_size


def _check_secret(trace_secret: bytes | None) -> bytes:
    if trace_secret is None:
        return os.urandom(TRACE_SECRET_BYTES)
    if not isinstance(trace_secret, bytes) or len(trace_secret) < 16:
        raise MalformedInput(
            "commit: trace secret must be at least 16 bytes", code="coin.bad_secret"
        )
    return trace_secret


def _block_embeddings(
    engine: EmbeddingEngine, tokenizer: Tokenizer, blocks: Sequence[Sequence[int]]
) -> npt.NDArray[np.float32]:
    texts = ["".join(tokenizer.token_text(token_id) for token_id in block) for block in blocks]
    return engine.embed_texts(texts)


def commit_tokens(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    *,
    reasoning_ids: Sequence[int],
    prompt: str,
    answer: str,
    request_id: str,
    model: str,
    reported_usage: ReportedUsage | None,
    signer: NoteSigner,
    block_size: int = DEFAULT_BLOCK_SIZE,
    trace_secret: bytes | None = None,
    time_s: int | None = None,
) -> Commitment:
    """Commit to reasoning given as token ids of ``tokenizer`` (see :func:`commit`).

    For callers that already hold the ids (a serving stack; attack generators that inject
    tokens): no decode-and-re-encode round trip can change the count.

    :raises MalformedInput: a token id the tokenizer does not know (``coin.token_unknown``),
        a bad block size or secret (``coin.bad_int``, ``coin.bad_secret``), or head fields the
        head format refuses, e.g. a request id with spaces (``coin.head_malformed``).
    """
    size = _check_block_size(block_size)
    secret = _check_secret(trace_secret)
    given = list(reasoning_ids)
    token_fps = engine.token_fingerprints(tokenizer, given)  # checks every id
    ids = [int(token_id) for token_id in given]
    blocks = tuple(tuple(ids[start : start + size]) for start in range(0, len(ids), size))
    block_fps = [
        quantize(vector.tolist()) for vector in _block_embeddings(engine, tokenizer, blocks)
    ]
    leaves = []
    tree = merkle.MerkleTree()
    for index, token_id in enumerate(ids):
        leaf = Leaf(
            token_index=index,
            block_index=index // size,
            token_commitment=token_commitment(leaf_salt(secret, index), token_id),
            block_fp=block_fps[index // size],
            token_fp=token_fps[index],
        )
        leaves.append(leaf)
        tree.append(leaf.hash())
    sketch = ngram_sketch(sketch_key(secret), ids)
    if reported_usage is None:  # report exactly what was committed
        reported_usage = ReportedUsage(input=None, output=None, reasoning=len(ids), cached=None)
    head = CommitmentHead(
        origin=signer.name,
        request_id=request_id,
        model=model,
        tokenizer=tokenizer.id,
        embedder=engine.model_id,
        embedder_sha256=engine.weights_sha256,
        block_size=size,
        reasoning_tokens=len(ids),
        reported_usage=reported_usage,
        prompt_sha256=sha256_hex(prompt),
        answer_sha256=sha256_hex(answer),
        root=tree.root(),
        time_s=int(time.time()) if time_s is None else time_s,
        sketch_sha256=sketch_sha256(sketch),
    )
    return Commitment(
        head=head,
        head_note=sign_head(head, signer),
        blocks=blocks,
        leaves=tuple(leaves),
        tree=tree,
        trace_secret=secret,
        sketch=sketch,
    )


def commit(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    *,
    prompt: str,
    reasoning: str,
    answer: str,
    request_id: str,
    model: str,
    reported_usage: ReportedUsage | None,
    signer: NoteSigner,
    block_size: int = DEFAULT_BLOCK_SIZE,
    trace_secret: bytes | None = None,
    time_s: int | None = None,
) -> Commitment:
    """Commit to the hidden ``reasoning`` of one request and sign the head (coin.md §4.2-4.3).

    :param engine: computes the block and token embeddings.
    :param tokenizer: the provider's tokenizer; its token count is the committed count.
    :param prompt: the prompt as delivered (the head binds its SHA-256).
    :param reasoning: the hidden reasoning text.
    :param answer: the answer as delivered (the head binds its SHA-256).
    :param request_id: the provider's request id (no spaces).
    :param model: the provider's model id (no spaces).
    :param reported_usage: the usage the provider bills; None reports exactly the committed
        reasoning count and no other figure.
    :param signer: the provider's note key; its name is the head's origin.
    :param block_size: tokens per block (default 256).
    :param trace_secret: the secret the salts derive from; None draws 32 random bytes.
    :param time_s: the head's time in Unix seconds; None reads the clock.
    :raises MalformedInput: see :func:`commit_tokens`; text that is not ``str``
        (``coin.input_invalid``).
    """
    if not all(isinstance(text, str) for text in (prompt, reasoning, answer)):
        raise MalformedInput(
            "commit: prompt, reasoning and answer must be str", code="coin.input_invalid"
        )
    return commit_tokens(
        engine,
        tokenizer,
        reasoning_ids=tokenizer.encode(reasoning),
        prompt=prompt,
        answer=answer,
        request_id=request_id,
        model=model,
        reported_usage=reported_usage,
        signer=signer,
        block_size=block_size,
        trace_secret=trace_secret,
        time_s=time_s,
    )
