"""ODE generalizations with closed-form coefficients."""

from __future__ import annotations

import torch

from precondlab.odes.base import ODECoefficients, ODEGeneralization
from precondlab.registry import register


@register("ode", "euler")
class EulerODE(ODEGeneralization):
    """l = s = 0: the plain teacher ODE; its first-order jump is CTM's (s/t, 1 - s/t)."""

    def fit(self, teacher) -> ODECoefficients:
        zero = torch.zeros(1, dtype=torch.float64)
        return ODECoefficients(zero, zero, zero.clone(), info={"ode": "euler"})


@register("ode", "gaussian")
class GaussianODE(ODEGeneralization):
    """l = EDM c_skip = sd^2/(sd^2 + t^2): the optimal l when the data are N(mu, sd^2 I).

    s = 0 by default; ``s_rule='gaussian_mean'`` uses s = -2 c_skip, the exact s for Gaussian
    data with a non-zero mean (g_phi = (1 - c_skip) mu, so d log|g_phi|/dlambda = -2 c_skip).
    """

    def __init__(self, sigma_data: float | None = None, s_rule: str = "zero", num_points: int = 1024):
        if s_rule not in ("zero", "gaussian_mean"):
            raise ValueError(f"s_rule must be 'zero' or 'gaussian_mean', got {s_rule!r}")
        self.sigma_data, self.s_rule, self.num_points = sigma_data, s_rule, num_points

    def fit(self, teacher) -> ODECoefficients:
        schedule = teacher.schedule
        sd = self.sigma_data if self.sigma_data is not None else schedule.sigma_data
        lam = schedule.lam_grid(self.num_points)
        t = schedule.t_of_lam(lam)
        c_skip = sd ** 2 / (sd ** 2 + t ** 2)
        s = -2 * c_skip if self.s_rule == "gaussian_mean" else torch.zeros_like(c_skip)
        return ODECoefficients(lam, c_skip, s, info={"ode": "gaussian", "sigma_data": sd, "s_rule": self.s_rule})
