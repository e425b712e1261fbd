"""precondlab report against hand computation, on an MLflow store of runs with known curves written
through MLflow's API; edge cases (a method that never reaches a target, one seed, a missing metric,
runs of different lengths); and the report of a real, CI-sized toy sweep."""

import json
import math
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import GIN
from precondlab import reporting
from precondlab.reporting import stats
from tiny import TINY


def add_run(client, exp_id, method, seed, curve, metric="traj_mse/nfe2", extra=None):
    """A finished training run whose metric follows ``curve`` ([(step, value)])."""
    name, _, form = method.partition(":")
    run = client.create_run(exp_id, run_name=f"{method}-seed{seed}")
    rid = run.info.run_id
    client.log_param(rid, "preconditioner", f"{name}Precond")
    client.log_param(rid, "precond.name", name)
    if form:
        client.log_param(rid, "precond.form", form)
    client.log_param(rid, "experiment.seed", str(seed))
    for step, value in curve:
        client.log_metric(rid, metric, value, step=step)
    for key, value in (extra or {}).items():
        client.log_metric(rid, key, value, step=curve[-1][0])
    client.set_terminated(rid, "FINISHED")
    return rid


def linear(reach_half_at: int, end: int = 100, every: int = 10):
    """1 at step 0, falling linearly to 0.5 at ``reach_half_at`` (and on, to 0.5 * end / reach)."""
    return [(s, 1 - 0.5 * s / reach_half_at) for s in range(0, end + 1, every)]


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("known", artifact_location=(tmp_path / "art").as_uri())
    # ctm reaches 0.5 at steps 50 and 70; analytic:forward at 20 and 40; bcm never (its floor is 0.6);
    # cm has one seed (60); one ctm run is shorter (80 steps); a forward run lacks traj_mse/nfe1.
    add_run(client, exp_id, "ctm", 0, linear(50), extra={"summary/seconds": 10.0})
    add_run(client, exp_id, "ctm", 1, linear(70, end=80), extra={"summary/seconds": 14.0})
    add_run(client, exp_id, "analytic:forward", 0, linear(20), extra={"summary/seconds": 12.0})
    add_run(client, exp_id, "analytic:forward", 1, linear(40), extra={"summary/seconds": 12.0})
    add_run(client, exp_id, "bcm", 0, [(s, max(0.6, 1 - s / 100)) for s in range(0, 101, 10)])
    add_run(client, exp_id, "bcm", 1, [(s, max(0.65, 1 - s / 100)) for s in range(0, 101, 10)])
    add_run(client, exp_id, "cm", 0, linear(60))
    for method, seed in (("ctm", 0), ("ctm", 1), ("cm", 0), ("bcm", 0), ("bcm", 1), ("analytic:forward", 0)):
        rid = add_run(client, exp_id, method, seed, [(0, 0.3), (100, 0.2)], metric="traj_mse/nfe1")
        client.delete_run(rid)        # (only their nfe2 runs count: these are deleted again)
    running = client.create_run(exp_id, run_name="still-running")
    client.log_param(running.info.run_id, "preconditioner", "CTMPrecond")
    return uri, tmp_path


def test_speed_ups_and_intervals_equal_hand_computation(store):
    uri, tmp_path = store
    result = reporting.run(["known"], out=tmp_path / "report", tracking_uri=uri,
                           targets=["traj_mse/nfe2=0.5"], resamples=4000)
    speedups = json.loads((tmp_path / "report" / "speedups.json").read_text())
    forward = speedups["known | traj_mse/nfe2 | 0.5 (given) | analytic:forward"]
    # mean(ctm) / mean(forward) = 60 / 30; bootstrap means take the values {50, 60, 70} and {20, 30, 40},
    # each extreme with probability 1/16 > 2.5%: the interval is [50/40, 70/20] exactly.
    assert forward["value"] == pytest.approx(2.0)
    assert forward["low"] == pytest.approx(1.25) and forward["high"] == pytest.approx(3.5)
    assert forward["n"] == 2
    one_seed = speedups["known | traj_mse/nfe2 | 0.5 (given) | cm"]
    assert one_seed["value"] == pytest.approx(60 / 60) and one_seed["n"] == 1
    never = speedups["known | traj_mse/nfe2 | 0.5 (given) | bcm"]
    assert never["value"] is None and never["reached"] == 0 and never["n"] == 2   # no speed-up, not 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "never reached by 2 of 2 seeds" in text
    assert "1 run(s) left out (RUNNING)" in text                        # not a finished run
    # the automatic targets: at 50% of ctm's shortest run (80 steps: step 40), the worse ctm seed had
    # reached 1 - 0.5 * 40/70 (its curve is the slower one)
    assert f"| 50% (40 it) | {1 - 0.5 * 40 / 70:.4g} |" in text
    # runs of different lengths: the areas are over [0, 80], the shortest run
    assert "mean best-so-far over [0, 80]" in text
    # final values: ctm's runs end at 1 - 0.5*100/50 = 0 and 1 - 0.5*80/70
    finals = stats.bootstrap_mean([0.0, 1 - 0.5 * 80 / 70], 4000)
    assert f"| ctm | {finals.text()} |" in text
    assert "summary/seconds" in text and "12 (n=2)" in text             # the cost table
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "<table>" in html   # self-contained
    # logged as a report run, which a later report leaves out
    client = MlflowClient(uri)
    run = client.get_run(result["run_id"])
    assert run.data.tags["precondlab.role"] == "report" and run.info.status == "FINISHED"
    assert {"report/report.html", "report/report.md"} <= {f.path for f in client.list_artifacts(result["run_id"], "report")}


def test_a_missing_metric_and_an_unknown_experiment(store):
    uri, tmp_path = store
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("known").experiment_id
    add_run(client, exp_id, "ctm", 2, [(0, 0.3), (50, 0.2), (100, 0.1)], metric="traj_mse/nfe1")
    reporting.run(["known"], out=tmp_path / "r2", tracking_uri=uri, log=False)
    text = (tmp_path / "r2" / "report.md").read_text()
    notes = [line for line in text.splitlines() if line.startswith("Runs without this metric")]
    assert len(notes) == 2                                              # one per metric: nfe1, then nfe2
    assert "ctm: 2" in notes[0] and "analytic:forward: 2" in notes[0]   # traj_mse/nfe1: only the new run has it
    assert "ctm: 1" in notes[1] and "analytic:forward" not in notes[1]  # traj_mse/nfe2: the new run lacks it
    with pytest.raises(ValueError, match="no MLflow experiment named 'absent'"):
        reporting.run(["absent"], out=tmp_path / "r3", tracking_uri=uri, log=False)


def test_statistics_on_their_own():
    curve = [(0, 1.0), (10, 0.4), (20, 0.6), (30, 0.3)]
    assert stats.best_so_far(curve, "traj_mse/nfe2") == [(0, 1.0), (10, 0.4), (20, 0.4), (30, 0.3)]
    assert stats.iterations_to(curve, 0.5, "traj_mse/nfe2") == 10
    assert stats.iterations_to(curve, 0.1, "traj_mse/nfe2") == math.inf
    assert stats.iterations_to([(0, 10.0), (5, 30.0)], 20.0, "psnr/nfe1") == 5          # higher is better
    assert stats.area(curve, "traj_mse/nfe2", 30) == pytest.approx((7 + 4 + 3.5) / 30)
    one = stats.bootstrap_mean([2.0])
    assert (one.value, one.low, one.high, one.n) == (2.0, 2.0, 2.0, 1) and one.text() == "2 (n=1)"


@pytest.mark.slow
def test_the_report_of_a_real_toy_sweep(tmp_path):
    sweep = tmp_path / "mini_study.toml"
    bindings = ", ".join(f'"{b}"' for b in TINY + ["STEPS = 30"])
    sweep.write_text(
        f'name = "mini_study"\nbase = "{GIN / "toy_analytic.gin"}"\nbindings = [{bindings}, '
        f'"ode.analytic.num_points = 16", "ode.analytic.num_samples = 128"]\nexperiment = "mini-study"\n'
        f'max_concurrent = 2\n[metric]\nname = "traj_mse/nfe2"\nmode = "min"\n[scheduler]\ntype = "fifo"\n'
        f'[space]\nmethod = {{ grid = [{{ "experiment.preconditioner" = "@preconditioner.ctm()" }}, '
        f'{{ "experiment.preconditioner" = "@preconditioner.analytic()", "preconditioner.analytic.form" = "forward" }}] }}\n'
        f'SEED = {{ grid = [0, 1] }}\n')
    env_uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    done = subprocess.run([sys.executable, "-m", "precondlab", "sweep", str(sweep), "--tracking-uri", env_uri,
                           "--num-cpus", "2"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "precondlab", "report", "mini-study", "--tracking-uri", env_uri,
                          "--out", str(tmp_path / "rep")], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| analytic:forward | 2 | 0, 1 | 30-30 |" in text and "| ctm | 2 | 0, 1 | 30-30 |" in text
    assert "## mini-study: traj_mse/nfe2" in text and "speed-up" in text
    assert "exact consistency gaps" in text and "operative config" in text
