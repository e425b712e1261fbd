"""The numbers of a report: best-so-far curves, iterations to a target, areas under the curve, and
bootstrap intervals over seeds.

Why best-so-far: a curve that is not monotone (CTM's 2-step error rose after a minimum on the toy
before its time embedding was fixed) makes "the iteration at which a method first reaches the
baseline's final value" meaningless; the iteration at which the best value so far first reaches
a target is well defined, and several targets (the baseline's best-so-far at 25, 50, 75 and 100% of
its training) show where a speed-up holds and where it does not.

Intervals: the 95% percentile bootstrap over seeds (each method's seeds resampled with
replacement, independently), ``B`` resamples from a fixed seed, so a report is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Curve = list[tuple[int, float]]     # (step, value), steps increasing


def higher_is_better(metric: str) -> bool:
    return metric.split("/")[0] in ("psnr",)


def best_so_far(curve: Curve, metric: str) -> Curve:
    """The best value up to each step (a running min; a running max for higher-is-better metrics)."""
    out, best = [], None
    pick = max if higher_is_better(metric) else min
    for step, value in curve:
        best = value if best is None or not math.isfinite(best) else pick(best, value)
        out.append((step, best))
    return out


def reaches(value: float, target: float, metric: str) -> bool:
    return value >= target if higher_is_better(metric) else value <= target


def iterations_to(curve: Curve, target: float, metric: str) -> float:
    """The first evaluated step at which the best value so far reaches ``target``; inf if never."""
    for step, value in best_so_far(curve, metric):
        if reaches(value, target, metric):
            return float(step)
    return math.inf


def area(curve: Curve, metric: str, until: int) -> float:
    """Mean of the best-so-far curve over [first step, until] (trapezoid; lower is better for
    lower-is-better metrics): one number for how fast and how far a run got."""
    pts = [(s, v) for s, v in best_so_far(curve, metric) if s <= until]
    if len(pts) < 2:
        return math.nan
    total = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(pts[:-1], pts[1:]))
    return total / (pts[-1][0] - pts[0][0])


def mean_curve(curves: Sequence[Curve]) -> tuple[list[int], np.ndarray]:
    """Steps every curve has, and the curves' values there (seeds x steps)."""
    common = sorted(set.intersection(*(set(s for s, _ in c) for c in curves))) if curves else []
    table = np.array([[dict(c)[s] for s in common] for c in curves], dtype=float)
    return common, table


@dataclass
class Interval:
    """A point estimate with its 95% bootstrap interval over seeds (n seeds)."""

    value: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 3) -> str:
        if not math.isfinite(self.value):
            return "n/a"
        if self.n < 2 or self.low == self.high == self.value:
            return f"{self.value:.{digits}g} (n={self.n})"
        return f"{self.value:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}] (n={self.n})"


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def bootstrap_mean(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean over seeds, with the 95% percentile bootstrap interval of the mean."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    point = float(x.mean())
    if x.size == 1:
        return Interval(point, point, point, 1)
    idx = _rng(seed).integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    return Interval(point, float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)), int(x.size))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with inf/inf and x/inf handled: a never-reached target is a speed-up of 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = numerator / denominator
    r = np.where(np.isinf(denominator) & np.isfinite(numerator), 0.0, r)
    return np.where(np.isinf(denominator) & np.isinf(numerator), np.nan, r)


def bootstrap_ratio(baseline: Sequence[float], method: Sequence[float], resamples: int = 2000,
                    seed: int = 0) -> Interval:
    """mean(baseline) / mean(method) (a speed-up when both are iterations to a target), with the
    95% percentile bootstrap interval: the seeds of each are resampled independently. A seed that
    never reaches the target counts as infinitely many iterations (a speed-up of 0)."""
    b, m = np.asarray(baseline, dtype=float), np.asarray(method, dtype=float)
    if b.size == 0 or m.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    point = float(_ratio(np.array([b.mean()]), np.array([m.mean()]))[0])
    n = int(min(b.size, m.size))
    if b.size == 1 and m.size == 1:
        return Interval(point, point, point, 1)
    rng = _rng(seed)
    bs = b[rng.integers(0, b.size, size=(resamples, b.size))].mean(axis=1)
    ms = m[rng.integers(0, m.size, size=(resamples, m.size))].mean(axis=1)
    ratios = _ratio(bs, ms)
    ratios = ratios[~np.isnan(ratios)]
    if ratios.size == 0:
        return Interval(point, math.nan, math.nan, n)
    return Interval(point, float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5)), n)


def baseline_targets(curves: Sequence[Curve], metric: str, fractions=(0.25, 0.5, 0.75, 1.0)) -> list[tuple[str, float]]:
    """Targets every run of the baseline reaches: at each fraction of its (shortest) run, the value its
    slowest seed had reached by then (the worst best-so-far over seeds), labelled by the fraction."""
    if not curves:
        return []
    steps, table = mean_curve([best_so_far(c, metric) for c in curves])
    if not steps:
        return []
    worst = table.min(axis=0) if higher_is_better(metric) else table.max(axis=0)
    end, out = steps[-1], []
    for fraction in fractions:
        at = max(s for s in steps if s <= max(steps[0], fraction * end))
        out.append((f"{round(100 * fraction)}% ({at} it)", float(worst[steps.index(at)])))
    return out


__all__ = ["Interval", "area", "baseline_targets", "best_so_far", "bootstrap_mean", "bootstrap_ratio",
           "higher_is_better", "iterations_to", "mean_curve"]
