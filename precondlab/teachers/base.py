"""The teacher interface: a denoiser D(x, t) ~ E[x_0 | x_t] on a schedule, and its data."""

from __future__ import annotations

import torch

from precondlab.labels import with_labels
from precondlab.schedules import EDMSchedule, Schedule


def sample_data(teacher, n: int, generator: torch.Generator | None = None):
    """(x0, one-hot labels or None): teacher.sample_data, or sample_x0's examples without labels
    for a teacher (a plugin's) that has only the contract's sample_x0."""
    if hasattr(teacher, "sample_data"):
        return teacher.sample_data(n, generator)
    return teacher.sample_x0(n, generator), None


def check_labels(teacher, x: torch.Tensor, class_labels: torch.Tensor | None) -> None:
    """A class-conditional teacher needs one-hot labels of shape (N, label_dim); an unconditional
    one takes none. Both mistakes are refused: EDM's wrapper would answer for label zero."""
    name, label_dim = getattr(teacher, "source", None) or type(teacher).__name__, getattr(teacher, "label_dim", 0)
    if label_dim and class_labels is None:
        raise ValueError(f"{name} is class-conditional ({label_dim} classes): its denoiser needs class_labels, "
                         f"one-hot of shape (N, {label_dim}), drawn with the data (teacher.sample_data)")
    if not label_dim and class_labels is not None:
        raise ValueError(f"{name} is unconditional: it takes no class_labels (got shape {tuple(class_labels.shape)})")
    if class_labels is not None and tuple(class_labels.shape) != (x.shape[0], label_dim):
        raise ValueError(f"{name}: class_labels must be one-hot of shape (N, label_dim) = "
                         f"{(x.shape[0], label_dim)}, got {tuple(class_labels.shape)}")


class Teacher:
    schedule: Schedule
    dim: int                 # number of scalars per example (C*H*W for images)
    label_dim = 0            # classes of a class-conditional teacher (EDM's one-hot labels); 0: none
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

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n training examples and, for a class-conditional teacher, each one's one-hot label
        (N, label_dim) drawn with it; None for an unconditional one (the same draws as sample_x0)."""
        return self.sample_x0(n, generator), None

    def velocity(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """dx/dt of the probability-flow ODE (EDM: (x - D)/t)."""
        tb = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        tb = tb.reshape(tb.shape + (1,) * (x.ndim - tb.ndim))
        return (x - with_labels(self.denoise, x, t, class_labels=class_labels)) / tb

    def describe(self) -> dict:
        return {"teacher": type(self).__name__, "dim": self.dim}
