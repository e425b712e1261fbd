"""One run on several processes, started the way users start them: torchrun (gloo on the CPU).

* one optimiser step of 2 ranks x B/2 equals one of 1 rank x B with the same samples and noise
  (DDP averages the gradients; the adaptive DSM weight uses the global batch's gradients);
* a 2-rank `precondlab run` keeps every rank's student and EMA identical (checked at each
  checkpoint), logs once, computes the statistics once;
* its checkpoint resumes on 1 rank and on 4 (the global batch stays the same), and back;
* two processes filling the statistics cache at once leave a whole file.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import GIN
from tiny import TINY

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
HERE = Path(__file__).parent


def torchrun(nproc: int, *args, cwd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", str(nproc), *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.mark.slow
def test_one_step_on_two_ranks_equals_one_step_on_one(tmp_path):
    one = subprocess.run([sys.executable, str(HERE / "ddp_equivalence.py"), str(tmp_path / "one.pt")],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(2, str(HERE / "ddp_equivalence.py"), str(tmp_path / "two.pt"), cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("one.pt", "two.pt"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5)   # float32 round-off


@pytest.mark.slow
def test_a_two_rank_run_and_its_resume_on_one_and_four_ranks(tmp_path):
    bindings = TINY + ["STEPS = 20", "experiment.checkpoint_every = 5", "experiment.batch_size = 64",
                       "ode.analytic.num_points = 16", "ode.analytic.num_samples = 128"]
    args = ["-m", "precondlab", "run", str(GIN / "toy_analytic.gin"), "--no-progress",
            *[a for b in bindings for a in ("--gin_bindings", b)]]
    first = torchrun(2, *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("summary (final evaluation") == 1          # rank 0 alone reports
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("precondlab")
    (run,) = client.search_runs([exp.experiment_id])                     # one MLflow run for two processes
    assert run.info.status == "FINISHED" and run.data.tags["precondlab.world_size"] == "2"
    assert run.data.tags["precondlab.checkpoint_step"] == "20"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "traj_mse/nfe2")] == [0, 10, 20]
    stats = client.get_metric_history(run.info.run_id, "stats/seconds")
    assert len(stats) == 1                                               # estimated once
    run_id = run.info.run_id

    # the 2-rank checkpoint on 1 rank, then on 4 (the global batch stays 64)
    one = subprocess.run([sys.executable, *args, "--gin_bindings", "STEPS = 25", "--resume", run_id],
                         capture_output=True, text=True, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "resumed on 1 rank(s) from a checkpoint of 2" in one.stderr
    four = torchrun(4, *args, "--gin_bindings", "STEPS = 30", "--resume", run_id, cwd=tmp_path)
    assert four.returncode == 0, four.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["precondlab.resumed_world_sizes"] == "1->4"
    steps = [m.step for m in client.get_metric_history(run_id, "traj_mse/nfe2")]
    assert steps == [0, 10, 20, 25, 30]                                  # one history, no step twice
    ckpt = client.download_artifacts(run_id, "checkpoints/step-00000030.pt", str(tmp_path))
    state = torch.load(ckpt, weights_only=True)
    assert state["world_size"] == 4 and len(state["rng_per_rank"]) == 4


def test_two_processes_filling_the_statistics_cache_at_once_leave_a_whole_file(tmp_path):
    code = ("import sys; from precondlab.odes.analytic import AnalyticODE; "
            "from precondlab.teachers.gmm import GMMTeacher; "
            "c = AnalyticODE(num_points=24, num_samples=512, cache_dir=sys.argv[1]).fit(GMMTeacher(dim=4, seed=3)); "
            "print(float(c.l.sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "cache")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1000:] for o in outs]
    assert outs[0][0] == outs[1][0]
    (cached,) = list((tmp_path / "cache").glob("analytic-*.pt"))
    assert not list((tmp_path / "cache").glob("*.part"))
    from precondlab.odes.analytic import AnalyticODE
    from precondlab.teachers.gmm import GMMTeacher
    again = AnalyticODE(num_points=24, num_samples=512, cache_dir=str(tmp_path / "cache")).fit(GMMTeacher(dim=4, seed=3))
    assert again.info["cached"] and f"{float(again.l.sum())}\n" == outs[0][0]
    assert cached.stat().st_size > 0
