"""Scaling of one run over processes (torchrun, DDP): samples per second at 1, 2, ... workers, and
the all-reduce's share of a step.

For each world size W, ``torchrun --standalone --nproc_per_node W`` runs the real training step
(``precondlab.training.loop.train_step``: data, the CTM objective with its teacher steps, backward,
DDP's all-reduce, Adam, the EMA) for ``--steps`` timed steps after a warm-up, with the global
batch fixed, on the toy (MLP student, GMM teacher) and on a small image student (SongUNet, as the
Fashion configs). The all-reduce's share: 1 - (step time under DDP's ``no_sync()``, which skips
the all-reduce) / (step time with it). Each process uses ``--threads`` threads; on a machine with
C cores, W * threads <= C keeps the processes from competing for cores.

    .venv/bin/python benchmarks/scaling.py [--worlds 1 2] [--steps 30] [--models toy unet] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    """One rank: time the training step with and without the all-reduce; rank 0 writes the figures."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from precondlab.preconditioners.ctm import CTMPrecond
    from precondlab.teachers.gmm import GMMTeacher
    from precondlab.training.distributed import setup, stream_seed
    from precondlab.training.loop import StepSettings, TrainState, train_step
    from precondlab.training.objectives import CTMObjective

    torch.set_num_threads(args.threads)
    d = setup(args.device)
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{d.local_rank}")
    torch.manual_seed(0)
    if args.model == "toy":
        from precondlab.students.mlp import MLPStudent
        teacher, student, batch = GMMTeacher(dim=8, seed=0), MLPStudent(dim=8), args.batch or 256
    else:
        from precondlab.students.songunet import SongUNetStudent
        from precondlab.teachers.empirical import EmpiricalTeacher
        points = torch.randn(64, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
        teacher = EmpiricalTeacher(points=points)
        student, batch = SongUNetStudent(dim=1024, img_resolution=32, in_channels=1, model_channels=16,
                                         channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=()), args.batch or 16
    student = student.to(device)
    target = copy.deepcopy(student).requires_grad_(False)
    model = DistributedDataParallel(student) if d.active else student
    state = TrainState(student, target, torch.optim.Adam(student.parameters(), lr=1e-4, foreach=True),
                       torch.Generator(device=device).manual_seed(stream_seed(0, d.rank)),
                       torch.Generator().manual_seed(stream_seed(1, d.rank)))
    settings = StepSettings(teacher, CTMPrecond(), CTMObjective(num_timesteps=18), batch // d.world, device,
                            model=model)

    def timed(sync: bool) -> float:
        for _ in range(3):
            train_step(state, settings)
        if d.active:
            dist.barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            if sync or not d.active:
                train_step(state, settings)
            else:
                with model.no_sync():
                    train_step(state, settings)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.steps

    with_sync, without = timed(True), timed(False)
    if d.main:
        Path(args.out).write_text(json.dumps({"world": d.world, "step_s": with_sync, "nosync_step_s": without,
                                              "global_batch": batch}))
    if d.active:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=["toy", "unet"], choices=["toy", "unet"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=0, help="global batch (default: 256 toy, 16 unet)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="toy", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    print(f"| model | workers | global batch | step (s) | samples/s | speed-up | efficiency | all-reduce share |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models:
        base = None
        for world in args.worlds:
            out = Path(tempfile.mkdtemp()) / "result.json"
            command = [torchrun, "--standalone", "--nproc_per_node", str(world), __file__, "--worker", "--model", model,
                       "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device,
                       "--batch", str(args.batch), "--out", str(out)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            r = json.loads(out.read_text())
            rate = r["global_batch"] / r["step_s"]
            base = base or rate
            share = max(0.0, 1 - r["nosync_step_s"] / r["step_s"]) if world > 1 else 0.0
            print(f"| {model} | {world} | {r['global_batch']} | {r['step_s']:.4f} | {rate:.0f} | {rate / base:.2f}x | "
                  f"{rate / base / world:.0%} | {share:.0%} |")


if __name__ == "__main__":
    main()
