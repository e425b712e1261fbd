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
    files |= {f.path for d in ("plots", "checkpoints", "eval") for f in client.list_artifacts(result.run_id, d)}
    assert {"config.gin", "operative_config.gin", "plots/coefficients.png", "plots/l_s_curves.png",
            "plots/samples.png", "plots/two_step_vs_time.png", "eval/two_step_vs_time.json",
            "checkpoints/step-00000020.pt", "checkpoints/step-00000020.pt.json"} <= files
    ckpt = torch.load(result.checkpoint, weights_only=True)  # the artifact itself, in the local store
    assert ckpt["step"] == 20 and "student" in ckpt and "rng" in ckpt
    assert run.data.params["eval.times.nfe2"] == "80 > 2.515 > 0.002"         # the times each NFE used
    assert run.data.tags["precondlab.checkpoint_step"] == "20"


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
    assert ckpts == ["checkpoints/step-00000010.pt", "checkpoints/step-00000010.pt.json",
                     "checkpoints/step-00000020.pt", "checkpoints/step-00000020.pt.json"]
    local = client.download_artifacts(runs[0].info.run_id, "checkpoints/step-00000020.pt")
    assert torch.load(local, weights_only=True)["step"] == 20           # the last good one
    assert "step-00000020.pt" in str(err.value)
    assert "last good checkpoint" in str(err.value)


def test_compile_option_traces_the_networks_and_changes_no_number(tracking_uri):
    """experiment.compile goes through torch.compile (dynamo + AOTAutograd; the 'aot_eager'
    backend skips C++ code generation, which only torch's own tests need) and the run's history
    matches the eager run's: same seed, same data, same losses and metrics."""
    import torch._dynamo

    eager = _run(tracking_uri, "toy_ctm.gin", ["STEPS = 10"])
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = _run(tracking_uri, "toy_ctm.gin", ["STEPS = 10", "experiment.compile = True",
                                                  "experiment.compile_backend = 'aot_eager'"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert MlflowClient(tracking_uri).get_run(compiled.run_id).data.params["compiled_modules"] == "2"
    assert [step for step, _ in compiled.history] == [step for step, _ in eager.history]
    for (_, a), (_, b) in zip(eager.history, compiled.history):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), key
    torch._dynamo.reset()


def test_one_non_finite_loss_error_for_runs_and_teacher_training():
    from precondlab import errors
    from precondlab.training import teacher as teacher_training
    assert experiment.NonFiniteLossError is teacher_training.NonFiniteLossError is errors.NonFiniteLossError
    assert issubclass(errors.NonFiniteLossError, FloatingPointError)


def test_the_evaluator_is_set_up_before_the_statistics(tracking_uri, monkeypatch):
    """A missing FID weights file or dataset fails before the (minutes long) Analytic statistics."""
    from precondlab.evaluation.features import FeatureExtractorError
    from precondlab.evaluation.analytic import Evaluator

    calls = []
    analytic = registry.get("preconditioner", "analytic")
    fit = analytic.fit

    def fit_spy(self, teacher):
        calls.append("fit")
        return fit(self, teacher)

    def missing_weights(self, teacher, grid=None):
        calls.append("setup")
        raise FeatureExtractorError("Inception weights for FID not found. Download ... and place the file at ...")

    monkeypatch.setattr(analytic, "fit", fit_spy)
    monkeypatch.setattr(Evaluator, "setup", missing_weights)
    with pytest.raises(FeatureExtractorError, match="Inception weights"):
        _run(tracking_uri)
    assert calls == ["setup"]
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("precondlab").experiment_id])
    assert run.info.status == "FAILED" and "FeatureExtractorError" in run.data.tags["error"]


def test_image_evaluator_settings_are_logged_right_after_its_setup(tmp_path, tracking_uri, monkeypatch):
    """A run that fails after the evaluator's setup still has its eval.* params (FD mode, samples, label)."""
    from image_fixtures import tiny_image_bindings, write_fashion_fixture

    from precondlab.evaluation import plots
    from precondlab.evaluation.features import CLASSIFIER_LABEL

    ckpt, data = write_fashion_fixture(tmp_path)
    cfg = config.load([str(GIN / "fashion_ctm.gin")], tiny_image_bindings(tmp_path / "fid-cache") + [
        f"TEACHER_CKPT = '{ckpt}'", f"dataset.fashion_mnist.data_dir = '{data}'",
        "dataset.fashion_mnist.system_dir = None"])

    def broken_plot(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots, "coefficients", broken_plot)
    with pytest.raises(RuntimeError, match="plotting failed"):
        experiment.run(cfg, tracking_uri=tracking_uri, progress=False)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("precondlab").experiment_id])
    params = run.data.params
    assert run.info.status == "FAILED"
    assert params["eval.fd_classifier_mode"] == "native" and params["eval.fd_classifier_num_samples"] == "8"
    assert params["eval.fd_classifier_label"] == CLASSIFIER_LABEL[:6000]
    assert params["eval.fd_classifier_extractor"] == "classifier" and "eval.fd_classifier_reference" in params


def test_a_statistics_cache_hit_is_logged_with_the_original_cost(tracking_uri, tmp_path):
    extra = ["STEPS = 2", f"ode.analytic.cache_dir = '{tmp_path / 'stats'}'"]
    first, second = _run(tracking_uri, extra=extra), _run(tracking_uri, extra=extra)
    client = MlflowClient(tracking_uri)
    m1, m2 = (client.get_run(r.run_id).data.metrics for r in (first, second))
    assert (m1["stats/cached"], m2["stats/cached"]) == (0.0, 1.0)
    assert m2["stats/estimate_seconds"] == m1["stats/estimate_seconds"]  # the cost of the estimate, kept
    assert 0 < m1["stats/estimate_seconds"] <= m1["stats/seconds"]
    assert first.history == second.history  # the cached statistics are the estimated ones


def test_bf16_autocast_runs_and_stays_close_to_float32(tracking_uri):
    """experiment.amp = 'bf16' (the CUDA default under 'auto') also works on the CPU: the loss is
    computed under bf16 autocast, the run finishes, and its metrics stay near the float32 run's."""
    full = _run(tracking_uri, "toy_ctm.gin", ["STEPS = 20", "experiment.amp = 'off'"])
    half = _run(tracking_uri, "toy_ctm.gin", ["STEPS = 20", "experiment.amp = 'bf16'"])
    assert half.status == "FINISHED" and half.history != full.history  # bf16 really changed the numbers
    for key in ("traj_mse/nfe1", "traj_mse/nfe2"):
        assert half.final[key] == pytest.approx(full.final[key], rel=0.2), key


def test_a_run_leaves_no_scratch_files_and_points_at_its_artifact(tracking_uri, tmp_path, monkeypatch):
    """Checkpoints and plots are written to a scratch folder, logged to MLflow, and the folder is
    removed (a CIFAR checkpoint is ~1 GB): the result names the artifact, which holds the weights."""
    import tempfile

    scratch = tmp_path / "scratch"     # this run's temporary files only (other tests run beside it)
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = _run(tracking_uri, "toy_ctm.gin", ["STEPS = 10"])
    assert [p.name for p in scratch.iterdir() if p.name.startswith("precondlab")] == []   # (torch may cache here)
    run = MlflowClient(tracking_uri).get_run(result.run_id)
    assert result.checkpoint.endswith("checkpoints/step-00000010.pt") and result.run_id in result.checkpoint
    assert torch.load(result.checkpoint, weights_only=True)["step"] == 10
    assert run.info.status == "FINISHED"
