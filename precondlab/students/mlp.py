"""An MLP student F(x, c_noise(t), c_noise(s)) for low-dimensional teachers."""

from __future__ import annotations

import math

import torch
from torch import nn

from precondlab.registry import register


class FourierEmbedding(nn.Module):
    """sin/cos of a scalar at fixed log-spaced frequencies, in cycles per unit of the scalar.

    The scalar is c_noise = log(t)/4, which spans [-1.55, 1.10] on the EDM range. The slowest
    frequency (0.1: period 10) is monotone across that whole span; the fastest (4: period 0.25)
    still spans about three steps of CTM's N = 18 training grid (0.08-0.33 apart in c_noise).
    With frequencies up to 32 (period 0.03, the old default) each grid time got features of its
    own, the student learned the grid times only, and 2-step sampling through a time between
    them (the default 80 -> 2.515 -> 0.002) was 3-4x worse than through a grid time, and got
    worse with training (benchmarks/toy_time_conditioning.py).
    """

    def __init__(self, num_freqs: int = 16, max_freq: float = 4.0, min_freq: float = 0.1):
        super().__init__()
        from precondlab import validation as v
        v.positive_float("student.mlp.min_freq", min_freq)
        if not v.positive_float("student.mlp.max_freq", max_freq) >= min_freq:
            raise v.SettingError(f"student.mlp.max_freq = {max_freq!r}: must be at least min_freq = {min_freq!r}")
        self.register_buffer("freqs", 2 * math.pi * torch.logspace(math.log10(min_freq), math.log10(max_freq), num_freqs))

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
                 num_freqs: int = 16,       # Fourier frequencies per conditioning scalar
                 max_freq: float = 4.0,     # fastest, in cycles per unit of c_noise = log(t)/4
                 min_freq: float = 0.1):    # slowest (see FourierEmbedding)
        super().__init__()
        from precondlab import validation as v
        for setting, value in (("dim", dim), ("hidden", hidden), ("depth", depth), ("num_freqs", num_freqs)):
            v.positive_int(f"student.mlp.{setting}", value)
        self.embed_t = FourierEmbedding(num_freqs, max_freq, min_freq)
        self.embed_s = FourierEmbedding(num_freqs, max_freq, min_freq)
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
