"""Generalized teacher ODE {l, s} and its first-order jumps (math note, section 3).

In lambda-time (EDM: lambda = -log t) the teacher ODE dx/dlambda = D - x is rewritten as

    dx/dlambda = -(1 - l) x + g_phi,   g_phi = D - l x,   g_phi(lambda) = exp(int_{lambda_t}^lambda s) h(lambda)

and integrated exactly by variation of constants:

    x_s = A x_t + int w h dlambda,   A = exp(-int_{lambda_t}^{lambda_s} (1 - l)),
    w(lambda) = exp(-int_lambda^{lambda_s} (1 - l) + int_{lambda_t}^lambda s).

Freezing h at (x_t, t) gives the forward form  f = A - l_t B,  g = B,  B = int w;
freezing it at (x_s, s) gives the backward form f = A/(1 + l_s B'), g = B'/(1 + l_s B'),
B' = int exp(-int_lambda^{lambda_s} (1 - l + s)).  With l = s = 0 both give CTM's (s/t, 1 - s/t).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FORMS = ("forward", "backward")


@dataclass
class ODECoefficients:
    """l(lambda), s(lambda) tabulated on an increasing lambda grid; linear in between, flat outside."""

    lam: torch.Tensor
    l: torch.Tensor
    s: torch.Tensor
    info: dict = field(default_factory=dict)   # how they were obtained (cost, samples, ...)

    def __post_init__(self):
        self.lam, self.l, self.s = (torch.as_tensor(v, dtype=torch.float64) for v in (self.lam, self.l, self.s))
        if not (self.lam.ndim == 1 and self.lam.shape == self.l.shape == self.s.shape):
            raise ValueError("lam, l and s must be 1-D tables of one length")
        if self.lam.numel() > 1 and not bool((self.lam[1:] > self.lam[:-1]).all()):
            raise ValueError("the lambda grid must be strictly increasing")
        if not bool(torch.isfinite(self.l).all() and torch.isfinite(self.s).all()):
            raise ValueError(f"non-finite ODE coefficients: l={self.l.tolist()}, s={self.s.tolist()}")

    def interp(self, table: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return interp1d(self.lam, table, lam)


def interp1d(xp: torch.Tensor, fp: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """np.interp for tensors of any shape (flat extrapolation)."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    x = x.clamp(xp[0], xp[-1])
    i = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


def _cumtrapz(y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Cumulative trapezoid along the last axis, starting at 0; h is the (per-row) step."""
    steps = 0.5 * (y[..., 1:] + y[..., :-1]) * h
    return torch.cat([torch.zeros_like(y[..., :1]), steps.cumsum(-1)], dim=-1)


def _exp_integral(e: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """int exp(e(lambda)) dlambda with e linear on each step: exact when e is piecewise linear."""
    e0, d = e[..., :-1], e[..., 1:] - e[..., :-1]
    small = d.abs() < 1e-8
    d_safe = torch.where(small, torch.ones_like(d), d)
    ratio = torch.where(small, 1 + d / 2, torch.expm1(d_safe) / d_safe)
    return (torch.exp(e0) * ratio * h).sum(-1)


def jump_integrals(coeffs: ODECoefficients, lam_t: torch.Tensor, lam_s: torch.Tensor, points: int = 129):
    """A, B, B' of the module docstring for batched lambda pairs (lam_s >= lam_t)."""
    lam_t, lam_s = torch.broadcast_tensors(lam_t.double(), lam_s.double())
    frac = torch.linspace(0, 1, points, dtype=torch.float64, device=lam_t.device)
    lam = lam_t[..., None] + (lam_s - lam_t)[..., None] * frac        # (..., points)
    h = ((lam_s - lam_t) / (points - 1))[..., None]
    l, s = coeffs.interp(coeffs.l, lam), coeffs.interp(coeffs.s, lam)
    P = _cumtrapz(1 - l, h)                                           # int_{lambda_t}^lambda (1 - l)
    Q = _cumtrapz(s, h)                                               # int_{lambda_t}^lambda s
    A = torch.exp(-P[..., -1])
    B = _exp_integral(-(P[..., -1:] - P) + Q, h)
    R = P + Q
    B_back = _exp_integral(-(R[..., -1:] - R), h)
    return A, B, B_back, l[..., 0], l[..., -1]


def first_order_coefficients(coeffs: ODECoefficients, lam_t, lam_s, form: str = "backward", points: int = 129):
    """(f, g) of the forward or backward first-order form (math note, section 3)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    A, B, B_back, l_t, l_s = jump_integrals(coeffs, lam_t, lam_s, points)
    if form == "forward":
        return A - l_t * B, B
    return A / (1 + l_s * B_back), B_back / (1 + l_s * B_back)


class ODEGeneralization:
    """A choice of {l, s}; ``fit(teacher)`` returns the ODECoefficients for that teacher."""

    def fit(self, teacher) -> ODECoefficients:
        raise NotImplementedError
