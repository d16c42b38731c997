"""A PALACE-style length prior (coin.md §4.8): how many reasoning tokens a (prompt, answer)
pair usually takes, per domain, as an independent signal next to the commitment audit.

Per domain, an ordinary least-squares regression of ``log(reasoning tokens)`` on simple
features of the prompt and answer that the auditor holds (:func:`length_features`), fitted on
honest traces; the signal is ``z = (log m_reported - mu_hat) / sigma_hat``. Inflation raises
``z``. The domain is the trace's own when given, else the nearest domain centroid of the
prompt's embedding (a fitted router). The critique in coin.md §3 shows inflation of 247%
passing PALACE alone, so the prior is one signal among several and never decides alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from tallystick.verifier.errors import MalformedInput

__all__ = ["FEATURE_NAMES", "DomainRegression", "LengthModel", "LengthSample", "length_features"]

#: The regression's features, in order (the first is the intercept).
FEATURE_NAMES: Final = (
    "intercept",
    "log1p_prompt_tokens",
    "log1p_answer_tokens",
    "log1p_answer_lines",
    "log1p_answer_math_symbols",
)

_MATH_SYMBOL = re.compile(r"[=+\-*/^\\]")


def length_features(prompt_tokens: int, answer_tokens: int, answer: str) -> tuple[float, ...]:
    """The regression features of one (prompt, answer) pair, in :data:`FEATURE_NAMES` order."""
    return (
        1.0,
        math.log1p(prompt_tokens),
        math.log1p(answer_tokens),
        math.log1p(answer.count("\n")),
        math.log1p(len(_MATH_SYMBOL.findall(answer))),
    )


@dataclass(frozen=True)
class LengthSample:
    """One honest trace, as the fit sees it."""

    domain: str
    features: tuple[float, ...]
    reasoning_tokens: int
    prompt_embedding: tuple[float, ...]


@dataclass(frozen=True)
class DomainRegression:
    """One domain's fitted regression: coefficients per feature and the residual spread."""

    coefficients: tuple[float, ...]
    sigma: float
    samples: int

    def z(self, features: Sequence[float], reasoning_tokens: int) -> float:
        """``(log m - mu_hat) / sigma_hat`` for a reported count ``m`` (at least 1)."""
        predicted = float(np.dot(self.coefficients, features))
        return (math.log(max(1, reasoning_tokens)) - predicted) / self.sigma


@dataclass(frozen=True)
class LengthModel:
    """Per-domain regressions plus the prompt-embedding router that picks a domain."""

    regressions: Mapping[str, DomainRegression]
    centroids: Mapping[str, tuple[float, ...]]

    @classmethod
    def fit(cls, samples: Sequence[LengthSample], *, ridge: float = 1e-3) -> LengthModel:
        """Fit one regression per domain present in ``samples`` (ridge-stabilised OLS).

        :raises MalformedInput: a domain with fewer samples than features plus two
            (``coin.fit_insufficient``).
        """
        regressions: dict[str, DomainRegression] = {}
        centroids: dict[str, tuple[float, ...]] = {}
        for domain in sorted({sample.domain for sample in samples}):
            rows = [sample for sample in samples if sample.domain == domain]
            width = len(FEATURE_NAMES)
            if len(rows) < width + 2:
                raise MalformedInput(
                    f"length prior: {len(rows)} traces of {domain} are too few to fit",
                    code="coin.fit_insufficient",
                )
            x = np.array([row.features for row in rows], dtype=np.float64)
            y = np.log(np.array([max(1, row.reasoning_tokens) for row in rows], dtype=np.float64))
            penalty = ridge * np.eye(width)
            penalty[0, 0] = 0.0  # never shrink the intercept
            beta = np.linalg.solve(x.T @ x + penalty, x.T @ y)
            residuals = y - x @ beta
            sigma = float(np.sqrt(residuals @ residuals / (len(rows) - width)))
            regressions[domain] = DomainRegression(tuple(float(b) for b in beta), sigma, len(rows))
            centroid = np.mean([row.prompt_embedding for row in rows], axis=0)
            centroids[domain] = tuple(float(c) for c in centroid / np.linalg.norm(centroid))
        return cls(regressions, centroids)

    def route(self, prompt_embedding: npt.NDArray[np.float32]) -> str:
        """The domain whose prompt centroid is nearest (highest cosine) to ``prompt_embedding``."""
        return max(self.centroids, key=lambda d: float(np.dot(self.centroids[d], prompt_embedding)))

    def z(
        self,
        *,
        domain: str,
        prompt_tokens: int,
        answer_tokens: int,
        answer: str,
        reasoning_tokens: int,
    ) -> float:
        """The length prior's z for a reported count, under ``domain``'s regression.

        :raises MalformedInput: a domain the model was not fitted on (``coin.domain_unknown``).
        """
        regression = self.regressions.get(domain)
        if regression is None:
            raise MalformedInput(
                f"length prior: no fit for domain {domain!r}", code="coin.domain_unknown"
            )
        features = length_features(prompt_tokens, answer_tokens, answer)
        return regression.z(features, reasoning_tokens)

    def to_json(self) -> dict[str, Any]:
        """The model as JSON data (see :meth:`from_json`)."""
        return {
            "features": list(FEATURE_NAMES),
            "regressions": {
                domain: {
                    "coefficients": list(reg.coefficients),
                    "sigma": reg.sigma,
                    "samples": reg.samples,
                }
                for domain, reg in self.regressions.items()
            },
            "centroids": {domain: list(c) for domain, c in self.centroids.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LengthModel:
        """Load :meth:`to_json` output.

        :raises MalformedInput: wrong features or shapes (``coin.fit_malformed``).
        """
        try:
            if list(data["features"]) != list(FEATURE_NAMES):
                raise ValueError("feature names differ")
            regressions = {
                str(domain): DomainRegression(
                    tuple(float(b) for b in reg["coefficients"]),
                    float(reg["sigma"]),
                    int(reg["samples"]),
                )
                for domain, reg in data["regressions"].items()
            }
            centroids = {
                str(domain): tuple(float(c) for c in vector)
                for domain, vector in data["centroids"].items()
            }
            if any(len(r.coefficients) != len(FEATURE_NAMES) for r in regressions.values()):
                raise ValueError("coefficient count")
            if set(regressions) != set(centroids) or not regressions:
                raise ValueError("domains differ")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedInput(f"length prior: {exc}", code="coin.fit_malformed") from exc
        return cls(regressions, centroids)
