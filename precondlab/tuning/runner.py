"""Ray Tune sweeps over gin bindings, logged to MLflow (``precondlab sweep SWEEP.toml``).

The driver: starts or joins Ray (``run``, ``_tune``), builds the Tune experiment (search space,
ASHA or FIFO scheduler, per-trial resources), opens the MLflow parent run (reopened by
``--resume``), collects one ``TrialRow`` per trial, closes child runs a stopped trial left open,
and writes ``summary.txt`` and ``best.gin``. Ray is imported only inside functions.

The pieces it uses (their public names are re-exported here: ``precondlab.tuning.runner.load`` etc.):

* ``precondlab.tuning.spec``: the sweep definition (TOML parsing and validation, the search
  space, the gin text, the checks made before Ray starts; ``load``, ``check``, ``compose``, ...);
* ``precondlab.tuning.trial``: one trial in a Ray worker (``_trainable``, ``TrialStopped``).

Each trial receives the fully inlined gin text (``compose``: the base files, the sweep's fixed
``bindings``, the command line's ``--gin_bindings``, the sampled bindings), parses it in its own
process and reports every evaluation to ``ray.tune.report``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from precondlab.tuning.spec import (
    SPEC_KINDS,
    Param,
    Sweep,
    SweepError,
    _int,
    binding_lines,
    check,
    compose,
    load,
    prepare,
    render,
)
from precondlab.tuning import cluster
from precondlab.tuning.trial import TrialStopped, _trainable

__all__ = ["DEFAULT_OUTPUT", "STATE_FILE", "SPEC_KINDS", "Param", "Sweep", "SweepError", "SweepResult", "TrialRow",
           "TrialStopped", "absolute_uri", "binding_lines", "check", "compose", "load", "main_args", "prepare",
           "render", "run"]

DEFAULT_OUTPUT = "sweep_runs"
STATE_FILE = "precondlab_sweep.json"


@dataclass
class TrialRow:
    trial_id: str
    status: str                   # COMPLETED | STOPPED (by the scheduler) | ERROR | INTERRUPTED
    params: dict                  # key -> display value
    bindings: dict                # gin name -> value
    metric: float | None
    iterations: int
    step: int | None
    run_id: str | None
    error: str = ""


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    rows: list[TrialRow]
    best: TrialRow | None
    best_gin: Path | None
    summary: str
    output: Path
    seconds: float
    interrupted: bool
    cluster_nodes: list[str]


def absolute_uri(uri: str | None) -> str:
    """The tracking URI with a relative SQLite path made absolute (trials run in other folders)."""
    from precondlab import tracking
    uri = tracking.resolve_uri(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(Path.cwd() / uri[len('sqlite:///'):]).resolve()}"
    return uri


def _scheduler(sweep: Sweep, default_max_t: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    s = sweep.scheduler
    if s["type"] == "fifo":
        return FIFOScheduler()
    max_t = s.get("max_t")
    if max_t is None:
        max_t = default_max_t if s["time_attr"] == "step" else 10 ** 6
    return ASHAScheduler(time_attr=s["time_attr"], max_t=max_t, grace_period=min(s["grace_period"], max_t),
                         reduction_factor=s["reduction_factor"])


def _results(grid) -> list:
    """(trial id, Result) pairs; ResultGrid builds its results in the order of its trials."""
    try:
        trials = grid._experiment_analysis.trials  # noqa: SLF001 - the ids of errored trials are only here
        return [(t.trial_id, grid[i], t.config) for i, t in enumerate(trials)]
    except AttributeError:
        return [((r.metrics or {}).get("trial_id", f"trial{i}"), r, r.config) for i, r in enumerate(grid)]


def _trial_statuses(grid, exp_path: Path) -> dict:
    """Trial id -> Tune status as saved on disk.

    After an interruption (Ctrl+C, SIGUSR1) Tune saves the running trials as RUNNING/PENDING and
    only then stops them, so the returned grid shows them TERMINATED like finished ones; the
    saved experiment state tells them apart.
    """
    statuses = {}
    try:
        statuses = {t.trial_id: t.status for t in grid._experiment_analysis.trials}  # noqa: SLF001
    except AttributeError:
        pass
    from ray.tune.analysis import ExperimentAnalysis
    try:
        with _quiet("ray.tune.analysis.experiment_analysis"):  # warns for every trial without results
            statuses.update({t.trial_id: t.status for t in ExperimentAnalysis(str(exp_path)).trials})
    except Exception:  # noqa: BLE001 - no saved state: the live statuses are all there is
        pass
    return statuses


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _table(rows: list[TrialRow], sweep: Sweep) -> str:
    keys = [p.key for p in sweep.space]
    head = ["trial", "status", "iters", "step", sweep.metric] + keys + ["mlflow run"]
    body = [[r.trial_id, r.status, str(r.iterations), "-" if r.step is None else str(r.step),
             "-" if r.metric is None else f"{r.metric:.5g}"] + [r.params.get(k, "-") for k in keys]
            + [r.run_id or "-"] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    errors = [f"  {r.trial_id}: {r.error}" for r in rows if r.error]
    return "\n".join(lines + (["", "errors:"] + errors if errors else []))


def run(sweep_file: str | Path, *, address: str | None = None, num_samples: int | None = None,
        resume: bool = False, bindings: list[str] | None = None, tracking_uri: str | None = None,
        output: str | Path | None = None, num_cpus: int | None = None, experiment_name: str | None = None,
        verbose: bool = True, scheduler: str | None = None, max_concurrent: int | None = None,
        run_name: str | None = None, progress_every: float = 15.0) -> SweepResult:
    """Run (or, with resume, continue) a sweep; returns the per-trial rows and the best trial.
    ``scheduler`` ('asha' or 'fifo'), ``max_concurrent`` and ``num_samples`` override the file's;
    with ``verbose`` a table of the trials is printed every ``progress_every`` seconds."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables from Tune, ours only
    started = time.perf_counter()
    sweep = load(sweep_file)
    if num_samples is not None:
        sweep.num_samples = _int(sweep.path, "--num-samples", num_samples, 1)
    if max_concurrent is not None:
        sweep.max_concurrent = _int(sweep.path, "--max-concurrent", max_concurrent, 0)
    if scheduler is not None:
        if scheduler not in ("asha", "fifo"):
            raise SweepError(f"--scheduler {scheduler!r}: must be 'asha' or 'fifo'")
        if scheduler != sweep.scheduler["type"]:
            sweep.scheduler = ({"type": "fifo"} if scheduler == "fifo" else
                               {"type": "asha", "time_attr": "step", "grace_period": 1, "reduction_factor": 2})
    if experiment_name:
        sweep.experiment = experiment_name
    extra = list(bindings or [])
    base_files, base_text, default_max_t = prepare(sweep, extra)
    if sweep.scheduler["type"] == "asha" and sweep.scheduler.get("grace_period") == 1 and scheduler == "asha":
        sweep.scheduler["grace_period"] = max(1, default_max_t // 4)   # --scheduler asha on a fifo file
    inert = _inert_asha(sweep, default_max_t)
    if inert:
        warnings.warn(inert, stacklevel=2)
    from precondlab import tracking

    uri = absolute_uri(tracking_uri)
    out = Path(output or Path(DEFAULT_OUTPUT) / sweep.name).resolve()
    storage = out / "ray_results"
    exp_path = storage / sweep.name
    state_path = out / STATE_FILE
    client, uri, exp_id = tracking.connect(uri, sweep.experiment)  # creates the experiment before any trial

    from ray import tune
    has_state = tune.Tuner.can_restore(str(exp_path)) and state_path.exists()
    if has_state and not resume:
        raise SweepError(f"{exp_path} already holds sweep {sweep.name!r}: pass --resume to continue it, "
                         f"or --output elsewhere (or delete it) to start afresh")
    if has_state:
        state = json.loads(state_path.read_text())
        parent_id = state["parent_run_id"]
        if state.get("tracking_uri") != uri:
            raise SweepError(f"--resume: {sweep.name!r} logged to {state.get('tracking_uri')}, not {uri}; "
                             f"pass --tracking-uri {state.get('tracking_uri')}")
        client.update_run(parent_id, status="RUNNING")
        started -= float(state.get("seconds", 0.0))   # the clock goes on from where the sweep stopped
        if verbose:
            print(f"resuming sweep {sweep.name!r} from {exp_path} (MLflow parent run {parent_id}, "
                  f"{state.get('seconds', 0.0):.0f} s so far)")
    elif resume:  # a mistyped --output must not start the sweep over
        raise SweepError(f"--resume: no saved state of sweep {sweep.name!r} under {out} (Tune's state would be in "
                         f"{exp_path}); check --output, or drop --resume to start it afresh")
    else:
        from precondlab import provenance
        parent = tracking.RunLogger(client, exp_id, run_name=run_name or sweep.name,
                                    tags={**provenance.source_tags("precondlab sweep"),
                                          "precondlab.sweep": sweep.name, "precondlab.sweep_file": str(sweep.path),
                                          "precondlab.role": "sweep"})
        parent_id = parent.run_id
        parent.params({"sweep_file": str(sweep.path), "base": ",".join(map(str, base_files)),
                       "metric": sweep.metric, "mode": sweep.mode, "num_samples": sweep.num_samples,
                       "max_concurrent": sweep.max_concurrent, "resources": json.dumps(sweep.resources),
                       "scheduler": json.dumps(sweep.scheduler), "fixed_bindings": "\n".join(sweep.bindings + extra),
                       **{f"space.{p.key}": json.dumps({p.kind: p.values}) for p in sweep.space}})
        parent.text(sweep.path.read_text(), sweep.path.name)
        parent.cleanup()  # the sweep file is an artifact now; later files go to the sweep's folder
        out.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps({"parent_run_id": parent_id, "tracking_uri": uri,
                                          "experiment": sweep.experiment, "sweep_file": str(sweep.path)}, indent=1))

    try:
        rows, interrupted, cluster_nodes = _tune(sweep, payload={
            "sweep": sweep, "base_text": base_text, "base_files": base_files, "extra": extra,
            "tracking_uri": uri, "parent_run_id": parent_id, "address": address, "cwd": os.getcwd()},
            storage=storage, address=address, num_cpus=num_cpus, resume=has_state,
            default_max_t=default_max_t, client=client, exp_id=exp_id,
            callbacks=[SweepProgress(sweep, progress_every)] if verbose else [])
        best = _best(rows, sweep)
        seconds = time.perf_counter() - started
        state = json.loads(state_path.read_text())
        state_path.write_text(json.dumps({**state, "seconds": seconds}, indent=1))
        text, best_gin = _report_sweep(sweep, rows, best, interrupted, seconds, out, base_text, extra,
                                       client, exp_id, parent_id)
    except BaseException as exc:
        client.set_tag(parent_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(parent_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if verbose:
        print(text)
    return SweepResult(sweep.name, parent_id, exp_id, uri, rows, best, best_gin, text, out, seconds,
                       interrupted, cluster_nodes)


def _tune(sweep: Sweep, payload: dict, storage: Path, address, num_cpus, resume: bool, default_max_t: int,
          client, exp_id: str, callbacks=()) -> tuple[list[TrialRow], bool, list[str]]:
    """Start or join Ray, run (or restore) the Tune experiment, collect one row per trial."""
    import ray
    from ray import tune
    parent_id = payload["parent_run_id"]
    exp_path = storage / sweep.name
    # Bounded: min(2, cpu count), raised to one trial's CPUs if that is more (up to the count).
    cpus = num_cpus or min(os.cpu_count() or 1, max(2, math.ceil(sweep.resources["cpu"])))
    if sweep.resources["workers"] > 1:   # a trial's workers all at once, beside the trial itself
        cpus = max(cpus, math.ceil(sweep.resources["cpu"] * sweep.resources["workers"]) + 1)
    we_started = cluster.join(address, cpus)
    try:
        total = ray.cluster_resources()
        need = {"CPU": sweep.resources["cpu"] * sweep.resources["workers"],
                "GPU": sweep.resources["gpu"] * sweep.resources["workers"]}
        if any(v > total.get(k, 0) for k, v in need.items()):
            raise SweepError(f"{sweep.path}: [resources] asks {need['CPU']:g} CPU and {need['GPU']:g} GPU per trial; "
                             f"the Ray {'cluster at ' + address if address else 'started here'} has "
                             f"{total.get('CPU', 0):g} CPU and {total.get('GPU', 0):g} GPU in all "
                             f"(no trial could ever start{'' if address else '; see --num-cpus'})")
        cluster_nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        client.set_tag(parent_id, "precondlab.ray_address", address or "local")
        client.set_tag(parent_id, "precondlab.ray_nodes", ",".join(cluster_nodes))
        workers = sweep.resources["workers"]
        if workers > 1:
            # The trial itself only launches a Ray Train run, whose workers ask for the resources:
            # at most as many trials at a time as the cluster can give all their workers at once.
            fit = int(min((total.get("CPU", 0) - 0.01) / max(sweep.resources["cpu"], 1e-9),
                          total.get("GPU", 0) / sweep.resources["gpu"] if sweep.resources["gpu"] else float("inf"))
                      // workers)
            sweep.max_concurrent = max(1, min(sweep.max_concurrent or fit, fit))
            trial_resources = {"cpu": 0.01}   # (Tune wants some resource per trial)
        else:
            trial_resources = {"cpu": sweep.resources["cpu"], "gpu": sweep.resources["gpu"]}
        trainable = tune.with_resources(tune.with_parameters(_trainable, payload=payload), trial_resources)
        if resume:
            with _quiet("ray.tune.analysis.experiment_analysis"):  # warns for every trial without results
                tuner = tune.Tuner.restore(str(exp_path), trainable, resume_unfinished=True, resume_errored=False)
            # Tune restores the saved RunConfig; this run's callbacks (the progress table) replace its.
            tuner._local_tuner._run_config.callbacks = list(callbacks)  # noqa: SLF001 - no public way
        else:
            from ray.tune.search.basic_variant import BasicVariantGenerator
            tuner = tune.Tuner(
                trainable, param_space=sweep.param_space(),
                tune_config=tune.TuneConfig(
                    metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                    scheduler=_scheduler(sweep, default_max_t),
                    reuse_actors=False,  # Ray 2.60 cannot reuse actors of wrapped function trainables
                    search_alg=BasicVariantGenerator(max_concurrent=sweep.max_concurrent,
                                                     random_state=sweep.seed)),
                run_config=tune.RunConfig(name=sweep.name, storage_path=str(storage), verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=sweep.max_retries),
                                          callbacks=list(callbacks)))
        grid = tuner.fit()
        rows, interrupted = _collect(grid, _trial_statuses(grid, exp_path), sweep, client, exp_id, parent_id)
        return rows, interrupted or len(rows) < sweep.expected_trials(), cluster_nodes
    finally:
        if we_started:
            ray.shutdown()


def _inert_asha(sweep: Sweep, default_max_t: int) -> str | None:
    """Why ASHA cannot stop any trial early with this schedule, or None."""
    s = sweep.scheduler
    if s["type"] != "asha" or s.get("time_attr", "step") != "step":
        return None
    max_t = s.get("max_t") or default_max_t
    first = s.get("grace_period", 1)
    if first >= max_t or default_max_t <= first:
        return (f"{sweep.path}: ASHA cannot stop any trial early: its first rung (grace_period = {first} steps) "
                f"is not before the end of training ({min(max_t, default_max_t)} steps); lower grace_period or "
                f"raise STEPS, or use --scheduler fifo")
    return None


class SweepProgress:
    """A Tune callback: a table of the trials (step, metric, status) every ``every`` seconds and when a
    trial ends, so a sweep is never silent. Plain lines, fine in logs."""

    def __init__(self, sweep: Sweep, every: float = 15.0):
        self.sweep, self.every = sweep, every   # no stream kept: Tune pickles its callbacks with its state
        self.rows: dict[str, dict] = {}
        self.last = 0.0
        self.started = time.perf_counter()

    def _show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        done = sum(r["status"] in ("TERMINATED", "ERROR") for r in self.rows.values())
        lines = [f"[sweep {self.sweep.name}] {now - self.started:.0f} s: {done} of {self.sweep.expected_trials()} "
                 f"trials done"]
        for trial_id, r in sorted(self.rows.items()):
            value = r.get("metric")
            shown = "-" if value is None else f"{value:.5g}"
            lines.append(f"  {trial_id:<14} {r['status']:<10} step {r.get('step', '-')!s:<7} "
                         f"{self.sweep.metric} {shown:<10} {r['config']}")
        print("\n".join(lines), file=sys.stdout, flush=True)

    def _row(self, trial) -> dict:
        return self.rows.setdefault(trial.trial_id, {"status": "PENDING", "config": ", ".join(
            f"{k}={v}" for k, v in self.sweep.display(trial.config).items())})

    # Tune's Callback interface (duck-typed: ray.tune.Callback's methods; no Ray import here)
    def setup(self, **info):
        pass

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "RUNNING"
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row.update(status="RUNNING", step=result.get("step"), metric=result.get(self.sweep.metric))
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "TERMINATED"
        self._show(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial)["status"] = "ERROR"
        self._show(force=True)

    def __getattr__(self, name):  # every other callback hook: nothing to do
        if name.startswith("on_") or name in ("get_state", "set_state"):
            return lambda *a, **k: None
        raise AttributeError(name)


def _report_sweep(sweep: Sweep, rows, best, interrupted: bool, seconds: float, out: Path, base_text: str,
                  extra: list[str], client, exp_id: str, parent_id: str) -> tuple[str, Path | None]:
    """summary.txt, best.gin and the parent run's metrics; ends the parent run."""
    header = (f"sweep {sweep.name!r}: {len(rows)} trials, metric {sweep.metric} ({sweep.mode}), "
              f"{seconds:.0f} s; MLflow experiment {sweep.experiment!r}, parent run {parent_id}")
    best_line = (f"best: trial {best.trial_id} {sweep.metric} = {best.metric:.5g} ({best.status.lower()}) "
                 f"{', '.join(f'{k}={v}' for k, v in best.params.items())}" if best else "best: none (no trial reported)")
    text = f"{header}\n\n{_table(rows, sweep)}\n\n{best_line}\n"
    if interrupted:
        text += f"\ninterrupted: continue with  precondlab sweep {sweep.path} --resume --output {out}\n"
    (out / "summary.txt").write_text(text)
    client.log_artifact(parent_id, str(out / "summary.txt"))
    best_gin = None
    if best is not None:
        best_gin = out / "best.gin"
        best_gin.write_text(f"# Best trial of sweep {sweep.name!r} ({sweep.path}): trial {best.trial_id}, "
                            f"{sweep.metric} = {best.metric!r} ({sweep.mode}); MLflow run {best.run_id}\n"
                            f"#   precondlab run {best_gin}\n"
                            + compose(base_text, sweep, extra, best.bindings, best.trial_id))
        client.log_artifact(parent_id, str(best_gin))
        client.log_metric(parent_id, f"best/{sweep.metric}", best.metric)
        client.set_tag(parent_id, "precondlab.best_trial", best.trial_id)
        if best.run_id:
            client.set_tag(parent_id, "precondlab.best_run_id", best.run_id)
    counts = {s: sum(r.status == s for r in rows) for s in ("COMPLETED", "STOPPED", "ERROR")}
    for key, value in ({f"trials/{k.lower()}": v for k, v in counts.items()} | {"seconds": seconds}).items():
        client.log_metric(parent_id, key, value)
    client.set_terminated(parent_id, "KILLED" if interrupted else "FINISHED")
    return text, best_gin


def _collect(grid, statuses: dict, sweep: Sweep, client, exp_id: str, parent_id: str) -> tuple[list[TrialRow], bool]:
    """One row per trial; child MLflow runs a stopped trial could not close are closed here."""
    children = {}
    for run in client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=5000):
        children.setdefault(run.data.tags.get("precondlab.trial"), []).append(run)
    rows, interrupted = [], False
    for trial_id, result, trial_config in _results(grid):
        m = result.metrics or {}
        cfg = result.config or trial_config or {}
        runs = children.get(trial_id, [])
        run = runs[-1] if runs else None
        tune_status = statuses.get(trial_id, "TERMINATED" if result.error is None else "ERROR")
        value = m.get(sweep.metric)
        if result.error is not None or tune_status == "ERROR":
            status = "ERROR"
            err = str(result.error).strip().splitlines() if result.error is not None else ["?"]
            error = next((line for line in reversed(err) if line.strip()), "?")[:300]
        elif tune_status != "TERMINATED":  # saved as PENDING/RUNNING/PAUSED: the sweep was interrupted
            status, error, interrupted = "INTERRUPTED", "", True
        else:
            finished = run is not None and run.info.status == "FINISHED" and m.get("step") == m.get("total_steps")
            status, error = ("COMPLETED" if finished else "STOPPED"), ""
        # Tune ends a stopped trial's actor right after telling it to stop, often before the trial
        # has closed its MLflow run; runs left RUNNING (or FAILED by the stop) are closed here.
        for r in runs:
            if status == "STOPPED" and r is run:
                _close_stopped(client, r, m.get("step"))
            elif status == "INTERRUPTED" or r.info.status == "RUNNING":
                _close_interrupted(client, r)
        rows.append(TrialRow(trial_id, status, sweep.display(cfg), sweep.sampled_bindings(cfg),
                             float(value) if isinstance(value, (int, float)) else None,
                             int(m.get("training_iteration", 0) or 0), m.get("step"),
                             run.info.run_id if run else None, error))
    rows.sort(key=lambda r: r.trial_id)
    return rows, interrupted


def _close_interrupted(client, run) -> None:
    """A trial the sweep's interruption stopped (Tune stops it the way its scheduler would): say so."""
    client.set_tag(run.info.run_id, "precondlab.sweep_interrupted", "true")
    if run.info.status == "RUNNING":
        client.set_terminated(run.info.run_id, "KILLED")


def _close_stopped(client, run, step) -> None:
    tags = run.data.tags
    if tags.get("precondlab.stopped_early") != "true":
        client.set_tag(run.info.run_id, "precondlab.stopped_early", "true")
    if "precondlab.stopped_at_step" not in tags and step is not None:
        client.set_tag(run.info.run_id, "precondlab.stopped_at_step", str(step))
    if run.info.status != "KILLED":
        client.set_terminated(run.info.run_id, "KILLED")


def _best(rows: list[TrialRow], sweep: Sweep) -> TrialRow | None:
    """The best completed trial (stopped trials only when none completed): their metrics are at max_t."""
    def ok(r):
        return r.metric is not None and math.isfinite(r.metric)
    pool = [r for r in rows if r.status == "COMPLETED" and ok(r)] or [r for r in rows if r.status == "STOPPED" and ok(r)]
    if not pool:
        return None
    return (min if sweep.mode == "min" else max)(pool, key=lambda r: r.metric)


def main_args(args) -> int:
    """`precondlab sweep`: run and print; exit 130 when interrupted (resume with --resume)."""
    result = run(args.sweep, address=args.address, num_samples=args.num_samples, resume=args.resume,
                 bindings=args.gin_bindings, tracking_uri=args.tracking_uri, output=args.output,
                 num_cpus=args.num_cpus, experiment_name=args.experiment, scheduler=args.scheduler,
                 max_concurrent=args.max_concurrent, run_name=args.run_name)
    if result.best_gin is not None:
        print(f"best trial's gin: {result.best_gin}")
    sys.stdout.flush()
    return 130 if result.interrupted else 0
