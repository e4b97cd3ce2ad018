"""Choosing weights with paired differences and bootstrap intervals, so that a dozen pairs cannot fool the choice.

Every pair is scored twice, by the starting weights and by the candidate trained without it (cross-validation);
the per-pair gains are resampled to give a 95% interval of the mean gain per metric. A candidate replaces the
starting weights only when the PSNR interval lies above zero and it does not lose on SSIM or dE76 on average.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

# metric -> +1 when higher is better, -1 when lower is better (dE76): a gain is always "better when positive"
METRIC_SIGNS = {"psnr": 1.0, "ssim": 1.0, "delta_e": -1.0}
BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """The mean of per-pair gains and its bootstrap percentile interval."""

    mean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def gains(start: Sequence[float], candidate: Sequence[float], metric: str) -> np.ndarray:
    """Per-pair gains of ``candidate`` over ``start`` on ``metric``, positive = better (dE76 falling is a gain)."""
    a, b = np.asarray(start, np.float64), np.asarray(candidate, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two equal-length lists, got {a.shape} and {b.shape}")
    return METRIC_SIGNS[metric] * (b - a)


def bootstrap_interval(values: Sequence[float], confidence: float = CONFIDENCE,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (deterministic for a seed)."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("need at least one value")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(v.mean()), float(low), float(high), int(v.size))


def gain_intervals(start: Mapping[str, Sequence[float]], candidate: Mapping[str, Sequence[float]],
                   seed: int = 0) -> dict[str, Interval]:
    """Per metric of METRIC_SIGNS: the bootstrap interval of the mean per-pair gain."""
    return {m: bootstrap_interval(gains(start[m], candidate[m], m), seed=seed) for m in METRIC_SIGNS}


@dataclass(frozen=True)
class Verdict:
    replaces_start: bool
    reason: str


def verdict(intervals: Mapping[str, Interval]) -> Verdict:
    """A candidate replaces the starting weights only when its PSNR gain is above zero with 95% confidence and its
    mean SSIM and dE76 gains are not negative."""
    p, s, e = intervals["psnr"], intervals["ssim"], intervals["delta_e"]
    if p.low <= 0:
        return Verdict(False, f"the PSNR gain's interval {p} reaches zero or below")
    if s.mean < 0 or e.mean < 0:
        return Verdict(False, f"it loses on SSIM ({s}) or dE76 ({e})")
    return Verdict(True, f"PSNR gain {p} above zero; SSIM {s}, dE76 {e} not lost")
