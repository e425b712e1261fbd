"""One optimiser step of the toy objective, as ``torchrun --nproc_per_node W`` runs it (W = 1: one
process with the whole batch). Every process draws the same global batch; rank r takes its share,
so that W ranks x B/W see exactly the samples and noise of 1 rank x B. Rank 0 saves the student's
parameters after the step to argv[1]. Used by tests/test_distributed.py."""

import copy
import os
import sys

import torch
import torch.distributed as dist

from precondlab.preconditioners.ctm import CTMPrecond
from precondlab.students.mlp import MLPStudent
from precondlab.teachers.gmm import GMMTeacher
from precondlab.training.objectives import CTMObjective, DSMDraw, JumpDraw


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)
    teacher, precond = GMMTeacher(dim=3, num_components=4, seed=2), CTMPrecond()
    student = MLPStudent(dim=3, hidden=32, depth=2)
    torch.nn.init.normal_(student.out.weight, std=0.1)
    target = copy.deepcopy(student).requires_grad_(False)
    objective = CTMObjective(num_timesteps=8, dsm_weight=1.0, dsm_adaptive=True)
    gen = torch.Generator().manual_seed(1)
    x0 = teacher.sample_x0(16, gen).float()
    grid = objective.grid(precond.schedule, "cpu", torch.float32)
    draw = objective.sample(x0, grid.numel(), gen)
    dsm = objective.sample_dsm(x0, precond.schedule, gen)
    part = lambda t: t.tensor_split(world)[rank]  # noqa: E731 - this rank's share of the batch
    x0, draw = part(x0), JumpDraw(part(draw.n), part(draw.k), part(draw.m), part(draw.noise))
    dsm = DSMDraw(part(dsm.sigma), part(dsm.noise))
    model = student
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(student)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    main_loss, logs = objective.loss(model, target, precond, teacher, x0, grid, draw)
    loss = objective.combine(model, precond, main_loss, x0, None, logs, dsm_draw=dsm)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in student.state_dict().items()}, out)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
