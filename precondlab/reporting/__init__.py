"""``precondlab report``: curves, speed-ups and intervals over seeds from the runs in MLflow."""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path


def parse_targets(items: list[str]) -> dict[str, list[float]]:
    """['traj_mse/nfe2=0.01', ...] -> {'traj_mse/nfe2': [0.01]}."""
    out: dict[str, list[float]] = {}
    for item in items:
        metric, sep, value = item.partition("=")
        try:
            out.setdefault(metric.strip(), []).append(float(value))
        except ValueError:
            raise ValueError(f"--target {item!r}: write METRIC=VALUE, e.g. traj_mse/nfe2=0.01") from None
        if not sep:
            raise ValueError(f"--target {item!r}: write METRIC=VALUE, e.g. traj_mse/nfe2=0.01")
    return out


def run(experiments: list[str], out: str | Path | None = None, tracking_uri: str | None = None,
        baseline: str = "ctm", targets: list[str] | None = None, resamples: int = 2000, log: bool = True) -> dict:
    """Build the report of ``experiments``; returns the paths written and the report run's id."""
    from mlflow.tracking import MlflowClient

    from precondlab import provenance, tracking
    from precondlab.reporting import report, runs
    tracking.quiet_mlflow()
    uri = tracking.resolve_uri(tracking_uri)
    client = MlflowClient(uri)
    records, notes = runs.load(client, experiments)
    if not records:
        raise ValueError(f"no finished training runs in {', '.join(experiments)} ({uri})")
    out = Path(out or f"reports/{'+'.join(experiments)}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    scratch = Path(tempfile.mkdtemp(prefix="precondlab-report-"))

    def artifacts(run_id: str, path: str):
        try:
            return client.download_artifacts(run_id, path, str(scratch))
        except Exception:  # noqa: BLE001 - an artifact a run did not log
            return None

    built = report.build(records, out, baseline=baseline, targets=parse_targets(targets or []), notes=notes,
                         resamples=resamples, artifacts=artifacts)
    md, page = report.write_markdown(built, out), report.write_html(built, out)
    speedups = {" | ".join(k): {"value": r.value if r else None, "low": r.low if r else None,
                                "high": r.high if r else None, "n": n, "reached": reached}
                for k, (r, reached, n) in built.speedups.items()}
    (out / "speedups.json").write_text(json.dumps(speedups, indent=1, default=lambda x: None if not math.isfinite(x) else x))
    result = {"markdown": str(md), "html": str(page), "folder": str(out), "run_id": None}
    if log:
        exp = client.get_experiment_by_name(experiments[0])
        logger = tracking.RunLogger(client, exp.experiment_id, run_name=f"report-{time.strftime('%m%d-%H%M%S')}",
                                    tags={**provenance.source_tags("precondlab report"), "precondlab.role": "report"})
        logger.params({"experiments": ",".join(experiments), "baseline": baseline, "resamples": resamples,
                       "runs": len(records)})
        for path in sorted(out.iterdir()):
            logger.artifact(path, "report")
        logger.end("FINISHED")
        logger.cleanup()
        result["run_id"] = logger.run_id
    return result


__all__ = ["parse_targets", "run"]
