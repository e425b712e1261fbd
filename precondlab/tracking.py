"""MLflow tracking: a local SQLite store by default, any tracking URI by option.

Default: ``sqlite:///<cwd>/mlruns.db`` with artifacts under ``<cwd>/mlartifacts``, so that
``mlflow ui --backend-store-uri sqlite:///mlruns.db`` shows the runs. ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` choose another store (an ``http://`` server, another database).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_EXPERIMENT = "precondlab"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or used."""


def resolve_uri(uri: str | None = None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def default_artifact_root(uri: str) -> str | None:
    """Beside a local SQLite file, artifacts go to ./mlartifacts; remote stores choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def connect(uri: str | None, experiment: str = DEFAULT_EXPERIMENT, _retried: bool = False):
    """Check the store answers and make sure the experiment exists; returns (client, uri, experiment_id).

    Checked before any run starts, so an unreachable store leaves nothing behind.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(uri)
    try:
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            exp_id = client.create_experiment(experiment, artifact_location=default_artifact_root(uri))
        else:
            exp_id = found.experiment_id
    except Exception as exc:  # noqa: BLE001 - every backend has its own exception types
        if "already exists" in str(exc) and not _retried:  # store or experiment created meanwhile
            return connect(uri, experiment, _retried=True)  # by a parallel trial: use theirs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"cannot use the MLflow tracking store {uri!r}: {first}\n"
                            f"Start the server, fix --tracking-uri / MLFLOW_TRACKING_URI, or leave both unset "
                            f"for the local store ./mlruns.db.") from exc
    return client, uri, exp_id


class RunLogger:
    """One MLflow run: params, metrics per step, artifacts; ended FAILED on an exception."""

    def __init__(self, client, experiment_id: str, run_name: str | None = None,
                 tags: dict | None = None, parent_run_id: str | None = None):
        self.client = client
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        self.run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.run_id = self.run.info.run_id
        self.tmp = Path(tempfile.mkdtemp(prefix="precondlab-"))

    def params(self, params: dict) -> None:
        from mlflow.entities import Param
        items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def metrics(self, values: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in values.items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def text(self, text: str, name: str) -> None:
        path = self.tmp / name
        path.write_text(text)
        self.client.log_artifact(self.run_id, str(path))

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def figure(self, fig, name: str) -> None:
        path = self.tmp / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        self.client.log_artifact(self.run_id, str(path), "plots")

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def artifact_location(self, folder: str, name: str) -> str:
        """Where a logged artifact lives: a local path for a local artifact store, else its URI
        (fetch it with `mlflow artifacts download --artifact-uri URI`)."""
        from urllib.parse import unquote, urlparse
        uri = f"{self.client.get_run(self.run_id).info.artifact_uri.rstrip('/')}/{folder}/{name}"
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            return unquote(parsed.path)
        return uri if parsed.scheme else str(Path(uri).resolve())

    def cleanup(self) -> None:
        """Delete the run's scratch folder (its files are artifacts by now)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
