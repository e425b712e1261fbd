"""MLflow tracking: a local SQLite store by default, any tracking URI by option.

Default: ``sqlite:///<cwd>/mlruns.db`` with artifacts under ``<cwd>/mlartifacts``, so that
``mlflow ui --backend-store-uri sqlite:///mlruns.db`` shows the runs. ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` choose another store (an ``http://`` server, another database).

* ``connect`` checks the store before any work: it answers, it can be written to (a read-only
  SQLite file or a folder that cannot be created is one message naming the store), and the
  experiment exists. A new SQLite store is a copy of an empty store MLflow made once per MLflow
  version (its schema migrations take seconds; the copy does not).
* ``RunLogger`` is one run. If the store stops answering in the middle of a run, training goes
  on: params, metrics, tags and artifacts are kept in order and sent when it answers again; at
  the end it waits up to ``PRECONDLAB_TRACKING_WAIT`` seconds (default 120) and otherwise writes
  what is left to ``./precondlab-unsynced/<run id>/``, which ``precondlab sync`` sends later.
  While it is away, sending is retried every ``PRECONDLAB_TRACKING_RETRY`` seconds (default 15).
* A resumed run (``RunLogger(..., resume_run_id=...)``) skips metric values already logged at
  a step (the steps between its last checkpoint and the kill are recomputed identically).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
import warnings
from pathlib import Path

from precondlab.fileio import atomic_create, atomic_write

DEFAULT_EXPERIMENT = "precondlab"
UNSYNCED = "precondlab-unsynced"
# MLflow error codes that retrying cannot fix (a bad value, a missing run): raised at once.
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
             "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED"}


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


def quiet_mlflow() -> None:
    """No retry spam, no migration chatter: one failed request is one exception, answered by us."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic", "urllib3", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _refuse(uri: str, why: str) -> TrackingError:
    return TrackingError(f"cannot use the MLflow tracking store {uri!r}: {why}\n"
                         f"Fix it, choose another with --tracking-uri / MLFLOW_TRACKING_URI, or leave both unset "
                         f"for the local store ./mlruns.db.")


def _check_sqlite(uri: str, path: Path) -> None:
    """A SQLite store must be writable, and so must its folder (SQLite writes its journal there)."""
    folder = path.parent
    if not path.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _refuse(uri, f"its folder {folder} cannot be created ({exc.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _refuse(uri, f"its folder {folder} is read-only")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise _refuse(uri, f"the file {path} is read-only")


def _template_store() -> Path:
    """An empty store made by MLflow itself, once per MLflow version (cached)."""
    import mlflow
    from mlflow.tracking import MlflowClient
    cache = Path(os.environ.get("PRECONDLAB_CACHE", Path.home() / ".cache" / "precondlab"))
    template = cache / f"mlflow-{mlflow.__version__}-empty-store.db"
    if not template.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp, atomic_write(template) as out:
            db = Path(tmp) / "store.db"
            MlflowClient(f"sqlite:///{db}").search_experiments()  # runs MLflow's migrations
            shutil.copyfile(db, out)
    return template


def _create_sqlite_store(path: Path) -> None:
    """Create the store at ``path`` from the template, unless another process created it first."""
    try:
        template = _template_store()
    except Exception:  # noqa: BLE001 - no writable cache: let MLflow create the store the slow way
        return
    with atomic_create(path) as tmp:  # a store made meanwhile by a parallel trial wins
        shutil.copyfile(template, tmp)
        db = sqlite3.connect(tmp)
        try:  # the Default experiment where MLflow itself would have put it
            now = int(time.time() * 1000)
            with db:
                db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                           "WHERE experiment_id = 0", (str(Path.cwd() / "mlruns" / "0"), now, now))
        finally:
            db.close()


def connect(uri: str | None, experiment: str = DEFAULT_EXPERIMENT, _retried: bool = False):
    """Check the store answers and can be written, and make sure the experiment exists; returns
    (client, uri, experiment_id). Checked before any run starts, so a bad store leaves nothing behind."""
    quiet_mlflow()
    uri = resolve_uri(uri)
    path = _sqlite_path(uri)
    if path is not None:
        _check_sqlite(uri, path)
        if not path.exists():
            _create_sqlite_store(path)
    from mlflow.tracking import MlflowClient
    try:  # the client names its store; mlflow.set_tracking_uri would export it to every child process
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            exp_id = client.create_experiment(experiment, artifact_location=default_artifact_root(uri))
        else:
            exp_id = found.experiment_id
        client.set_experiment_tag(exp_id, "precondlab.last_connected", time.strftime("%Y-%m-%dT%H:%M:%S"))
    except Exception as exc:  # noqa: BLE001 - every backend has its own exception types
        if "already exists" in str(exc) and not _retried:  # store or experiment created meanwhile
            return connect(uri, experiment, _retried=True)  # by a parallel trial: use theirs
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        if "readonly database" in text or "read-only" in text:
            first = "the store is read-only"
        raise _refuse(uri, first[:300]) from None
    return client, uri, exp_id


class RunLogger:
    """One MLflow run: params, metrics per step, tags, artifacts; buffered while the store is away."""

    def __init__(self, client, experiment_id: str, run_name: str | None = None,
                 tags: dict | None = None, parent_run_id: str | None = None, resume_run_id: str | None = None,
                 retry_seconds: float | None = None):
        self.client = client
        self.uri = client.tracking_uri
        self.tmp = Path(tempfile.mkdtemp(prefix="precondlab-"))
        self.pending: list[tuple] = []
        if retry_seconds is None:
            retry_seconds = float(os.environ.get("PRECONDLAB_TRACKING_RETRY", "15"))
        self.retry_seconds, self._last_try, self._away_since = retry_seconds, 0.0, None
        self.logged_upto: dict[str, int] = {}
        if resume_run_id is not None:
            self.run = client.get_run(resume_run_id)
            self.run_id = resume_run_id
            for key in self.run.data.metrics:
                history = client.get_metric_history(resume_run_id, key)
                self.logged_upto[key] = max((m.step for m in history), default=-1)
            client.update_run(resume_run_id, status="RUNNING")
            if "error" in self.run.data.tags:
                client.delete_tag(resume_run_id, "error")
            return
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        self.run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.run_id = self.run.info.run_id

    # -- sending, or keeping for later ------------------------------------------------------
    def _send(self, op: tuple) -> None:
        kind, payload = op
        from mlflow.entities import Metric, Param, RunTag
        if kind == "batch":
            self.client.log_batch(self.run_id, metrics=[Metric(*m) for m in payload.get("metrics", [])],
                                  params=[Param(*p) for p in payload.get("params", [])],
                                  tags=[RunTag(*t) for t in payload.get("tags", [])])
        elif kind == "artifact":
            self.client.log_artifact(self.run_id, payload["path"], payload["folder"])
        elif kind == "delete_artifact":
            self._delete_artifact(payload["path"])
        elif kind == "delete_tag":
            self.client.delete_tag(self.run_id, payload["key"])
        elif kind == "terminate":
            self.client.set_terminated(self.run_id, status=payload["status"])
        else:
            raise ValueError(f"unknown tracking operation {kind!r}")

    def _delete_artifact(self, path: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        repo = get_artifact_repository(self.run.info.artifact_uri, tracking_uri=self.uri)
        try:
            repo.delete_artifacts(path)
        except NotImplementedError:
            pass  # a store that cannot delete keeps old checkpoints

    @staticmethod
    def _transient(exc: Exception) -> bool:
        code = getattr(exc, "error_code", None)
        return code not in PERMANENT

    def _do(self, op: tuple) -> None:
        """Send ``op`` now, or keep it (and a copy of its file) if the store does not answer."""
        if self.pending and not self.flush(force=False):
            self._keep(op)
            return
        try:
            self._send(op)
        except Exception as exc:  # noqa: BLE001 - connection errors of every backend
            if not self._transient(exc):
                raise
            self._away(exc)
            self._keep(op)

    def _keep(self, op: tuple) -> None:
        kind, payload = op
        if kind == "artifact":  # the scratch file may be rotated or deleted before the store is back
            keep = self.tmp / ".unsent" / uuid.uuid4().hex / Path(payload["path"]).name
            keep.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(payload["path"], keep)
            except OSError:
                shutil.copy2(payload["path"], keep)
            op = (kind, {**payload, "path": str(keep)})
        self.pending.append(op)

    def _away(self, exc: Exception) -> None:
        if self._away_since is None:
            self._away_since = time.monotonic()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            warnings.warn(f"MLflow store {self.uri} is not answering ({first}); training goes on and the run's "
                          f"logs are kept until it answers again", stacklevel=4)
        self._last_try = time.monotonic()

    def flush(self, force: bool = True) -> bool:
        """Send what was kept; True when nothing is left. Without ``force``, tries at most every
        ``retry_seconds``."""
        if not self.pending:
            return True
        if not force and time.monotonic() - self._last_try < self.retry_seconds:
            return False
        self._last_try = time.monotonic()
        while self.pending:
            try:
                self._send(self.pending[0])
            except Exception as exc:  # noqa: BLE001
                if not self._transient(exc):
                    warnings.warn(f"MLflow refused a kept operation ({str(exc)[:160]}); dropping it", stacklevel=2)
                    self.pending.pop(0)
                    continue
                return False
            self.pending.pop(0)
        away = time.monotonic() - (self._away_since or time.monotonic())
        self._away_since = None
        print(f"precondlab: MLflow store {self.uri} answers again; the logs kept for {away:.0f} s were sent",
              flush=True)
        return True

    def finish(self, wait: float | None = None) -> Path | None:
        """Send everything kept, waiting up to ``wait`` seconds (PRECONDLAB_TRACKING_WAIT, default
        120); what is still unsent is written to ./precondlab-unsynced/<run id>/ and its path returned."""
        if wait is None:
            wait = float(os.environ.get("PRECONDLAB_TRACKING_WAIT", "120"))
        deadline = time.monotonic() + wait
        while not self.flush(force=True):
            if time.monotonic() >= deadline:
                return self._write_unsynced()
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        return None

    def _write_unsynced(self) -> Path:
        folder = Path.cwd() / UNSYNCED / self.run_id
        files = folder / "files"
        files.mkdir(parents=True, exist_ok=True)
        ops = []
        for kind, payload in self.pending:
            if kind == "artifact":
                dest = files / uuid.uuid4().hex / Path(payload["path"]).name
                dest.parent.mkdir(parents=True)
                shutil.copy2(payload["path"], dest)
                payload = {**payload, "path": str(dest.relative_to(folder))}
            ops.append([kind, payload])
        (folder / "operations.json").write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id,
                                                           "operations": ops}, indent=1))
        self.pending = []
        return folder

    # -- what a run logs ---------------------------------------------------------------------
    def params(self, params: dict) -> None:
        items = [(k[:250], str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._do(("batch", {"params": items[i:i + 100]}))

    def metrics(self, values: dict, step: int) -> None:
        now = int(time.time() * 1000)
        items = [(k, float(v), now, step) for k, v in values.items() if step > self.logged_upto.get(k, -1)]
        if items:
            self._do(("batch", {"metrics": items}))

    def tags(self, tags: dict) -> None:
        if tags:
            self._do(("batch", {"tags": [(k, str(v)[:5000]) for k, v in tags.items()]}))

    def tag(self, key: str, value: str) -> None:
        self.tags({key: value})

    def delete_tag(self, key: str) -> None:
        self._do(("delete_tag", {"key": key}))

    def text(self, text: str, name: str, folder: str | None = None) -> None:
        path = self.tmp / name
        path.write_text(text)
        self.artifact(path, folder)

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._do(("artifact", {"path": str(path), "folder": folder}))

    def delete_artifact(self, path: str) -> None:
        self._do(("delete_artifact", {"path": path}))

    def figure(self, fig, name: str) -> None:
        path = self.tmp / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        self.artifact(path, "plots")

    def end(self, status: str = "FINISHED") -> Path | None:
        """End the run; returns the folder of unsent logs if the store never came back."""
        self._do(("terminate", {"status": status}))
        return self.finish()

    def artifact_location(self, folder: str, name: str) -> str:
        """Where a logged artifact lives: a local path for a local artifact store, else its URI
        (fetch it with `mlflow artifacts download --artifact-uri URI`)."""
        from urllib.parse import unquote, urlparse
        uri = f"{self.run.info.artifact_uri.rstrip('/')}/{folder}/{name}"
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            return unquote(parsed.path)
        return uri if parsed.scheme else str(Path(uri).resolve())

    def cleanup(self) -> None:
        """Delete the run's scratch folder (its files are artifacts, or unsynced copies, by now)."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def sync(folder: str | Path, tracking_uri: str | None = None) -> int:
    """Send the logs a run wrote to ./precondlab-unsynced/<run id>/ when its store was away; returns
    how many operations were sent, and deletes the folder once all were."""
    folder = Path(folder)
    record = json.loads((folder / "operations.json").read_text())
    quiet_mlflow()
    from mlflow.tracking import MlflowClient
    logger = RunLogger.__new__(RunLogger)
    logger.client = MlflowClient(tracking_uri or record["tracking_uri"])
    logger.uri, logger.run_id, logger.tmp = tracking_uri or record["tracking_uri"], record["run_id"], folder
    logger.run = logger.client.get_run(logger.run_id)
    logger.pending, logger._away_since, logger._last_try, logger.retry_seconds = [], None, 0.0, 0.0
    for kind, payload in record["operations"]:
        if kind == "artifact":
            payload = {**payload, "path": str(folder / payload["path"])}
        logger.pending.append((kind, payload))
    total = len(record["operations"])
    try:
        while logger.pending:
            logger._send(logger.pending[0])
            logger.pending.pop(0)
            record["operations"].pop(0)
    except Exception as exc:  # noqa: BLE001
        with atomic_write(folder / "operations.json") as tmp:  # what was sent is not sent twice
            tmp.write_text(json.dumps(record, indent=1))
        raise TrackingError(f"cannot sync {folder} to {logger.uri}: {str(exc).splitlines()[0][:200]} "
                            f"({total - len(record['operations'])} of {total} operations sent; run it again)") from None
    shutil.rmtree(folder)
    return total


class NullLogger:
    """The logger of a rank other than 0 in a multi-process run: rank 0 alone talks to MLflow."""

    run_id = None
    pending: list = []

    def __init__(self, tmp: Path | None = None):
        self.tmp = Path(tmp or tempfile.mkdtemp(prefix="precondlab-rank-"))

    def __getattr__(self, name):       # params, metrics, tags, text, artifact, figure, end, ...: nothing
        return lambda *args, **kwargs: None

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
