"""Third-party plugins, installed for real (pip) into a temporary environment beside precondlab:
one that keeps the contract, and broken ones (an import error, a broken boundary, a wrong shape,
a NotImplementedError, a name clash, a non-callable entry point, a register() that raises, the old
group spelling). Every command keeps working; each broken one is named with its rule or reason."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import GIN
from tiny import TINY

PLUGINS = {
    # distribution: {entry-point group: {name: value}}, module source
    "pl-good": ({"precondlab.preconditioners": {"halfstep": "pl_good:HalfStep"},
                 "precondlab.losses": {"l1": "pl_good:l1", "explodes": "pl_good:Explodes"}}, '''
        import torch
        from precondlab import register
        from precondlab.preconditioners import Preconditioner

        @register("preconditioner", "halfstep")
        class HalfStep(Preconditioner):
            """CTM's Euler step written out again: f = s/t, g = 1 - s/t."""
            def f(self, t, s):
                return s / t
            def g(self, t, s):
                return 1 - s / t

        def l1(a, b):
            """Mean absolute error per example."""
            return (a - b).abs().reshape(a.shape[0], -1).mean(-1)

        class Explodes:
            """A distance whose code fails on its 5th call (a bug that shows only in training)."""
            def __init__(self):
                self.calls = 0
            def __call__(self, a, b):
                self.calls += 1
                if self.calls == 5:
                    raise RuntimeError("bucket overflow in my distance")
                return (a - b).pow(2).reshape(a.shape[0], -1).mean(-1)
        '''),
    "pl-boundary": ({"precondlab.preconditioners": {"halfboundary": "pl_boundary:HalfBoundary"}}, '''
        import torch
        from precondlab.preconditioners import Preconditioner

        class HalfBoundary(Preconditioner):
            """f = g = 1/2: G(x, t, t) is not x."""
            def f(self, t, s):
                return torch.full_like(torch.as_tensor(t * s), 0.5)
            def g(self, t, s):
                return torch.full_like(torch.as_tensor(t * s), 0.5)
        '''),
    "pl-shape": ({"precondlab.preconditioners": {"wrongshape": "pl_shape:WrongShape"}}, '''
        import torch
        from precondlab.preconditioners import Preconditioner

        class WrongShape(Preconditioner):
            """Returns one value whatever the batch."""
            def f(self, t, s):
                return (torch.as_tensor(s) / torch.as_tensor(t)).reshape(-1)[:1]
            def g(self, t, s):
                return 1 - (torch.as_tensor(s) / torch.as_tensor(t)).reshape(-1)[:1]
        '''),
    "pl-unfinished": ({"precondlab.preconditioners": {"unfinished": "pl_unfinished:Unfinished"}}, '''
        from precondlab.preconditioners import Preconditioner

        class Unfinished(Preconditioner):
            """g is not written yet."""
            def f(self, t, s):
                return s / t
            def g(self, t, s):
                raise NotImplementedError
        '''),
    "pl-clash": ({"precondlab.preconditioners": {"ctm": "pl_clash:MyCTM"}}, '''
        from precondlab.preconditioners.ctm import CTMPrecond

        class MyCTM(CTMPrecond):
            """Wants the name ctm."""
        '''),
    "pl-noncallable": ({"precondlab.preconditioners": {"constant": "pl_noncallable:VALUE"}}, '''
        VALUE = 3
        '''),
    "pl-importerror": ({"precondlab.preconditioners": {"needsdeps": "pl_importerror:Missing"}}, '''
        import a_module_that_is_not_installed  # noqa: F401
        '''),
    "pl-badregister": ({"precondlab.preconditioners": {"typo": "pl_badregister"}}, '''
        from precondlab import register

        @register("precondtioner", "typo")
        class Typo:
            """Registered under a kind that does not exist."""
        '''),
    "pl-oldgroup": ({"precondlab.losss": {"l1old": "pl_oldgroup:l1old"}}, '''
        def l1old(a, b):
            """Mean absolute error, declared in the old group spelling."""
            return (a - b).abs().reshape(a.shape[0], -1).mean(-1)
        '''),
}
BROKEN = {"halfboundary": ("pl-boundary", "boundary"), "wrongshape": ("pl-shape", "shapes"),
          "unfinished": ("pl-unfinished", "NotImplementedError")}
NOT_LOADED = {"ctm": ("pl-clash", "already registered"), "constant": ("pl-noncallable", "not a class or a function"),
              "needsdeps": ("pl-importerror", "ModuleNotFoundError"), "typo": ("pl-badregister", "precondtioner")}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The plugins built and installed by pip into a folder of their own (on PYTHONPATH below)."""
    root = tmp_path_factory.mktemp("plugins")
    for dist, (groups, source) in PLUGINS.items():
        module = dist.replace("-", "_")
        pkg = root / "src" / dist
        pkg.mkdir(parents=True)
        (pkg / f"{module}.py").write_text(textwrap.dedent(source))
        eps = "".join(f'\n[project.entry-points."{g}"]\n' + "".join(f'{k} = "{v}"\n' for k, v in names.items())
                      for g, names in groups.items())
        (pkg / "pyproject.toml").write_text(
            f'[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "{dist}"\nversion = "1.2.3"\n{eps}\n[tool.setuptools]\npy-modules = ["{module}"]\n')
    site = root / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), *[str(p) for p in sorted((root / "src").iterdir())]],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return site


def cli(site: Path, *args, cwd):
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "precondlab", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_list_names_every_broken_plugin_in_one_line_and_keeps_working(site, tmp_path):
    out = cli(site, "list", "preconditioner", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("precondlab: warning:")]
    for name, (dist, reason) in NOT_LOADED.items():
        (line,) = [w for w in warnings if f"plugin {dist} " in w]       # one line, naming distribution and entry point
        assert name in line and reason in line, line
    assert any("precondlab.losss" in w and "deprecated" in w for w in warnings)
    assert len(out.stderr.strip().splitlines()) == len(warnings)        # nothing but those lines
    listed = out.stdout
    assert "halfstep" in listed and "[plugin pl-good 1.2.3]" in listed and "halfboundary" in listed
    assert "ctm  " in listed and "not loaded (broken plugins)" in listed
    losses = cli(site, "list", "loss", cwd=tmp_path).stdout
    assert "l1 " in losses and "l1old" in losses                       # precondlab.losses, and the old spelling


def test_check_passes_a_plugin_that_keeps_the_contract_and_names_the_rule_otherwise(site, tmp_path):
    good = cli(site, "check", "preconditioner", "halfstep", cwd=tmp_path)
    assert good.returncode == 0 and "pl-good 1.2.3" in good.stdout and "FAIL" not in good.stdout, good.stdout
    bad = cli(site, "check", "preconditioner", *BROKEN, "needsdeps", cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    tables = bad.stdout.split("preconditioner '")[1:]                   # one table per name, in order
    for (name, (dist, rule)), table in zip(BROKEN.items(), tables):
        assert table.startswith(name) and dist in table, table
        assert any(line.strip().startswith("FAIL") and rule in line for line in table.splitlines()), table
    assert "ModuleNotFoundError" in tables[-1] and "pl-importerror" in tables[-1]
    assert cli(site, "check", "loss", "l1", cwd=tmp_path).returncode == 0


@pytest.mark.slow
def test_run_refuses_a_broken_plugin_before_any_work_and_uses_a_good_one(site, tmp_path):
    def run(binding):
        return cli(site, "run", str(GIN / "toy_ctm.gin"), *[a for b in TINY + [binding] for a in ("--gin_bindings", b)],
                   "--no-progress", cwd=tmp_path)

    for name in ("halfboundary", "unfinished"):                          # (wrongshape: `check` above)
        dist, rule = BROKEN[name]
        out = run(f"experiment.preconditioner = @preconditioner.{name}()")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        (line,) = [x for x in out.stderr.splitlines() if x.startswith("precondlab: error:")]
        assert dist in line and name in line and rule in line, line
    assert not (tmp_path / "mlruns.db").exists()                        # refused before any MLflow run
    out = run("experiment.preconditioner = @preconditioner.needsdeps()")
    assert out.returncode == 2 and "pl-importerror" in out.stderr and "failed to load" in out.stderr

    late = run("objective.ctm.distance = @loss.explodes()")              # plugin code failing mid-training
    assert late.returncode == 2 and "Traceback" not in late.stderr, late.stderr[-2000:]
    (line,) = [x for x in late.stderr.splitlines() if x.startswith("precondlab: error:")]
    assert "loss 'explodes' (plugin pl-good 1.2.3) raised RuntimeError: bucket overflow" in line, line

    ok = run("experiment.preconditioner = @preconditioner.halfstep()")
    assert ok.returncode == 0, ok.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    failed, finished = sorted(client.search_runs([client.get_experiment_by_name("precondlab").experiment_id]),
                              key=lambda r: r.info.start_time)
    assert failed.info.status == "FAILED" and "PluginError" in failed.data.tags["error"]
    tags = finished.data.tags
    assert tags["precondlab.component.preconditioner"].startswith("preconditioner.halfstep (pl-good 1.2.3")
    assert tags["precondlab.component.teacher"].startswith("teacher.gmm (precondlab ")


def test_gap_reports_a_broken_preconditioner_as_a_row_and_goes_on(site, tmp_path):
    out = cli(site, "gap", str(GIN / "toy_ctm.gin"), "--pairs", "10:1", "--samples", "256", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {r["preconditioner"]: r for r in json.loads(out.stdout)}
    assert rows["ctm"]["error"] == "" and rows["halfstep"]["error"] == "" and rows["analytic:forward"]["error"] == ""
    for name, (dist, rule) in BROKEN.items():
        assert dist in rows[name]["error"] and rule in rows[name]["error"], rows[name]
    assert "pl-importerror" in rows["needsdeps"]["error"]


@pytest.mark.slow
def test_a_sweep_trial_uses_a_plugin_and_records_where_it_came_from(site, tmp_path):
    sweep = tmp_path / "plugin.toml"
    bindings = ", ".join(f'"{b}"' for b in TINY)
    sweep.write_text(f'name = "plugin"\nbase = "{GIN / "toy_ctm.gin"}"\nbindings = [{bindings}]\n'
                     f'[metric]\nname = "traj_mse/nfe2"\nmode = "min"\n[scheduler]\ntype = "fifo"\n'
                     f'[space]\n"experiment.preconditioner" = {{ choice = ["@preconditioner.halfstep()"] }}\n')
    out = cli(site, "sweep", str(sweep), "--num-cpus", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("precondlab").experiment_id],
                              "tags.`precondlab.trial` != ''")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert "pl-good 1.2.3" in runs[0].data.tags["precondlab.component.preconditioner"]
