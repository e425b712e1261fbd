"""Sweeps with real Ray Tune and real MLflow (SQLite under tmp_path), on the CPU.

Each sweep uses the toy CTM config cut down to 50-100 steps with evaluations every 50 steps;
the evaluation is seeded, so a trial's metrics do not depend on timing, only on its settings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gin
import pytest
from mlflow.tracking import MlflowClient

from precondlab import config, tracking
from precondlab.tuning import runner as sweep

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TINY = ["experiment.eval_every = 50", "evaluator.num_samples = 512", "evaluator.num_jump_pairs = 128",
        "evaluator.reference_steps = 64", "experiment.gap_pairs = ()"]
METRIC = "traj_mse/nfe2"


def write_sweep(path: Path, name: str, steps: int, space: str, extra: str = "", bindings=()) -> Path:
    lines = [f'"STEPS = {steps}"'] + [f'"{b}"' for b in list(TINY) + list(bindings)]
    path.write_text(f'name = "{name}"\nbase = "{REPO / "gin" / "toy_ctm.gin"}"\n'
                    f'bindings = [{", ".join(lines)}]\nexperiment = "sweeps-test"\n{extra}\n'
                    f'[metric]\nname = "{METRIC}"\nmode = "min"\n\n[space]\n{space}\n')
    return path


def children(uri: str, parent_id: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sweeps-test")
    return client, client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


# ------------------------------------------------------------------------- definitions only
def test_definitions_in_repo_load_and_validate():
    toy = sweep.check(REPO / "sweeps" / "toy_precond.toml")   # dry-parses every option's gin
    assert toy.base_paths() == [REPO / "gin" / "toy_analytic.gin"]
    assert toy.scheduler["type"] == "asha" and toy.metric == METRIC
    precond = next(p for p in toy.space if p.key == "precond")
    assert precond.bundle and sweep.binding_lines(precond.bindings(1)) == [
        "experiment.preconditioner = @preconditioner.analytic()", 'preconditioner.analytic.form = "forward"']

    cifar = sweep.load(REPO / "sweeps" / "cifar_precond.toml")  # its base config may not exist yet
    assert cifar.base == ["gin/cifar_analytic.gin"] and cifar.resources == {"cpu": 4, "gpu": 1, "workers": 1}
    assert cifar.expected_trials() == 6 and {p.key for p in cifar.space} == {"precond", "experiment.lr"}


def test_values_render_as_gin():
    assert sweep.render("@preconditioner.ctm()") == "@preconditioner.ctm()"
    assert sweep.render("%SEED") == "%SEED"
    assert sweep.render("forward") == '"forward"'
    assert sweep.render(0.001) == "0.001" and sweep.render(12) == "12" and sweep.render(True) == "True"


def test_definitions_load_without_importing_ray():
    # A fresh interpreter: Ray is imported only inside the functions that start or run trials.
    code = ("import sys; import precondlab.tuning.spec as spec; "
            f"spec.load({str(REPO / 'sweeps' / 'toy_precond.toml')!r}); "
            "assert 'ray' not in sys.modules, 'sweep_spec'; "
            "import precondlab.tuning.runner, precondlab.tuning.trial; "
            "assert 'ray' not in sys.modules, 'sweep'; "
            "assert precondlab.tuning.runner.load is spec.load and precondlab.tuning.runner.SweepError is spec.SweepError")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("body, match", [
    ('base = "x.gin"\nnum_sample = 3\n', r"unknown key 'num_sample' in the top level"),
    ('base = "x.gin"\n[space]\n"experiment.lr" = { choise = [1, 2] }\n', r"unknown key 'choise' in \[space\] 'experiment.lr'"),
    ('base = "x.gin"\n[space]\n"experiment.lr" = { loguniform = [0, 1] }\n', r"'experiment.lr': loguniform needs 0 < lo"),
    ('base = "x.gin"\n[space]\n"experiment.lr" = { uniform = [2, 1] }\n', r"'experiment.lr': uniform needs lo < hi"),
    ('base = "x.gin"\n[space]\nSEED = { randint = [0.5, 3] }\n', r"'SEED': randint needs integer bounds"),
    ('base = "x.gin"\n[space]\np = { choice = [{ "a.b" = 1 }, 2] }\n', r"'p': choice mixes binding tables"),
    ('base = "x.gin"\n[scheduler]\ntype = "asha"\nmax_tt = 3\n', r"unknown key 'max_tt' in \[scheduler\]"),
    ('base = "x.gin"\n[scheduler]\ntype = "pbt"\n', r"\[scheduler\] 'type' must be one of"),
    ('base = "x.gin"\n[metric]\nname = "swd/nfe1"\nmode = "low"\n', r"\[metric\] 'mode' must be 'min' or 'max'"),
    ('base = "x.gin"\n[resources]\ngpus = 1\n', r"unknown key 'gpus' in \[resources\]"),
    ('bindings = []\n', r"missing key 'base'"),
])
def test_bad_definitions_name_file_and_key(tmp_path, body, match):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(sweep.SweepError, match=match) as info:
        sweep.load(path)
    assert str(path) in str(info.value)


def test_a_schedule_that_leaves_asha_nothing_to_do_is_flagged(tmp_path):
    path = write_sweep(tmp_path / "short.toml", "short", 50, '"experiment.lr" = { grid = [1e-3] }',
                       extra="[scheduler]\ntype = \"asha\"\ngrace_period = 100\n")
    definition = sweep.load(path)
    assert "cannot stop any trial early" in sweep._inert_asha(definition, 50)          # noqa: SLF001
    assert sweep._inert_asha(definition, 400) is None                                   # noqa: SLF001
    definition.scheduler = {"type": "fifo"}
    assert sweep._inert_asha(definition, 50) is None                                    # noqa: SLF001


def test_typo_in_a_swept_binding_fails_before_ray(tmp_path):
    path = write_sweep(tmp_path / "typo.toml", "typo", 50, '"experiment.lrr" = { choice = [0.001] }')
    with pytest.raises(sweep.SweepError, match=r"typo.toml.*experiment.lrr"):
        sweep.check(path)


# ------------------------------------------------------------------------------- real sweeps
@pytest.mark.slow
def test_asha_sweep_logs_child_runs_stops_bad_arms_and_writes_best_gin(tmp_path):
    # lr 1e-7 and 3e-8 leave the student at its initialisation (traj_mse 0.209 at step 50),
    # clearly worse than lr 3e-3 / 1e-3 (<= 0.207). With 2 trials at a time the tiny-lr arms start
    # only after a good arm has reached the step-50 rung, so ASHA stops both there, every time.
    path = write_sweep(tmp_path / "asha.toml", "asha", 100,
                       '"experiment.lr" = { grid = [3e-3, 1e-3, 1e-7, 3e-8] }\n'
                       '"experiment.preconditioner" = { choice = ["@preconditioner.ctm()"] }\n'
                       'NUM_TIMESTEPS = { choice = [12, 18] }\n',
                       extra="max_concurrent = 2\nseed = 3\n[scheduler]\ntype = \"asha\"\nmax_t = 100\n"
                             "grace_period = 50\nreduction_factor = 2\n")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    result = sweep.run(path, tracking_uri=uri, output=tmp_path / "out", num_cpus=2, verbose=False)

    rows = {r.bindings["experiment.lr"]: r for r in result.rows}
    assert sorted(rows) == [3e-8, 1e-7, 1e-3, 3e-3]
    for lr in (1e-7, 3e-8):
        assert rows[lr].status == "STOPPED" and rows[lr].step == 50 and rows[lr].iterations == 2
    assert rows[3e-3].status == "COMPLETED" and rows[3e-3].step == 100
    assert result.best is rows[3e-3] and not result.interrupted

    client, runs = children(uri, result.parent_run_id)
    assert len(runs) == 4
    by_trial = {r.data.tags["precondlab.trial"]: r for r in runs}
    assert set(by_trial) == {r.trial_id for r in result.rows}
    for row in result.rows:
        run = by_trial[row.trial_id]
        assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert run.data.tags["precondlab.sweep"] == "asha" and METRIC in run.data.metrics
        assert float(run.data.params["experiment.lr"]) == row.bindings["experiment.lr"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, METRIC)]
        if row.status == "STOPPED":   # closed as KILLED, not left RUNNING, and said why
            assert run.info.status == "KILLED" and run.data.tags["precondlab.stopped_early"] == "true"
            assert "error" not in run.data.tags and sorted(steps) == [0, 50]
        else:
            assert run.info.status == "FINISHED" and sorted(steps) == [0, 50, 100]

    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "asha"
    assert parent.data.metrics[f"best/{METRIC}"] == pytest.approx(result.best.metric)
    assert {"summary.txt", "best.gin"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary.count("STOPPED") >= 2 and result.best.trial_id in summary

    # best.gin is a complete config `precondlab run` takes as is, with the best trial's settings.
    config.load([str(result.best_gin)])
    assert gin.query_parameter("experiment.lr") == result.best.bindings["experiment.lr"]
    assert gin.query_parameter("%NUM_TIMESTEPS") == result.best.bindings["NUM_TIMESTEPS"]
    assert gin.query_parameter("%STEPS") == 100
    assert str(gin.query_parameter("experiment.preconditioner")) == "@preconditioner.ctm()"


def _kill_after_first_checkpoint(uri: str, lr: float, killed: list) -> None:
    """SIGKILL the Ray worker running the trial with this lr once its MLflow run has a checkpoint
    (a node failure, as far as the trial can tell)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not killed:
        try:
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name("sweeps-test")
            for run in client.search_runs([exp.experiment_id]) if exp else []:
                if run.data.params.get("experiment.lr") == str(lr) and "precondlab.checkpoint_step" in run.data.tags:
                    os.kill(int(run.data.tags["precondlab.pid"]), signal.SIGKILL)
                    killed.append(int(run.data.tags["precondlab.checkpoint_step"]))
                    return
        except Exception:  # noqa: BLE001 - the store is busy or not there yet
            pass
        time.sleep(0.1)


@pytest.mark.slow
def test_crashing_trials_are_retried_from_their_checkpoint_unless_they_would_fail_again(tmp_path):
    """A trial whose worker dies is started again by Tune and resumes its own MLflow run from its
    last checkpoint; a trial that diverged (lr = 1e6) is an ERROR row, not retried, and the sweep
    goes on. (A bad value such as lr = -1 is refused before any run starts.)"""
    path = write_sweep(tmp_path / "crash.toml", "crash", 200, '"experiment.lr" = { grid = [1e-3, 1e6] }',
                       extra='max_concurrent = 2\n[scheduler]\ntype = "fifo"\n[failure]\nmax_retries = 1\n')
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    killed = []
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(uri, 1e-3, killed), daemon=True)
    killer.start()
    result = sweep.run(path, tracking_uri=uri, output=tmp_path / "out", num_cpus=2, verbose=False)
    killer.join(timeout=5)
    assert killed, "the good trial's worker was never killed"

    rows = {r.bindings["experiment.lr"]: r for r in result.rows}
    assert rows[1e6].status == "ERROR" and "non-finite loss at step" in rows[1e6].error
    assert "not retried" in rows[1e6].error
    assert rows[1e-3].status == "COMPLETED" and result.best is rows[1e-3]
    client, runs = children(uri, result.parent_run_id)
    assert sorted(r.data.tags["precondlab.trial"] for r in runs) == sorted(r.trial_id for r in result.rows)
    status = {r.data.tags["precondlab.trial"]: r for r in runs}
    bad, good = status[rows[1e6].trial_id], status[rows[1e-3].trial_id]
    assert bad.info.status == "FAILED" and "NonFiniteLossError" in bad.data.tags["error"]
    assert good.info.status == "FINISHED" and int(good.data.tags["precondlab.resumed_from_step"]) >= killed[0]
    every = int(good.data.params["experiment.eval_every"])
    steps = [m.step for m in client.get_metric_history(good.info.run_id, METRIC)]
    assert steps == list(range(0, 201, every))               # one value per evaluation, none twice
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    assert "ERROR" in (tmp_path / "out" / "summary.txt").read_text()


@pytest.mark.slow
def test_resume_continues_an_interrupted_sweep_without_redoing_finished_trials(tmp_path):
    path = write_sweep(tmp_path / "resume.toml", "resume", 100, '"experiment.lr" = { grid = [1e-3, 2e-3] }',
                       extra='max_concurrent = 1\n[scheduler]\ntype = "fifo"\n')
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = tmp_path / "out"
    client, _, exp_id = tracking.connect(uri, "sweeps-test")  # the store exists before anyone polls it
    proc = subprocess.Popen([sys.executable, "-m", "precondlab.cli", "sweep", str(path), "--tracking-uri", uri,
                             "--output", str(out), "--num-cpus", "1"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        # Ctrl+C once the first trial is done and the second has started: then Tune has taken the
        # first one's end (max_concurrent = 1), so its saved state cannot ask to run it again.
        while time.time() < deadline and proc.poll() is None:
            status = [r.info.status for r in client.search_runs([exp_id], "tags.`precondlab.trial` != ''")]
            if "FINISHED" in status and "RUNNING" in status:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, text
    assert "INTERRUPTED" in text and "--resume" in text
    # the trials' table was printed while the sweep ran (before its final summary)
    assert text.index("[sweep resume]") < text.index("INTERRUPTED") and "RUNNING" in text
    first_part = json.loads((out / sweep.STATE_FILE).read_text())["seconds"]

    # the trial the driver interrupted says so, and carries no error
    (stopped,) = [r for r in client.search_runs([exp_id], "tags.`precondlab.trial` != ''") if r.info.status != "FINISHED"]
    assert stopped.info.status == "KILLED" and "error" not in stopped.data.tags
    assert stopped.data.tags["precondlab.sweep_interrupted"] == "true" and "precondlab.stopped_early" not in stopped.data.tags

    with pytest.raises(sweep.SweepError, match="--resume"):   # not silently mixed into a new sweep
        sweep.run(path, tracking_uri=uri, output=out, num_cpus=1, verbose=False)
    with pytest.raises(sweep.SweepError, match="no saved state"):   # a mistyped --output does not start over
        sweep.run(path, tracking_uri=uri, output=tmp_path / "outt", num_cpus=1, resume=True, verbose=False)
    result = sweep.run(path, tracking_uri=uri, output=out, num_cpus=1, resume=True, verbose=False)
    assert [r.status for r in result.rows] == ["COMPLETED", "COMPLETED"] and not result.interrupted
    assert result.seconds > first_part > 0                 # the resumed sweep's clock went on
    _, runs = children(uri, result.parent_run_id)
    per_trial = {}
    for r in runs:
        per_trial.setdefault(r.data.tags["precondlab.trial"], []).append(r.info.status)
    first = next(r for r in result.rows if r.bindings["experiment.lr"] == 1e-3)
    assert per_trial[first.trial_id] == ["FINISHED"]          # not run again
    assert all("RUNNING" not in v for v in per_trial.values())
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"

