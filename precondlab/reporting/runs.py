"""Reading the runs a report is about from MLflow: one ``RunRecord`` per finished training run,
grouped by method (the preconditioning, with its form) and seed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CURVE = re.compile(r"^(traj_mse|swd|fid|fd_classifier|align_mse|psnr)/nfe\d+$")
SCALARS = ("jump_mse",)
COSTS = ("summary/seconds", "summary/train_seconds", "stats/seconds", "stats/estimate_seconds", "summary/stats_share")


@dataclass
class RunRecord:
    run_id: str
    experiment: str
    name: str
    method: str                          # 'ctm', 'analytic:backward', ...
    seed: int | None
    status: str
    params: dict
    tags: dict
    final: dict                          # the run's last value of every metric
    curves: dict = field(default_factory=dict)   # metric -> [(step, value)]

    @property
    def steps(self) -> int:
        return max((c[-1][0] for c in self.curves.values() if c), default=0)


def method_of(params: dict) -> str:
    """'analytic:forward', 'ctm', ...: the registry name of the preconditioner and its form.
    Runs of older versions logged the class name ('AnalyticPrecond'): mapped to the same label."""
    name = params.get("precond.name") or params.get("preconditioner", "?")
    if name.endswith("Precond"):
        name = name[: -len("Precond")].lower()
    form = params.get("precond.form")
    return f"{name}:{form}" if form and form != "None" else name


def _seed(params: dict) -> int | None:
    try:
        return int(params.get("experiment.seed", ""))
    except ValueError:
        return None


def load(client, experiments: list[str], include=("FINISHED",)) -> tuple[list[RunRecord], list[str]]:
    """Finished training runs of the named experiments (sweep parents and report runs left out), and
    notes on what was left out and why."""
    records, notes = [], []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise ValueError(f"no MLflow experiment named {name!r} in {client.tracking_uri} "
                             f"(`mlflow ui` lists them; --tracking-uri chooses the store)")
        runs = client.search_runs([exp.experiment_id], max_results=50000)
        skipped = {}
        for run in runs:
            tags, params = run.data.tags, run.data.params
            role = tags.get("precondlab.role")
            if role in ("sweep", "report"):
                continue
            if run.info.status not in include:
                skipped[run.info.status] = skipped.get(run.info.status, 0) + 1
                continue
            if "preconditioner" not in params:
                skipped["not a training run"] = skipped.get("not a training run", 0) + 1
                continue
            record = RunRecord(run.info.run_id, name, run.info.run_name, method_of(params), _seed(params),
                               run.info.status, dict(params), dict(tags), dict(run.data.metrics))
            for key in run.data.metrics:
                if CURVE.match(key):
                    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
                    record.curves[key] = history
            records.append(record)
        for status, count in sorted(skipped.items()):
            notes.append(f"{name}: {count} run(s) left out ({status})")
    return records, notes


def by_method(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = {}
    for r in sorted(records, key=lambda r: (r.method, r.seed if r.seed is not None else -1, r.run_id)):
        out.setdefault(r.method, []).append(r)
    return out


__all__ = ["COSTS", "CURVE", "RunRecord", "by_method", "load", "method_of"]
