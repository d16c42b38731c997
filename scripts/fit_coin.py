"""Fit the CoIn audit's thresholds and length prior on the dev traces; write daemon/coin/data/.

Honest traces only (``../shared/data/reasoning_traces/dev.jsonl``): each trace is committed
once by an honest provider and audited ``--audits`` times with seeded nonces; the statistics
of those audits fit the thresholds (:func:`tallystick.daemon.coin.semantic.fit_thresholds`) at
the target false-positive rate, and the traces fit the per-domain length prior. The rates
reported are out of sample: 5-fold cross-validation over traces (stratified by domain) and
leave-one-domain-out, each with a Wilson 95% interval per domain. The thresholds are fitted at
the loosest honest quantile of :data:`FIT_QUANTILES` whose cross-validated rate meets the target
(the last one when none does).

Run (about 5-10 minutes on 2 CPU cores; ``--cache`` keeps the measured statistics, numbers
only, so a refit is instant)::

    .venv/bin/python scripts/fit_coin.py --cache /tmp/coin_fit_cache.json

The fit is deterministic for a given ``--seed`` (nonces, signing keys and fold split).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tallystick.daemon.coin.embedding import EmbeddingEngine
from tallystick.daemon.coin.judge import LENGTH_PRIOR_FILE, Auditor, seeded_nonces
from tallystick.daemon.coin.prior import LengthModel, LengthSample, length_features
from tallystick.daemon.coin.provider import commit_tokens
from tallystick.daemon.coin.semantic import (
    CALIBRATION_FILE,
    CHECKS,
    Calibration,
    Thresholds,
    fit_thresholds,
    wilson_interval,
)
from tallystick.daemon.coin.tokenizer import default_tokenizer
from tallystick.verifier.checkpoint import NoteSigner
from tallystick.verifier.keys import PrivateKey

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACES = REPO.parent / "shared" / "data" / "reasoning_traces" / "dev.jsonl"
DATA_DIR = REPO / "daemon" / "coin" / "data"

#: Challenge sizing (coin.md §4.5): a forged fraction of 0.2 (IR 0.25) caught with probability
#: 0.99 when each opened forged leaf is flagged with probability 0.5: k = 44.
FRACTION, PER_LEAF_DETECTION, DETECTION_TARGET = 0.2, 0.5, 0.99
BLOCK_SIZE = 256
#: Consecutive leaves per challenge anchor: one whole sketch n-gram per run, and an interior
#: for the canonical-tokenization check.
RUN_LENGTH = 8
FPR_TARGET = 0.01
FOLDS = 5
#: Honest-audit quantiles the thresholds may be fitted at, loosest first. A threshold fitted at
#: the target itself fails more than the target out of sample (the training audits' tail is
#: thin), so the fit takes the loosest quantile whose cross-validated rate meets the target.
FIT_QUANTILES = (0.01, 0.007, 0.005, 0.003, 0.002, 0.001)


def provisional_calibration(domains: Sequence[str]) -> Calibration:
    """Sizing only: nothing is flagged while statistics are being measured."""
    neutral = Thresholds(dict.fromkeys(CHECKS, 0.0), dict.fromkeys(CHECKS, 1.0), 1e9)
    return Calibration(
        domains=dict.fromkeys(domains, neutral),
        fpr_target=FPR_TARGET,
        block_size=BLOCK_SIZE,
        run_length=RUN_LENGTH,
        fraction=FRACTION,
        per_leaf_detection=PER_LEAF_DETECTION,
        detection_target=DETECTION_TARGET,
        report={},
    )


def measure_traces(
    traces: Sequence[dict[str, Any]], *, audits: int, seed: int
) -> list[dict[str, Any]]:
    """Per trace: domain, length features, count, prompt embedding and its audits' statistics
    (the length prior's z is left out: it depends on the fold's fit)."""
    engine = EmbeddingEngine()
    tokenizer = default_tokenizer()
    prompts = engine.embed_texts([trace["prompt"] for trace in traces])
    rows: list[dict[str, Any]] = []
    samples = []
    for trace, prompt_vec in zip(traces, prompts, strict=True):
        features = length_features(
            len(tokenizer.encode(trace["prompt"])),
            len(tokenizer.encode(trace["answer"])),
            trace["answer"],
        )
        m = len(tokenizer.encode(trace["reasoning"]))
        samples.append(LengthSample(trace["domain"], features, m, tuple(prompt_vec.tolist())))
    auditor = Auditor(
        engine,
        tokenizer,
        calibration=provisional_calibration(sorted({s.domain for s in samples})),
        length_model=LengthModel.fit(samples),  # provisional: z is recomputed per fold
    )
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    for number, (trace, sample) in enumerate(zip(traces, samples, strict=True), start=1):
        signer = NoteSigner("fit.provider/coin", PrivateKey.from_seed(rng.bytes(32)))
        commitment = commit_tokens(
            engine,
            tokenizer,
            reasoning_ids=tokenizer.encode(trace["reasoning"]),
            prompt=trace["prompt"],
            answer=trace["answer"],
            request_id=f"fit-{number}",
            model="fit/honest",
            reported_usage=None,
            signer=signer,
            block_size=BLOCK_SIZE,
            trace_secret=rng.bytes(32),
            time_s=1_700_000_000,
        )
        nonces = seeded_nonces(int(rng.integers(1 << 62)))
        statistics = []
        for _ in range(audits):
            outcome = auditor.audit(
                head_note=commitment.head_note,
                provider_vkey=signer.vkey,
                opener=commitment.answer_challenge,
                sketch=commitment.sketch,
                prompt=trace["prompt"],
                answer=trace["answer"],
                domain=trace["domain"],
                draw_nonce=nonces,
            )
            if outcome.measurements is None:
                raise SystemExit(f"honest audit of {trace['id']} failed: {outcome.error_code}")
            stats = outcome.measurements.statistics()
            del stats["length_prior"]
            statistics.append(stats)
        rows.append(
            {
                "id": trace["id"],
                "domain": sample.domain,
                "features": list(sample.features),
                "reasoning_tokens": sample.reasoning_tokens,
                "prompt_embedding": list(sample.prompt_embedding),
                "audits": statistics,
            }
        )
        elapsed = time.monotonic() - start
        print(f"\rmeasured {number}/{len(traces)} ({elapsed:.0f} s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    return rows


def _samples(rows: Sequence[dict[str, Any]]) -> list[LengthSample]:
    return [
        LengthSample(
            row["domain"],
            tuple(row["features"]),
            row["reasoning_tokens"],
            tuple(row["prompt_embedding"]),
        )
        for row in rows
    ]


Fitted = tuple[LengthModel, dict[str, Thresholds]]


def _domain(known: Sequence[str], row: dict[str, Any]) -> str:
    """The row's domain when fitted, else the first fitted one (leave-one-domain-out)."""
    return row["domain"] if row["domain"] in known else sorted(known)[0]


def _audit_stats(model: LengthModel, rows: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    out = []
    for row in rows:
        regression = model.regressions[_domain(list(model.regressions), row)]
        z = regression.z(row["features"], row["reasoning_tokens"])
        out.extend({**audit, "length_prior": z} for audit in row["audits"])
    return out


def fit(rows: Sequence[dict[str, Any]], fpr_target: float) -> Fitted:
    """The length prior and each domain's thresholds, fitted on ``rows``."""
    model = LengthModel.fit(_samples(rows))
    thresholds = {
        domain: fit_thresholds(
            _audit_stats(model, [row for row in rows if row["domain"] == domain]),
            fpr_target=fpr_target,
        )
        for domain in sorted({row["domain"] for row in rows})
    }
    return model, thresholds


def evaluate(fitted: Fitted, rows: Sequence[dict[str, Any]]) -> list[tuple[str, bool, list[str]]]:
    """Per audit of ``rows``: (domain, failed, checks past the threshold)."""
    model, by_domain = fitted
    out = []
    for row in rows:
        thresholds = by_domain[_domain(list(by_domain), row)]
        for stats in _audit_stats(model, [row]):
            z = thresholds.z_scores(stats)
            flagged = [check for check in CHECKS if z[check] > thresholds.threshold]
            out.append((row["domain"], bool(flagged), flagged))
    return out


def rates(results: Sequence[tuple[str, bool, list[str]]], traces: int) -> dict[str, Any]:
    """False-positive rates per domain and overall, with Wilson 95% intervals.

    Audits of one trace are correlated, so the interval uses the number of traces as the
    sample size (a conservative effective n), with the rate measured over all audits.
    """
    report: dict[str, Any] = {}
    domains = sorted({domain for domain, _, _ in results})
    for name in [*domains, "all"]:
        chosen = [r for r in results if name in ("all", r[0])]
        fpr = sum(failed for _, failed, _ in chosen) / len(chosen)
        share = len(chosen) / len(results)
        n = max(1, round(traces * share))
        low, high = wilson_interval(round(fpr * n), n)
        by_check = {
            check: sum(check in flagged for _, _, flagged in chosen) / len(chosen)
            for check in CHECKS
        }
        report[name] = {
            "audits": len(chosen),
            "traces": n,
            "fpr": round(fpr, 4),
            "wilson95": [round(low, 4), round(high, 4)],
            "by_check": {k: round(v, 4) for k, v in by_check.items() if v},
        }
    return report


def cross_validate(rows: Sequence[dict[str, Any]], fpr_target: float, seed: int) -> dict[str, Any]:
    """5-fold (stratified by domain) and leave-one-domain-out honest false-positive rates."""
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for domain in sorted({row["domain"] for row in rows}):
        ids = [row["id"] for row in rows if row["domain"] == domain]
        for position, index in enumerate(rng.permutation(len(ids))):
            fold_of[ids[index]] = position % FOLDS
    results: list[tuple[str, bool, list[str]]] = []
    for fold in range(FOLDS):
        train = [row for row in rows if fold_of[row["id"]] != fold]
        test = [row for row in rows if fold_of[row["id"]] == fold]
        results.extend(evaluate(fit(train, fpr_target), test))
    lodo: dict[str, Any] = {}
    for domain in sorted({row["domain"] for row in rows}):
        train = [row for row in rows if row["domain"] != domain]
        test = [row for row in rows if row["domain"] == domain]
        lodo[f"train_without_{domain}"] = rates(evaluate(fit(train, fpr_target), test), len(test))
    return {"kfold": rates(results, len(rows)), "leave_one_domain_out": lodo}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--audits", type=int, default=3, help="audits per trace (default 3)")
    parser.add_argument("--fpr", type=float, default=FPR_TARGET, help="target (default 0.01)")
    parser.add_argument("--cache", type=Path, help="read/write measured statistics here")
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--limit", type=int, help="only the first N traces (a quick trial)")
    args = parser.parse_args(argv)

    if args.cache is not None and args.cache.is_file():
        rows = json.loads(args.cache.read_text())
    else:
        with args.traces.open(encoding="utf-8") as handle:
            traces = [json.loads(line) for line in handle if line.strip()]
        rows = measure_traces(traces[: args.limit], audits=args.audits, seed=args.seed)
        if args.cache is not None:
            args.cache.write_text(json.dumps(rows))

    for quantile in (q for q in FIT_QUANTILES if q <= args.fpr):
        validation = cross_validate(rows, quantile, args.seed)
        if validation["kfold"]["all"]["fpr"] <= args.fpr:
            break
    model, by_domain = fit(rows, quantile)
    in_sample = rates(evaluate((model, by_domain), rows), len(rows))
    kfold = validation["kfold"]
    calibration = Calibration(
        domains={
            domain: replace(thresholds, fpr_estimate=kfold[domain]["fpr"])
            for domain, thresholds in by_domain.items()
        },
        fpr_target=args.fpr,
        block_size=BLOCK_SIZE,
        run_length=RUN_LENGTH,
        fraction=FRACTION,
        per_leaf_detection=PER_LEAF_DETECTION,
        detection_target=DETECTION_TARGET,
        report={
            "fitted_on": args.traces.name,
            "traces": len(rows),
            "audits_per_trace": args.audits,
            "seed": args.seed,
            "fit_quantile": quantile,
            "in_sample": in_sample,
            **validation,
        },
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / CALIBRATION_FILE).write_text(
        json.dumps(calibration.to_json(), indent=1, sort_keys=True) + "\n"
    )
    (args.out_dir / LENGTH_PRIOR_FILE).write_text(
        json.dumps(model.to_json(), indent=1, sort_keys=True) + "\n"
    )
    print(json.dumps(calibration.report, indent=1))
    for domain, thresholds in sorted(calibration.domains.items()):
        print(f"{domain}: z threshold {thresholds.threshold:.3f}")
    print(f"wrote {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
