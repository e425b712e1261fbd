"""The preconditioning interface: G(x_t, t, s) = f(t, s) x_t + g(t, s) F(x_t, t, s).

A preconditioner owns the outer pair (f, g) and the inner scalings with which the raw network
is called. ``jump(net, x, t, s)`` is the student G. ``denoiser_form`` says whether F stands for
a denoiser (CTM, Analytic): then the consistency gap applies and the DSM regulariser trains
F(x, t, t) as D(x, t).
"""

from __future__ import annotations

import contextlib

import torch

from precondlab.labels import with_labels
from precondlab.schedules import EDMSchedule, Schedule, _bcast


def edm_scalings(t: torch.Tensor, sigma_data: float):
    """EDM's c_skip, c_out, c_in, c_noise (Karras et al. 2022, Table 1)."""
    sd2 = sigma_data ** 2
    c_skip = sd2 / (t ** 2 + sd2)
    c_out = t * sigma_data / (t ** 2 + sd2).sqrt()
    c_in = 1 / (t ** 2 + sd2).sqrt()
    c_noise = t.log() / 4
    return c_skip, c_out, c_in, c_noise


class Preconditioner:
    denoiser_form = True   # F stands for D(x_t, t) (forward) or D(x_s, s) (backward).
    uses_s = True          # False where s is pinned to sigma_min (CM).

    def __init__(self, schedule: Schedule | None = None):
        self.schedule = schedule or EDMSchedule()

    @property
    def sigma_data(self) -> float:
        return self.schedule.sigma_data

    # -- the outer pair ------------------------------------------------------------------
    def f(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fg(self, t: torch.Tensor, s: torch.Tensor):
        return self.f(t, s), self.g(t, s)

    def tabulate(self, grid: torch.Tensor) -> "Preconditioner":
        """Precompute coefficients on a time grid where that saves work (Analytic does)."""
        return self

    @contextlib.contextmanager
    def on_grid(self):
        """Promise that every (t, s) inside lies on the grid given to tabulate() (a training step):
        coefficients are then looked up on the device with no host round trip."""
        before, self._on_grid = getattr(self, "_on_grid", False), True
        try:
            yield self
        finally:
            self._on_grid = before

    def fit(self, teacher) -> "Preconditioner":
        """Estimate whatever the coefficients need from the teacher (only Analytic does)."""
        return self

    def statistics(self) -> dict | None:
        """What fit() estimated, as tensors and plain values (a training checkpoint keeps it)."""
        return None

    def restore_statistics(self, teacher, saved: dict | None) -> "Preconditioner":
        """Take the statistics a checkpoint kept instead of estimating them again (a resumed run)."""
        return self.fit(teacher)

    # -- the student ---------------------------------------------------------------------
    def network_output(self, net, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                       class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """F: by default CTM's EDM-scaled denoiser D_theta(x_t, t, s) (math note, section 3)."""
        c_skip, c_out, c_in, c_noise = edm_scalings(t, self.sigma_data)
        _, _, _, c_noise_s = edm_scalings(s, self.sigma_data)
        F_x = with_labels(net, _bcast(c_in, x) * x, c_noise, c_noise_s, class_labels=class_labels)
        return _bcast(c_skip, x) * x + _bcast(c_out, x) * F_x

    def jump(self, net, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
             class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """G(x_t, t, s) = f x_t + g F (class_labels: a class-conditional student's one-hot labels)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device).expand(x.shape[0])
        f, g = self.fg(t, s)
        F = with_labels(self.network_output, net, x, t, s, class_labels=class_labels)
        return _bcast(f, x) * x + _bcast(g, x) * F

    def describe(self) -> dict:
        """What names this preconditioning in a run's params (precond.*) and default name."""
        from precondlab.registry import name_of
        return {"name": name_of(self).split(".")[-1]}
