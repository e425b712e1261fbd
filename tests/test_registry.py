"""Registration, discovery, gin exposure, plugins, and the errors for unknown names."""

import subprocess
import sys

import gin
import pytest

from precondlab import registry
from precondlab.preconditioners import Preconditioner


def test_every_kind_has_builtin_entries_and_docs():
    for kind in ("teacher", "ode", "preconditioner", "student", "objective", "loss", "sampler", "dataset", "schedule"):
        entries = registry.list_entries(kind)
        assert entries, kind
        assert all(e.doc != "(no docstring)" for e in entries), [e.name for e in entries if e.doc == "(no docstring)"]
    names = {e.name for e in registry.list_entries("preconditioner")}
    assert {"cm", "ctm", "bcm", "analytic"} <= names
    assert {"euler", "gaussian", "analytic"} <= {e.name for e in registry.list_entries("ode")}


def test_register_is_one_decorator_and_gin_sees_it():
    @registry.register("preconditioner", "test_halfway")
    class Halfway(Preconditioner):
        """f = g = (1 - s/t)/2 + ... a test entry."""

        def __init__(self, weight: float = 0.5, schedule=None):
            super().__init__(schedule)
            self.weight = weight

        def f(self, t, s):
            return s / t

        def g(self, t, s):
            return 1 - s / t

    assert registry.get("preconditioner", "test_halfway") is Halfway
    gin.parse_config("preconditioner.test_halfway.weight = 0.25")
    assert Halfway().weight == 0.25
    with pytest.raises(ValueError, match="already registered"):
        registry.register("preconditioner", "test_halfway")(type("Other", (Preconditioner,), {}))


def test_unknown_name_lists_close_matches():
    with pytest.raises(registry.UnknownEntryError) as err:
        registry.get("preconditioner", "analytc")
    assert "analytic" in str(err.value) and "Did you mean" in str(err.value)
    with pytest.raises(registry.UnknownEntryError, match="preconditioner"):
        registry.get("preconditioners_x", "ctm")


def test_example_plugin_is_discovered_through_entry_points():
    """plugins/precondlab-example is installed by the setup command; its entries register on load."""
    names = {e.name: e for e in registry.list_entries("preconditioner")}
    assert "variance" in names and names["variance"].module == "precondlab_example.variance"
    ring = registry.get("teacher", "ring")  # a plain class named by an entry point
    assert ring().dim == 2


def test_cli_list_prints_every_entry():
    out = subprocess.run([sys.executable, "-m", "precondlab.cli", "list"], capture_output=True, text=True, check=True)
    for entry in registry.list_entries():
        if entry.module.startswith(("precondlab.", "precondlab_example")):  # not entries other tests add
            assert f"  {entry.name}" in out.stdout, entry
    one = subprocess.run([sys.executable, "-m", "precondlab.cli", "list", "ode"], capture_output=True, text=True)
    assert one.returncode == 0 and one.stdout.splitlines()[0].startswith("ode ")
    assert not any(line.startswith("teacher") for line in one.stdout.splitlines())
    bad = subprocess.run([sys.executable, "-m", "precondlab.cli", "list", "preconditoner"], capture_output=True, text=True)
    assert bad.returncode == 2 and "preconditioner" in bad.stderr
