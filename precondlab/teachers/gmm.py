"""Gaussian-mixture teacher with isotropic components: its denoiser is exact."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from precondlab.registry import register
from precondlab.schedules import Schedule
from precondlab.teachers.base import Teacher, check_labels


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
        self._cache: dict = {}

    def _tables(self, like: torch.Tensor):
        """Means, component variances and log weights in ``like``'s dtype and device (made once each)."""
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = tuple(v.to(like) for v in (self.means, self.stds ** 2, self.weights.log()))
        return self._cache[key]

    def _posterior(self, x: torch.Tensor, t: torch.Tensor):
        """Responsibilities r_k(x, t), per-component variances v_k = std_k^2 + t^2, shrink factors
        std_k^2 / v_k, and the offsets x - mu_k; log N(x; mu_k, v_k I) up to the shared constant."""
        means, var0, logw = self._tables(x)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        var = var0 + t[..., None] ** 2                                    # (..., K)
        diff = x[..., None, :] - means                                    # (..., K, d)
        logp = logw - 0.5 * (diff.square().sum(-1) / var + self.dim * var.log())
        return torch.softmax(logp, dim=-1), var, var0 / var, diff, logp

    def denoise(self, x, t, class_labels=None):
        """D = sum_k r_k (mu_k + shrink_k (x - mu_k)), the posterior mean of x_0, summed as
        (r - r shrink) @ mu + (sum_k r_k shrink_k) x: no K x d product (12% of a training step's teacher)."""
        if class_labels is not None:
            check_labels(self, x, class_labels)   # unconditional: refused with a message
        r, _, shrink, _, _ = self._posterior(x, t)
        rs = r * shrink
        return (r - rs) @ self._tables(x)[0] + rs.sum(-1, keepdim=True) * x

    def denoiser_trace(self, x, t):
        """tr(dD/dx) per example in closed form (what Analytic-Precond's l_t averages):
        d sum_k r_k shrink_k + sum_k r_k (m_k - D) . g_k, with m_k = mu_k + shrink_k (x - mu_k) the
        component means and g_k = -(x - mu_k) / v_k the component scores (grad r_k = r_k (g_k - sum_j r_j g_j))."""
        r, var, shrink, diff, _ = self._posterior(x, t)
        means = self._tables(x)[0]
        m = means + shrink[..., None] * diff                              # (..., K, d)
        D = (r[..., None] * m).sum(-2, keepdim=True)
        g = -diff / var[..., None]
        return self.dim * (r * shrink).sum(-1) + (r * ((m - D) * g).sum(-1)).sum(-1)

    def log_prob(self, x, t):
        """log p_t(x) of the noised mixture (used in tests and diagnostics)."""
        return torch.logsumexp(self._posterior(x, t)[4], dim=-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def sample_x0(self, n, generator=None):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z

    def describe(self):
        return {"teacher": "gmm", "dim": self.dim, "num_components": self.means.shape[0]}
