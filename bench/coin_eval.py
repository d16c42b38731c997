"""CoIn audit detection benchmark on the dev traces, with CoIn's published figures beside ours.

For a seeded sample of dev traces per domain (the shorter ones, so a run stays short), every
attack of :mod:`tallystick.daemon.coin.attacks` at every inflation ratio: the cheating
provider commits to the inflated reasoning and bills its full count; the auditor (packaged
calibration and length prior) audits it ``--audits`` times with fresh nonces. A detection is
an audit that fails. Also: the honest false-positive rate (the fit's cross-validated figure
from ``thresholds.json``, and this run's in-sample honest audits), opened leaves per audit,
the share of tokens they expose, the per-leaf detection ``p`` each rate implies, and
embedding throughput on this machine; detection is also printed per domain.

Note: the dev traces are also the calibration set, so honest rates measured here are
in-sample; the cross-validated rate printed first is the one to quote.

Run: ``.venv/bin/python bench/coin_eval.py`` (about 10 minutes on 2 CPU cores) or
``--quick`` (a couple of minutes: fewer traces, ratios 0.25 and 1).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tallystick.daemon.coin.attacks import ATTACKS, INFLATION_RATIOS, AttackSource, inflate
from tallystick.daemon.coin.embedding import EmbeddingEngine
from tallystick.daemon.coin.judge import Auditor, AuditOutcome, seeded_nonces
from tallystick.daemon.coin.provider import commit_tokens
from tallystick.daemon.coin.semantic import wilson_interval
from tallystick.daemon.coin.tokenizer import Tokenizer, default_tokenizer
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.keys import PrivateKey

REPO = Path(__file__).resolve().parents[1]
DEV_TRACES = REPO.parent / "shared" / "data" / "reasoning_traces" / "dev.jsonl"

#: CoIn's published figures (coin.md §2.6); none is on our data.
COIN_PUBLISHED = (
    ("best detection (DSR) against adaptive attacks", "up to 94.7%"),
    ("Tokens->Block DSR, Ada. Inflation 2", "74.7%"),
    ("quantity check alone, 10% of tokens forged", "40.1%"),
    ("DSR vs IR", "useful only at IR >= 1 in most settings; Ada. 2 not until IR = 3"),
    ("false positives on honest traces", "higher than on Ada. 2/3; value not published"),
    ("exposure", "<40% of embeddings, <4% of tokens visible"),
)


def pick_traces(
    traces: Sequence[dict[str, Any]],
    tokenizer: Tokenizer,
    *,
    per_domain: int,
    max_tokens: int,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """``per_domain`` random traces of each domain whose reasoning is at most ``max_tokens``."""
    picked = []
    for domain in sorted({trace["domain"] for trace in traces}):
        short = [
            trace
            for trace in traces
            if trace["domain"] == domain and len(tokenizer.encode(trace["reasoning"])) <= max_tokens
        ]
        for index in rng.permutation(len(short))[:per_domain]:
            picked.append(short[int(index)])
    return picked


class Runner:
    """Commits (honestly or inflated) and audits, keeping time and opening counts."""

    def __init__(self, auditor: Auditor, audits: int, seed: int) -> None:
        self.auditor = auditor
        self.audits = audits
        self.rng = np.random.default_rng(seed)
        self.signer = NoteSigner("bench.provider/coin", PrivateKey.from_seed(self.rng.bytes(32)))
        self.commit_seconds = 0.0
        self.committed_tokens = 0
        self.opened: list[tuple[int, int, int]] = []  # (opened leaves, anchors, tree size)

    def run(self, trace: dict[str, Any], token_ids: Sequence[int]) -> list[AuditOutcome]:
        start = time.perf_counter()
        commitment = commit_tokens(
            self.auditor.engine,
            self.auditor.tokenizer,
            reasoning_ids=token_ids,
            prompt=trace["prompt"],
            answer=trace["answer"],
            request_id="bench",
            model="bench/provider",
            reported_usage=None,  # bills every committed token, inflated or not
            signer=self.signer,
            block_size=self.auditor.calibration.block_size,
            trace_secret=self.rng.bytes(32),
        )
        self.commit_seconds += time.perf_counter() - start
        self.committed_tokens += len(token_ids)
        nonces = seeded_nonces(int(self.rng.integers(1 << 62)))
        outcomes = []
        for _ in range(self.audits):
            outcome = self.auditor.audit(
                head_note=commitment.head_note,
                provider_vkey=self.signer.vkey,
                opener=commitment.answer_challenge,
                sketch=commitment.sketch,
                prompt=trace["prompt"],
                answer=trace["answer"],
                domain=trace["domain"],
                draw_nonce=nonces,
            )
            anchors = 0 if outcome.evidence is None else outcome.evidence.challenge.k
            self.opened.append(
                (outcome.opened_leaves, min(anchors, len(token_ids)), len(token_ids))
            )
            outcomes.append(outcome)
        return outcomes


def _donor(
    traces: Sequence[dict[str, Any]], trace: dict[str, Any], *, same: bool, rng: np.random.Generator
) -> str:
    pool = [
        other
        for other in traces
        if other["id"] != trace["id"] and (other["domain"] == trace["domain"]) == same
    ]
    return str(pool[int(rng.integers(len(pool)))]["reasoning"])


def _rate(detected: int, total: int) -> str:
    low, high = wilson_interval(detected, total)
    return f"{100 * detected / total:5.1f}% [{100 * low:4.0f},{100 * high:4.0f}]"


def implied_p(rate: float, k: float, fraction: float) -> float:
    """The per-leaf detection p that ``1 - (1 - f*p)^k = rate`` implies (capped to [0, 1])."""
    if rate >= 1.0:
        return 1.0
    return max(0.0, min(1.0, (1 - (1 - rate) ** (1 / k)) / fraction))


def embedding_throughput(engine: EmbeddingEngine, tokenizer: Tokenizer, text: str) -> float:
    """Block-embedding throughput, reasoning tokens per second (64 blocks of 256 tokens)."""
    ids = tokenizer.encode(text)
    blocks = [
        "".join(tokenizer.token_text(t) for t in ids[i : i + 256]) for i in range(0, 256 * 64, 256)
    ]
    engine.embed_texts(blocks[:4])  # warm up
    start = time.perf_counter()
    engine.embed_texts(blocks)
    return 256 * 64 / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=DEV_TRACES)
    parser.add_argument("--per-domain", type=int, default=6, help="traces per domain (6)")
    parser.add_argument("--max-tokens", type=int, default=1200, help="longest reasoning used")
    parser.add_argument("--audits", type=int, default=3, help="audits per commitment (3)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2 traces a domain, IR 0.25 and 1")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    ratios: tuple[float, ...] = (0.25, 1.0) if args.quick else INFLATION_RATIOS
    per_domain = 2 if args.quick else args.per_domain

    started = time.perf_counter()
    engine = EmbeddingEngine()
    tokenizer = default_tokenizer()
    auditor = Auditor(engine, tokenizer)
    calibration = auditor.calibration
    with args.traces.open(encoding="utf-8") as handle:
        all_traces = [json.loads(line) for line in handle if line.strip()]
    rng = np.random.default_rng(args.seed)
    traces = pick_traces(
        all_traces, tokenizer, per_domain=per_domain, max_tokens=args.max_tokens, rng=rng
    )
    runner = Runner(auditor, args.audits, args.seed)

    honest = [
        o for trace in traces for o in runner.run(trace, tokenizer.encode(trace["reasoning"]))
    ]
    detected: dict[tuple[str, float], list[bool]] = {}
    by_domain: dict[tuple[str, float, str], list[bool]] = {}  # the same flags, per domain
    # tokenization_ambiguity cannot split past single bytes: its real ratio can fall short
    achieved: dict[tuple[str, float], list[float]] = {}
    for trace in traces:
        # small_model's corpus: up to 50 other reasoning texts of the domain, seeded choice.
        domain_texts = [
            other["reasoning"]
            for other in all_traces
            if other["domain"] == trace["domain"] and other["id"] != trace["id"]
        ]
        picked = rng.choice(len(domain_texts), size=min(50, len(domain_texts)), replace=False)
        source = AttackSource(
            prompt=trace["prompt"],
            reasoning=trace["reasoning"],
            answer=trace["answer"],
            same_domain_reasoning=_donor(all_traces, trace, same=True, rng=rng),
            other_domain_reasoning=_donor(all_traces, trace, same=False, rng=rng),
            domain_corpus=tuple(str(domain_texts[int(i)]) for i in sorted(picked)),
        )
        for attack in ATTACKS:
            for ratio in ratios:
                inflated = inflate(
                    source,
                    attack,
                    ratio,
                    tokenizer=tokenizer,
                    rng=rng,
                    block_size=calibration.block_size,
                )
                outcomes = runner.run(trace, inflated.token_ids)
                flags = [not o.passed for o in outcomes]
                detected.setdefault((attack, ratio), []).extend(flags)
                by_domain.setdefault((attack, ratio, trace["domain"]), []).extend(flags)
                achieved.setdefault((attack, ratio), []).append(
                    inflated.injected_tokens / inflated.original_tokens
                )
        print(f"  {trace['id']}: done ({time.perf_counter() - started:.0f} s)", flush=True)

    k_mean = float(np.mean([opened for opened, _, _ in runner.opened]))
    anchors_mean = float(np.mean([anchors for _, anchors, _ in runner.opened]))
    exposure = float(np.mean([opened / size for opened, _, size in runner.opened]))
    print()
    print(
        f"CoIn audit benchmark: {len(traces)} dev traces ({per_domain} per domain, reasoning "
        f"<= {args.max_tokens} tokens), {args.audits} audits per commitment, seed {args.seed}"
    )
    print(
        f"challenge: f={calibration.fraction} P={calibration.detection_target} "
        f"p_assumed={calibration.per_leaf_detection}; block size {calibration.block_size}, "
        f"run length {calibration.run_length}"
    )
    kfold = calibration.report.get("kfold", {})
    print("\nHonest false-positive rate (target <= 1%):")
    for domain, row in sorted(kfold.items()):
        low, high = row["wilson95"]
        print(
            f"  5-fold CV on all dev traces, {domain:<6}: {100 * row['fpr']:.2f}% "
            f"(Wilson 95% [{100 * low:.1f}, {100 * high:.1f}], {row['traces']} traces)"
        )
    for name, rows in sorted(calibration.report.get("leave_one_domain_out", {}).items()):
        row = next(iter(v for k, v in rows.items() if k != "all"))
        low, high = row["wilson95"]
        print(
            f"  leave-one-domain-out, {name:<20}: {100 * row['fpr']:.2f}% "
            f"(Wilson 95% [{100 * low:.1f}, {100 * high:.1f}])"
        )
    false_positives = sum(not o.passed for o in honest)
    print(f"  this run's honest audits (in-sample): {_rate(false_positives, len(honest))}")

    header = " | ".join(f"IR {ratio:<4}" + " " * 14 for ratio in ratios)
    print("\nDetection success rate, % of audits [Wilson 95%] (targets: >=95% at IR 0.25,")
    print(f">=99% at IR >= 1):\n| {'attack':<19} | {header} |")
    results: dict[str, Any] = {}
    for attack in ATTACKS:
        cells = []
        for ratio in ratios:
            flags = detected[(attack, ratio)]
            cells.append(_rate(sum(flags), len(flags)))
            fraction = ratio / (1 + ratio)
            rate = sum(flags) / len(flags)
            results[f"{attack}@{ratio}"] = {
                "detected": sum(flags),
                "audits": len(flags),
                "implied_p": round(implied_p(rate, anchors_mean, fraction), 3),
                "achieved_ratio": round(float(np.mean(achieved[(attack, ratio)])), 3),
            }
        print(f"| {attack:<19} | " + " | ".join(f"{cell:<22}" for cell in cells) + " |")
    domains = sorted({domain for _, _, domain in by_domain})
    print("\nBy domain, % of audits (math reasoning repeats itself; safety reasoning is short):")
    print(f"| {'attack':<19} | {'domain':<6} | " + " | ".join(f"IR {r:<4}" for r in ratios) + " |")
    for attack in ATTACKS:
        for domain in domains:
            cells = []
            for ratio in ratios:
                flags = by_domain[(attack, ratio, domain)]
                cells.append(f"{100 * sum(flags) / len(flags):7.0f}")
                results[f"{attack}@{ratio}"].setdefault("by_domain", {})[domain] = {
                    "detected": sum(flags),
                    "audits": len(flags),
                    "implied_p": round(
                        implied_p(sum(flags) / len(flags), anchors_mean, ratio / (1 + ratio)), 3
                    ),
                }
            print(f"| {attack:<19} | {domain:<6} | " + " | ".join(cells) + " |")
    short = [
        f"{key} reached IR {row['achieved_ratio']}"
        for key, row in results.items()
        if row["achieved_ratio"] < 0.99 * float(key.rpartition("@")[2])
    ]
    if short:
        print("Ratios not reached (mean over traces): " + "; ".join(short))
    print("\nPer-anchor detection p implied by each rate (1-(1-f p)^a, f = IR/(1+IR)):")
    for attack in ATTACKS:
        ps = [results[f"{attack}@{ratio}"]["implied_p"] for ratio in ratios]
        print(f"  {attack:<19} " + "  ".join(f"{p:5.2f}" for p in ps))
    throughput = embedding_throughput(
        engine, tokenizer, " ".join(t["reasoning"] for t in all_traces[:40])
    )
    commit_rate = runner.committed_tokens / runner.commit_seconds
    cpu = platform.processor() or platform.machine()
    print(
        f"\nOpened leaves per audit: {k_mean:.1f} on average ({anchors_mean:.1f} anchors, runs of "
        f"{calibration.run_length}); tokens exposed: {100 * exposure:.1f}%"
        f"\nEmbedding throughput ({engine.device}, {engine.precision}, {cpu}):"
        f" {throughput:,.0f} tokens/s (block embeddings);"
        f" commitment build {commit_rate:,.0f} tokens/s end to end"
    )
    print("\nCoIn's published figures (their data and model heads, not comparable one to one):")
    for what, value in COIN_PUBLISHED:
        print(f"  {what}: {value}")
    print(f"\nTotal {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "detection": results,
                    "honest_in_sample": [false_positives, len(honest)],
                    "k_mean": k_mean,
                    "anchors_mean": anchors_mean,
                    "exposure": exposure,
                    "throughput_tokens_per_s": throughput,
                    "commit_tokens_per_s": commit_rate,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
