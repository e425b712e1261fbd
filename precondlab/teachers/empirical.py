"""The exact optimal denoiser of a finite point set: a data-backed analytic teacher."""

from __future__ import annotations

import torch

from precondlab.registry import register
from precondlab.schedules import Schedule
from precondlab.teachers.base import Teacher, check_labels


@register("teacher", "empirical")
class EmpiricalTeacher(Teacher):
    """D(x, t) = sum_i softmax_i(-|x - y_i|^2 / 2t^2) y_i for a point set {y_i}."""

    analytic = True

    def __init__(self, points=None, schedule: Schedule | None = None, chunk: int = 4096):
        super().__init__(schedule)
        if points is None:
            raise ValueError("teacher.empirical needs `points`: bind e.g. "
                             "teacher.empirical.points = @dataset.two_moons()")
        y = torch.as_tensor(points, dtype=torch.float64)
        self.points = y.reshape(y.shape[0], -1)
        self.shape = tuple(y.shape[1:])
        self.dim = self.points.shape[1]
        self.chunk = chunk

    def denoise(self, x, t, class_labels=None):
        if class_labels is not None:
            check_labels(self, x, class_labels)   # unconditional: refused with a message
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        flat = x.reshape(*x.shape[: x.ndim - len(self.shape)], self.dim)
        y = self.points.to(flat)
        # |x - y|^2 without forming the (B, N, d) difference tensor.
        sq = (flat ** 2).sum(-1, keepdim=True) - 2 * flat @ y.T + (y ** 2).sum(-1)
        w = torch.softmax(-sq / (2 * t[..., None] ** 2), dim=-1)
        return (w @ y).reshape(x.shape)

    def sample_x0(self, n, generator=None):
        idx = torch.randint(self.points.shape[0], (n,), generator=generator)
        return self.points[idx].reshape(n, *self.shape)

    def describe(self):
        return {"teacher": "empirical", "dim": self.dim, "num_points": self.points.shape[0]}
