"""The exact consistency gap of a preconditioning on an analytic teacher (math note, section 3).

For a pair t > s the optimal student is F* = (Phi_{t->s}(x_t) - f x_t) / g, Phi the teacher's
exact flow; the gap is E|F* - D_ref|^2 / d against D_ref = D(x_t, t) (forward reference) and
D(x_s, s) (backward reference).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from precondlab.teachers.solvers import reference_flow


@dataclass
class GapRow:
    preconditioner: str
    t: float
    s: float
    f: float
    g: float
    gap_t: float
    gap_s: float
    error: str = ""          # why this preconditioner has no numbers (a broken plugin), else ""

    def as_dict(self):
        return asdict(self)


def check_pair(t: float, s: float, schedule) -> None:
    if not (s < t):
        raise ValueError(f"impossible pair {t}:{s}: a jump needs s < t")
    if s < schedule.sigma_min or t > schedule.sigma_max:
        raise ValueError(f"pair {t}:{s} leaves the schedule's range "
                         f"[{schedule.sigma_min}, {schedule.sigma_max}]")


class GapEstimator:
    """Samples x_t and the exact flow once per pair, then scores any number of preconditioners."""

    def __init__(self, teacher, num_samples: int = 4096, seed: int = 0,
                 steps: int = 256):   # RK4 steps of a flow across the schedule's whole lambda range
        if not teacher.analytic:
            raise ValueError(f"the exact gap needs an analytic teacher (gmm, empirical), not {type(teacher).__name__}")
        self.teacher, self.num_samples, self.seed, self.steps = teacher, num_samples, seed, steps
        self._cache: dict[tuple[float, float], tuple] = {}

    def _flow(self, t: float, s: float):
        key = (t, s)
        if key not in self._cache:
            check_pair(t, s, self.teacher.schedule)
            gen = torch.Generator().manual_seed(self.seed)
            x0 = self.teacher.sample_x0(self.num_samples, gen)
            x_t = x0 + t * torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
            x_s = reference_flow(self.teacher, x_t, t, s, steps=self.steps_for(t, s))
            tt = torch.full((x_t.shape[0],), t, dtype=x_t.dtype)
            ss = torch.full((x_t.shape[0],), s, dtype=x_t.dtype)
            self._cache[key] = (x_t, x_s, self.teacher.denoise(x_t, tt), self.teacher.denoise(x_s, ss))
        return self._cache[key]

    def steps_for(self, t: float, s: float) -> int:
        """RK4 steps for t -> s at the step size of the full-range flow (at least 32): 10 -> 1 spans
        a fifth of EDM's lambda range, and 56 steps there change its gaps by < 1e-5 relative."""
        lam = lambda v: float(self.teacher.schedule.lam(torch.tensor(v, dtype=torch.float64)))  # noqa: E731
        sched = self.teacher.schedule
        share = (lam(s) - lam(t)) / (lam(sched.sigma_min) - lam(sched.sigma_max))
        return max(32, min(self.steps, math.ceil(self.steps * share)))

    def row(self, name: str, precond, t: float, s: float) -> GapRow:
        x_t, x_s, D_t, D_s = self._flow(t, s)
        tt, ss = torch.tensor([t], dtype=torch.float64), torch.tensor([s], dtype=torch.float64)
        f, g = float(precond.f(tt, ss)), float(precond.g(tt, ss))
        F_star = (x_s - f * x_t) / g
        gap = lambda ref: float(((F_star - ref) ** 2).mean())   # noqa: E731  (mean over samples and dims)
        return GapRow(name, t, s, f, g, gap(D_t), gap(D_s))


def parse_pairs(text: str) -> list[tuple[float, float]]:
    """'10:1,5:0.5' -> [(10.0, 1.0), (5.0, 0.5)]."""
    pairs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        try:
            t, s = (float(v) for v in item.split(":"))
        except ValueError:
            raise ValueError(f"bad pair {item!r}: write pairs as T:S, e.g. 10:1,80:0.002") from None
        pairs.append((t, s))
    if not pairs:
        raise ValueError("no pairs given: write e.g. --pairs 10:1,80:0.002")
    return pairs
