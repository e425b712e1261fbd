"""Daily use through the real CLI: named runs with their provenance, phases and progress on stderr,
one JSON document with --json, cached statistics reused and said so, stable parameter names."""

import json
import os
import subprocess
import sys

import gin
import pytest
from mlflow.tracking import MlflowClient

from conftest import GIN, REPO
from precondlab import config, experiment, provenance, registry  # noqa: F401 - experiment registers 'experiment'
from precondlab.evaluation import plots
from tiny import TINY, TINY_ANALYTIC


def cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "precondlab", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_two_runs_named_traced_timed_and_the_second_reuses_the_statistics(tmp_path):
    args = ["run", str(GIN / "toy_analytic.gin"), *[a for b in TINY + TINY_ANALYTIC for a in ("--gin_bindings", b)]]
    cache = {"PRECONDLAB_CACHE": str(tmp_path / "cache")}          # statistics never estimated before
    first = cli(*args, "--json", cwd=tmp_path, env=cache)
    assert first.returncode == 0, first.stderr[-2000:]
    document = json.loads(first.stdout)                  # stdout is exactly one JSON document
    assert set(document) >= {"run_id", "final", "info", "checkpoint"}
    err = first.stderr
    assert "\r" not in err                               # not a terminal: plain lines, no carriage returns
    for phase in ("evaluator", "statistics", "diagnostics", "student", "first evaluation", "artifacts"):   # (setup: only if > 1 s)
        assert f"[precondlab] {phase}" in err, phase
    assert "summary (final evaluation" in err and "time/training" in err   # the table went to stderr
    assert "loaded from the cache" not in err

    second = cli(*args, "--run-name", "my-second-run", cwd=tmp_path, env=cache)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "statistics loaded from the cache" in second.stderr and "summary (final" in second.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name("precondlab").experiment_id])}
    run = runs[document["run_id"]]
    assert run.info.run_name.startswith("analytic-backward-seed0-") and len(run.info.run_name) > len("analytic-backward-seed0-")
    assert sorted(r.info.run_name for r in runs.values())[1] == "my-second-run"
    tags = run.data.tags
    assert tags["mlflow.source.name"] == "precondlab run" and tags["mlflow.user"]
    assert tags["precondlab.version"] and tags["mlflow.source.type"] == "LOCAL"
    if (REPO / ".git").exists():                         # run from this checkout: its commit and state
        assert len(tags["mlflow.source.git.commit"]) == 40 and tags["precondlab.git_dirty"] in ("true", "false")
    assert "```" in tags["mlflow.note.content"] and "teacher.gmm.dim = 8" in tags["mlflow.note.content"]
    metrics = run.data.metrics
    assert {"time/setup", "time/evaluator", "time/statistics", "time/diagnostics", "time/student", "time/training",
            "time/artifacts"} <= set(metrics)
    params = run.data.params
    assert params["teacher.gmm.dim"] == "8" and params["student.mlp.hidden"] == "32"   # full names
    assert params["precond.name"] == "analytic" and params["precond.form"] == "backward"
    assert params["experiment.steps"] == "20" and params["preconditioner.analytic.form"] == "'backward'"


def test_param_keys_do_not_depend_on_what_else_is_installed():
    """gin prints the shortest unique names (``gmm.dim``); a plugin adding another ``gmm`` would
    change them. The params use full names, which do not change."""
    config.load([str(GIN / "toy_analytic.gin")])
    assert "\ngmm.dim = 8" in gin.config_str()             # gin's shortest unique name, today
    before = provenance.stable_params(gin.config_str())

    @registry.register("dataset", "gmm")       # what a plugin could add: another 'gmm', another 'dim'
    def another_gmm(dim: int = 3):
        """A configurable that shares the toy teacher's short name."""
        return dim

    try:
        config.load([str(GIN / "toy_analytic.gin")], ["dataset.gmm.dim = 5"])
        after = provenance.stable_params(gin.config_str())
        assert "\ngmm.dim = 8" not in gin.config_str()   # gin's own short name did change
    finally:
        registry._ENTRIES["dataset"].pop("gmm")          # noqa: SLF001 - undo the test's registration
    assert {k: v for k, v in after.items() if k != "dataset.gmm.dim"} == before
    assert before["teacher.gmm.dim"] == "8" and after["dataset.gmm.dim"] == "5"


def test_plots_say_which_run_preconditioner_and_step_they_show(gmm8):
    import torch

    from precondlab.evaluation.analytic import Evaluator
    from precondlab.preconditioners.ctm import CTMPrecond
    from precondlab.students.mlp import MLPStudent
    ev = Evaluator(num_samples=32, reference_steps=16, num_jump_pairs=0).setup(gmm8)
    title = "ctm-seed0-1202-101500 | ctm-seed0 | EMA student at step 2000"
    fig = plots.samples(ev, CTMPrecond(), MLPStudent(dim=8, hidden=8, depth=1), title=title)
    assert fig._suptitle.get_text() == title
    assert [ax.get_title() for ax in fig.axes][-2:] == ["student, NFE 1", "student, NFE 2"]
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
    grid = gmm8.schedule.karras(18)
    fig = plots.coefficients(CTMPrecond(), grid, title=title)
    assert fig._suptitle.get_text() == title and all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    fig = plots.two_step_vs_time({1.0: 0.1, 2.0: 0.2}, [2.0], [80.0, 2.515, 0.002], title=title)
    assert fig._suptitle.get_text() == title and fig.axes[0].get_ylabel().startswith("traj_mse")
    assert torch.is_tensor(grid)
