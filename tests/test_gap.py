"""The exact consistency gap (math note, sections 3-4) and `precondlab gap`."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import GIN
from precondlab.evaluation.gap import GapEstimator, parse_pairs
from precondlab.odes.simple import GaussianODE
from precondlab.preconditioners.analytic import AnalyticPrecond
from precondlab.preconditioners.ctm import CTMPrecond
from precondlab.teachers.gmm import GMMTeacher


@pytest.mark.parametrize("form", ["forward", "backward"])
def test_exact_ode_makes_the_first_order_jump_exact_on_gaussian_data(form):
    """Data N(mu, sd^2 I), l = c_skip, s = -2 c_skip: h is constant along the flow, so the
    first-order form is exact: F* = D_ref and the gap is zero (up to the integrators)."""
    teacher = GMMTeacher(means=[[0.6, -0.4, 0.3]], stds=[0.5])
    precond = AnalyticPrecond(ode=GaussianODE(s_rule="gaussian_mean", num_points=2048), form=form).fit(teacher)
    gaps = GapEstimator(teacher, num_samples=512)
    for t, s in [(10.0, 1.0), (80.0, 0.002), (1.0, 0.5)]:
        row = gaps.row("analytic", precond, t, s)
        gap = row.gap_t if form == "forward" else row.gap_s
        assert gap < 1e-6, (t, s, row)   # quadrature error of the 129-point lambda integrals
        assert CTMPrecond() and gaps.row("ctm", CTMPrecond(), t, s).gap_t > 1e-4


def test_math_note_gap_values_on_the_reference_gmm(gmm8, gmm8_coeffs):
    """Note: gap vs D(x_t, t) at 10 -> 1: CTM 1.4e-2, forward form 7.1e-3 (its GMM draw is unknown)."""
    gaps = GapEstimator(gmm8, num_samples=2048)
    ctm = gaps.row("ctm", CTMPrecond(), 10.0, 1.0)
    fwd = AnalyticPrecond(form="forward")
    fwd.schedule, fwd.coeffs = gmm8.schedule, gmm8_coeffs
    analytic = gaps.row("analytic:forward", fwd, 10.0, 1.0)
    assert 0.5 * 1.4e-2 < ctm.gap_t < 2 * 1.4e-2
    assert 0.5 * 7.1e-3 < analytic.gap_t < 2 * 7.1e-3
    assert analytic.gap_t < 0.75 * ctm.gap_t
    # CTM's two references coincide in spirit; for the long jump the backward form equals CTM's (0, 1).
    bwd = AnalyticPrecond(form="backward")
    bwd.schedule, bwd.coeffs = gmm8.schedule, gmm8_coeffs
    f, g = bwd.fg(torch.tensor([80.0]), torch.tensor([0.002]))
    assert abs(float(f)) < 1e-3 and abs(float(g) - 1) < 1e-3


def test_pairs_are_checked():
    assert parse_pairs("10:1, 5:0.5") == [(10.0, 1.0), (5.0, 0.5)]
    with pytest.raises(ValueError, match="T:S"):
        parse_pairs("10-1")
    teacher = GMMTeacher(dim=2, num_components=2)
    with pytest.raises(ValueError, match="impossible pair"):
        GapEstimator(teacher, num_samples=8).row("ctm", CTMPrecond(), 1.0, 5.0)


def _gap_cli(*args):
    return subprocess.run([sys.executable, "-m", "precondlab.cli", "gap", str(GIN / "toy_analytic.gin"),
                           "--gin_bindings", "ode.analytic.num_samples = 512", "--gin_bindings",
                           "ode.analytic.num_points = 40", "--samples", "256", *args],
                          capture_output=True, text=True)


def test_gap_cli_json():
    out = _gap_cli("--pairs", "10:1,80:0.002", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    names = {r["preconditioner"] for r in rows}
    assert {"ctm", "analytic:forward", "analytic:backward"} <= names
    # raw-output preconditioners (and the example plugin's variance, whose F corrects f x_t): no gap
    assert "cm" not in names and "bcm" not in names and "variance" not in names
    for r in rows:
        assert set(r) == {"preconditioner", "t", "s", "f", "g", "gap_t", "gap_s", "error"} and r["error"] == ""
    ctm = [r for r in rows if r["preconditioner"] == "ctm" and r["t"] == 10.0][0]
    assert ctm["f"] == pytest.approx(0.1) and ctm["g"] == pytest.approx(0.9)


def test_gap_cli_rejects_impossible_pairs():
    out = _gap_cli("--pairs", "1:5")
    assert out.returncode == 2 and "impossible pair 1.0:5.0" in out.stderr
