"""A sweep definition: the TOML file ``precondlab sweep SWEEP.toml`` runs (no Ray here).

Parsing and validating ``sweeps/*.toml`` (``load``), the search space (``Param``, ``Sweep``),
the gin text of a trial (``render``, ``binding_lines``, ``compose``) and the checks made before
Ray starts (``prepare``, ``check``: every option's gin is parsed once). Ray is imported only
inside ``Param.domain``, which the driver (``precondlab.tuning.runner``) calls; importing this module
does not import Ray.

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

    [resources]                           # per trial (per worker with workers > 1)
    cpu = 1
    gpu = 0
    workers = 1                           # > 1: each trial runs on that many Ray Train workers (DDP)

    [failure]                             # a trial that crashes is started again (from its
    max_retries = 2                       # last checkpoint) up to this many times; default 2

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

The gin text a trial runs (and ``best.gin`` holds, see ``compose``) is, in this order: the base
files (includes inlined), the sweep's fixed ``bindings``, the command line's ``--gin_bindings``,
the trial's sampled bindings (which therefore win).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

SPEC_KINDS = ("choice", "grid", "loguniform", "uniform", "randint")
_TOP_KEYS = {"name", "description", "base", "bindings", "experiment", "num_samples", "max_concurrent",
             "seed", "metric", "scheduler", "resources", "failure", "space"}
_METRIC_KEYS = {"name", "mode"}
_SCHED_KEYS = {"asha": {"type", "time_attr", "max_t", "grace_period", "reduction_factor"},
               "fifo": {"type"}}
_RESOURCE_KEYS = {"cpu", "gpu", "workers"}
_FAILURE_KEYS = {"max_retries"}
_NAME = re.compile(r"^[A-Za-z_][\w./]*$")          # a gin binding name, a scoped name or a macro


class SweepError(ValueError):
    """A sweep definition that cannot be used; the message names the file and the key."""


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
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0, "workers": 1})
    max_retries: int = 2          # [failure] a crashed trial is started again from its last checkpoint
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
    for k in ("cpu", "gpu"):
        v = res.get(k, 1 if k == "cpu" else 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise SweepError(f"{path}: [resources] {k!r} must be a number >= 0, got {v!r}")
        sweep.resources[k] = v
    # workers > 1: each trial is one run on that many Ray Train workers (cpu and gpu are per worker)
    sweep.resources["workers"] = _int(path, "[resources] 'workers'", res.get("workers", 1), 1)

    failure = data.get("failure", {})
    if not isinstance(failure, dict):
        raise SweepError(f"{path}: [failure] must be a table, e.g. max_retries = 2")
    _check_keys("[failure]", failure, _FAILURE_KEYS, path)
    sweep.max_retries = _int(path, "[failure] 'max_retries'", failure.get("max_retries", 2), 0)

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


# ------------------------------------------------------------------ checks before Ray starts
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
