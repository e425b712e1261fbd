"""One Tune trial of a sweep, run in a Ray worker process (``precondlab.sweep`` starts them).

``_trainable`` receives the trial's sampled config and the driver's payload (the ``Sweep``, the
inlined base gin text, ``--gin_bindings``, the MLflow parent run), parses the trial's fully
inlined gin text in its own process with ``config.parse_text`` and calls ``experiment.run`` with
a ``report`` that forwards every evaluation to ``ray.tune.report``. When Tune's scheduler stops
the trial, ``report`` raises ``TrialStopped``. Ray is imported only inside ``_trainable``.
"""

from __future__ import annotations

import os

from precondlab.sweep_spec import Sweep, _resolve, _total_steps, binding_lines, compose


class TrialStopped(KeyboardInterrupt):
    """Raised inside a trial when Tune's scheduler stops it: experiment.run then ends its MLflow run KILLED."""


def _mlflow_child(client, exp_id: str, parent: str, trial_id: str):
    runs = client.search_runs([exp_id], filter_string=f"tags.`precondlab.trial` = '{trial_id}' and "
                                                      f"tags.`mlflow.parentRunId` = '{parent}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


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
    last = {}

    def report(step: int, metrics: dict) -> None:
        last.update(metrics, step=step)
        if step >= total:
            return  # the final evaluation is reported once the MLflow run is complete (below)
        try:
            tune.report({**metrics, "step": step, "total_steps": total})
        except SystemExit:  # Tune's way of ending a trial its scheduler stopped
            raise TrialStopped(f"stopped by the {sweep.scheduler['type']} scheduler at step {step}") from None

    try:
        result = experiment.run(parsed, tracking_uri=payload["tracking_uri"], experiment_name=sweep.experiment,
                                progress=False, report=report, parent_run_id=payload["parent_run_id"], tags=tags)
    except TrialStopped:
        # experiment.run ended the MLflow run KILLED; say why, not as an error.
        try:
            client, _, exp_id = tracking.connect(payload["tracking_uri"], sweep.experiment)
            run = _mlflow_child(client, exp_id, payload["parent_run_id"], trial_id)
            if run is not None:
                client.set_tag(run.info.run_id, "precondlab.stopped_early", "true")
                client.set_tag(run.info.run_id, "precondlab.stopped_at_step", str(last.get("step", "")))
                client.delete_tag(run.info.run_id, "error")
        except Exception:  # noqa: BLE001 - best effort: the driver fixes leftovers after the sweep
            pass
        return
    try:
        tune.report({**result.final, "step": total, "total_steps": total, "mlflow_run_id": result.run_id})
    except SystemExit:  # stopped at max_t after the last evaluation: nothing left to do
        pass
