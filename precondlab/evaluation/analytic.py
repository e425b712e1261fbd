"""Evaluation of a student on a low-dimensional teacher, at fixed noise and fixed projections.

* ``swd/nfe{k}``: sliced Wasserstein-2 between k-step student samples and data samples;
* ``traj_mse/nfe{k}``: per-dimension squared error between the k-step student and the teacher's
  exact flow from the same noise (trajectory alignment);
* ``jump_mse``: analytic teachers only: E|G(x_t, t, s) - Phi_{t->s}(x_t)|^2 / d on fixed grid pairs.

The k-step times are a Karras grid of k + 1 points unless ``nfe_times`` says otherwise; they
are logged as the parameters ``eval.times.nfe{k}`` and printed in the run's summary. At the end
of a run on an analytic teacher, the 2-step error as a function of the intermediate time is
logged (``plots/two_step_vs_time.png`` and ``eval/two_step_vs_time.json``): a student that is
accurate only on its training grid shows there as spikes between grid times.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import gin
import torch

from precondlab.registry import get
from precondlab.samplers import check_nfe_times, describe_times, nfe_times, sample_student
from precondlab.teachers.solvers import reference_flow


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: torch.Tensor) -> float:
    """SW2 with the given unit projections (d, P); a and b have equal sample counts."""
    pa = torch.sort(a.reshape(a.shape[0], -1).double() @ projections, dim=0).values
    pb = torch.sort(b.reshape(b.shape[0], -1).double() @ projections, dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def intermediate_times(schedule, train_grid: torch.Tensor | None, per_interval: int = 1) -> list[float]:
    """Intermediate times for the 2-step probe: the training grid's inner points, ``per_interval``
    points between neighbours (geometric), t = 1 (c_noise = 0) and the default 2-step time."""
    lo, hi = schedule.sigma_min, schedule.sigma_max
    times = {1.0, float(schedule.karras(3)[1])}
    if train_grid is not None:
        grid = sorted(float(t) for t in train_grid if lo < float(t) < hi)
        times.update(grid)
        for a, b in zip(grid[:-1], grid[1:]):
            times.update(a * (b / a) ** (i / (per_interval + 1)) for i in range(1, per_interval + 1))
    return sorted(t for t in times if lo < t < hi)


@gin.configurable("evaluator")
class Evaluator:
    def __init__(self,
                 num_samples: int = 2048,             # fixed noise draws per evaluation
                 nfes: Sequence[int] = (1, 2),        # step counts evaluated
                 sampler: str = "deterministic",      # registered sampler used for the k-step samples
                 nfe_times: Mapping[int, Sequence[float]] | None = None,  # {k: (sigma_max, ..., sigma_min)}; default Karras k+1
                 num_projections: int = 128,          # sliced-Wasserstein directions
                 num_jump_pairs: int = 512,           # (t, s) pairs for jump_mse
                 reference_steps: int = 256,          # RK4 steps of the exact flow
                 seed: int = 1234):
        from precondlab import validation as v
        v.positive_int("evaluator.num_samples", num_samples)
        if num_samples < 2:
            raise v.SettingError(f"evaluator.num_samples = {num_samples!r}: must be at least 2")
        nfes = v.positive_ints("evaluator.nfes", nfes)
        v.positive_int("evaluator.num_projections", num_projections)
        v.nonnegative_int("evaluator.num_jump_pairs", num_jump_pairs)
        v.positive_int("evaluator.reference_steps", reference_steps)
        self.num_samples, self.nfes, self.sampler = num_samples, tuple(nfes), get("sampler", sampler)
        self.nfe_times = check_nfe_times("evaluator.nfe_times", nfes, nfe_times)
        self.num_projections, self.num_jump_pairs = num_projections, num_jump_pairs
        self.reference_steps, self.seed = reference_steps, seed
        self.ready = False
        self.info: dict = {}

    def setup(self, teacher, train_grid: torch.Tensor | None = None):
        """Draw the fixed noise, data, projections and (analytic teachers) exact flows once."""
        gen = torch.Generator().manual_seed(self.seed)
        sched = teacher.schedule
        self.teacher, self.train_grid = teacher, train_grid
        self.times = nfe_times(sched, self.nfes, self.nfe_times)
        self.info = {f"times.nfe{k}": describe_times(ts) for k, ts in self.times.items()}
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
        return sample_student(self.sampler, precond, net, self.z, self.teacher.schedule, self.times[nfe],
                              seed=self.seed, device=device, dtype=dtype).double()

    @torch.no_grad()
    def two_step_errors(self, precond, net, taus: Sequence[float], device="cpu", dtype=torch.float32) -> dict:
        """traj_mse of the deterministic 2-step student sigma_max -> tau -> sigma_min, per tau
        (analytic teachers: against the exact flow from the same noise)."""
        if self.exact is None:
            raise ValueError("the 2-step probe needs an analytic teacher (an exact flow to compare with)")
        sched = self.teacher.schedule
        out = {}
        for tau in taus:
            ts = [sched.sigma_max, float(tau), sched.sigma_min]
            x = sample_student(get("sampler", "deterministic"), precond, net, self.z, sched, ts,
                               seed=self.seed, device=device, dtype=dtype).double()
            out[float(tau)] = float(((x - self.exact) ** 2).mean())
        return out

    def log_artifacts(self, log, precond, net, device="cpu", title: str = "") -> None:
        """The sample scatter plot (data, exact flow, student at each NFE) and, on analytic
        teachers, the 2-step error against the intermediate time; ``title`` names run and step."""
        from precondlab.evaluation import plots
        log.figure(plots.samples(self, precond, net, device, title=title), "samples.png")
        if self.exact is not None:
            errors = self.two_step_errors(precond, net, intermediate_times(self.teacher.schedule, self.train_grid),
                                          device)
            grid = [] if self.train_grid is None else [float(t) for t in self.train_grid]
            log.figure(plots.two_step_vs_time(errors, grid, self.times.get(2), title=title), "two_step_vs_time.png")
            log.text(json.dumps({"intermediate_time": list(errors), "traj_mse": list(errors.values()),
                                 "training_grid": grid}, indent=1), "two_step_vs_time.json", "eval")

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
