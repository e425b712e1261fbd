"""Analytic-Precond (Zheng et al., ICLR 2025): first-order jumps of the generalized teacher ODE."""

from __future__ import annotations

import torch

from precondlab.odes.base import FORMS, ODECoefficients, ODEGeneralization, first_order_coefficients
from precondlab.odes.simple import EulerODE
from precondlab.preconditioners.base import Preconditioner
from precondlab.registry import register


def _nearest(knots: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Index of the knot nearest to each v (knots ascending)."""
    i = torch.searchsorted(knots, v).clamp(max=len(knots) - 1)
    j = (i - 1).clamp(min=0)
    return torch.where((knots[j] - v).abs() < (knots[i] - v).abs(), j, i)


def _on_knot(knots: torch.Tensor, i: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.isclose(knots[i], v, rtol=1e-6, atol=0).all()


@register("preconditioner", "analytic")
class AnalyticPrecond(Preconditioner):
    """Analytic-Precond: (f, g) from the forward or backward first-order form of the {l, s} ODE."""

    forms = FORMS

    def __init__(self,
                 ode: ODEGeneralization | None = None,   # where l, s come from (default: analytic)
                 form: str = "backward",                 # 'forward' (F ~ D(x_t,t)) or 'backward' (F ~ D(x_s,s))
                 quadrature_points: int = 129,           # points per jump for the lambda integrals
                 schedule=None):
        super().__init__(schedule)
        if form not in FORMS:
            raise ValueError(f"preconditioner.analytic.form must be one of {FORMS}, got {form!r}")
        if ode is None:
            from precondlab.odes.analytic import AnalyticODE
            ode = AnalyticODE()
        self.ode, self.form, self.points = ode, form, quadrature_points
        self.coeffs: ODECoefficients | None = None
        self.knots = self.table = None
        self._on_device = {}  # device -> (knots, table) copies for on_grid() lookups

    def fit(self, teacher) -> "AnalyticPrecond":
        self.schedule = teacher.schedule
        self.coeffs = self.ode.fit(teacher)
        self.knots = self.table = None
        self._on_device = {}
        return self

    def statistics(self) -> dict | None:
        c = self.coeffs
        if c is None:
            return None
        info = {k: v for k, v in c.info.items() if v is None or isinstance(v, (bool, int, float, str))}
        return {"lam": c.lam, "l": c.l, "s": c.s, "info": info}

    def restore_statistics(self, teacher, saved: dict | None) -> "AnalyticPrecond":
        """The checkpoint's l, s, after checking they were estimated for this teacher and these
        statistics settings (the same key as the statistics cache)."""
        if saved is None:
            return self.fit(teacher)
        from precondlab.errors import ResumeError
        want = saved["info"].get("key_digest")
        have = self.ode.key_digest(teacher) if hasattr(self.ode, "key_digest") else None
        if want is not None and have is not None and want != have:
            raise ResumeError("the checkpoint's Analytic-Precond statistics were estimated for another teacher or "
                              "other ode.analytic settings than this config's (their cache keys differ); resume "
                              "with the config the run started with")
        self.schedule = teacher.schedule
        self.coeffs = ODECoefficients(saved["lam"], saved["l"], saved["s"], info={**saved["info"], "restored": True})
        self.knots = self.table = None
        self._on_device = {}
        return self

    def tabulate(self, grid: torch.Tensor) -> "AnalyticPrecond":
        """Precompute (f, g) for every pair of a time grid; pairs on it are then looked up, not integrated."""
        knots = torch.sort(torch.as_tensor(grid, dtype=torch.float64).cpu()).values
        t, s = torch.meshgrid(knots, knots, indexing="ij")
        table = torch.stack(self._integrate(t, s))               # (2, n, n): f, g at (t_i, s_j)
        valid = torch.tril(torch.ones_like(t, dtype=torch.bool))  # pairs with s <= t (knots ascend)
        if not bool(torch.isfinite(table[:, valid]).all()):
            raise ValueError(f"Analytic-Precond ({self.form} form) gives non-finite f, g on the time grid: the "
                             f"statistics {self.coeffs.info} are unusable; raise ode.analytic.num_samples "
                             f"or try the backward form")
        self.table, self.knots, self._on_device = table, knots, {}
        return self

    def _integrate(self, t, s):
        if self.coeffs is None:
            if not isinstance(self.ode, EulerODE):
                raise RuntimeError("AnalyticPrecond needs fit(teacher) before use: its l, s come from the teacher")
            self.coeffs = self.ode.fit(None)
        lam_t, lam_s = self.schedule.lam(t.double().cpu()), self.schedule.lam(s.double().cpu())
        return first_order_coefficients(self.coeffs, lam_t, lam_s, self.form, self.points)

    def _lookup(self, t, s):
        """Table indices of (t, s) when both lie on the tabulated grid, else None."""
        if self.knots is None:
            return None
        idx = []
        for v in (t, s):
            v = v.double().cpu().contiguous()
            i = _nearest(self.knots, v)
            if not bool(_on_knot(self.knots, i, v)):
                return None
            idx.append(i)
        return idx

    def _grid_lookup(self, t, s):
        """Inside on_grid(): (f, g) from the table's copy on t's device. The nearest knot is found
        by one search among the midpoints between knots (a training step makes four lookups: a
        third of the ops of _nearest); the on-grid check is an asynchronous device assert (no host
        sync): a time off the grid there is a caller's bug."""
        if t.device not in self._on_device:
            knots = self.knots.to(t.device)
            self._on_device[t.device] = (knots, (knots[1:] + knots[:-1]) / 2, self.table.to(t.device))
        knots, midpoints, table = self._on_device[t.device]
        idx = []
        for v in (t, s):
            v = v.to(torch.float64)
            i = torch.searchsorted(midpoints, v)
            knot = knots[i]
            torch._assert_async(((knot - v).abs() <= 1e-6 * knot).all(),
                                "AnalyticPrecond.on_grid(): a time is off the tabulated grid")
            idx.append(i)
        return table[:, idx[0], idx[1]]

    def _fg(self, t, s):
        t, s = torch.broadcast_tensors(torch.as_tensor(t), torch.as_tensor(s))
        dtype = t.dtype if t.is_floating_point() else torch.float64
        if getattr(self, "_on_grid", False) and self.table is not None:
            f, g = self._grid_lookup(t, s)  # already on t's device
            return f.to(dtype), g.to(dtype)
        found = self._lookup(t, s)
        f, g = self.table[:, found[0], found[1]] if found is not None else self._integrate(t, s)
        return f.to(device=t.device, dtype=dtype), g.to(device=t.device, dtype=dtype)

    def f(self, t, s):
        return self._fg(t, s)[0]

    def g(self, t, s):
        return self._fg(t, s)[1]

    def fg(self, t, s):
        return self._fg(t, s)

    def describe(self):
        return {"name": "analytic", "form": self.form, "ode": type(self.ode).__name__}
