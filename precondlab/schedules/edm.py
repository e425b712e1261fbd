"""EDM / VE schedule: x_t = x_0 + t * eps (the paper's and the default)."""

from __future__ import annotations

import math

import torch

from precondlab.registry import register
from precondlab.schedules.base import Schedule


@register("schedule", "edm")
class EDMSchedule(Schedule):
    """EDM / VE schedule: alpha = 1, sigma = t, lambda = -log t (math note, section 1)."""

    def __init__(self,
                 sigma_min: float = 0.002,   # eps: smallest time, where sampling stops.
                 sigma_max: float = 80.0,    # largest time, where noise x = sigma_max * z starts.
                 sigma_data: float = 0.5,    # expected std of the data (EDM scalings).
                 rho: float = 7.0):          # Karras grid exponent.
        from precondlab import validation as v
        v.positive_float("schedule.edm.sigma_min", sigma_min)
        v.positive_float("schedule.edm.sigma_max", sigma_max)
        if not sigma_min < sigma_max:
            raise v.SettingError(f"schedule.edm.sigma_min = {sigma_min!r} and sigma_max = {sigma_max!r}: sigma_min "
                                 f"must be below sigma_max")
        v.positive_float("schedule.edm.sigma_data", sigma_data)
        v.positive_float("schedule.edm.rho", rho)
        self.sigma_min, self.sigma_max, self.sigma_data, self.rho = sigma_min, sigma_max, sigma_data, rho

    def alpha(self, t):
        return torch.ones_like(torch.as_tensor(t))

    def sigma(self, t):
        return torch.as_tensor(t)

    def lam(self, t):
        return -torch.log(torch.as_tensor(t))

    def t_of_lam(self, lam):
        return torch.exp(-torch.as_tensor(lam))

    def karras(self, n: int, dtype=torch.float64) -> torch.Tensor:
        """t_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, decreasing, i = 0..n-1."""
        if n < 2:
            raise ValueError(f"a Karras grid needs at least 2 points, got {n}")
        i = torch.arange(n, dtype=dtype)
        a, b = self.sigma_max ** (1 / self.rho), self.sigma_min ** (1 / self.rho)
        return (a + i / (n - 1) * (b - a)) ** self.rho

    def lam_grid(self, n: int, dtype=torch.float64) -> torch.Tensor:
        """n points uniform in lambda from lambda(sigma_max) to lambda(sigma_min)."""
        return torch.linspace(-math.log(self.sigma_max), -math.log(self.sigma_min), n, dtype=dtype)


