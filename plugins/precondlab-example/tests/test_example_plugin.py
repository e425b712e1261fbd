"""The example plugin's own tests, with precondlab's conformance helpers (what a plugin author writes)."""

from precondlab import registry
from precondlab.testing import check_preconditioner, checks_for
from precondlab_example.ring import RingTeacher
from precondlab_example.variance import VariancePrecond


def test_variance_keeps_the_preconditioner_contract():
    results = check_preconditioner(VariancePrecond)          # AssertionError naming any broken rule
    assert {r.rule for r in results if r.passed} >= {"boundary", "finite", "shapes", "dtypes", "gin", "pickle"}


def test_ring_keeps_the_teacher_contract():
    assert all(r.passed for r in checks_for("teacher", RingTeacher()))


def test_both_are_found_through_their_entry_points():
    assert registry.entry("preconditioner", "variance").distribution == "precondlab-example"
    assert registry.entry("teacher", "ring").distribution == "precondlab-example"
