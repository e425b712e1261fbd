"""Ray Tune sweeps over gin bindings, logged to MLflow (``precondlab sweep SWEEP.toml``).

A sweep definition is a small TOML file (see ``sweeps/README.md``)::

    name = "toy_precond"                  # default: the file's stem
    base = "gin/toy_analytic.gin"         # one path or a list; see "paths" below
    bindings = ["STEPS = 400"]            # fixed extra bindings, after the base files
    num_samples = 4                       # samples of the space (x the grid's product)
    max_concurrent = 2
    seed = 0                              # the random search's seed (reproducible samples)

    [metric]
    name = "traj_mse/nfe2"                # any key evaluator reports
    mode = "min"

    [scheduler]                           # "asha" (default) or "fifo"
    type = "asha"
    max_t = 400                           # in time_attr units (default time_attr: "step")
    grace_period = 100
    reduction_factor = 2

    [resources]                           # per trial
    cpu = 1
    gpu = 0

    [space]                               # gin binding (or macro) -> search spec
    "experiment.lr" = { loguniform = [1e-4, 3e-3] }
    NUM_TIMESTEPS = { choice = [12, 18] }
    precond = { choice = [                # a "bundle": each option is a table of bindings;
      { "experiment.preconditioner" = "@preconditioner.ctm()" },          # the key is a label
      { "experiment.preconditioner" = "@preconditioner.analytic()", "preconditioner.analytic.form" = "forward" },
    ] }

Specs: ``choice``, ``grid`` (lists of values, or lists of binding tables), ``loguniform``,
``uniform`` ([lo, hi] floats), ``randint`` ([lo, hi] integers, both inclusive). A value is
rendered into the gin binding verbatim when it is a string starting with ``@`` or ``%``;
other strings are quoted, numbers and booleans written as they are.

Paths: a relative ``base`` is looked up next to the sweep file first, then in the folder
above it (so ``sweeps/x.toml`` names ``gin/...`` relative to the repository root).

Each trial receives the fully inlined gin text, parses it in its own process with
``config.parse_text`` and calls ``experiment.run`` with a ``report`` that forwards every
evaluation to ``ray.tune.report``. The gin text a trial runs is, in this order: the base
files (includes inlined), the sweep's fixed ``bindings``, the command line's
``--gin_bindings``, the trial's sampled bindings (which therefore win).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_OUTPUT = "sweep_runs"
STATE_FILE = "precondlab_sweep.json"
SPEC_KINDS = ("choice", "grid", "loguniform", "uniform", "randint")
_TOP_KEYS = {"name", "description", "base", "bindings", "experiment", "num_samples", "max_concurrent",
             "seed", "metric", "scheduler", "resources", "space"}
_METRIC_KEYS = {"name", "mode"}
_SCHED_KEYS = {"asha": {"type", "time_attr", "max_t", "grace_period", "reduction_factor"},
               "fifo": {"type"}}
_RESOURCE_KEYS = {"cpu", "gpu"}
_NAME = re.compile(r"^[A-Za-z_][\w./]*$")          # a gin binding name, a scoped name or a macro


class SweepError(ValueError):
    """A sweep definition that cannot be used; the message names the file and the key."""


class TrialStopped(KeyboardInterrupt):
    """Raised inside a trial when Tune's scheduler stops it: experiment.run then ends its MLflow run KILLED."""


@dataclass
class Param:
    key: str                      # the binding name, or a label for a bundle
    kind: str                     # choice | grid | loguniform | uniform | randint
    values: list                  # the options, or [lo, hi]
    bundle: bool = False          # options are tables {binding: value}; Tune samples their index

    def domain(self):
        from ray import tune
        if self.kind in ("choice", "grid"):
            opts = list(range(len(self.values))) if self.bundle else list(self.values)
            return tune.choice(opts) if self.kind == "choice" else tune.grid_search(opts)
        lo, hi = self.values
        if self.kind == "loguniform":
            return tune.loguniform(lo, hi)
        if self.kind == "uniform":
            return tune.uniform(lo, hi)
        return tune.randint(lo, hi + 1)           # the definition's bounds are inclusive

    def bindings(self, sampled) -> dict:
        """{gin name: value} for one sampled value (a bundle's index selects its table)."""
        if self.bundle:
            return dict(self.values[int(sampled)])
        return {self.key: sampled}

    def display(self, sampled) -> str:
        if self.bundle:  # '@preconditioner.analytic()' shows as 'analytic()', other values as name=value
            return " ".join(v[1:].rsplit(".", 1)[-1] if isinstance(v, str) and v.startswith("@")
                            else f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in self.values[int(sampled)].items())
        return _short(sampled)

    def examples(self) -> list:
        """The values a dry parse checks: every option of a list, the bounds of a range."""
        if self.kind in ("choice", "grid"):
            return list(range(len(self.values))) if self.bundle else list(self.values)
        return list(self.values)


@dataclass
class Sweep:
    path: Path
    name: str
    base: list[str]               # as written in the file
    bindings: list[str] = field(default_factory=list)
    experiment: str = "precondlab"
    description: str = ""
    num_samples: int = 1
    max_concurrent: int = 0       # 0: as many as the resources allow
    seed: int | None = None
    metric: str = "traj_mse/nfe2"
    mode: str = "min"
    scheduler: dict = field(default_factory=lambda: {"type": "asha"})
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    space: list[Param] = field(default_factory=list)

    def base_paths(self) -> list[Path]:
        """The base gin files, resolved: next to the sweep file, then in the folder above it."""
        out = []
        for b in self.base:
            p = Path(b)
            if p.is_absolute():
                candidates = [p]
            else:
                candidates = [self.path.parent / p, self.path.parent.parent / p]
            found = next((c for c in candidates if c.exists()), None)
            if found is None:
                raise SweepError(f"{self.path}: base gin file {b!r} not found (looked for "
                                 f"{', '.join(str(c) for c in candidates)})")
            out.append(found.resolve())
        return out

    def expected_trials(self) -> int:
        """num_samples times the product of the grids' sizes."""
        return self.num_samples * math.prod(len(p.values) for p in self.space if p.kind == "grid")

    def param_space(self) -> dict:
        return {p.key: p.domain() for p in self.space}

    def sampled_bindings(self, config: dict) -> dict:
        out = {}
        for p in self.space:
            if p.key in config:
                out.update(p.bindings(config[p.key]))
        return out

    def display(self, config: dict) -> dict:
        return {p.key: p.display(config[p.key]) for p in self.space if p.key in config}


# ----------------------------------------------------------------------------------- loading
def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(value) -> str:
    """A TOML value as gin source: '@...'/'%...' verbatim, strings quoted, numbers as they are."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return value if value[:1] in "@%" else json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as a gin value")


def binding_lines(bindings: dict) -> list[str]:
    return [f"{k} = {render(v)}" for k, v in bindings.items()]


def _check_keys(where: str, table: dict, allowed: set, path: Path) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SweepError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(k) for k in unknown)} in {where} (known: {', '.join(sorted(allowed))})")


def _check_value(path: Path, key: str, value) -> None:
    if isinstance(value, dict):
        raise SweepError(f"{path}: [space] {key!r}: nested tables are not gin values")
    if isinstance(value, list):
        for v in value:
            _check_value(path, key, v)
    elif not isinstance(value, (str, int, float, bool)):
        raise SweepError(f"{path}: [space] {key!r}: {value!r} is not a gin value")


def _parse_param(path: Path, key: str, spec) -> Param:
    where = f"[space] {key!r}"
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: {where} must be a table with one of {', '.join(SPEC_KINDS)}, "
                         f"e.g. {{ choice = [1, 2] }}; got {spec!r}")
    kinds = [k for k in spec if k in SPEC_KINDS]
    _check_keys(where, spec, set(SPEC_KINDS), path)
    if len(kinds) != 1:
        raise SweepError(f"{path}: {where} needs exactly one of {', '.join(SPEC_KINDS)}; got {sorted(spec)}")
    kind = kinds[0]
    values = spec[kind]
    if not isinstance(values, list) or not values:
        raise SweepError(f"{path}: {where}: {kind} needs a non-empty list, got {values!r}")
    if kind in ("choice", "grid"):
        tables = [isinstance(v, dict) for v in values]
        if any(tables) and not all(tables):
            raise SweepError(f"{path}: {where}: {kind} mixes binding tables and plain values")
        if all(tables):
            for i, table in enumerate(values):
                if not table:
                    raise SweepError(f"{path}: {where}: option {i + 1} is an empty table")
                for name, v in table.items():
                    if not _NAME.match(name):
                        raise SweepError(f"{path}: {where}: option {i + 1}: {name!r} is not a gin binding name")
                    _check_value(path, f"{key}.{name}", v)
            return Param(key, kind, values, bundle=True)
        if not _NAME.match(key):
            raise SweepError(f"{path}: {where}: {key!r} is not a gin binding name")
        for v in values:
            _check_value(path, key, v)
        return Param(key, kind, values)
    if not _NAME.match(key):
        raise SweepError(f"{path}: {where}: {key!r} is not a gin binding name")
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise SweepError(f"{path}: {where}: {kind} needs [lo, hi] numbers, got {values!r}")
    lo, hi = values
    if not lo < hi:
        raise SweepError(f"{path}: {where}: {kind} needs lo < hi, got {values!r}")
    if kind == "loguniform" and lo <= 0:
        raise SweepError(f"{path}: {where}: loguniform needs 0 < lo, got {values!r}")
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise SweepError(f"{path}: {where}: randint needs integer bounds, got {values!r}")
    return Param(key, kind, [lo, hi])


def _int(path: Path, where: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SweepError(f"{path}: {where} must be an integer >= {minimum}, got {value!r}")
    return value


def load(path: str | Path) -> Sweep:
    """Read and validate a sweep definition (no Ray, no gin parsing, base files not opened)."""
    path = Path(path).resolve()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise SweepError(f"cannot read sweep file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: not valid TOML: {exc}") from None
    _check_keys("the top level", data, _TOP_KEYS, path)
    if "base" not in data:
        raise SweepError(f"{path}: missing key 'base' (the gin file(s) the sweep starts from)")
    base = data["base"] if isinstance(data["base"], list) else [data["base"]]
    if not base or not all(isinstance(b, str) and b for b in base):
        raise SweepError(f"{path}: 'base' must be a gin file path or a list of them, got {data['base']!r}")
    bindings = data.get("bindings", [])
    if not isinstance(bindings, list) or not all(isinstance(b, str) for b in bindings):
        raise SweepError(f"{path}: 'bindings' must be a list of gin binding strings, got {bindings!r}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not re.match(r"^[\w.-]+$", name):
        raise SweepError(f"{path}: 'name' must be letters, digits, '_', '.', '-'; got {name!r}")
    sweep = Sweep(path=path, name=name, base=base, bindings=list(bindings),
                  experiment=str(data.get("experiment", "precondlab")),
                  description=str(data.get("description", "")))
    sweep.num_samples = _int(path, "'num_samples'", data.get("num_samples", 1), 1)
    sweep.max_concurrent = _int(path, "'max_concurrent'", data.get("max_concurrent", 0), 0)
    if "seed" in data:
        sweep.seed = _int(path, "'seed'", data["seed"], 0)

    metric = data.get("metric", {})
    if not isinstance(metric, dict):
        raise SweepError(f"{path}: [metric] must be a table with name and mode")
    _check_keys("[metric]", metric, _METRIC_KEYS, path)
    sweep.metric = metric.get("name", sweep.metric)
    sweep.mode = metric.get("mode", sweep.mode)
    if not isinstance(sweep.metric, str) or not sweep.metric:
        raise SweepError(f"{path}: [metric] 'name' must be a metric name such as 'traj_mse/nfe2'")
    if sweep.mode not in ("min", "max"):
        raise SweepError(f"{path}: [metric] 'mode' must be 'min' or 'max', got {sweep.mode!r}")

    sched = dict(data.get("scheduler", {"type": "asha"}))
    sched.setdefault("type", "asha")
    if sched["type"] not in _SCHED_KEYS:
        raise SweepError(f"{path}: [scheduler] 'type' must be one of {', '.join(_SCHED_KEYS)}, got {sched['type']!r}")
    _check_keys(f"[scheduler] (type {sched['type']!r})", sched, _SCHED_KEYS[sched["type"]], path)
    if sched["type"] == "asha":
        sched.setdefault("time_attr", "step")
        sched.setdefault("grace_period", 1)
        sched.setdefault("reduction_factor", 2)
        if sched["time_attr"] not in ("step", "training_iteration"):
            raise SweepError(f"{path}: [scheduler] 'time_attr' must be 'step' or 'training_iteration'")
        for k in ("max_t", "grace_period"):
            if k in sched:
                _int(path, f"[scheduler] {k!r}", sched[k], 1)
        rf = sched["reduction_factor"]
        if isinstance(rf, bool) or not isinstance(rf, (int, float)) or rf <= 1:
            raise SweepError(f"{path}: [scheduler] 'reduction_factor' must be a number > 1, got {rf!r}")
        if "max_t" in sched and sched["grace_period"] > sched["max_t"]:
            raise SweepError(f"{path}: [scheduler] 'grace_period' ({sched['grace_period']}) exceeds "
                             f"'max_t' ({sched['max_t']})")
    sweep.scheduler = sched

    res = data.get("resources", {})
    if not isinstance(res, dict):
        raise SweepError(f"{path}: [resources] must be a table with cpu and gpu")
    _check_keys("[resources]", res, _RESOURCE_KEYS, path)
    for k in _RESOURCE_KEYS:
        v = res.get(k, 1 if k == "cpu" else 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise SweepError(f"{path}: [resources] {k!r} must be a number >= 0, got {v!r}")
        sweep.resources[k] = v

    space = data.get("space", {})
    if not isinstance(space, dict):
        raise SweepError(f"{path}: [space] must be a table of binding = {{ spec }}")
    sweep.space = [_parse_param(path, k, v) for k, v in space.items()]
    names = {}
    for p in sweep.space:
        for opt in (p.values if p.bundle else [{p.key: None}]):
            for k in opt:
                if k in names and names[k] != p.key:
                    raise SweepError(f"{path}: [space] binding {k!r} is set by both {names[k]!r} and {p.key!r}")
                names[k] = p.key
    return sweep


# ------------------------------------------------------------------------------ the gin text
def _binding_name(line: str) -> str | None:
    m = re.match(r"\s*([A-Za-z_][\w./]*)\s*=", line)
    return m.group(1) if m else None


def compose(base_text: str, sweep: Sweep, extra: list[str], sampled: dict, trial: str | None = None) -> str:
    """The complete gin text of one trial (also what best.gin holds): base, fixed, --gin_bindings, sampled."""
    parts = [base_text]
    if sweep.bindings:
        parts += [f"# === sweep {sweep.name}: fixed bindings ({sweep.path.name})"] + sweep.bindings
    if extra:
        parts += ["# === --gin_bindings"] + list(extra)
    if sampled:
        parts += [f"# === sweep {sweep.name}: sampled" + (f" (trial {trial})" if trial else "")]
        parts += binding_lines(sampled)
    return "\n".join(parts) + "\n"


def _resolve(name: str):
    """A bound gin value with macros followed (None when unbound)."""
    import gin
    try:
        value = gin.query_parameter(name)
    except ValueError:
        return None
    for _ in range(20):
        selector = getattr(value, "selector", None)
        if selector != "gin.macro":
            break
        value = gin.query_parameter("%" + value.scoped_selector.split("/")[0])
    return value


def _total_steps() -> int:
    from precondlab.experiment import Experiment
    steps = _resolve("experiment.steps")
    return int(steps) if steps is not None else int(Experiment.__dataclass_fields__["steps"].default)


# ----------------------------------------------------------------------------------- trials
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


# ------------------------------------------------------------------------------------ driver
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


def _dry_parse(sweep: Sweep, base_text: str, extra: list[str]) -> None:
    """Parse the base with each option once, so a typo fails here and not in every trial."""
    from precondlab import config as gin_config
    from precondlab import experiment  # noqa: F401 - registers the 'experiment' configurable
    first = {p.key: p.examples()[0] for p in sweep.space}
    variants = [first] + [{**first, p.key: v} for p in sweep.space for v in p.examples()[1:]]
    for cfg in variants[1:] + variants[:1]:  # the first options last: their gin state stays for the caller
        text = compose(base_text, sweep, extra, sweep.sampled_bindings(cfg))
        try:
            gin_config.parse_text(text, origin=str(sweep.path))
        except gin_config.ConfigError as exc:
            raise SweepError(f"{sweep.path}: the sweep's gin does not parse with {sweep.display(cfg)}: {exc}") from None


def prepare(sweep: Sweep, extra: list[str] | None = None) -> tuple[list[Path], str, int]:
    """Resolve the base files, inline them and dry-parse every option (no Ray).

    Returns (base files, their inlined text, experiment.steps of the first options); raises
    SweepError naming the sweep file for a missing base, a typo in a binding, a clash with
    --gin_bindings.
    """
    extra = list(extra or [])
    swept = {k for p in sweep.space for opt in (p.values if p.bundle else [{p.key: 0}]) for k in opt}
    for b in extra:
        if _binding_name(b) in swept:
            raise SweepError(f"--gin_bindings {b!r}: {_binding_name(b)!r} is swept by {sweep.path}; "
                             f"remove it from [space] to fix it")
    from precondlab import config as gin_config
    from precondlab import experiment  # noqa: F401 - registers 'experiment' before parsing
    base_files = sweep.base_paths()
    try:
        base_text = gin_config.load([str(p) for p in base_files]).text
    except gin_config.ConfigError as exc:
        raise SweepError(f"{sweep.path}: base: {exc}") from None
    _dry_parse(sweep, base_text, extra)
    return base_files, base_text, _total_steps()


def check(sweep_file: str | Path, bindings: list[str] | None = None) -> Sweep:
    """Load a definition and dry-parse its gin with every option; returns the Sweep."""
    sweep = load(sweep_file)
    prepare(sweep, bindings)
    return sweep


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
        verbose: bool = True) -> SweepResult:
    """Run (or, with resume, continue) a sweep; returns the per-trial rows and the best trial."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables from Tune, ours only
    started = time.perf_counter()
    sweep = load(sweep_file)
    if num_samples is not None:
        sweep.num_samples = _int(sweep.path, "--num-samples", num_samples, 1)
    if experiment_name:
        sweep.experiment = experiment_name
    extra = list(bindings or [])
    base_files, base_text, default_max_t = prepare(sweep, extra)
    from precondlab import tracking

    uri = absolute_uri(tracking_uri)
    out = Path(output or Path(DEFAULT_OUTPUT) / sweep.name).resolve()
    storage = out / "ray_results"
    exp_path = storage / sweep.name
    state_path = out / STATE_FILE
    client, uri, exp_id = tracking.connect(uri, sweep.experiment)  # creates the experiment before any trial

    import ray
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
        if verbose:
            print(f"resuming sweep {sweep.name!r} from {exp_path} (MLflow parent run {parent_id})")
    else:
        if resume and verbose:
            print(f"--resume: no saved sweep state under {exp_path}; starting afresh")
        parent = tracking.RunLogger(client, exp_id, run_name=sweep.name,
                                    tags={"precondlab.sweep": sweep.name, "precondlab.sweep_file": str(sweep.path),
                                          "precondlab.role": "sweep"})
        parent_id = parent.run_id
        parent.params({"sweep_file": str(sweep.path), "base": ",".join(map(str, base_files)),
                       "metric": sweep.metric, "mode": sweep.mode, "num_samples": sweep.num_samples,
                       "max_concurrent": sweep.max_concurrent, "resources": json.dumps(sweep.resources),
                       "scheduler": json.dumps(sweep.scheduler), "fixed_bindings": "\n".join(sweep.bindings + extra),
                       **{f"space.{p.key}": json.dumps({p.kind: p.values}) for p in sweep.space}})
        parent.text(sweep.path.read_text(), sweep.path.name)
        out.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps({"parent_run_id": parent_id, "tracking_uri": uri,
                                          "experiment": sweep.experiment, "sweep_file": str(sweep.path)}, indent=1))

    try:
        rows, interrupted, cluster_nodes = _tune(sweep, payload={
            "sweep": sweep, "base_text": base_text, "base_files": base_files, "extra": extra,
            "tracking_uri": uri, "parent_run_id": parent_id, "address": address, "cwd": os.getcwd()},
            storage=storage, address=address, num_cpus=num_cpus, resume=has_state,
            default_max_t=default_max_t, client=client, exp_id=exp_id)
        best = _best(rows, sweep)
        seconds = time.perf_counter() - started
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
          client, exp_id: str) -> tuple[list[TrialRow], bool, list[str]]:
    """Start or join Ray, run (or restore) the Tune experiment, collect one row per trial."""
    import ray
    from ray import tune
    parent_id = payload["parent_run_id"]
    exp_path = storage / sweep.name
    we_started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        else:
            # Bounded: min(2, cpu count), raised to one trial's CPUs if that is more (up to the count).
            cpus = num_cpus or min(os.cpu_count() or 1, max(2, math.ceil(sweep.resources["cpu"])))
            # "local": always a fresh instance; with no address Ray would join whatever cluster
            # /tmp/ray/ray_current_cluster or $RAY_ADDRESS names, even a stale or foreign one.
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING")
        we_started = True
    try:
        total = ray.cluster_resources()
        need = {"CPU": sweep.resources["cpu"], "GPU": sweep.resources["gpu"]}
        if any(v > total.get(k, 0) for k, v in need.items()):
            raise SweepError(f"{sweep.path}: [resources] asks {need['CPU']:g} CPU and {need['GPU']:g} GPU per trial; "
                             f"the Ray {'cluster at ' + address if address else 'started here'} has "
                             f"{total.get('CPU', 0):g} CPU and {total.get('GPU', 0):g} GPU in all "
                             f"(no trial could ever start{'' if address else '; see --num-cpus'})")
        cluster_nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        client.set_tag(parent_id, "precondlab.ray_address", address or "local")
        client.set_tag(parent_id, "precondlab.ray_nodes", ",".join(cluster_nodes))
        trainable = tune.with_resources(tune.with_parameters(_trainable, payload=payload),
                                        {"cpu": sweep.resources["cpu"], "gpu": sweep.resources["gpu"]})
        if resume:
            with _quiet("ray.tune.analysis.experiment_analysis"):  # warns for every trial without results
                tuner = tune.Tuner.restore(str(exp_path), trainable, resume_unfinished=True, resume_errored=False)
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
                                          failure_config=tune.FailureConfig(max_failures=0)))
        grid = tuner.fit()
        rows, interrupted = _collect(grid, _trial_statuses(grid, exp_path), sweep, client, exp_id, parent_id)
        return rows, interrupted or len(rows) < sweep.expected_trials(), cluster_nodes
    finally:
        if we_started:
            ray.shutdown()


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
            elif r.info.status == "RUNNING":
                client.set_tag(r.info.run_id, "precondlab.interrupted", "true")
                client.set_terminated(r.info.run_id, "KILLED")
        rows.append(TrialRow(trial_id, status, sweep.display(cfg), sweep.sampled_bindings(cfg),
                             float(value) if isinstance(value, (int, float)) else None,
                             int(m.get("training_iteration", 0) or 0), m.get("step"),
                             run.info.run_id if run else None, error))
    rows.sort(key=lambda r: r.trial_id)
    return rows, interrupted


def _delete_tag(client, run_id: str, key: str) -> None:
    """Delete a tag that the trial itself may have deleted meanwhile (trial and driver race here)."""
    from mlflow.exceptions import MlflowException
    try:
        client.delete_tag(run_id, key)
    except MlflowException as exc:
        if "No tag with name" not in str(exc):
            raise


def _close_stopped(client, run, step) -> None:
    tags = run.data.tags
    if tags.get("precondlab.stopped_early") != "true":
        client.set_tag(run.info.run_id, "precondlab.stopped_early", "true")
    if "precondlab.stopped_at_step" not in tags and step is not None:
        client.set_tag(run.info.run_id, "precondlab.stopped_at_step", str(step))
    if tags.get("error", "").startswith(TrialStopped.__name__):  # the stop, not a failure
        _delete_tag(client, run.info.run_id, "error")
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
                 num_cpus=args.num_cpus, experiment_name=args.experiment)
    if result.best_gin is not None:
        print(f"best trial's gin: {result.best_gin}")
    sys.stdout.flush()
    return 130 if result.interrupted else 0
