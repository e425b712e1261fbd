"""The CTM target's per-example teacher steps, and the objectives' basic contracts."""

import torch

from precondlab.teachers.gmm import GMMTeacher
from precondlab.teachers.solvers import solve
from precondlab.training.objectives import teacher_steps


def test_masked_teacher_steps_equal_per_example_solves():
    teacher = GMMTeacher(dim=3, num_components=4, seed=2)
    grid = teacher.schedule.karras(10)
    g = torch.Generator().manual_seed(0)
    x = 10 * torch.randn(12, 3, generator=g, dtype=torch.float64)
    start = torch.randint(0, 6, (12,), generator=g)
    k = 1 + torch.randint(0, 3, (12,), generator=g)               # 1..3 steps, start + k <= 8
    out = teacher_steps(teacher, x, grid, start, k, max_k=5)    # more loop rounds than any k
    for i in range(12):
        ts = grid[int(start[i]): int(start[i] + k[i]) + 1].tolist()
        torch.testing.assert_close(out[i:i + 1], solve(teacher, x[i:i + 1], ts, "heun"))
