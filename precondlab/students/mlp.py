"""An MLP student F(x, c_noise(t), c_noise(s)) for low-dimensional teachers."""

from __future__ import annotations

import math

import torch
from torch import nn

from precondlab.registry import register


class FourierEmbedding(nn.Module):
    """sin/cos of a scalar at fixed log-spaced frequencies (c_noise spans about [-1.6, 1.1])."""

    def __init__(self, num_freqs: int = 16, max_freq: float = 32.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.logspace(0, math.log10(max_freq), num_freqs))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        angles = c[:, None].to(self.freqs.dtype) * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


@register("student", "mlp")
class MLPStudent(nn.Module):
    """MLP conditioned on (t, s) by Fourier embeddings; output layer zero-initialised."""

    def __init__(self,
                 dim: int,                  # data dimension (set from the teacher)
                 hidden: int = 256,         # width of every hidden layer
                 depth: int = 4,            # number of hidden layers
                 num_freqs: int = 16):      # Fourier frequencies per conditioning scalar
        super().__init__()
        self.embed_t = FourierEmbedding(num_freqs)
        self.embed_s = FourierEmbedding(num_freqs)
        layers, width = [], dim + 4 * num_freqs
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, dim)
        # Zero output: D_theta starts at c_skip x, the optimal denoiser of N(0, sigma_data^2 I).
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise_t: torch.Tensor, c_noise_s: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, self.embed_t(c_noise_t).to(x.dtype), self.embed_s(c_noise_s).to(x.dtype)], dim=-1)
        return self.out(self.body(h))

    def last_layer(self) -> nn.Parameter:
        """The parameter whose gradient norms set the adaptive DSM weight (CTM)."""
        return self.out.weight
