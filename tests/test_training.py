"""Training runs end to end: determinism, learning, CM, NaN handling, what MLflow holds."""

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import GIN
from precondlab import config, experiment, registry
from tiny import TINY, TINY_ANALYTIC


def _run(uri, gin_file="toy_analytic.gin", extra=(), **kw):
    cfg = config.load([str(GIN / gin_file)], TINY + TINY_ANALYTIC + list(extra))
    return experiment.run(cfg, tracking_uri=uri, progress=False, **kw)


def test_runs_are_seeded_and_deterministic(tracking_uri):
    a = _run(tracking_uri)
    b = _run(tracking_uri)
    c = _run(tracking_uri, extra=["SEED = 1"])
    assert a.history == b.history
    assert a.history != c.history


def test_the_student_learns(tracking_uri):
    result = _run(tracking_uri, "toy_ctm.gin", ["STEPS = 200", "experiment.eval_every = 100", "student.mlp.hidden = 64",
                                                "experiment.ema_decay = 0.9"])
    first, last = result.history[0][1], result.history[-1][1]
    assert last["traj_mse/nfe1"] < 0.5 * first["traj_mse/nfe1"]
    assert last["jump_mse"] < first["jump_mse"]


def test_mlflow_holds_config_metrics_plots_and_checkpoint(tracking_uri):
    result = _run(tracking_uri)
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["experiment.steps"] == "20"
    assert run.data.params["preconditioner"] == "AnalyticPrecond"
    assert {"swd/nfe1", "swd/nfe2", "traj_mse/nfe2", "jump_mse", "loss", "stats/seconds",
            "gap_t/10.0_to_1.0", "summary/seconds"} <= set(run.data.metrics)
    assert len(client.get_metric_history(result.run_id, "swd/nfe2")) == 3      # steps 0, 10, 20
    files = {f.path for f in client.list_artifacts(result.run_id)}
    files |= {f.path for d in ("plots", "checkpoints") for f in client.list_artifacts(result.run_id, d)}
    assert {"config.gin", "operative_config.gin", "plots/coefficients.png", "plots/l_s_curves.png",
            "plots/samples.png", "checkpoints/checkpoint.pt"} <= files
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["step"] == 20 and "student" in ckpt


def test_plain_consistency_distillation(tracking_uri):
    result = _run(tracking_uri, "toy_ctm.gin", ["experiment.preconditioner = @preconditioner.cm()",
                                                "experiment.objective = @objective.cm()", "objective.cm.num_timesteps = 18"])
    assert result.status == "FINISHED" and "traj_mse/nfe2" in result.final
    with pytest.raises(ValueError, match="objective.cm"):
        _run(tracking_uri, "toy_ctm.gin", ["experiment.preconditioner = @preconditioner.cm()"])


@registry.register("loss", "test_nan_after_25")
class NaNAfter:
    """A distance that turns NaN on its 25th call (tests the non-finite-loss path)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, a, b):
        self.calls += 1
        d = (a - b).pow(2).mean(-1)
        return d * float("nan") if self.calls >= 25 else d


def test_nan_stops_the_run_marks_it_failed_and_keeps_the_last_good_checkpoint(tracking_uri):
    with pytest.raises(experiment.NonFiniteLossError, match="step 25") as err:
        _run(tracking_uri, "toy_ctm.gin", ["objective.ctm.distance = @loss.test_nan_after_25()", "STEPS = 40"])
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("precondlab").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "NonFiniteLossError" in runs[0].data.tags["error"]
    ckpts = [f.path for f in client.list_artifacts(runs[0].info.run_id, "checkpoints")]
    assert ckpts == ["checkpoints/checkpoint.pt"]
    local = client.download_artifacts(runs[0].info.run_id, "checkpoints/checkpoint.pt")
    assert torch.load(local, weights_only=True)["step"] == 20           # the last good one
    assert "last good checkpoint" in str(err.value)
