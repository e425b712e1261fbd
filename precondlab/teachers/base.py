"""The teacher interface: a denoiser D(x, t) ~ E[x_0 | x_t] on a schedule, and its data."""

from __future__ import annotations

import torch

from precondlab.schedules import EDMSchedule, Schedule


class Teacher:
    schedule: Schedule
    dim: int                 # number of scalars per example (C*H*W for images)
    shape: tuple[int, ...]   # shape of one example
    analytic = False         # True where the exact flow may be computed by a fine integrator

    def __init__(self, schedule: Schedule | None = None):
        self.schedule = schedule or EDMSchedule()

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """D(x, t) for a batch x of shape (B, *shape) and t of shape (B,) or ()."""
        raise NotImplementedError

    def sample_x0(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws from the data distribution the teacher models (float64 on the CPU)."""
        raise NotImplementedError

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """dx/dt of the probability-flow ODE (EDM: (x - D)/t)."""
        tb = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        tb = tb.reshape(tb.shape + (1,) * (x.ndim - tb.ndim))
        return (x - self.denoise(x, t)) / tb

    def describe(self) -> dict:
        return {"teacher": type(self).__name__, "dim": self.dim}
