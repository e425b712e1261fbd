"""The objectives against the math note: the draws follow the documented distribution, and each
loss equals a per-example re-implementation that names its networks and its teacher steps.

Each test is aimed at a one-line mistake that a training run would not reveal: a jump length
k that can be 0, an outer target jump through the online student, a target that skips the
teacher's solve, a gradient that leaks into the target branch.
"""

from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from precondlab.odes.analytic import AnalyticODE
from precondlab.preconditioners.analytic import AnalyticPrecond
from precondlab.preconditioners.cm import CMPrecond
from precondlab.preconditioners.ctm import CTMPrecond
from precondlab.students.mlp import MLPStudent
from precondlab.teachers.gmm import GMMTeacher
from precondlab.teachers.solvers import solve
from precondlab.training.objectives import CMObjective, CTMObjective, DSMDraw, teacher_steps


def _check_teacher_steps(teacher, masked, seed, labelled=False):
    """teacher_steps on 12 examples (each its own start and k, and label) against per-example solves."""
    grid = teacher.schedule.karras(10)
    g = torch.Generator().manual_seed(seed)
    x = 10 * torch.randn(12, 3, generator=g, dtype=torch.float64)
    start = torch.randint(0, 6, (12,), generator=g)
    k = 1 + torch.randint(0, 3, (12,), generator=g)               # 1..3 steps, start + k <= 8
    labels = torch.nn.functional.one_hot(torch.randint(0, 2, (12,), generator=g), 2).double() if labelled else None
    # more loop rounds than any k
    out = teacher_steps(teacher, x, grid, start, k, max_k=5, masked=masked, class_labels=labels)
    for i in range(12):
        ts = grid[int(start[i]): int(start[i] + k[i]) + 1].tolist()
        row = None if labels is None else labels[i:i + 1]
        torch.testing.assert_close(out[i:i + 1], solve(teacher, x[i:i + 1], ts, "heun", class_labels=row))
    return x, grid, start, k


@pytest.mark.parametrize("masked", [True, False])   # the accelerator's way and the CPU's
def test_teacher_steps_equal_per_example_solves(masked):
    _check_teacher_steps(GMMTeacher(dim=3, num_components=4, seed=2), masked, seed=0)


class LabelledGMM(GMMTeacher):
    """A class-conditional stand-in: the GMM's denoiser moved by a per-class offset."""

    label_dim = 2

    def denoise(self, x, t, class_labels=None):
        from precondlab.teachers.base import check_labels
        check_labels(self, x, class_labels)
        offsets = torch.tensor([[0.3, -0.2, 0.1], [-0.4, 0.0, 0.25]], dtype=x.dtype)
        return super().denoise(x, t) + class_labels.to(x.dtype) @ offsets


@pytest.mark.parametrize("masked", [True, False])
def test_teacher_steps_carry_each_examples_label(masked):
    """The CPU way reorders the examples by k: each label must move with its example."""
    teacher = LabelledGMM(dim=3, num_components=4, seed=2)
    x, grid, start, k = _check_teacher_steps(teacher, masked, seed=1, labelled=True)
    with pytest.raises(ValueError, match="class-conditional"):
        teacher_steps(teacher, x, grid, start, k, max_k=5, masked=masked)


# -- the draws ------------------------------------------------------------------------------
def ctm_pmf(N: int, K: int) -> dict:
    """The math note's distribution, written out: p(k) ∝ k on 1..K, n ~ U{0..N-1-k}, m ~ U{n+k..N-1}."""
    Z = K * (K + 1) / 2
    return {(n, k, m): (k / Z) / (N - k) / (N - n - k)
            for k in range(1, K + 1) for n in range(N - k) for m in range(n + k, N)}


def goodness_of_fit(draws: Counter, pmf: dict, total: int) -> float:
    outside = set(draws) - set(pmf)
    assert not outside, f"draws outside the documented support, e.g. {sorted(outside)[:5]}"
    keys = sorted(pmf)
    return chisquare([draws.get(key, 0) for key in keys], [pmf[key] * total for key in keys]).pvalue


@pytest.mark.parametrize("N,max_jump", [(18, None), (7, 3)])
def test_ctm_draws_follow_the_documented_distribution(N, max_jump):
    objective = CTMObjective(num_timesteps=N, max_jump=max_jump)
    K = objective.largest_jump(N)
    total = 200_000
    draw = objective.sample(torch.zeros(total, 1), N, torch.Generator().manual_seed(0))
    triples = Counter(zip(draw.n.tolist(), draw.k.tolist(), draw.m.tolist()))
    assert int(draw.k.min()) >= 1 and int(draw.k.max()) == K        # no zero-length teacher solve
    assert goodness_of_fit(triples, ctm_pmf(N, K), total) > 1e-3
    # and the noise is a standard normal per example
    assert abs(float(draw.noise.mean())) < 0.01 and abs(float(draw.noise.std()) - 1) < 0.01


def test_cm_draws_are_one_teacher_step_to_eps():
    N, total = 18, 100_000
    draw = CMObjective(num_timesteps=N).sample(torch.zeros(total, 1), N, torch.Generator().manual_seed(0))
    triples = Counter(zip(draw.n.tolist(), draw.k.tolist(), draw.m.tolist()))
    assert goodness_of_fit(triples, {(n, 1, N - 1): 1 / (N - 1) for n in range(N - 1)}, total) > 1e-3


# -- the losses, per example ----------------------------------------------------------------
class ShiftedGMM(GMMTeacher):
    """A GMM teacher whose denoiser is off by a constant: its steps, and only they, differ."""

    def __init__(self, shift: float, **kw):
        super().__init__(**kw)
        self.shift = shift

    def denoise(self, x, t):
        return super().denoise(x, t) + self.shift


def _nets(dim, seed):
    """A student and a target that differ, so that a swapped network changes the loss."""
    torch.manual_seed(seed)
    student, target = MLPStudent(dim=dim, hidden=32, depth=2), MLPStudent(dim=dim, hidden=32, depth=2)
    for net, std in ((student, 0.3), (target, 0.2)):
        torch.nn.init.normal_(net.out.weight, std=std)
        torch.nn.init.normal_(net.out.bias, std=std)
    return student.double(), target.double().requires_grad_(False)


def _G(precond, net, x, t, s):
    """G(x, t, s) = f x + g F, for one example, from the preconditioner's f and g (host path)."""
    t, s = torch.tensor([t], dtype=x.dtype), torch.tensor([s], dtype=x.dtype)
    return precond.f(t, s) * x + precond.g(t, s) * precond.network_output(net, x, t, s)


def ctm_reference(student, target, precond, teacher, x0, grid, draw):
    """d(G_target(G_student(x_t, t, s), s, eps), G_target(G_student(x_u, u, s), s, eps)), x_u from
    k Heun steps t -> u, the target branch without gradient: one example at a time."""
    eps, losses = float(grid[-1]), []
    for i in range(x0.shape[0]):
        n, k, m = int(draw.n[i]), int(draw.k[i]), int(draw.m[i])
        t, u, s = float(grid[n]), float(grid[n + k]), float(grid[m])
        x_t = x0[i:i + 1] + t * draw.noise[i:i + 1]
        with torch.no_grad():
            x_u = solve(teacher, x_t, grid[n:n + k + 1].tolist(), "heun")
            goal = _G(precond, target, _G(precond, student, x_u, u, s), s, eps)
        estimate = _G(precond, target, _G(precond, student, x_t, t, s), s, eps)
        losses.append(((estimate - goal) ** 2).mean())
    return torch.stack(losses).mean()


def cm_reference(student, target, precond, teacher, x0, grid, draw):
    """d(G_student(x_t, t, eps), G_target(x_u, u, eps)), x_u one Heun step t -> u."""
    eps, losses = float(grid[-1]), []
    for i in range(x0.shape[0]):
        n = int(draw.n[i])
        t, u = float(grid[n]), float(grid[n + 1])
        x_t = x0[i:i + 1] + t * draw.noise[i:i + 1]
        with torch.no_grad():
            x_u = solve(teacher, x_t, [t, u], "heun")
            goal = _G(precond, target, x_u, u, eps)
        losses.append(((_G(precond, student, x_t, t, eps) - goal) ** 2).mean())
    return torch.stack(losses).mean()


def _grads(loss, net):
    return torch.autograd.grad(loss, list(net.parameters()))


def _check_against(objective, reference, precond, teachers, dim=3, batch=24):
    student, target = _nets(dim, seed=1)
    grid = objective.grid(precond.schedule, "cpu", torch.float64)
    x0 = teachers[0].sample_x0(batch, torch.Generator().manual_seed(2))
    draw = objective.sample(x0, grid.numel(), torch.Generator().manual_seed(3))
    losses = []
    for teacher in teachers:
        got, logs = objective.loss(student, target, precond, teacher, x0, grid, draw)
        want = reference(student, target, precond, teacher, x0, grid, draw)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        for g_got, g_want in zip(_grads(got, student), _grads(want, student)):
            torch.testing.assert_close(g_got, g_want, rtol=1e-7, atol=1e-12)
        assert not any(p.requires_grad for p in target.parameters())
        losses.append(float(got.detach()))
    # The teacher's steps enter the target: a teacher whose denoiser is shifted changes the loss
    # (by the amount the reference predicts, checked above).
    assert abs(losses[1] - losses[0]) > 1e-3 * losses[0]
    return draw


@pytest.mark.parametrize("form", ["ctm", "backward", "forward"])
def test_ctm_loss_equals_its_per_example_definition(form):
    teachers = [GMMTeacher(dim=3, num_components=4, seed=2), ShiftedGMM(0.05, dim=3, num_components=4, seed=2)]
    objective = CTMObjective(num_timesteps=8, dsm_weight=0.0)
    if form == "ctm":
        precond = CTMPrecond()
    else:  # the on-grid table lookup of a training step against the integrals of the host path
        precond = AnalyticPrecond(ode=AnalyticODE(num_points=24, num_samples=256), form=form).fit(teachers[0])
        precond.tabulate(objective.grid(precond.schedule, "cpu", torch.float64))
    draw = _check_against(objective, ctm_reference, precond, teachers)
    assert bool((draw.m > draw.n + draw.k).any()) and bool((draw.m < 7).any())  # jumps short of eps were drawn


def test_cm_loss_equals_its_per_example_definition():
    teachers = [GMMTeacher(dim=3, num_components=4, seed=2), ShiftedGMM(0.05, dim=3, num_components=4, seed=2)]
    _check_against(CMObjective(num_timesteps=8, dsm_weight=0.0), cm_reference, CMPrecond(), teachers)


def test_a_call_is_the_draws_then_the_loss():
    teacher = GMMTeacher(dim=3, num_components=4, seed=2)
    student, target = _nets(3, seed=4)
    objective = CTMObjective(num_timesteps=8, dsm_weight=0.0)
    x0 = teacher.sample_x0(16, torch.Generator().manual_seed(5))
    loss, logs = objective(student, target, CTMPrecond(), teacher, x0, torch.Generator().manual_seed(6))
    grid = objective.grid(CTMPrecond().schedule, "cpu", torch.float64)
    draw = objective.sample(x0, grid.numel(), torch.Generator().manual_seed(6))
    torch.testing.assert_close(loss, objective.loss(student, target, CTMPrecond(), teacher, x0, grid, draw)[0])
    assert float(logs["loss_ctm"]) == float(loss)


def test_dsm_loss_is_edms_weighted_denoising_error():
    teacher = GMMTeacher(dim=3, num_components=4, seed=2)
    student, _ = _nets(3, seed=7)
    precond, objective = CTMPrecond(), CTMObjective()
    x0 = teacher.sample_x0(32, torch.Generator().manual_seed(8))
    draw = objective.sample_dsm(x0, precond.schedule, torch.Generator().manual_seed(9))
    assert float(draw.sigma.min()) >= 0.002 and float(draw.sigma.max()) <= 80
    sd, want = precond.sigma_data, []
    for i in range(32):
        sigma = draw.sigma[i:i + 1]
        D = precond.network_output(student, x0[i:i + 1] + sigma * draw.noise[i:i + 1], sigma, sigma)
        want.append((sigma ** 2 + sd ** 2) / (sigma * sd) ** 2 * ((D - x0[i:i + 1]) ** 2).mean())
    torch.testing.assert_close(objective.dsm_loss(student, precond, x0, DSMDraw(draw.sigma, draw.noise)),
                               torch.cat(want).mean())
    # the log-normal of EDM: log sigma ~ N(-1.2, 1.2^2) (before the clamp, which is rare)
    many = objective.sample_dsm(torch.zeros(50_000, 1), precond.schedule, torch.Generator().manual_seed(1)).sigma.log()
    assert abs(float(many.mean()) + 1.2) < 0.03 and abs(float(many.std()) - 1.2) < 0.03


@pytest.mark.parametrize("adaptive", [True, False])
def test_backward_gives_the_gradient_of_the_called_loss(adaptive):
    """train_step's objective.backward (one backward pass fewer with the adaptive DSM weight) adds
    the gradient of __call__'s loss to .grad: the same loss, logs and gradients, also on top of a
    gradient already there."""
    teacher = GMMTeacher(dim=3, num_components=4, seed=2)
    objective = CTMObjective(num_timesteps=8, dsm_weight=0.7, dsm_adaptive=adaptive)
    x0 = teacher.sample_x0(16, torch.Generator().manual_seed(5))
    grads = []
    for way in ("call", "backward"):
        student, target = _nets(3, seed=4)
        for p in student.parameters():
            p.grad = torch.full_like(p, 0.25)
        if way == "call":
            loss, logs = objective(student, target, CTMPrecond(), teacher, x0, torch.Generator().manual_seed(6))
            loss.backward()
        else:
            loss, logs = objective.backward(student, target, CTMPrecond(), teacher, x0, torch.Generator().manual_seed(6))
        grads.append(([p.grad.clone() for p in student.parameters()], loss.detach(), logs))
    (g_call, loss_call, logs_call), (g_back, loss_back, logs_back) = grads
    torch.testing.assert_close(loss_back, loss_call)
    assert not loss_back.requires_grad
    assert set(logs_back) == set(logs_call) == {"loss_ctm", "loss_dsm", "dsm_weight"}
    for key in logs_call:
        torch.testing.assert_close(logs_back[key], logs_call[key])
    for a, b in zip(g_back, g_call):
        torch.testing.assert_close(a, b)
    assert all(float((g - 0.25).abs().max()) > 1e-6 for g in g_back)   # every parameter got a gradient
    assert (float(logs_call["dsm_weight"]) != 0.7) == adaptive
