"""Deterministic generator of Tallystick's CoIn golden vectors (tests/vectors/coin/*.json).

Run ``.venv/bin/python tests/vectors/generate_coin.py`` to rewrite the files; the tests rebuild
them in memory with :func:`build_vectors` and require the checked-in bytes to be identical.

No model is involved: a synthetic provider stands in for the embedder with fingerprints
derived from SHA-256 (:func:`synthetic_vector`), so the vectors pin the protocol's bytes (leaf
encoding, head text, signatures, challenge, evidence) independently of torch. Keys are RFC 8032
§7.1 seeds, the trace secret and nonces are fixed, and Ed25519 signatures are deterministic.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallystick.verifier import coin
from tallystick.verifier.checkpoint import NoteSigner, sign_note
from tallystick.verifier.keys import PrivateKey
from tallystick.verifier.merkle import MerkleTree

OUT_DIR = Path(__file__).resolve().parent / "coin"

#: RFC 8032 §7.1 TEST 1 is the provider, TEST 2 the auditor's log (the countersigner).
PROVIDER = NoteSigner(
    "provider.example/coin",
    PrivateKey.from_seed(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    ),
)
LOG = NoteSigner(
    "sidecar.example/log",
    PrivateKey.from_seed(
        bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
    ),
)
TRACE_SECRET = bytes(range(32))
NONCE = bytes(range(100, 132))
TIME_S = 1_700_000_000
SKETCH_KEY = coin.sketch_key(TRACE_SECRET)
#: Consecutive leaves per anchor in head.json's run-widened indices.
RUN_LENGTH = 3
EMBEDDER = "all-MiniLM-L6-v2@synthetic"
EMBEDDER_SHA256 = hashlib.sha256(b"synthetic embedder").hexdigest()


def synthetic_vector(label: bytes) -> list[float]:
    """384 floats in [-127.5, 127.5] from SHA-256(label || counter): a stand-in embedding."""
    stream = b"".join(
        hashlib.sha256(label + counter.to_bytes(4, "big")).digest() for counter in range(12)
    )
    return [byte - 127.5 for byte in stream[: coin.EMBEDDING_DIM]]


def token_fp(token_id: int) -> bytes:
    """The synthetic token fingerprint of ``token_id``."""
    return coin.quantize(synthetic_vector(b"token" + token_id.to_bytes(4, "big")))


def block_fp(token_ids: Sequence[int]) -> bytes:
    """The synthetic block fingerprint of a block's token ids."""
    label = b"block" + b"".join(token.to_bytes(4, "big") for token in token_ids)
    return coin.quantize(synthetic_vector(label))


@dataclass(frozen=True)
class Synthetic:
    """A provider's commitment over synthetic fingerprints, and its openings."""

    head: coin.CommitmentHead
    head_note: str
    leaves: tuple[coin.Leaf, ...]
    tree: MerkleTree
    token_ids: tuple[int, ...]
    sketch: bytes | None

    def open(self, indices: Sequence[int], *, tree_size: int | None = None) -> list[coin.Opening]:
        """Openings of ``indices``, with proofs at ``tree_size`` (default: the whole tree)."""
        size = self.tree.size if tree_size is None else tree_size
        return [
            coin.Opening(
                index=index,
                leaf=self.leaves[index],
                salt=coin.leaf_salt(TRACE_SECRET, index),
                token_id=self.token_ids[index],
                proof=tuple(self.tree.inclusion_proof(index, size)),
            )
            for index in indices
        ]


def leaves_for(token_ids: Sequence[int], block_size: int) -> list[coin.Leaf]:
    """One v1 leaf per token, in order (coin.md §4.2)."""
    blocks = [
        token_ids[start : start + block_size] for start in range(0, len(token_ids), block_size)
    ]
    block_fps = [block_fp(block) for block in blocks]
    return [
        coin.Leaf(
            token_index=index,
            block_index=index // block_size,
            token_commitment=coin.token_commitment(coin.leaf_salt(TRACE_SECRET, index), token),
            block_fp=block_fps[index // block_size],
            token_fp=token_fp(token),
        )
        for index, token in enumerate(token_ids)
    ]


def commit(
    token_ids: Sequence[int],
    *,
    block_size: int = 4,
    prompt: str = "What is 2 + 2?",
    answer: str = "4",
    request_id: str = "req-golden-1",
    reasoning_tokens: int | None = None,
    reported_reasoning: int | None = None,
    leaves: Sequence[coin.Leaf] | None = None,
    signers: Sequence[NoteSigner] = (PROVIDER,),
    sketched: bool = True,
) -> Synthetic:
    """The synthetic provider's signed commitment; the keyword overrides build dishonest ones."""
    built = list(leaves) if leaves is not None else leaves_for(token_ids, block_size)
    tree = MerkleTree()
    tree.extend(leaf.hash() for leaf in built)
    count = len(token_ids) if reasoning_tokens is None else reasoning_tokens
    sketch = coin.ngram_sketch(SKETCH_KEY, token_ids) if sketched else None
    head = coin.CommitmentHead(
        origin="provider.example/coin",
        request_id=request_id,
        model="example-reasoner-1",
        tokenizer="cl100k_base@tiktoken",
        embedder=EMBEDDER,
        embedder_sha256=EMBEDDER_SHA256,
        block_size=block_size,
        reasoning_tokens=count,
        reported_usage=coin.ReportedUsage(
            input=12,
            output=1,
            reasoning=count if reported_reasoning is None else reported_reasoning,
            cached=None,
        ),
        prompt_sha256=hashlib.sha256(prompt.encode()).hexdigest(),
        answer_sha256=hashlib.sha256(answer.encode()).hexdigest(),
        root=tree.root(),
        time_s=TIME_S,
        sketch_sha256=None if sketch is None else coin.sketch_sha256(sketch),
    )
    note = sign_note(head.to_text(), *signers)
    return Synthetic(head, note, tuple(built), tree, tuple(token_ids), sketch)


#: The golden trace: 10 reasoning tokens in blocks of 4 (the last block holds 2).
TOKEN_IDS = (791, 4320, 315, 220, 17, 489, 220, 17, 374, 220)
#: The golden audit: runs of one sketch n-gram, the shortest a sketched head accepts
#: (``coin.runs_too_short``); on the 10-token trace its 5 anchors open every leaf.
CHALLENGE = coin.Challenge(
    k=5, fraction=0.5, target=0.95, per_leaf_detection=1.0, run_length=coin.SKETCH_NGRAM
)


def evidence(
    synthetic: Synthetic,
    *,
    challenge: coin.Challenge = CHALLENGE,
    nonce: bytes = NONCE,
    scores: Sequence[float] = (),
) -> coin.Evidence:
    """An audit of ``synthetic``: the derived challenge, its openings, one relevance check per
    opened block (``scores[i]`` for the i-th block, 0.9 when not given) against threshold 0.5."""
    seed = coin.challenge_seed(synthetic.head_note, nonce)
    indices = coin.challenge_indices(
        seed,
        synthetic.head.reasoning_tokens,
        synthetic.head.block_size,
        challenge.k,
        challenge.run_length,
    )
    openings = synthetic.open(indices)
    blocks = sorted({opening.leaf.block_index for opening in openings})
    checks = [
        coin.BlockCheck(
            block_index=block,
            check="block_answer",
            score=scores[position] if position < len(scores) else 0.9,
            threshold=0.5,
            flagged=(scores[position] if position < len(scores) else 0.9) < 0.5,
        )
        for position, block in enumerate(blocks)
    ]
    return coin.Evidence.build(
        head_note=synthetic.head_note,
        provider_vkey=PROVIDER.vkey,
        auditor_nonce=nonce,
        challenge=challenge,
        openings=openings,
        checks=checks,
        length_prior=coin.LengthPrior(z=0.25, threshold=2.33, flagged=False),
        fpr_at_threshold=0.01,
        sketch=synthetic.sketch,
        sketch_key=None if synthetic.sketch is None else SKETCH_KEY,
    )


def _quantize_cases() -> list[dict[str, Any]]:
    cases: list[tuple[str, list[float]]] = [
        ("zero vector: all zeros", [0.0, 0.0, 0.0]),
        ("0.5 * 127 = 63.5 rounds to even 64", [1.0, 1.0, 1.0, 1.0]),
        ("-63.5 rounds to even -64", [-1.0, -1.0, -1.0, -1.0]),
        ("exact unit axes", [0.0, 1.0, 0.0, -1.0]),
        ("a 3-4-5 triangle, unnormalized", [3.0, 4.0]),
        ("tiny components still normalize", [1e-300, 1e-300]),
        ("synthetic 384-dim embedding", synthetic_vector(b"quantize")),
    ]
    return [
        {"description": text, "vector": vector, "int8": list(coin.quantize(vector))}
        for text, vector in cases
    ]


def build_vectors() -> dict[str, bytes]:
    """Every vector file's name and exact bytes."""
    synthetic = commit(TOKEN_IDS)
    leaf = synthetic.leaves[5]
    countersigned = commit(TOKEN_IDS, signers=(PROVIDER, LOG))
    seed = coin.challenge_seed(synthetic.head_note, NONCE)
    files: dict[str, Any] = {
        "quantize.json": {"cases": _quantize_cases()},
        "leaf.json": {
            "description": "leaf 5 of the golden trace (block 1), its salt and hash",
            "trace_secret_hex": TRACE_SECRET.hex(),
            "token_id": TOKEN_IDS[5],
            "salt_hex": coin.leaf_salt(TRACE_SECRET, 5).hex(),
            "token_commitment_hex": leaf.token_commitment.hex(),
            "leaf_input_hex": leaf.to_bytes().hex(),
            "leaf_hash_hex": leaf.hash().hex(),
        },
        "head.json": {
            "description": "the golden trace's signed head, plain and countersigned by the log",
            "provider_vkey": PROVIDER.vkey,
            "log_vkey": LOG.vkey,
            "token_ids": list(TOKEN_IDS),
            "head_note": synthetic.head_note,
            "countersigned_head_note": countersigned.head_note,
            "nonce_hex": NONCE.hex(),
            "seed_hex": seed.hex(),
            "indices_k3": coin.challenge_indices(seed, len(TOKEN_IDS), 4, 3),
            "indices_k5": coin.challenge_indices(seed, len(TOKEN_IDS), 4, 5),
            "indices_k10": coin.challenge_indices(seed, len(TOKEN_IDS), 4, 10),
            "run_length": RUN_LENGTH,
            "indices_k2_runs": coin.challenge_indices(seed, len(TOKEN_IDS), 4, 2, RUN_LENGTH),
            "sketch_key_hex": SKETCH_KEY.hex(),
            "sketch_hex": (synthetic.sketch or b"").hex(),
        },
        "evidence-consistent.json": json.loads(evidence(synthetic).to_json()),
        "evidence-flagged.json": json.loads(evidence(synthetic, scores=(0.9, 0.1)).to_json()),
    }
    return {
        name: (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()
        for name, value in files.items()
    }


def main() -> int:
    OUT_DIR.mkdir(exist_ok=True)
    for name, data in build_vectors().items():
        (OUT_DIR / name).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
