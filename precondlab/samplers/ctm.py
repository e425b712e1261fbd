"""CTM's samplers, one signature for all (k-diffusion style): sampler(jump, x, ts, *, generator=None, **kw).

``jump(x, t, s)`` is the student G; ``x`` is the noise at ts[0] (x = ts[0] * z for EDM);
``ts`` decreases to sigma_min. A k-step sampler makes k = len(ts) - 1 network calls.
"""

from __future__ import annotations

import math

import torch

from precondlab.registry import register


@register("sampler", "deterministic")
def sample_deterministic(jump, x, ts, *, generator=None):
    """Deterministic jumps along ts (CTM multi-step sampling with gamma = 0)."""
    for t, s in zip(ts[:-1], ts[1:]):
        x = jump(x, t, s)
    return x


@register("sampler", "gamma")
def sample_gamma(jump, x, ts, *, generator=None, gamma: float = 0.5):
    """CTM gamma-sampling: jump to s~ = sqrt(1-gamma^2)(t_next - eps) + eps, then renoise to t_next."""
    eps = float(ts[-1])
    for t, t_next in zip(ts[:-1], ts[1:]):
        s_tilde = math.sqrt(1 - gamma ** 2) * (float(t_next) - eps) + eps
        x = jump(x, t, s_tilde)
        extra = math.sqrt(max(float(t_next) ** 2 - s_tilde ** 2, 0.0))
        if extra > 0:
            x = x + extra * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x
