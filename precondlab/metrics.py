"""Evaluation of a student on a low-dimensional teacher, at fixed noise and fixed projections.

* ``swd/nfe{k}``: sliced Wasserstein-2 between k-step student samples and data samples;
* ``traj_mse/nfe{k}``: per-dimension squared error between the k-step student and the teacher's
  exact flow from the same noise (trajectory alignment);
* ``jump_mse``: analytic teachers only: E|G(x_t, t, s) - Phi_{t->s}(x_t)|^2 / d on fixed grid pairs.
"""

from __future__ import annotations

from typing import Sequence

import gin
import torch

from precondlab.registry import get
from precondlab.sampling import sample_student
from precondlab.teachers.solvers import reference_flow


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: torch.Tensor) -> float:
    """SW2 with the given unit projections (d, P); a and b have equal sample counts."""
    pa = torch.sort(a.reshape(a.shape[0], -1).double() @ projections, dim=0).values
    pb = torch.sort(b.reshape(b.shape[0], -1).double() @ projections, dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())


@gin.configurable("evaluator")
class Evaluator:
    def __init__(self,
                 num_samples: int = 2048,             # fixed noise draws per evaluation
                 nfes: Sequence[int] = (1, 2),        # step counts evaluated
                 sampler: str = "deterministic",      # registered sampler used for the k-step samples
                 num_projections: int = 128,          # sliced-Wasserstein directions
                 num_jump_pairs: int = 512,           # (t, s) pairs for jump_mse
                 reference_steps: int = 256,          # RK4 steps of the exact flow
                 seed: int = 1234):
        self.num_samples, self.nfes, self.sampler = num_samples, tuple(nfes), get("sampler", sampler)
        self.num_projections, self.num_jump_pairs = num_projections, num_jump_pairs
        self.reference_steps, self.seed = reference_steps, seed
        self.ready = False

    def setup(self, teacher, train_grid: torch.Tensor | None = None):
        """Draw the fixed noise, data, projections and (analytic teachers) exact flows once."""
        gen = torch.Generator().manual_seed(self.seed)
        sched = teacher.schedule
        self.teacher = teacher
        self.z = torch.randn(self.num_samples, *teacher.shape, generator=gen, dtype=torch.float64)
        self.data = teacher.sample_x0(self.num_samples, gen)
        proj = torch.randn(teacher.dim, self.num_projections, generator=gen, dtype=torch.float64)
        self.projections = proj / proj.norm(dim=0, keepdim=True)
        self.exact = None
        if teacher.analytic:
            x_T = sched.sigma_max * self.z
            self.exact = reference_flow(teacher, x_T, sched.sigma_max, sched.sigma_min, self.reference_steps)
            if train_grid is not None and self.num_jump_pairs > 0:
                N = train_grid.numel()
                i = torch.randint(0, N - 1, (self.num_jump_pairs,), generator=gen)
                j = i + 1 + (torch.rand(self.num_jump_pairs, generator=gen, dtype=torch.float64) * (N - 1 - i)).long()
                self.pair_t, self.pair_s = train_grid[i].double(), train_grid[j].double()
                x0 = teacher.sample_x0(self.num_jump_pairs, gen)
                self.pair_x = x0 + self.pair_t[:, None] * torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
                self.pair_target = reference_flow(teacher, self.pair_x, self.pair_t, self.pair_s, self.reference_steps)
        self.ready = True
        return self

    def samples(self, precond, net, nfe: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
        return sample_student(self.sampler, precond, net, self.z, self.teacher.schedule, nfe,
                              seed=self.seed, device=device, dtype=dtype).double()

    def log_artifacts(self, log, precond, net, device="cpu") -> None:
        """The sample scatter plot (data, exact flow, student at each NFE)."""
        from precondlab import plots
        log.figure(plots.samples(self, precond, net, device), "samples.png")

    @torch.no_grad()
    def __call__(self, precond, net, device="cpu", dtype=torch.float32) -> dict[str, float]:
        out = {}
        for nfe in self.nfes:
            x = self.samples(precond, net, nfe, device, dtype)
            out[f"swd/nfe{nfe}"] = sliced_wasserstein(x, self.data, self.projections)
            if self.exact is not None:
                out[f"traj_mse/nfe{nfe}"] = float(((x - self.exact) ** 2).mean())
        if self.exact is not None and hasattr(self, "pair_x"):
            x = self.pair_x.to(device=device, dtype=dtype)
            pred = precond.jump(net, x, self.pair_t.to(device=device, dtype=dtype),
                                self.pair_s.to(device=device, dtype=dtype))
            out["jump_mse"] = float(((pred.double().cpu() - self.pair_target) ** 2).mean())
        return out
