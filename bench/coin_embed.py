"""CoIn embedding throughput: tokens fingerprinted per second on real dev traces.

For a fixed sample of dev traces (both domains), tokenized with cl100k_base and cut into
blocks: block embeddings (one forward pass per block), per-token embeddings with an empty
token cache (cold) and again with it filled (warm), and the whole provider commitment
(``commit_tokens``: fingerprints, salted leaves, RFC 9162 tree, signed head) on a warm cache.
"Fingerprinting" is block embeddings plus per-token embeddings: what a commitment costs in the
model. The cache starts empty in a temporary folder unless ``--cache-dir`` is given.

Run: ``.venv/bin/python bench/coin_embed.py`` (about a minute on 2 CPU cores), or
``--device cuda`` on a GPU machine (``--traces 300`` for all of them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tallystick.daemon.coin.embedding import EmbeddingEngine
from tallystick.daemon.coin.provider import commit_tokens
from tallystick.daemon.coin.tokenizer import default_tokenizer
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.keys import PrivateKey

REPO = Path(__file__).resolve().parents[1]
DEV_TRACES = REPO.parent / "shared" / "data" / "reasoning_traces" / "dev.jsonl"


def sample_traces(count: int) -> list[dict[str, Any]]:
    """``count`` dev traces spread evenly over the file (it mixes math and safety)."""
    with DEV_TRACES.open(encoding="utf-8") as handle:
        traces = [json.loads(line) for line in handle if line.strip()]
    step = max(1, len(traces) // count)
    return traces[::step][:count]


def timed(label: str, seconds: float, tokens: int, extra: str = "") -> None:
    print(f"| {label:<34} | {seconds:8.2f} | {tokens / seconds:12,.0f} | {extra} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    parser.add_argument("--traces", type=int, default=20)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        cache_dir = args.cache_dir or Path(scratch)
        start = time.perf_counter()
        engine = EmbeddingEngine(
            device=args.device, cache_dir=cache_dir, batch_size=args.batch_size
        )
        load_s = time.perf_counter() - start
        device_name = (
            torch.cuda.get_device_name(engine.device)
            if engine.device.startswith("cuda")
            else platform.processor() or platform.machine()
        )
        threads = f"{torch.get_num_threads()} threads of {os.cpu_count()} cores"
        print(
            f"device {engine.device} ({device_name}), {engine.precision}, "
            f"torch {torch.__version__}, {threads}; model load {load_s:.1f} s"
        )
        tokenizer = default_tokenizer()
        traces = sample_traces(args.traces)
        ids = [tokenizer.encode(trace["reasoning"]) for trace in traces]
        tokens = sum(len(trace_ids) for trace_ids in ids)
        blocks = [
            trace_ids[start : start + args.block_size]
            for trace_ids in ids
            for start in range(0, len(trace_ids), args.block_size)
        ]
        texts = ["".join(tokenizer.token_text(i) for i in block) for block in blocks]
        distinct = len({i for trace_ids in ids for i in trace_ids})
        print(
            f"{len(traces)} traces, {tokens:,} tokens, {len(blocks)} blocks of "
            f"{args.block_size}, {distinct:,} distinct token ids\n"
        )
        print(f"| {'phase':<34} | {'seconds':>8} | {'tokens/s':>12} | notes |")
        print(f"| {'-' * 34} | {'-' * 8} | {'-' * 12} | ----- |")

        start = time.perf_counter()
        engine.embed_texts(texts)
        block_s = time.perf_counter() - start
        timed("block embeddings", block_s, tokens, f"{len(blocks) / block_s:.1f} blocks/s")

        start = time.perf_counter()
        for trace_ids in ids:
            engine.token_embeddings(tokenizer, trace_ids)
        cold_s = time.perf_counter() - start
        timed(
            "token embeddings, cold cache",
            cold_s,
            tokens,
            f"{engine.cache_stats.misses:,} computed",
        )

        start = time.perf_counter()
        for trace_ids in ids:
            engine.token_embeddings(tokenizer, trace_ids)
        warm_s = time.perf_counter() - start
        timed("token embeddings, warm cache", warm_s, tokens, "read from disk, digest-checked")

        timed("fingerprinting, cold cache", block_s + cold_s, tokens, "blocks + tokens")
        timed("fingerprinting, warm cache", block_s + warm_s, tokens, "blocks + tokens")

        signer = NoteSigner("bench.example/coin", PrivateKey.generate())
        start = time.perf_counter()
        for trace, trace_ids in zip(traces, ids, strict=True):
            commit_tokens(
                engine,
                tokenizer,
                reasoning_ids=trace_ids,
                prompt=trace["prompt"],
                answer=trace["answer"],
                request_id=trace["id"],
                model="bench",
                reported_usage=None,
                signer=signer,
                block_size=args.block_size,
            )
        commit_s = time.perf_counter() - start
        timed(
            "commit_tokens end to end, warm",
            commit_s,
            tokens,
            f"{len(traces) / commit_s:.2f} traces/s",
        )


if __name__ == "__main__":
    main()
