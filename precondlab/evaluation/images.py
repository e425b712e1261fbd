"""Evaluation of a student on an image teacher (EDM network teachers, trained teachers).

* ``align_mse/nfe{k}``, ``psnr/nfe{k}``: trajectory alignment: the k-step student against the
  teacher's Heun samples from the same noise;
* ``fid/nfe{k}`` (clean-fid, Inception) or ``fd_classifier/nfe{k}`` (the labelled substitute,
  NOT FID) every ``fid_every``-th evaluation, on ``fid.num_samples`` fresh samples;
* sample grids (PNG) of the teacher and of the student at each NFE, logged as artifacts.
"""

from __future__ import annotations

from typing import Sequence

import gin
import torch

from precondlab.registry import get
from precondlab.samplers import check_nfe_times, describe_times, nfe_times, sample_student
from precondlab.teachers.solvers import solve


@gin.configurable("image_evaluator")
class ImageEvaluator:
    def __init__(self,
                 nfes: Sequence[int] = (1, 2),       # step counts evaluated
                 sampler: str = "deterministic",     # registered sampler for the k-step samples
                 nfe_times=None,                     # {k: (sigma_max, ..., sigma_min)}; default Karras k+1
                 num_align: int = 256,               # fixed noise draws for trajectory alignment
                 teacher_steps: int = 18,            # Heun grid points of the teacher reference (NFE 2N-1)
                 fid=None,                           # a FIDEvaluator (@fid()), or None for no FID
                 fid_every: int = 1,                 # FID at every k-th evaluation (it is the dear part)
                 batch_size: int = 256,              # sampling batch
                 grid_images: int = 64,              # images per logged sample grid
                 seed: int = 1234):
        from precondlab import validation as v
        nfes = v.positive_ints("image_evaluator.nfes", nfes)
        v.positive_int("image_evaluator.num_align", num_align)
        v.positive_int("image_evaluator.teacher_steps", teacher_steps)
        v.positive_int("image_evaluator.fid_every", fid_every)
        v.positive_int("image_evaluator.batch_size", batch_size)
        self.nfes, self.sampler = tuple(nfes), get("sampler", sampler)
        self.nfe_times = check_nfe_times("image_evaluator.nfe_times", nfes, nfe_times)
        self.num_align, self.teacher_steps, self.fid, self.fid_every = num_align, teacher_steps, fid, fid_every
        self.batch_size, self.grid_images, self.seed = batch_size, grid_images, seed
        self.calls = 0
        self.info: dict = {}

    def setup(self, teacher, train_grid=None):
        self.teacher = teacher
        self.times = nfe_times(teacher.schedule, self.nfes, self.nfe_times, "image_evaluator.nfe_times")
        self.info.update({f"times.nfe{k}": describe_times(ts) for k, ts in self.times.items()})
        if self.fid is not None:
            # First, so that a missing Inception file or dataset fails before the teacher's Heun
            # references: the feature extractor, the reference statistics (and the substitute
            # classifier, if it must be trained) now, with autograd on, not inside an evaluation.
            self.fid.setup(getattr(teacher, "dataset", None))
            self.fid.reference_stats()
            self.info.update(self.fid.info)
            self.info.update(self.fid.describe())  # logged as eval.* right after setup
        sched = teacher.schedule
        gen = torch.Generator().manual_seed(self.seed)
        self.z = torch.randn(self.num_align, *teacher.shape, generator=gen)
        ts = sched.karras(self.teacher_steps).tolist()
        with torch.no_grad():
            self.reference = torch.cat([solve(teacher, sched.sigma_max * z, ts, "heun")
                                        for z in self.z.split(self.batch_size)])
        return self

    def state_dict(self) -> dict:
        """What changes between evaluations (kept in training checkpoints): the FID cadence."""
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state.get("calls", self.calls))

    def _sample(self, precond, net, nfe, z, device):
        return sample_student(self.sampler, precond, net, z, self.teacher.schedule, self.times[nfe], seed=self.seed,
                              device=device, batch_size=self.batch_size).float()

    def __call__(self, precond, net, device="cpu", dtype=torch.float32) -> dict[str, float]:
        from precondlab.evaluation import alignment
        out = {}
        do_fid = self.fid is not None and self.calls % self.fid_every == 0
        self.calls += 1
        for nfe in self.nfes:
            x = self._sample(precond, net, nfe, self.z, device)
            align = alignment(x, self.reference.float())
            out[f"align_mse/nfe{nfe}"], out[f"psnr/nfe{nfe}"] = align["mse"], align["psnr"]
            if do_fid:
                gen = torch.Generator().manual_seed(self.seed + 1000 * nfe)
                draw = lambda n: self._sample(precond, net, nfe, torch.randn(n, *self.teacher.shape, generator=gen), device)  # noqa: E731
                result = self.fid(draw, tag=f"nfe{nfe}")
                out.update({k: v for k, v in result.items() if isinstance(v, (int, float)) and "/" in k})
                self.info.update({k: v for k, v in result.items() if "/" not in k})
        return out

    def log_artifacts(self, log, precond, net, device="cpu", title: str = "") -> None:
        from precondlab.evaluation import save_grid
        z = self.z[: self.grid_images]
        save_grid(self.reference[: self.grid_images], log.tmp / "teacher_heun.png")
        log.artifact(log.tmp / "teacher_heun.png", "samples")
        with torch.no_grad():
            for nfe in self.nfes:
                path = log.tmp / f"student_nfe{nfe}.png"
                save_grid(self._sample(precond, net, nfe, z, device), path)
                log.artifact(path, "samples")
        if self.info:
            log.params({f"eval.{k}": v for k, v in self.info.items()})
