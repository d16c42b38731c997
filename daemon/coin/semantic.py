"""Semantic checks on what a CoIn audit opened (coin.md §4.6, §4.7), and their calibration.

The auditor never sees the reasoning. Per verified opening it sees a token id and the
quantized fingerprints of that token and of its block; it holds the prompt and the answer.
The challenge is stratified (every block gets at least one opening when ``k`` reaches the
number of blocks), so every block's fingerprint is seen. Checks, per opened block ``j``:

- ``fingerprint``: the largest int8 distance between an opened token's committed fingerprint
  and the one the auditor recomputes from its token id, or 255 when two openings of the block
  disagree on the block fingerprint. Flagged above 1 (the ±1 tolerance of coin.md §4.2); never
  calibrated: a forged fingerprint fails the audit whatever else holds.
- ``token_block``: token-to-block consistency, CoIn's Tokens→Block: the cosine between the mean
  of the opened tokens' embeddings and the block fingerprint. Flagged below a threshold. As a
  raw cosine it carries little signal (honest values sit near 0.01 on the dev traces; CoIn
  trains a matching head for this), so it is kept for parity and for the evidence record.
- ``block_answer`` / ``block_prompt``: the cosine between the block fingerprint and the
  answer's (CoIn's Block→Answer) or the prompt's embedding (which CoIn lacks). Flagged below.
- ``duplicate_blocks``: the highest cosine between this block's fingerprint and another
  block's: self-duplication passes CoIn's heads (coin.md §3). Flagged above.

And per audit (repeated on every opened block in the evidence):

- ``visible_vocab``: the fraction of opened tokens whose id occurs in the prompt or the answer
  (padding copied from what the user sees raises it). Flagged above.
- ``noncanonical_runs``: the fraction of opened runs (``challenge.run_length`` consecutive
  leaves) whose interior the tokenizer would not have produced: the run's bytes are decoded and
  re-encoded, and the interior ids (all but :data:`RUN_EDGE` tokens at each end, where a cut
  word re-tokenizes differently) must appear in the result. Sampled text is canonical text's
  tokenization almost always; text split into more tokens than it needs (tokenization
  ambiguity, arXiv 2605.30040) is not, and neither are some runs of random token ids (about one
  in six on cl100k_base: most of its tokens are whole words with their leading space, which
  re-tokenize to themselves). Flagged above.
- ``rare_tokens``: the fraction of opened tokens whose id is at least :data:`RARE_TOKEN_ID`.
  A byte-level BPE vocabulary such as cl100k_base numbers its tokens in merge order, so late
  ids are rare strings: about 5% of honest reasoning tokens (dev traces: 99th percentile 11%)
  against 70% of uniformly random ids. Flagged above.
- ``rare_runs``: the number of disjoint 8-token windows of opened runs in which at least
  :data:`RARE_RUN_TOKENS` tokens are rare. A share over the whole audit dilutes a little
  padding; a run inside padding of random ids is caught by itself. Only 5 of the 300 dev
  traces hold any 8 consecutive tokens with 5 rare ones, and no honest audit opened such a
  run (900 audits), while 97% of audits at IR 0.1 and 98-100% at IR 0.25 do (offline
  simulation). Text that is rare tokens throughout (a hex digest, base64, some scripts)
  raises it honestly; the spread floor lets one such window pass. Flagged above.
- ``repeated_spans``: from the n-gram sketch (:mod:`tallystick.verifier.coin`), the fraction
  of reasoning tokens inside a stretch of :data:`SPAN_TOKENS` tokens that occurs twice in the
  reasoning. Copies of the reasoning itself (blocks or spans) raise it for the whole trace, not
  only where a leaf was opened; a sketch that hides them fails its verification instead.
  Flagged above.
- ``copied_prompt`` / ``copied_answer``: likewise, the fraction inside a stretch that occurs
  in the prompt (the answer), hashed under the revealed sketch key. Separate checks, because
  honest reasoning rarely quotes its prompt at length but often reaches the answer's words.
  A prompt or answer shorter than :data:`SPAN_TOKENS` is matched in stretches as long as it
  allows (whole sketch n-grams), else padding that repeats a one-line request could never
  match it (dev traces, offline, 99.5% honest quantile: copy-prompt padding of safety traces at
  IR 0.25 exceeds it in 95% of traces this way, against 4% with 32-token stretches).
  Flagged above.
- the length prior's z (:mod:`tallystick.daemon.coin.prior`), flagged above.

A :class:`Calibration` (fitted on honest dev traces only, by ``scripts/fit_coin.py``) holds
one :class:`Thresholds` per domain (math and safety traces differ a lot: safety reasoning is
short and loosely tied to its answer). Each turns a check's worst value in an audit into a
z-score ``(s - median) / spread`` (``s`` oriented so that larger is more suspicious) and flags
every value past one z threshold, chosen so that honest audits of the domain fail at the
target false-positive rate (:func:`fit_thresholds`). The audit's score is its largest z-score;
it fails exactly when the score exceeds the threshold (or a hard check fails).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from tallystick.verifier.coin import (
    MAX_RUN_LENGTH,
    SKETCH_NGRAM,
    BlockCheck,
    LengthPrior,
    Opening,
)
from tallystick.verifier.errors import MalformedInput

from .embedding import EmbeddingEngine
from .tokenizer import Tokenizer

__all__ = [
    "BLOCK_CHECKS",
    "CALIBRATION_FILE",
    "CHECKS",
    "DUPLICATE_CEILING",
    "FINGERPRINT_TOLERANCE",
    "SPREAD_QUANTILE",
    "Calibration",
    "Measurements",
    "Thresholds",
    "dequantize",
    "fit_thresholds",
    "measure",
    "wilson_interval",
]

#: Calibrated checks scored per opened block, and the direction that flags each.
BLOCK_CHECKS: Final[Mapping[str, str]] = {
    "token_block": "below",
    "block_answer": "below",
    "block_prompt": "below",
    "duplicate_blocks": "above",
}
#: Every calibrated check, in report order.
CHECKS: Final = (
    *BLOCK_CHECKS,
    "visible_vocab",
    "noncanonical_runs",
    "rare_tokens",
    "rare_runs",
    "repeated_spans",
    "copied_prompt",
    "copied_answer",
    "length_prior",
)
#: Audit-wide checks reported on every opened block, flagged above their threshold.
AUDIT_CHECKS: Final = (
    "visible_vocab",
    "noncanonical_runs",
    "rare_tokens",
    "rare_runs",
    "repeated_spans",
    "copied_prompt",
    "copied_answer",
)
#: The first token id ``rare_tokens`` counts (cl100k_base's merge order; see the docstring).
RARE_TOKEN_ID: Final = 30_000
#: Rare tokens that make an opened run count for ``rare_runs`` (a run holds up to 8 tokens).
RARE_RUN_TOKENS: Final = 5
#: Tokens at each end of an opened run left out of the canonical-tokenization test.
RUN_EDGE: Final = 2
#: The shortest repeated stretch ``repeated_spans`` counts, in tokens (a multiple of the
#: sketch's n-gram: four disjoint sketch entries pin it).
SPAN_TOKENS: Final = 4 * SKETCH_NGRAM
#: The int8 distance a recomputed token fingerprint may have from the committed one (§4.2).
FINGERPRINT_TOLERANCE: Final = 1
#: The distance recorded when two openings of one block carry different block fingerprints.
_BLOCK_FP_DISAGREES: Final = 255.0
#: The fitted calibration shipped in the package (written by ``scripts/fit_coin.py``).
CALIBRATION_FILE: Final = "thresholds.json"


def dequantize(fingerprint: bytes) -> npt.NDArray[np.float32]:
    """An int8 fingerprint (coin.md §4.2) back to a unit float32 vector."""
    vector = np.frombuffer(fingerprint, dtype=np.int8).astype(np.float32) / 127.0
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _int8(fingerprint: bytes) -> npt.NDArray[np.int16]:
    return np.frombuffer(fingerprint, dtype=np.int8).astype(np.int16)


@dataclass(frozen=True)
class Measurements:
    """Every check's raw values for one audit (cosines and fractions, not yet z-scores)."""

    #: Per check of :data:`BLOCK_CHECKS`, per opened block index, its raw value.
    blocks: Mapping[str, Mapping[int, float]]
    #: Per opened block, the largest fingerprint distance (see the module docstring).
    fingerprint: Mapping[int, float]
    visible_vocab: float
    noncanonical_runs: float
    rare_tokens: float
    rare_runs: float
    repeated_spans: float
    copied_prompt: float
    copied_answer: float
    length_z: float

    def statistics(self) -> dict[str, float]:
        """Each calibrated check's worst value, oriented so that larger is more suspicious;
        NaN where the check does not apply (``duplicate_blocks`` with one block)."""
        out: dict[str, float] = {}
        for check, flag_if in BLOCK_CHECKS.items():
            values = list(self.blocks[check].values())
            if not values:  # duplicate_blocks of a one-block trace: nothing can repeat
                out[check] = math.nan
            else:
                out[check] = -min(values) if flag_if == "below" else max(values)
        for check in AUDIT_CHECKS:
            out[check] = getattr(self, check)
        out["length_prior"] = self.length_z
        return out


def measure(
    engine: EmbeddingEngine,
    tokenizer: Tokenizer,
    *,
    openings: Sequence[Opening],
    prompt_embedding: npt.NDArray[np.float32],
    answer_embedding: npt.NDArray[np.float32],
    visible_ids: frozenset[int],
    sketch_entries: Sequence[bytes],
    prompt_entries: Sequence[bytes],
    answer_entries: Sequence[bytes],
    length_z: float,
) -> Measurements:
    """Run every check on one audit's verified openings.

    :param openings: openings that passed :func:`~tallystick.verifier.coin.verify_opening`.
    :param prompt_embedding: the engine's embedding of the delivered prompt (and likewise
        ``answer_embedding``).
    :param visible_ids: the token ids of the prompt and the answer.
    :param sketch_entries: the verified sketch's entries, one per reasoning position from
        ``SKETCH_NGRAM - 1`` on.
    :param prompt_entries: the prompt's entries under the sketch key (``answer_entries``: the
        answer's).
    :param length_z: the length prior's z for the billed count.
    :raises MalformedInput: no opening (``coin.audit_incomplete``).
    """
    if not openings:
        raise MalformedInput("semantic checks: nothing was opened", code="coin.audit_incomplete")
    token_ids = [opening.token_id for opening in openings]
    recomputed = engine.token_embeddings(tokenizer, token_ids)
    expected_fps = engine.token_fingerprints(tokenizer, token_ids)  # quantized once per id
    by_block: dict[int, list[int]] = {}
    for row, opening in enumerate(openings):
        by_block.setdefault(opening.leaf.block_index, []).append(row)
    blocks = sorted(by_block)
    fingerprint: dict[int, float] = {}
    block_vectors = []
    for j in blocks:
        rows = by_block[j]
        committed = openings[rows[0]].leaf.block_fp
        worst = 0.0
        for row in rows:
            if openings[row].leaf.block_fp != committed:
                worst = _BLOCK_FP_DISAGREES
                break
            expected = _int8(expected_fps[row])
            distance = np.abs(_int8(openings[row].leaf.token_fp) - expected).max()
            worst = max(worst, float(distance))
        fingerprint[j] = worst
        block_vectors.append(dequantize(committed))
    block_matrix = np.stack(block_vectors)
    token_block = {}
    for j, block_vec in zip(blocks, block_matrix, strict=True):
        pooled = recomputed[by_block[j]].mean(axis=0)
        norm = float(np.linalg.norm(pooled))
        token_block[j] = float(np.dot(pooled, block_vec) / norm) if norm > 0 else 0.0
    duplicate: dict[int, float] = {}
    if len(blocks) > 1:
        similarity = block_matrix @ block_matrix.T
        np.fill_diagonal(similarity, -1.0)
        duplicate = {j: float(similarity[row].max()) for row, j in enumerate(blocks)}
    return Measurements(
        blocks={
            "token_block": token_block,
            "block_answer": {
                j: float(c) for j, c in zip(blocks, block_matrix @ answer_embedding, strict=True)
            },
            "block_prompt": {
                j: float(c) for j, c in zip(blocks, block_matrix @ prompt_embedding, strict=True)
            },
            "duplicate_blocks": duplicate,
        },
        fingerprint=fingerprint,
        visible_vocab=sum(token in visible_ids for token in token_ids) / len(token_ids),
        noncanonical_runs=noncanonical_runs(tokenizer, openings),
        rare_tokens=rare_tokens(token_ids),
        rare_runs=rare_runs(openings),
        repeated_spans=repeated_spans(sketch_entries),
        copied_prompt=copied_spans(sketch_entries, prompt_entries),
        copied_answer=copied_spans(sketch_entries, answer_entries),
        length_z=float(length_z),
    )


def rare_tokens(token_ids: Sequence[int]) -> float:
    """The ``rare_tokens`` statistic (module docstring); 0 for no tokens."""
    if not token_ids:
        return 0.0
    return sum(token >= RARE_TOKEN_ID for token in token_ids) / len(token_ids)


def rare_runs(openings: Sequence[Opening], *, width: int = SKETCH_NGRAM) -> float:
    """The ``rare_runs`` statistic (module docstring): a count, as a float like the others.

    Anchors' runs that touch or overlap merge into one stretch of opened leaves, so each
    stretch is scanned for disjoint windows of ``width`` tokens (left to right, a window that
    qualifies is counted and skipped past); a stretch shorter than ``width`` (the trace's end)
    is one window.
    """
    count = 0
    for run in _runs(openings):
        rare = [token >= RARE_TOKEN_ID for token in run]
        start = 0
        while start < max(1, len(rare) - width + 1):
            if sum(rare[start : start + width]) >= RARE_RUN_TOKENS:
                count += 1
                start += width
            else:
                start += 1
    return float(count)


def _runs(openings: Sequence[Opening]) -> list[list[int]]:
    """The opened token ids, grouped into runs of consecutive indices."""
    runs: list[list[int]] = []
    previous = -2
    for opening in openings:
        if opening.index != previous + 1:
            runs.append([])
        runs[-1].append(opening.token_id)
        previous = opening.index
    return runs


def _contains(haystack: Sequence[int], needle: Sequence[int]) -> bool:
    width = len(needle)
    return any(
        list(haystack[start : start + width]) == list(needle)
        for start in range(len(haystack) - width + 1)
    )


def noncanonical_runs(tokenizer: Tokenizer, openings: Sequence[Opening]) -> float:
    """The ``noncanonical_runs`` statistic (module docstring); 0 when no run has an interior."""
    tested = failed = 0
    for run in _runs(openings):
        interior = run[RUN_EDGE : len(run) - RUN_EDGE]
        if not interior:
            continue
        raw = b"".join(tokenizer.token_bytes(token_id) for token_id in run)
        tested += 1
        failed += not _contains(tokenizer.encode(raw.decode("utf-8", errors="replace")), interior)
    return failed / tested if tested else 0.0


def _span_names(row: Sequence[bytes], span: int = SPAN_TOKENS) -> list[bytes]:
    """A name for each stretch of ``span`` tokens (a multiple of the n-gram), by its first
    token's position.

    A stretch starting at ``p`` is named by the entries of its disjoint n-grams (``p``,
    ``p + n``, ... up to ``p + span - n``, entry indices counting from the first full n-gram);
    equal names are equal stretches up to hash collisions.
    """
    reach = span - SKETCH_NGRAM
    return [
        b"".join(row[p + offset] for offset in range(0, reach + 1, SKETCH_NGRAM))
        for p in range(len(row) - reach)
    ]


def _covered_share(
    entries: Sequence[bytes], hit: Callable[[bytes], bool], span: int = SPAN_TOKENS
) -> float:
    """The fraction of reasoning tokens inside a stretch of ``span`` whose name ``hit`` accepts."""
    tokens = len(entries) + SKETCH_NGRAM - 1
    covered = bytearray(max(tokens, 0))
    for start, name in enumerate(_span_names(entries, span)):
        if hit(name):
            covered[start : start + span] = b"\x01" * span
    return sum(covered) / tokens if tokens > 0 else 0.0


def repeated_spans(entries: Sequence[bytes]) -> float:
    """The ``repeated_spans`` statistic (module docstring) from the sketch's entries."""
    counts: dict[bytes, int] = {}
    for name in _span_names(entries):
        counts[name] = counts.get(name, 0) + 1
    return _covered_share(entries, lambda name: counts[name] > 1)


def copied_spans(entries: Sequence[bytes], source: Sequence[bytes]) -> float:
    """The ``copied_prompt`` / ``copied_answer`` statistic: stretches found in ``source`` (the
    prompt's or answer's entries under the same key), as long as ``source`` allows up to
    :data:`SPAN_TOKENS`; 0 for a source shorter than one n-gram (it has no entries)."""
    if not source:
        return 0.0
    source_tokens = len(source) + SKETCH_NGRAM - 1
    span = min(SPAN_TOKENS, source_tokens // SKETCH_NGRAM * SKETCH_NGRAM)
    seen = set(_span_names(source, span))
    return _covered_share(entries, seen.__contains__, span)


@dataclass(frozen=True)
class Thresholds:
    """One domain's fitted thresholds.

    :param centers: per check, the median statistic of honest audits.
    :param spreads: per check, a robust spread of honest statistics (:func:`fit_thresholds`).
    :param threshold: the shared z-score threshold; a value past it is flagged.
    :param fpr_estimate: the cross-validated honest false-positive rate at the threshold.
    """

    centers: Mapping[str, float]
    spreads: Mapping[str, float]
    threshold: float
    fpr_estimate: float = 0.0

    def z_scores(self, statistics: Mapping[str, float]) -> dict[str, float]:
        """Each check's robust z-score (``-inf`` where the check does not apply)."""
        return {
            check: -math.inf
            if math.isnan(statistics[check])
            else (statistics[check] - self.centers[check]) / self.spreads[check]
            for check in CHECKS
        }

    def score(self, measurements: Measurements) -> float:
        """The audit's score: its largest z-score (larger is more suspicious)."""
        return max(self.z_scores(measurements.statistics()).values())

    def _raw_threshold(self, check: str) -> float:
        limit = self.centers[check] + self.threshold * self.spreads[check]
        return -limit if BLOCK_CHECKS.get(check) == "below" else limit

    def block_checks(self, measurements: Measurements) -> list[BlockCheck]:
        """The evidence's checks, each reported for every opened block (as the evidence format
        requires): the fingerprint check, every calibrated block check, and the audit-wide
        ``visible_vocab`` repeated on each block."""
        checks = [
            BlockCheck(
                block_index=j,
                check="fingerprint",
                score=distance,
                threshold=float(FINGERPRINT_TOLERANCE),
                flagged=distance > FINGERPRINT_TOLERANCE,
                flag_if="above",
            )
            for j, distance in sorted(measurements.fingerprint.items())
        ]
        opened = sorted(measurements.fingerprint)
        for check, flag_if in BLOCK_CHECKS.items():
            limit = self._raw_threshold(check)
            values = measurements.blocks[check]
            for j in opened:
                # A check that does not apply (one block: no duplicate) reports cosine -1.
                value = values.get(j, -1.0)
                flagged = value < limit if flag_if == "below" else value > limit
                checks.append(BlockCheck(j, check, value, limit, flagged, flag_if))
        for check in AUDIT_CHECKS:
            limit = self._raw_threshold(check)
            value = getattr(measurements, check)
            checks.extend(
                BlockCheck(j, check, value, limit, value > limit, "above") for j in opened
            )
        return checks

    def length_prior(self, measurements: Measurements) -> LengthPrior:
        """The evidence's length-prior signal."""
        limit = self._raw_threshold("length_prior")
        return LengthPrior(measurements.length_z, limit, measurements.length_z > limit)

    def to_json(self) -> dict[str, Any]:
        """As JSON data."""
        return {
            "centers": dict(self.centers),
            "spreads": dict(self.spreads),
            "threshold": self.threshold,
            "fpr_estimate": self.fpr_estimate,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Thresholds:
        """Load :meth:`to_json` output.

        :raises MalformedInput: missing checks or bad values (``coin.fit_malformed``).
        """
        try:
            thresholds = cls(
                centers={check: float(data["centers"][check]) for check in CHECKS},
                spreads={check: float(data["spreads"][check]) for check in CHECKS},
                threshold=float(data["threshold"]),
                fpr_estimate=float(data["fpr_estimate"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedInput(f"calibration: {exc}", code="coin.fit_malformed") from exc
        values = [*thresholds.centers.values(), *thresholds.spreads.values(), thresholds.threshold]
        if not all(math.isfinite(v) for v in values) or min(thresholds.spreads.values()) <= 0:
            raise MalformedInput("calibration: bad values", code="coin.fit_malformed")
        return thresholds


@dataclass(frozen=True)
class Calibration:
    """Fitted audit parameters and per-domain thresholds (``daemon/coin/data/thresholds.json``).

    :param domains: the thresholds of each domain the fit saw.
    :param fpr_target: the honest false-positive rate the thresholds were fitted to.
    :param block_size: the block size audits commit with.
    :param run_length: consecutive leaves each challenge anchor opens.
    :param fraction: the forged fraction ``f`` the challenge is sized for (coin.md §4.5).
    :param per_leaf_detection: the ``p`` assumed in sizing it.
    :param detection_target: the detection probability ``P`` it is sized for.
    :param report: the fit's summary (data, seeds, cross-validated rates), for humans.
    """

    domains: Mapping[str, Thresholds]
    fpr_target: float
    block_size: int
    run_length: int
    fraction: float
    per_leaf_detection: float
    detection_target: float
    report: Mapping[str, Any]

    def for_domain(self, domain: str) -> Thresholds:
        """The thresholds of ``domain``.

        :raises MalformedInput: a domain the fit did not see (``coin.domain_unknown``).
        """
        thresholds = self.domains.get(domain)
        if thresholds is None:
            raise MalformedInput(f"calibration: no domain {domain!r}", code="coin.domain_unknown")
        return thresholds

    def to_json(self) -> dict[str, Any]:
        """The calibration as JSON data (see :meth:`from_json`)."""
        return {
            "format": "tallystick.coin.thresholds/v1",
            "checks": list(CHECKS),
            "domains": {name: t.to_json() for name, t in sorted(self.domains.items())},
            "fpr_target": self.fpr_target,
            "block_size": self.block_size,
            "run_length": self.run_length,
            "fraction": self.fraction,
            "per_leaf_detection": self.per_leaf_detection,
            "detection_target": self.detection_target,
            "report": dict(self.report),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        """Load :meth:`to_json` output.

        :raises MalformedInput: another format, missing checks or bad values
            (``coin.fit_malformed``).
        """
        try:
            if data["format"] != "tallystick.coin.thresholds/v1":
                raise ValueError(f"format {data['format']!r}")
            calibration = cls(
                domains={str(name): Thresholds.from_json(t) for name, t in data["domains"].items()},
                fpr_target=float(data["fpr_target"]),
                block_size=int(data["block_size"]),
                run_length=int(data["run_length"]),
                fraction=float(data["fraction"]),
                per_leaf_detection=float(data["per_leaf_detection"]),
                detection_target=float(data["detection_target"]),
                report=dict(data.get("report", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedInput(f"calibration: {exc}", code="coin.fit_malformed") from exc
        # Runs shorter than an n-gram would never check a sketch entry.
        if (
            calibration.block_size < 1
            or not SKETCH_NGRAM <= calibration.run_length <= MAX_RUN_LENGTH
            or not calibration.domains
        ):
            raise MalformedInput(
                "calibration: no domains, or a bad block size or run length",
                code="coin.fit_malformed",
            )
        return calibration

    @classmethod
    def packaged(cls) -> Calibration:
        """The calibration fitted on the dev traces, shipped with the package.

        :raises MalformedInput: the packaged file is missing or malformed (``coin.fit_malformed``).
        """
        try:
            raw = resources.files(__package__).joinpath("data", CALIBRATION_FILE).read_text()
            return cls.from_json(json.loads(raw))
        except (OSError, json.JSONDecodeError) as exc:
            raise MalformedInput(
                f"calibration: cannot read {CALIBRATION_FILE}: {exc}", code="coin.fit_malformed"
            ) from exc


#: The highest ``duplicate_blocks`` threshold: two blocks of 256 tokens whose fingerprints
#: are this close are a repeat. On the dev traces the honest maximum is 0.993 (of 741 audits).
DUPLICATE_CEILING: Final = 0.995
#: The honest quantile a check's spread reaches from its median. Checks differ in how heavy
#: their honest tails are (repeated spans in math reasoning, the rare-token share of short
#: safety traces); a scale taken further out in the tail puts them on one footing, so one
#: shared z threshold fails each about equally often. Measured on the dev traces (5-fold
#: cross-validation at the same detection): 0.9 gave a 0.89% honest false-positive rate
#: (safety 1.72%), 0.95 gives 0.56% (safety 0.69%); 0.98 and beyond overfit the thin tail.
SPREAD_QUANTILE: Final = 0.95
#: Floor of a check's spread, so that a check that is constant on honest audits still scores.
_MIN_SPREAD: Final = 1e-3
#: Wider floors where the dev traces cannot show the honest tail. Every dev run is canonical
#: and most safety traces repeat nothing, but sampled text is occasionally non-canonical and
#: honest reasoning does restate itself: one odd run in ~30, or a few percent of repeated
#: text, must not fail an audit on its own; nor must one run of rare tokens (``rare_runs``
#: counts runs: with z thresholds between 2 and 4, one run passes and two fail).
_SPREAD_FLOORS: Final[Mapping[str, float]] = {
    "noncanonical_runs": 0.03,
    "rare_runs": 0.5,
    "repeated_spans": 0.02,
    "copied_prompt": 0.02,
    "copied_answer": 0.02,
}


def fit_thresholds(honest: Sequence[Mapping[str, float]], *, fpr_target: float) -> Thresholds:
    """Centers, spreads and the shared z threshold from honest audits' statistics
    (:meth:`Measurements.statistics`).

    Center: the median. Spread: the distance from the median to the
    :data:`SPREAD_QUANTILE` quantile (a one-sided robust scale, since only large values flag),
    at least the check's floor
    (:data:`_SPREAD_FLOORS`). Both over the audits where the
    check applies (NaN marks the others). Threshold: the ``1 - fpr_target`` quantile of each
    honest audit's largest z-score. Then ``duplicate_blocks`` is capped at
    :data:`DUPLICATE_CEILING`: its honest spread is narrow, and a shared z threshold can land
    above cosine 1, where no repeated block could ever be flagged.

    :raises MalformedInput: no audits, or a target outside (0, 1) (``coin.fit_insufficient``).
    """
    if not honest or not 0 < fpr_target < 1:
        raise MalformedInput(
            "fit: need honest audits and a target in (0, 1)", code="coin.fit_insufficient"
        )
    table = np.array([[audit[check] for check in CHECKS] for audit in honest], dtype=np.float64)
    applies = ~np.isnan(table)
    centers = np.zeros(len(CHECKS))
    tops = np.ones(len(CHECKS))  # a check that never applied keeps a neutral center and spread
    for column in range(len(CHECKS)):
        values = table[applies[:, column], column]
        if values.size:
            centers[column] = np.median(values)
            tops[column] = np.quantile(values, SPREAD_QUANTILE)
    floors = np.array([_SPREAD_FLOORS.get(check, _MIN_SPREAD) for check in CHECKS])
    spreads = np.maximum(tops - centers, floors)
    largest = np.where(applies, (table - centers) / spreads, -np.inf).max(axis=1)
    threshold = float(np.quantile(largest, 1 - fpr_target, method="higher"))
    duplicate = CHECKS.index("duplicate_blocks")
    ceiling = (DUPLICATE_CEILING - centers[duplicate]) / threshold
    spreads[duplicate] = max(_MIN_SPREAD, min(spreads[duplicate], ceiling))
    return Thresholds(
        centers={check: float(c) for check, c in zip(CHECKS, centers, strict=True)},
        spreads={check: float(s) for check, s in zip(CHECKS, spreads, strict=True)},
        threshold=threshold,
    )


def wilson_interval(successes: int, trials: int, *, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95% by default) for a binomial proportion."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, center - half), min(1.0, center + half))
