"""One Tune trial of a sweep, run in a Ray worker process (``precondlab.tuning.runner`` starts them).

``_trainable`` receives the trial's sampled config and the driver's payload (the ``Sweep``, the
inlined base gin text, ``--gin_bindings``, the MLflow parent run), parses the trial's fully
inlined gin text in its own process with ``config.parse_text`` and calls ``experiment.run`` with
a ``report`` that forwards every evaluation to ``ray.tune.report``. When Tune's scheduler stops
the trial, ``report`` raises ``TrialStopped``. Ray is imported only inside ``_trainable``.
"""

from __future__ import annotations

import os

from precondlab.tuning.spec import Sweep, _resolve, _total_steps, binding_lines, compose


class TrialStopped(KeyboardInterrupt):
    """Raised inside a trial when Tune stops it (its scheduler, or the sweep's interruption):
    experiment.run then ends its MLflow run KILLED."""


def _mlflow_child(client, exp_id: str, parent: str, trial_id: str):
    runs = client.search_runs([exp_id], filter_string=f"tags.`precondlab.trial` = '{trial_id}' and "
                                                      f"tags.`mlflow.parentRunId` = '{parent}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


# Failures that a retry would only repeat: the trial is not run again.
DETERMINISTIC = ("NonFiniteLossError", "ConfigError", "SettingError", "DatasetError", "CheckpointError",
                 "FeatureExtractorError", "ResumeError")


def _previous_attempt(payload: dict, sweep: Sweep, trial_id: str) -> str | None:
    """Tune starts a crashed trial again (``[failure] max_retries``): the MLflow run of its previous
    attempt, to resume from its last checkpoint, or None on a first attempt. A previous attempt
    that failed deterministically (a diverged loss, a bad setting) is not repeated."""
    from precondlab import tracking
    client, _, exp_id = tracking.connect(payload["tracking_uri"], sweep.experiment)
    run = _mlflow_child(client, exp_id, payload["parent_run_id"], trial_id)
    if run is None or run.info.status == "FINISHED":
        return None
    error = run.data.tags.get("error", "")
    if error.startswith(DETERMINISTIC):
        raise RuntimeError(f"trial {trial_id} is not retried: its previous attempt failed with {error[:300]}")
    return run.info.run_id if "precondlab.checkpoint_step" in run.data.tags else None


def _run_on_workers(sweep: Sweep, payload: dict, trial_id: str, text: str, parsed, tags: dict, resume) -> None:
    """A trial of several Ray Train workers: a TorchTrainer launched from the trial, every evaluation
    passed on to Tune by Ray Train's TuneReportCallback (rank 0's metrics), so ASHA still sees them."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from precondlab.tuning import train
    name = _resolve("experiment.name") or f"{sweep.name}/{trial_id}"
    cfg = {"text": text + f"\nexperiment.name = {name!r}\n", "origin": f"{sweep.path} (trial {trial_id})",
           "files": list(parsed.files), "bindings": list(parsed.bindings), "cwd": payload["cwd"],
           "tracking_uri": payload["tracking_uri"], "experiment": sweep.experiment,
           "parent_run_id": payload["parent_run_id"], "tags": {**tags, "precondlab.ray_workers": str(sweep.resources["workers"])},
           "resume": resume, "report_each": True, "entry_point": "precondlab sweep (trial)"}
    result = train.trainer(cfg, sweep.resources["workers"], sweep.resources["cpu"], sweep.resources["gpu"],
                           name=f"{sweep.name}-{trial_id}", callbacks=[TuneReportCallback()]).fit()
    if result.error is not None:
        raise result.error


def _trainable(config: dict, payload: dict) -> None:
    """One Tune trial: parse its gin text in this process, run the experiment, report every evaluation."""
    import ray
    import torch
    from ray import tune

    from precondlab import config as gin_config
    from precondlab import experiment, tracking

    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    if os.path.isdir(payload["cwd"]):
        # Tune starts trials in their own folder; relative paths in the gin (teacher checkpoints,
        # caches) mean what they mean to `precondlab run` started where the sweep was started.
        os.chdir(payload["cwd"])
    sweep: Sweep = payload["sweep"]
    sampled = sweep.sampled_bindings(config)
    text = compose(payload["base_text"], sweep, payload["extra"], sampled, trial_id)
    parsed = gin_config.parse_text(text, origin=f"{sweep.path} (trial {trial_id})",
                                   files=[str(p) for p in payload["base_files"]], bindings=binding_lines(sampled))
    total = _total_steps()
    if not _resolve("experiment.name"):
        import gin
        gin.bind_parameter("experiment.name", f"{sweep.name}/{trial_id}")  # the child run's name in MLflow
    torch.set_num_threads(max(1, int(sweep.resources.get("cpu", 1) or 1)))
    node = ray.get_runtime_context().get_node_id()
    tags = {"precondlab.sweep": sweep.name, "precondlab.trial": trial_id,
            "precondlab.ray_node": node, "precondlab.ray_address": payload["address"] or "local"}

    def report(step: int, metrics: dict) -> None:
        if step >= total:
            return  # the final evaluation is reported once the MLflow run is complete (below)
        try:
            tune.report({**metrics, "step": step, "total_steps": total})
        except SystemExit:  # Tune's way of ending a trial its scheduler stopped
            raise TrialStopped(f"stopped by Tune at step {step}") from None

    resume = _previous_attempt(payload, sweep, trial_id)
    if sweep.resources.get("workers", 1) > 1:
        _run_on_workers(sweep, payload, trial_id, text, parsed, tags, resume)
        return
    try:
        result = experiment.run(parsed, tracking_uri=payload["tracking_uri"], experiment_name=sweep.experiment,
                                progress=False, report=report, parent_run_id=payload["parent_run_id"], tags=tags,
                                resume=resume)
    except TrialStopped:
        # experiment.run ended the MLflow run KILLED (tag precondlab.interrupted = TrialStopped). Why
        # Tune stopped it (its scheduler, or the sweep's interruption) only the driver knows: it
        # adds precondlab.stopped_early or precondlab.sweep_interrupted once the sweep ends.
        return
    try:
        tune.report({**result.final, "step": total, "total_steps": total, "mlflow_run_id": result.run_id})
    except SystemExit:  # stopped at max_t after the last evaluation: nothing left to do
        pass
