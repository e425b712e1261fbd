"""Runs that survive: a `precondlab run` killed with SIGKILL resumes to the same numbers as a run
never interrupted; SIGTERM and SIGINT end a run KILLED with a checkpoint of its step."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import GIN
from precondlab import config, experiment
from tiny import TINY, TINY_ANALYTIC

TOY = TINY + TINY_ANALYTIC + ["STEPS = 120", "experiment.batch_size = 256", "student.mlp.hidden = 64",
                              "experiment.eval_every = 25", "experiment.checkpoint_every = 7",
                              "experiment.keep_checkpoints = 2"]


def start_run(cwd: Path, gin_file: Path, bindings, *extra) -> subprocess.Popen:
    args = [a for b in bindings for a in ("--gin_bindings", b)]
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "precondlab", "run", str(gin_file), *args, "--no-progress", *extra],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(cwd: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until the run's artifact store holds a checkpoint of ``step`` or later (manifests are logged last)."""
    deadline = time.monotonic() + timeout
    while not any(int(p.name[5:13]) >= step for p in cwd.glob("mlartifacts/*/artifacts/checkpoints/step-*.pt.json")):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before checkpoint {step}: "
                                 f"{proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"no checkpoint {step} after {timeout} s"
        time.sleep(0.01)


def only_run(cwd: Path):
    client = MlflowClient(f"sqlite:///{cwd / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("precondlab").experiment_id])
    return client, run


def assert_same_as_uninterrupted(reference, resumed, client, run_id):
    """Final metrics ==, every evaluation ==, and MLflow histories without duplicate or missing steps."""
    # wall-clock figures (summary/*, time/*, stats/*seconds) differ between any two runs, and whether the
    # statistics came from the cache depends on which run estimated them first; all else is equal
    timing = lambda d: {k: v for k, v in d.items()  # noqa: E731
                        if not (k.startswith(("summary/", "time/")) or "seconds" in k or k == "stats/cached")}
    assert timing(resumed.final) == timing(reference.final)
    assert resumed.history == reference.history
    ref_client = MlflowClient(reference.tracking_uri)
    for key in sorted(timing(ref_client.get_run(reference.run_id).data.metrics)):
        want = [(m.step, m.value) for m in ref_client.get_metric_history(reference.run_id, key)]
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert got == sorted(want), key


@pytest.mark.slow
def test_toy_run_killed_with_sigkill_resumes_bit_identically(tmp_path):
    gin_file = GIN / "toy_analytic.gin"
    reference_uri = f"sqlite:///{tmp_path / 'reference.db'}"
    reference = experiment.run(config.load([str(gin_file)], TOY), tracking_uri=reference_uri, progress=False)
    reference.tracking_uri = reference_uri

    victim = tmp_path / "victim"
    proc = start_run(victim, gin_file, TOY)
    wait_for_checkpoint(victim, 35, proc)              # checkpoints every 7 steps, evaluations every 25
    proc.kill()
    proc.wait()
    client, run = only_run(victim)
    assert run.info.status == "RUNNING"                # SIGKILL gives the run no chance to say anything
    killed_at = int(run.data.tags["precondlab.checkpoint_step"])
    assert killed_at % 25 != 0 and killed_at < 120

    resumed = experiment.run(config.load([str(gin_file)], TOY), tracking_uri=f"sqlite:///{victim / 'mlruns.db'}",
                             progress=False, resume="latest")
    assert resumed.run_id == run.info.run_id
    assert_same_as_uninterrupted(reference, resumed, client, run.info.run_id)
    assert run.data.metrics["stats/cached"] == 1.0      # the reference's statistics, found by their cache key
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and int(run.data.tags["precondlab.resumed_from_step"]) >= killed_at
    kept = sorted(f.path for f in client.list_artifacts(run.info.run_id, "checkpoints"))
    assert kept == ["checkpoints/step-00000119.pt", "checkpoints/step-00000119.pt.json",
                    "checkpoints/step-00000120.pt", "checkpoints/step-00000120.pt.json"]   # the newest 2


@pytest.mark.slow
def test_image_run_killed_with_sigkill_resumes_bit_identically(tmp_path):
    from image_fixtures import tiny_image_bindings, write_cifar_fixture
    gin_file = GIN / "cifar_ctm.gin"
    pkl, data = write_cifar_fixture(tmp_path)
    bindings = tiny_image_bindings(tmp_path / "fid-cache") + [
        f"TEACHER_PKL = '{pkl}'", f"DATA_DIR = '{data}'", "STEPS = 16", "experiment.eval_every = 5",
        "experiment.checkpoint_every = 3", "image_evaluator.fid_every = 2"]
    reference_uri = f"sqlite:///{tmp_path / 'reference.db'}"
    reference = experiment.run(config.load([str(gin_file)], bindings), tracking_uri=reference_uri, progress=False)
    reference.tracking_uri = reference_uri

    victim = tmp_path / "victim"
    proc = start_run(victim, gin_file, bindings)
    wait_for_checkpoint(victim, 6, proc)
    proc.kill()
    proc.wait()
    client, run = only_run(victim)
    assert int(run.data.tags["precondlab.checkpoint_step"]) % 5 != 0
    resumed = experiment.run(config.load([str(gin_file)], bindings), tracking_uri=f"sqlite:///{victim / 'mlruns.db'}",
                             progress=False, resume=run.info.run_id)
    assert_same_as_uninterrupted(reference, resumed, client, run.info.run_id)


def test_resume_refuses_a_config_that_changes_the_math(tmp_path, tracking_uri):
    from precondlab.errors import ResumeError
    bindings = TINY + ["STEPS = 20"]
    first = experiment.run(config.load([str(GIN / "toy_ctm.gin")], bindings), tracking_uri=tracking_uri, progress=False)
    with pytest.raises(ResumeError, match="experiment.lr = 0.001 in the run, 0.002 now"):
        experiment.run(config.load([str(GIN / "toy_ctm.gin")], bindings + ["STEPS = 30", "experiment.lr = 0.002"]),
                       tracking_uri=tracking_uri, progress=False, resume=first.run_id)
    with pytest.raises(ResumeError, match="already reached experiment.steps = 20"):
        experiment.run(config.load([str(GIN / "toy_ctm.gin")], bindings), tracking_uri=tracking_uri, progress=False,
                       resume=first.run_id)
    with pytest.raises(ResumeError, match="no unfinished run"):
        experiment.run(config.load([str(GIN / "toy_ctm.gin")], bindings), tracking_uri=tracking_uri, progress=False,
                       resume="latest")
    # raising STEPS continues the finished run: same run, 10 more steps
    more = experiment.run(config.load([str(GIN / "toy_ctm.gin")], TINY + ["STEPS = 30"]), tracking_uri=tracking_uri,
                          progress=False, resume=first.run_id)
    assert more.run_id == first.run_id and [s for s, _ in more.history] == [0, 10, 20, 30]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_step_marks_the_run_killed_and_says_how_to_resume(tmp_path, sig):
    bindings = TINY + ["STEPS = 100000", "experiment.checkpoint_every = 25", "experiment.eval_every = 1000"]
    proc = start_run(tmp_path, GIN / "toy_ctm.gin", bindings)
    wait_for_checkpoint(tmp_path, 50, proc)
    sent = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 30
    assert proc.returncode == 128 + sig
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("precondlab:")]
    assert len(lines) == 2 and "finishing this step" in lines[0]
    client, run = only_run(tmp_path)
    step = int(run.data.tags["precondlab.interrupted_at_step"])
    assert run.info.status == "KILLED" and run.data.tags["precondlab.interrupted"] == sig.name
    assert f"stopped by {sig.name} at step {step}" in lines[1] and f"--resume {run.info.run_id}" in lines[1]
    assert run.data.tags["precondlab.checkpoint_step"] == str(step)     # the step it stopped at, not the last 25th
    names = {f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert f"checkpoints/step-{step:08d}.pt" in names


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(tmp_path):
    bindings = TINY + ["STEPS = 100000", "experiment.checkpoint_every = 25"]
    proc = start_run(tmp_path, GIN / "toy_ctm.gin", bindings)
    wait_for_checkpoint(tmp_path, 25, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err
    _, run = only_run(tmp_path)
    assert run.info.status == "KILLED"
