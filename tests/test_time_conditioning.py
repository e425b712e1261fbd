"""The student is usable at any time, not only on its training grid (issue 9).

CTM trains on the N = 18 Karras grid, but its own 2-step sampler goes through 2.515, which is not
on it. A student whose time embedding can single out grid times learns those alone: its 2-step
error through a time between grid points (t = 1, 2.515, ...) was 2-4x that through the grid
times next to it after the default run, and grew with training. This trains a small toy student
and asks the 2-step error to be smooth in the intermediate time.
"""

import math

import pytest
import torch

from conftest import GIN
from precondlab import config, experiment
from precondlab.evaluation.analytic import Evaluator


@pytest.mark.slow
def test_two_step_error_is_smooth_in_the_intermediate_time(tracking_uri):
    cfg = config.load([str(GIN / "toy_ctm.gin")], [
        "STEPS = 800", "experiment.batch_size = 128", "experiment.eval_every = 800",
        "student.mlp.hidden = 128", "student.mlp.depth = 3", "experiment.gap_pairs = ()",
        "evaluator.num_samples = 512", "evaluator.reference_steps = 64", "evaluator.num_jump_pairs = 0"])
    exp = experiment.build(cfg)
    result = experiment.run(cfg, tracking_uri=tracking_uri, progress=False)
    net = exp.student(dim=exp.teacher.dim)
    net.load_state_dict(torch.load(result.checkpoint, weights_only=True)["target"])  # the evaluated EMA network

    grid = exp.objective.grid(exp.teacher.schedule, "cpu", torch.float64)
    on_grid = [float(t) for t in grid[7:12]]                        # 5.32, 3.26, 1.92, 1.09, 0.585
    default_nfe2 = float(exp.teacher.schedule.karras(3)[1])            # 2.515, the evaluated 2-step time
    taus = sorted(set(on_grid) | {1.0, 0.8, 1.5, default_nfe2, 2.9}, reverse=True)
    errors = Evaluator(num_samples=512, reference_steps=64).setup(exp.teacher, grid).two_step_errors(
        exp.preconditioner, net, taus)
    for tau, err in errors.items():
        if tau in on_grid:
            continue
        above = min(t for t in on_grid if t > tau)
        below = max(t for t in on_grid if t < tau)
        w = math.log(above / tau) / math.log(above / below)        # log-linear between the neighbours
        between = (1 - w) * errors[above] + w * errors[below]
        assert err <= 1.25 * between, (
            f"2-step error through tau = {tau:.4g} is {err:.4g}, {err / between:.2f}x what the grid times "
            f"{below:.4g} and {above:.4g} beside it give: the student has learned its grid times only ({errors})")
