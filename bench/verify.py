"""Verification speed, side by side with the reference implementations, in one run.

Rows: HDP verify of 0/1/5/10-hop chains (vs hdp-autogen 0.2.0 ``verify_chain``),
AIP compact verify and chained verify at depth 0 and 5 (vs agent-identity-protocol
0.6.0), and inclusion-proof generation and verification at tree sizes 1e3..1e6
(vs a direct recursive RFC 9162 §2.1.3.1 implementation, since no reference
package ships a Merkle tree). Times are medians of several batches, in
microseconds per operation; ratio = theirs / ours (above 1 means we are faster).

Run: ``make bench`` (or ``.venv/bin/python bench/verify.py [--quick]``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from aip_core.crypto import KeyPair
from aip_token.chained import ChainedToken
from aip_token.claims import AipClaims
from aip_token.compact import CompactToken
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hdp_autogen.verify import verify_chain
from tallystick.verifier import aip, hdp, merkle
from tallystick.verifier.keys import PrivateKey

ISSUED_AT_MS = 1_700_000_000_000
TOOL = "tool:search"


@dataclass(frozen=True)
class Row:
    name: str
    ours_us: float
    theirs_us: float | None
    baseline: str

    def line(self) -> str:
        theirs = "-" if self.theirs_us is None else f"{self.theirs_us:10.1f}"
        ratio = "-" if self.theirs_us is None else f"{self.theirs_us / self.ours_us:6.2f}x"
        ours = f"{self.ours_us:10.1f}"
        return f"| {self.name:<34} | {ours} | {theirs:>10} | {ratio:>7} | {self.baseline} |"


def _batch_us(fn: Callable[[], object], batch: int) -> float:
    start = time.perf_counter()
    for _ in range(batch):
        fn()
    return (time.perf_counter() - start) / batch * 1e6


def median_us(fn: Callable[[], object], *, batch: int, samples: int) -> float:
    """Median over ``samples`` batches of the per-call time, in microseconds."""
    fn()  # warm caches, and fail fast if it raises
    return statistics.median(_batch_us(fn, batch) for _ in range(samples))


def paired_us(
    ours: Callable[[], object], theirs: Callable[[], object], *, batch: int, samples: int
) -> tuple[float, float]:
    """Medians of ours and theirs, measured in alternating batches.

    Alternating means both sides see the same background load on a noisy machine, so the
    ratio of the medians is steadier than two separate runs would give.
    """
    ours()
    theirs()
    ours_us, theirs_us = [], []
    for _ in range(samples):
        ours_us.append(_batch_us(ours, batch))
        theirs_us.append(_batch_us(theirs, batch))
    return statistics.median(ours_us), statistics.median(theirs_us)


def hdp_rows(batch: int, samples: int) -> list[Row]:
    key = PrivateKey.from_seed(bytes(range(32)))
    reference_key = Ed25519PublicKey.from_public_bytes(key.public_key.raw)
    rows = []
    for hops in (0, 1, 5, 10):
        token = hdp.issue_root(
            key=key,
            principal_id="alice@example.com",
            principal_id_type="email",
            session_id="bench-session",
            intent="Summarise the quarterly report",
            authorized_tools=["web_search", "file_reader"],
            max_hops=16,
            issued_at_ms=ISSUED_AT_MS,
            token_id="123e4567-e89b-42d3-a456-426614174000",
        )
        for i in range(hops):
            token = hdp.extend(
                token,
                key=key,
                agent_id=f"agent-{i}",
                action_summary=f"step {i}: delegate the search",
                timestamp_ms=ISSUED_AT_MS + i,
            )
        text = token.to_json()
        assert hdp.verify(text, public_key=key.public_key).hop_count == hops
        assert verify_chain(text, reference_key).valid
        ours, theirs = paired_us(
            lambda t=text: hdp.verify(t, public_key=key.public_key),
            lambda t=text: verify_chain(t, reference_key),
            batch=batch,
            samples=samples,
        )
        rows.append(Row(f"HDP verify, {hops} hops", ours, theirs, "hdp-autogen 0.2.0"))
    return rows


def aip_rows(batch: int, samples: int) -> list[Row]:
    key = PrivateKey.from_seed(bytes(range(1, 33)))
    now = int(time.time())
    rows = []

    compact = aip.issue_compact(
        key=key, subject="aip:web:example.com/agent", scopes=[TOOL], issued_at=now
    )
    reference_compact = CompactToken.create(
        _reference_claims(aip.key_identity(key.public_key), now), _reference_pair(key)
    )
    assert aip.verify(compact, public_key=key.public_key, now=now).format == "aip-compact"
    CompactToken.verify(reference_compact, key.public_key.raw)
    ours, theirs = paired_us(
        lambda: aip.verify(compact, public_key=key.public_key, now=now),
        lambda: CompactToken.verify(reference_compact, key.public_key.raw),
        batch=batch,
        samples=samples,
    )
    rows.append(Row("AIP compact verify", ours, theirs, "agent-identity-protocol 0.6.0"))

    for depth in (0, 5):
        token = aip.issue_chained(key=key, scopes=[TOOL, "tool:email"], max_depth=5, issued_at=now)
        for i in range(depth):
            delegate_key = PrivateKey.from_seed(bytes([i + 40]) * 32)
            token = aip.delegate_chained(
                token,
                root_public_key=key.public_key,
                delegate=aip.key_identity(delegate_key.public_key),
                delegator=aip.key_identity(key.public_key) if i == 0 else f"agent-{i - 1}",
                scopes=[TOOL],
                context=f"hop {i}: search on the user's behalf",
            )
        assert aip.verify(token, public_key=key.public_key, now=now, tool=TOOL).depth == depth
        ChainedToken.from_base64(token, key.public_key.raw).authorize(TOOL, key.public_key.raw)
        ours, theirs = paired_us(
            lambda t=token: aip.verify(t, public_key=key.public_key, now=now, tool=TOOL),
            lambda t=token: ChainedToken.from_base64(t, key.public_key.raw).authorize(
                TOOL, key.public_key.raw
            ),
            batch=batch,
            samples=samples,
        )
        rows.append(
            Row(f"AIP chained verify, depth {depth}", ours, theirs, "agent-identity-protocol 0.6.0")
        )
    return rows


def _reference_pair(key: PrivateKey) -> KeyPair:
    return KeyPair(Ed25519PrivateKey.from_private_bytes(key.seed()))


def _reference_claims(issuer: str, now: int) -> AipClaims:
    return AipClaims(
        iss=issuer,
        sub="aip:web:example.com/agent",
        scope=[TOOL],
        max_depth=0,
        iat=now,
        exp=now + 3600,
    )


def _naive_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH, recursively, from the leaf hashes: the textbook baseline."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if index < k:
        return [*_naive_path(index, leaves[:k]), _naive_root(leaves[k:])]
    return [*_naive_path(index - k, leaves[k:]), _naive_root(leaves[:k])]


def _naive_root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _naive_root(leaves[:k]) + _naive_root(leaves[k:])).digest()


def merkle_rows(size: int, samples: int) -> list[Row]:
    tree = merkle.MerkleTree()
    leaves = [merkle.hash_leaf(i.to_bytes(8, "big")) for i in range(size)]
    tree.extend(leaves)
    root = tree.root()
    index = size * 2 // 3
    proof = tree.inclusion_proof(index, size)
    assert proof == _naive_path(index, leaves)
    generate = median_us(lambda: tree.inclusion_proof(index, size), batch=200, samples=samples)
    naive = median_us(lambda: _naive_path(index, leaves), batch=max(1, 20_000 // size), samples=3)
    verify = median_us(
        lambda: merkle.verify_inclusion(
            leaf_index=index, tree_size=size, leaf_hash=leaves[index], proof=proof, root_hash=root
        ),
        batch=200,
        samples=samples,
    )
    return [
        Row(f"inclusion proof gen, n={size:.0e}", generate, naive, "naive RFC 9162 recursion"),
        Row(f"inclusion proof verify, n={size:.0e}", verify, None, "-"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples and trees up to 1e5")
    args = parser.parse_args()
    batch, samples = (100, 5) if args.quick else (300, 9)
    sizes = [1_000, 10_000, 100_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]

    machine = f"{platform.machine()} {platform.processor() or ''}".rstrip()
    print(f"# tallystick bench/verify.py on {machine}, {os.cpu_count()} CPUs")
    print(f"# Python {sys.version.split()[0]}, {platform.platform()}")
    print(f"# median of {samples} batches; ratio = reference / ours (>1: Tallystick faster)\n")
    print(
        f"| {'operation':<34} | {'ours (us)':>10} | {'ref (us)':>10} | {'ratio':>7} | reference |"
    )
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 12}|{'-' * 9}|-----------|")
    rows = [*hdp_rows(batch, samples), *aip_rows(batch, samples)]
    for size in sizes:
        rows.extend(merkle_rows(size, samples))
    for row in rows:
        print(row.line(), flush=True)


if __name__ == "__main__":
    main()
