"""One run on several Ray Train workers: ``precondlab run CONFIG --workers N [--address HOST:PORT]``,
and the trials of a sweep whose ``[resources] workers`` is more than 1.

Each worker runs the same ``experiment.run`` as ``precondlab run`` and torchrun do (one training
step for all three): Ray Train's ``TorchTrainer`` starts the workers and their process group
(gloo on CPUs, NCCL on GPUs), the run finds the group there, rank 0 logs to MLflow and writes the
checkpoints. Every evaluation is reported with ``ray.train.report`` by every worker (Ray Train
asks all to report alike); inside a Tune trial a ``TuneReportCallback`` passes rank 0's metrics
on to Tune, whose scheduler can then stop the trial. Ray is imported only in these functions.
"""

from __future__ import annotations

import json
import os
import tempfile
import time


def worker_loop(cfg: dict) -> None:
    """Ray Train's train_loop_per_worker: one rank of the run."""
    import ray.train
    import torch

    from precondlab import config as gin_config
    from precondlab import experiment
    if os.path.isdir(cfg["cwd"]):
        os.chdir(cfg["cwd"])   # relative paths in the gin mean what they mean where the command started
    parsed = gin_config.parse_text(cfg["text"], origin=cfg["origin"], files=cfg["files"], bindings=cfg["bindings"])
    torch.set_num_threads(max(1, int(cfg.get("threads", 1))))
    total = experiment.build(parsed).steps

    def report(step: int, metrics: dict) -> None:
        if step < total:
            ray.train.report({**metrics, "step": step, "total_steps": total})

    result = experiment.run(parsed, tracking_uri=cfg["tracking_uri"], experiment_name=cfg["experiment"],
                            progress=False, report=report if cfg.get("report_each") else None,
                            parent_run_id=cfg.get("parent_run_id"), tags=cfg.get("tags"), resume=cfg.get("resume"),
                            run_name=cfg.get("run_name"), entry_point=cfg.get("entry_point", "precondlab run --workers"))
    final = {**result.final, "step": total, "total_steps": total, "mlflow_run_id": result.run_id or "",
             "checkpoint": result.checkpoint or ""}
    if result.run_id:   # rank 0: the summary travels back to the driver as Ray Train's last checkpoint
        folder = tempfile.mkdtemp(prefix="precondlab-summary-")
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump(final, f)
        ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(folder))
    else:
        ray.train.report(final)


def trainer(cfg: dict, workers: int, cpus_per_worker: float = 1, gpus_per_worker: float = 0, name: str | None = None,
            callbacks=()):
    """A TorchTrainer of ``workers`` workers running ``worker_loop(cfg)``."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    return TorchTrainer(worker_loop, train_loop_config={**cfg, "threads": max(1, int(cpus_per_worker))},
                        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                                     resources_per_worker=resources),
                        run_config=RunConfig(name=name or f"precondlab-{time.strftime('%Y%m%d-%H%M%S')}",
                                             storage_path=tempfile.mkdtemp(prefix="precondlab-raytrain-"),
                                             callbacks=list(callbacks)))


def run(config, workers: int, address: str | None = None, gpus_per_worker: float = 0, cpus_per_worker: float = 1,
        tracking_uri: str | None = None, experiment_name: str = "precondlab", run_name: str | None = None,
        resume: str | None = None) -> dict:
    """``precondlab run --workers N``: the run on N Ray Train workers (a local Ray, or the cluster at
    ``address``); returns rank 0's final report (metrics, mlflow_run_id, checkpoint)."""
    import ray

    from precondlab.tuning import cluster
    from precondlab.tuning.runner import absolute_uri
    started = cluster.join(address, num_cpus=max(os.cpu_count() or 1, int(workers * cpus_per_worker)))
    try:
        cfg = {"text": config.text, "origin": ", ".join(config.files) or "config", "files": list(config.files),
               "bindings": list(config.bindings), "cwd": os.getcwd(), "tracking_uri": absolute_uri(tracking_uri),
               "experiment": experiment_name, "run_name": run_name, "resume": resume,
               "tags": {"precondlab.ray_address": address or "local", "precondlab.ray_workers": str(workers)}}
        result = trainer(cfg, workers, cpus_per_worker, gpus_per_worker).fit()
        if result.error is not None:
            raise result.error
        with result.checkpoint.as_directory() as folder:
            with open(os.path.join(folder, "summary.json")) as f:
                return json.load(f)
    finally:
        if started:
            ray.shutdown()


__all__ = ["run", "trainer", "worker_loop"]
