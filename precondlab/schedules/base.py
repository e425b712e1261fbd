"""Noise schedules. The default (and the paper's) is EDM/VE: x_t = x_0 + t * eps.

A schedule gives alpha(t), sigma(t), the log-SNR lambda(t) = log(alpha/sigma), its inverse,
and the Karras time grid. Everything downstream asks the schedule rather than assuming
sigma = t, so a VP schedule can be added as another class.
"""

from __future__ import annotations

import math

import torch



class Schedule:
    sigma_min: float
    sigma_max: float
    sigma_data: float

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def lam(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log(self.alpha(t) / self.sigma(t))

    def t_of_lam(self, lam: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t = _bcast(t, x0)
        return self.alpha(t) * x0 + self.sigma(t) * noise


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(t.shape + (1,) * (like.ndim - t.ndim))
