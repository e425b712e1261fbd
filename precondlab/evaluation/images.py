"""Evaluation of a student on an image teacher (EDM network teachers, trained teachers).

* ``align_mse/nfe{k}``, ``psnr/nfe{k}``: trajectory alignment: the k-step student against the
  teacher's Heun samples from the same noise;
* ``fid/nfe{k}`` (clean-fid, Inception) or ``fd_classifier/nfe{k}`` (the labelled substitute,
  NOT FID) every ``fid_every``-th evaluation, on ``fid.num_samples`` fresh samples;
* sample grids (PNG) of the teacher and of the student at each NFE, logged as artifacts.

A class-conditional teacher's samples (alignment, FID, grids) get labels drawn uniformly over its
classes with the fixed noise, as EDM's generate.py draws them; the teacher's references and the
student's samples share them (``eval.class_labels`` says so in the run).
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
        self.labels = self._labels(self.num_align, gen)          # after z: unconditional draws unchanged
        if self.labels is not None:
            self.info["class_labels"] = f"uniform over {teacher.label_dim} classes (EDM's generate.py)"
        ts = sched.karras(self.teacher_steps).tolist()
        rows = range(0, self.num_align, self.batch_size)
        with torch.no_grad():
            self.reference = torch.cat([
                solve(teacher, sched.sigma_max * self.z[i:i + self.batch_size], ts, "heun",
                      None if self.labels is None else self.labels[i:i + self.batch_size]) for i in rows])
        return self

    def _labels(self, n: int, gen: torch.Generator) -> torch.Tensor | None:
        """n one-hot labels drawn uniformly over a class-conditional teacher's classes, else None."""
        label_dim = getattr(self.teacher, "label_dim", 0)
        if not label_dim:
            return None
        return torch.nn.functional.one_hot(torch.randint(label_dim, (n,), generator=gen), label_dim).float()

    def state_dict(self) -> dict:
        """What changes between evaluations (kept in training checkpoints): the FID cadence."""
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state.get("calls", self.calls))

    def _sample(self, precond, net, nfe, z, device, labels=None):
        return sample_student(self.sampler, precond, net, z, self.teacher.schedule, self.times[nfe], seed=self.seed,
                              device=device, batch_size=self.batch_size, class_labels=labels).float()

    def __call__(self, precond, net, device="cpu", dtype=torch.float32) -> dict[str, float]:
        from precondlab.evaluation import alignment
        out = {}
        do_fid = self.fid is not None and self.calls % self.fid_every == 0
        self.calls += 1
        for nfe in self.nfes:
            x = self._sample(precond, net, nfe, self.z, device, self.labels)
            align = alignment(x, self.reference.float())
            out[f"align_mse/nfe{nfe}"], out[f"psnr/nfe{nfe}"] = align["mse"], align["psnr"]
            if do_fid:
                gen = torch.Generator().manual_seed(self.seed + 1000 * nfe)
                def draw(n, gen=gen, nfe=nfe):   # fresh noise, and fresh labels for a conditional teacher
                    z = torch.randn(n, *self.teacher.shape, generator=gen)
                    return self._sample(precond, net, nfe, z, device, self._labels(n, gen))
                result = self.fid(draw, tag=f"nfe{nfe}")
                out.update({k: v for k, v in result.items() if isinstance(v, (int, float)) and "/" in k})
                self.info.update({k: v for k, v in result.items() if "/" not in k})
        return out

    def log_artifacts(self, log, precond, net, device="cpu", title: str = "") -> None:
        from precondlab.evaluation import save_grid
        z = self.z[: self.grid_images]
        labels = None if self.labels is None else self.labels[: self.grid_images]
        save_grid(self.reference[: self.grid_images], log.tmp / "teacher_heun.png")
        log.artifact(log.tmp / "teacher_heun.png", "samples")
        with torch.no_grad():
            for nfe in self.nfes:
                path = log.tmp / f"student_nfe{nfe}.png"
                save_grid(self._sample(precond, net, nfe, z, device, labels), path)
                log.artifact(path, "samples")
        if self.info:
            log.params({f"eval.{k}": v for k, v in self.info.items()})
