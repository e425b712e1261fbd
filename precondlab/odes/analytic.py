"""Analytic-Precond: l(lambda), s(lambda) estimated from the teacher (math note, section 4).

    l_t = E[ tr(grad_x D(x_t, t)) ] / d
    s_t = E<g_phi, dg_phi/dlambda> / E|g_phi|^2,    g_phi = D - l x

dg_phi/dlambda is the total derivative along the teacher ODE: one JVP of D with tangent
(dx/dlambda = D - x, dt/dlambda = -t), minus (dl/dlambda) x + l (D - x). The expectations use
common random numbers (the same x_0 and noise at every grid point), so l is smooth in lambda
and its finite-difference derivative is usable.
"""

from __future__ import annotations

import time

import torch
from torch.func import jvp

from precondlab.odes.base import ODECoefficients, ODEGeneralization
from precondlab.registry import register


def jacobian_trace(fn, x: torch.Tensor, method: str, probes: int, generator: torch.Generator | None):
    """Per-example tr(d fn / dx): exact (one JVP per coordinate) or Hutchinson (Rademacher)."""
    flat_dim = x[0].numel()
    trace = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    if method == "exact":
        for j in range(flat_dim):
            v = torch.zeros_like(x).reshape(x.shape[0], -1)
            v[:, j] = 1
            _, jv = jvp(fn, (x,), (v.reshape(x.shape),))
            trace += jv.reshape(x.shape[0], -1)[:, j]
        return trace, flat_dim
    for _ in range(probes):
        v = torch.randint(0, 2, x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
        _, jv = jvp(fn, (x,), (v,))
        trace += (v * jv).reshape(x.shape[0], -1).sum(-1)
    return trace / probes, probes


@register("ode", "analytic")
class AnalyticODE(ODEGeneralization):
    """l_t, s_t estimated from teacher statistics on a lambda grid (Analytic-Precond)."""

    def __init__(self,
                 num_points: int = 120,        # lambda grid points (paper: 120)
                 num_samples: int = 4096,      # Monte-Carlo samples per point (paper: 4096)
                 trace: str = "auto",          # 'exact', 'hutchinson', or 'auto' (exact if dim <= exact_max_dim)
                 exact_max_dim: int = 16,
                 probes: int = 1,              # Hutchinson probes per sample
                 batch_size: int = 4096,
                 seed: int = 0,
                 device: str = "cpu"):
        if trace not in ("auto", "exact", "hutchinson"):
            raise ValueError(f"trace must be 'auto', 'exact' or 'hutchinson', got {trace!r}")
        self.num_points, self.num_samples, self.trace = num_points, num_samples, trace
        self.exact_max_dim, self.probes, self.batch_size = exact_max_dim, probes, batch_size
        self.seed, self.device = seed, device

    def fit(self, teacher) -> ODECoefficients:
        start = time.perf_counter()
        sched = teacher.schedule
        gen = torch.Generator().manual_seed(self.seed)
        method = self.trace
        if method == "auto":
            method = "exact" if teacher.dim <= self.exact_max_dim else "hutchinson"
        x0 = teacher.sample_x0(self.num_samples, gen)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        lam = sched.lam_grid(self.num_points)  # uniform in lambda
        ts = sched.t_of_lam(lam)
        dev = torch.device(self.device)
        evals = 0

        def batches():
            for i in range(0, self.num_samples, self.batch_size):
                yield x0[i:i + self.batch_size].to(dev), noise[i:i + self.batch_size].to(dev)

        # Pass 1: l_t = E tr(grad D) / d on the (uniform) grid plus two points beyond each end, so
        # that dl/dlambda is a 4th-order central difference everywhere: one-sided or 2nd-order
        # differences bias s_t visibly near sigma_min, where l changes fastest relative to 1 - l.
        h = lam[1] - lam[0]
        lam_ext = torch.cat([lam[:1] - 2 * h, lam[:1] - h, lam, lam[-1:] + h, lam[-1:] + 2 * h])
        l_ext = torch.zeros(lam_ext.numel(), dtype=torch.float64)
        for i, t in enumerate(sched.t_of_lam(lam_ext)):
            total = 0.0
            for xb, nb in batches():
                x = sched.add_noise(xb, t, nb)
                tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=dev)
                tr, n_jvp = jacobian_trace(lambda y: teacher.denoise(y, tt), x, method, self.probes, gen)
                total += float(tr.sum())
                evals += n_jvp * x.shape[0]
            l_ext[i] = total / (self.num_samples * teacher.dim)
        l = l_ext[2:-2]
        dl = (-l_ext[4:] + 8 * l_ext[3:-1] - 8 * l_ext[1:-3] + l_ext[:-4]) / (12 * h)

        # Pass 2: s_t from the total derivative of g_phi along the ODE.
        s = torch.zeros(self.num_points, dtype=torch.float64)
        for i, t in enumerate(ts):
            num = den = 0.0
            for xb, nb in batches():
                x = sched.add_noise(xb, t, nb)
                tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=dev)
                D = teacher.denoise(x, tt)
                _, dD = jvp(teacher.denoise, (x, tt), (D - x, -tt))      # dt/dlambda = -t (EDM)
                g = D - l[i] * x
                dg = dD - dl[i] * x - l[i] * (D - x)
                num += float((g * dg).sum())
                den += float((g * g).sum())
                evals += 2 * x.shape[0]
            s[i] = num / den if den > 0 else 0.0

        seconds = time.perf_counter() - start
        info = {"ode": "analytic", "trace": method, "num_points": self.num_points,
                "num_samples": self.num_samples, "denoiser_evals": evals, "seconds": seconds}
        return ODECoefficients(lam, l, s, info=info)
