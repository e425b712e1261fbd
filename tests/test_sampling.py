"""Samplers share one signature; with an exact jump they reproduce the teacher's flow."""

import torch

from precondlab import registry
from precondlab.samplers import nfe_grid, sample_deterministic, sample_gamma
from precondlab.teachers.gmm import GMMTeacher
from precondlab.teachers.solvers import reference_flow


def test_two_step_grid_is_the_papers():
    ts = nfe_grid(GMMTeacher(dim=2, num_components=2).schedule, 2)
    torch.testing.assert_close(ts, torch.tensor([80.0, 2.5152, 0.002], dtype=torch.float64), rtol=1e-4, atol=0)


def test_exact_jumps_give_the_exact_flow_for_any_step_count():
    teacher = GMMTeacher(dim=2, num_components=3, seed=1)
    jump = lambda x, t, s: reference_flow(teacher, x, t, s, steps=128)  # noqa: E731
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    one = sample_deterministic(jump, 80 * z, nfe_grid(teacher.schedule, 1).tolist())
    three = sample_deterministic(jump, 80 * z, nfe_grid(teacher.schedule, 3).tolist())
    torch.testing.assert_close(one, three, rtol=1e-5, atol=1e-5)


def test_gamma_zero_is_deterministic_and_gamma_one_renoises():
    teacher = GMMTeacher(dim=2, num_components=3, seed=1)
    jump = lambda x, t, s: reference_flow(teacher, x, t, s, steps=64)  # noqa: E731
    x = 80 * torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = nfe_grid(teacher.schedule, 2).tolist()
    torch.testing.assert_close(sample_gamma(jump, x, ts, gamma=0.0, generator=torch.Generator().manual_seed(1)),
                               sample_deterministic(jump, x, ts))
    a = sample_gamma(jump, x, ts, gamma=1.0, generator=torch.Generator().manual_seed(1))
    b = sample_gamma(jump, x, ts, gamma=1.0, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, b)


def test_samplers_are_registered_with_one_signature():
    import inspect
    for entry in registry.list_entries("sampler"):
        params = list(inspect.signature(entry.obj).parameters)
        assert params[:3] == ["jump", "x", "ts"] and "generator" in params


def test_an_evaluator_samples_at_the_times_it_names():
    """evaluator.nfe_times replaces the default Karras times; the times are in the evaluator's info
    (logged as eval.times.nfe{k}) and traj_mse/nfe2 is the 2-step error through them."""
    from precondlab.evaluation.analytic import Evaluator
    from precondlab.preconditioners.ctm import CTMPrecond
    from precondlab.students.mlp import MLPStudent
    teacher = GMMTeacher(dim=3, num_components=3, seed=1)
    torch.manual_seed(0)
    net = MLPStudent(dim=3, hidden=16, depth=2)
    torch.nn.init.normal_(net.out.weight, std=0.1)
    custom = Evaluator(num_samples=64, nfes=(1, 2), nfe_times={2: (80.0, 1.0882, 0.002)}, num_jump_pairs=0,
                       reference_steps=32).setup(teacher)
    default = Evaluator(num_samples=64, nfes=(1, 2), num_jump_pairs=0, reference_steps=32).setup(teacher)
    assert custom.info == {"times.nfe1": "80 > 0.002", "times.nfe2": "80 > 1.088 > 0.002"}
    assert default.info["times.nfe2"] == "80 > 2.515 > 0.002"
    metrics = custom(CTMPrecond(), net)
    assert metrics["traj_mse/nfe2"] == custom.two_step_errors(CTMPrecond(), net, [1.0882])[1.0882]
    assert metrics["traj_mse/nfe2"] != default(CTMPrecond(), net)["traj_mse/nfe2"]
    assert metrics["traj_mse/nfe1"] == default(CTMPrecond(), net)["traj_mse/nfe1"]
