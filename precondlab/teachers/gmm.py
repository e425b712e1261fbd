"""Gaussian-mixture teacher with isotropic components: its denoiser is exact."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from precondlab.registry import register
from precondlab.schedule import Schedule
from precondlab.teachers.base import Teacher


@register("teacher", "gmm")
class GMMTeacher(Teacher):
    """Gaussian mixture sum_k w_k N(mu_k, std_k^2 I) with its exact denoiser (analytic teacher)."""

    analytic = True

    def __init__(self,
                 means: Sequence[Sequence[float]] | None = None,  # K x d component means (explicit form)
                 stds: Sequence[float] | None = None,             # K component stds
                 weights: Sequence[float] | None = None,          # K weights (normalised here)
                 dim: int = 8,                                    # generated form: data dimension
                 num_components: int = 6,                         # generated form: K
                 mean_spread: float = 0.5,                        # generated form: means ~ N(0, spread^2 I)
                 component_std: float = 0.05,                     # generated form: every std_k
                 seed: int = 0,                                   # generated form: seed of the means
                 schedule: Schedule | None = None):
        super().__init__(schedule)
        if means is None:
            gen = torch.Generator().manual_seed(seed)
            means = mean_spread * torch.randn(num_components, dim, generator=gen, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"gmm means must be a K x d nested list, got shape {tuple(self.means.shape)}")
        K, d = self.means.shape
        stds = [component_std] * K if stds is None else stds
        weights = [1.0] * K if weights is None else weights
        self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
        self.weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if self.stds.numel() != K or self.weights.numel() != K:
            raise ValueError(f"gmm has {K} means but {self.stds.numel()} stds and {self.weights.numel()} weights")
        if (self.stds <= 0).any() or (self.weights <= 0).any():
            raise ValueError("gmm stds and weights must be positive")
        self.weights = self.weights / self.weights.sum()
        self.dim, self.shape = d, (d,)

    def _posterior(self, x: torch.Tensor, t: torch.Tensor):
        """Responsibilities r_k(x, t) and per-component variances std_k^2 + t^2."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        means, stds, weights = (v.to(x) for v in (self.means, self.stds, self.weights))
        var = stds ** 2 + t[..., None] ** 2                              # (..., K)
        sq = ((x[..., None, :] - means) ** 2).sum(-1)                     # (..., K)
        logp = weights.log() - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return torch.softmax(logp, dim=-1), var, logp

    def denoise(self, x, t):
        r, var, _ = self._posterior(x, t)
        means, stds = self.means.to(x), self.stds.to(x)
        shrink = stds ** 2 / var                                          # (..., K)
        comp = means + shrink[..., None] * (x[..., None, :] - means)      # (..., K, d)
        return (r[..., None] * comp).sum(-2)

    def log_prob(self, x, t):
        """log p_t(x) of the noised mixture (used in tests and diagnostics)."""
        return torch.logsumexp(self._posterior(x, t)[2], dim=-1)

    def sample_x0(self, n, generator=None):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z

    def describe(self):
        return {"teacher": "gmm", "dim": self.dim, "num_components": self.means.shape[0]}
