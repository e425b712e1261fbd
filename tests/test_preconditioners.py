"""Closed forms of each preconditioning (math note, section 2)."""

import pytest
import torch

from precondlab.odes.base import ODECoefficients
from precondlab.odes.simple import EulerODE, GaussianODE
from precondlab.preconditioners.analytic import AnalyticPrecond
from precondlab.preconditioners.bcm import BCMPrecond
from precondlab.preconditioners.cm import CMPrecond
from precondlab.preconditioners.ctm import CTMPrecond
from precondlab.schedules import EDMSchedule
from precondlab.teachers.gmm import GMMTeacher

SD = 0.5


def pairs():
    t = torch.tensor([80.0, 80.0, 10.0, 10.0, 1.0, 0.5, 0.01, 2.515], dtype=torch.float64)
    s = torch.tensor([0.002, 40.0, 1.0, 9.99, 0.1, 0.5, 0.002, 0.002], dtype=torch.float64)
    return t, s


def test_ctm_is_euler_step():
    t, s = pairs()
    p = CTMPrecond()
    torch.testing.assert_close(p.f(t, s), s / t)
    torch.testing.assert_close(p.g(t, s), 1 - s / t)


def test_cm_and_bcm_closed_forms_and_boundaries():
    t, s = pairs()
    eps = 0.002
    cm = CMPrecond()
    torch.testing.assert_close(cm.f(t, s), SD ** 2 / ((t - eps) ** 2 + SD ** 2))
    torch.testing.assert_close(cm.g(t, s), SD * (t - eps) / (SD ** 2 + t ** 2).sqrt())
    e = torch.tensor([eps], dtype=torch.float64)
    assert float(cm.f(e, e)) == 1.0 and float(cm.g(e, e)) == 0.0
    bcm = BCMPrecond()
    torch.testing.assert_close(bcm.f(t, s), (SD ** 2 + t * s) / (SD ** 2 + t ** 2))
    torch.testing.assert_close(bcm.f(t, t), torch.ones_like(t))
    torch.testing.assert_close(bcm.g(t, t), torch.zeros_like(t))


@pytest.mark.parametrize("form", ["forward", "backward"])
def test_analytic_reduces_to_ctm_at_l_s_zero(form):
    """l = s = 0: both first-order forms are exactly CTM's (s/t, 1 - s/t)."""
    t, s = pairs()
    p = AnalyticPrecond(ode=EulerODE(), form=form)
    f, g = p.fg(t, s)
    torch.testing.assert_close(f, s / t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, 1 - s / t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["forward", "backward"])
def test_analytic_boundary_condition(form, gmm8_coeffs):
    t = torch.tensor([80.0, 1.0, 0.002], dtype=torch.float64)
    p = AnalyticPrecond(form=form)
    p.coeffs = gmm8_coeffs
    f, g = p.fg(t, t)
    torch.testing.assert_close(f, torch.ones_like(t))
    torch.testing.assert_close(g, torch.zeros_like(t))


def test_gaussian_ode_A_is_the_variance_ratio():
    """With l = c_skip, A = exp(-int (1 - l)) = sqrt((s^2 + sd^2)/(t^2 + sd^2)) (the CTM code's 'variance')."""
    from precondlab.odes.base import jump_integrals
    t, s = pairs()
    coeffs = GaussianODE(num_points=4096).fit(GMMTeacher(means=[[0.0]], stds=[SD]))
    A, *_ = jump_integrals(coeffs, -t.log(), -s.log(), points=257)
    torch.testing.assert_close(A, ((s ** 2 + SD ** 2) / (t ** 2 + SD ** 2)).sqrt(), rtol=1e-5, atol=1e-7)


def test_forward_and_backward_differ_but_agree_for_short_jumps(gmm8_coeffs):
    fwd, bwd = AnalyticPrecond(form="forward"), AnalyticPrecond(form="backward")
    fwd.coeffs = bwd.coeffs = gmm8_coeffs
    t = torch.tensor([1.0], dtype=torch.float64)
    f1, g1 = fwd.fg(t, t * 0.999)
    f2, g2 = bwd.fg(t, t * 0.999)
    torch.testing.assert_close(f1, f2, rtol=1e-4, atol=1e-6)
    long_f1, _ = fwd.fg(torch.tensor([10.0]), torch.tensor([1.0]))
    long_f2, _ = bwd.fg(torch.tensor([10.0]), torch.tensor([1.0]))
    assert abs(float(long_f1 - long_f2)) > 1e-3


def test_table_lookup_equals_integration(gmm8_coeffs):
    grid = EDMSchedule().karras(18)
    p = AnalyticPrecond(form="backward")
    p.coeffs = gmm8_coeffs
    t, s = grid[[0, 3, 7, 10]], grid[[5, 3, 17, 11]]
    direct = p.fg(t, s)
    p.tabulate(grid)
    assert p._lookup(t, s) is not None
    torch.testing.assert_close(p.fg(t.float(), s.float())[0], direct[0].float())
    torch.testing.assert_close(p.fg(t, s)[1], direct[1])
    assert p._lookup(torch.tensor([2.515]), torch.tensor([0.002])) is None  # off-grid: integrated


def test_on_grid_lookup_equals_the_checked_one_and_refuses_off_grid_times(gmm8_coeffs):
    """Inside on_grid() (a training step) the table is read on the tensors' device with no host
    round trip; values equal the checked lookup's, and an off-grid time fails loudly."""
    grid = EDMSchedule().karras(18)
    p = AnalyticPrecond(form="forward")
    p.coeffs = gmm8_coeffs
    p.tabulate(grid)
    t, s = grid[[0, 3, 7, 10]].float(), grid[[5, 3, 17, 11]].float()
    checked = p.fg(t, s)
    with p.on_grid():
        fast = p.fg(t, s)
        with pytest.raises(RuntimeError, match="off the tabulated grid"):
            p.fg(torch.tensor([2.515]), torch.tensor([0.002]))
    assert not p._on_grid  # the promise ends with the block
    for a, b in zip(fast, checked):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_training_steps_never_take_the_host_lookup(gmm8_coeffs, monkeypatch):
    """A CTM and a CM step on Analytic-Precond use only on-grid device lookups: the host path
    (._lookup, ._integrate) is never called."""
    from precondlab.students.mlp import MLPStudent
    from precondlab.training.objectives import CMObjective, CTMObjective

    teacher = GMMTeacher(dim=8, num_components=4, seed=0)
    for objective in (CTMObjective(num_timesteps=10), CMObjective(num_timesteps=10)):
        p = AnalyticPrecond(form="backward")
        p.coeffs = gmm8_coeffs
        p.tabulate(objective.grid(p.schedule, "cpu", torch.float64))
        for name in ("_lookup", "_integrate"):
            monkeypatch.setattr(p, name, lambda *a, n=name: pytest.fail(f"{n} called in a training step"))
        torch.manual_seed(0)
        student = MLPStudent(dim=8, hidden=16, depth=2)
        x0 = teacher.sample_x0(16, torch.Generator().manual_seed(0)).float()
        loss, _ = objective(student, student, p, teacher, x0, torch.Generator().manual_seed(1))
        loss.backward()
        assert torch.isfinite(loss)


def test_unfitted_analytic_says_what_to_do():
    p = AnalyticPrecond()
    with pytest.raises(RuntimeError, match="fit"):
        p.f(torch.tensor([1.0]), torch.tensor([0.5]))


def test_non_finite_or_unsorted_coefficients_are_rejected():
    with pytest.raises(ValueError, match="increasing"):
        ODECoefficients(torch.tensor([1.0, 0.0]), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="non-finite"):
        ODECoefficients(torch.tensor([0.0, 1.0]), torch.tensor([0.0, float("nan")]), torch.zeros(2))
