"""Teachers against closed forms: Tweedie's formula, brute-force denoisers, Gaussian flows."""

import math

import torch

from precondlab.teachers.empirical import EmpiricalTeacher
from precondlab.teachers.gmm import GMMTeacher
from precondlab.teachers.solvers import reference_flow, solve


def test_gmm_denoiser_obeys_tweedie(gmm8):
    """D(x, t) = x + t^2 grad log p_t(x) for the noised mixture."""
    g = torch.Generator().manual_seed(0)
    x = gmm8.sample_x0(64, g) + 0.7 * torch.randn(64, 8, generator=g, dtype=torch.float64)
    t = torch.full((64,), 0.7, dtype=torch.float64)
    x.requires_grad_(True)
    score = torch.autograd.grad(gmm8.log_prob(x, t).sum(), x)[0]
    torch.testing.assert_close(gmm8.denoise(x.detach(), t), x.detach() + 0.49 * score, rtol=1e-9, atol=1e-9)


def test_gmm_explicit_and_generated_forms():
    explicit = GMMTeacher(means=[[0.0, 1.0], [2.0, -1.0]], stds=[0.1, 0.2], weights=[1, 3])
    assert explicit.dim == 2 and torch.allclose(explicit.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    a, b = GMMTeacher(dim=3, num_components=4, seed=5), GMMTeacher(dim=3, num_components=4, seed=5)
    assert torch.equal(a.means, b.means) and not torch.equal(a.means, GMMTeacher(dim=3, num_components=4, seed=6).means)
    try:
        GMMTeacher(means=[[0.0], [1.0]], stds=[0.1])
    except ValueError as exc:
        assert "2 means" in str(exc)
    else:
        raise AssertionError("mismatched stds accepted")


def test_empirical_denoiser_is_the_softmax_average():
    g = torch.Generator().manual_seed(1)
    y = torch.randn(50, 3, generator=g, dtype=torch.float64)
    teacher = EmpiricalTeacher(points=y)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    t = torch.full((7,), 0.3, dtype=torch.float64)
    logits = -((x[:, None] - y[None]) ** 2).sum(-1) / (2 * 0.09)
    expected = torch.softmax(logits, -1) @ y
    torch.testing.assert_close(teacher.denoise(x, t), expected)
    # An empirical teacher of points drawn from one Gaussian component is the GMM with std -> 0.
    gmm = GMMTeacher(means=y.tolist(), stds=[1e-6] * 50)
    torch.testing.assert_close(teacher.denoise(x, t), gmm.denoise(x, t), rtol=1e-6, atol=1e-8)


def test_reference_flow_matches_the_gaussian_closed_form():
    """For N(mu, sd^2 I): Phi_{t->s}(x) = mu + sqrt((s^2 + sd^2)/(t^2 + sd^2)) (x - mu)."""
    mu, sd = torch.tensor([[0.3, -1.2]], dtype=torch.float64), 0.5
    teacher = GMMTeacher(means=mu.tolist(), stds=[sd])
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80
    for t, s in [(80.0, 0.002), (10.0, 1.0), (0.5, 0.01)]:
        exact = mu + math.sqrt((s * s + sd * sd) / (t * t + sd * sd)) * (x - mu)
        torch.testing.assert_close(reference_flow(teacher, x, t, s, steps=256), exact, rtol=1e-6, atol=1e-6)


def test_reference_flow_converges_on_the_mixture(gmm8):
    g = torch.Generator().manual_seed(3)
    x = 80 * torch.randn(256, 8, generator=g, dtype=torch.float64)
    fine = reference_flow(gmm8, x, 80.0, 0.002, steps=256)
    finer = reference_flow(gmm8, x, 80.0, 0.002, steps=512)
    assert float((fine - finer).abs().max()) < 1e-5  # RK4: error ~ 16x smaller at 512 steps
    # Heun on a fine Karras grid approaches the same flow (2nd order).
    heun = solve(gmm8, x, gmm8.schedule.karras(512).tolist(), "heun")
    assert float(((heun - finer) ** 2).mean()) < 1e-5
