"""precondlab command line: run, list, gap (and sweep)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings


def _gin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="*", help="gin file(s), parsed in order")
    p.add_argument("--gin_file", action="append", default=[], help="more gin files (repeatable)")
    p.add_argument("--gin_bindings", "--gin_binding", action="append", default=[],
                   help="a gin binding, e.g. 'experiment.steps = 100' (repeatable)")
    p.add_argument("--gin_search_paths", action="append", default=[], help="folders searched for includes")


def _load(args):
    from precondlab import config
    files = list(args.config) + list(args.gin_file)
    if not files and not args.gin_bindings:
        raise config.ConfigError("no gin file given: e.g. precondlab run gin/toy_analytic.gin")
    return config.load(files, args.gin_bindings, args.gin_search_paths)


def cmd_list(args) -> int:
    from precondlab import registry
    entries = registry.list_entries(args.kind)
    width = max((len(e.name) for e in entries), default=0)
    kind = None
    for e in entries:
        if e.kind != kind:
            kind = e.kind
            print(f"{kind}  ({registry.KINDS[kind]})")
        origin = "" if not e.third_party else f"  [plugin {e.distribution} {e.version}]"
        print(f"  {e.name:<{width}}  {e.doc}{origin}")
    broken = [f for f in registry.failures() if args.kind is None or f.kind == registry._check_kind(args.kind)]  # noqa: SLF001
    if broken:
        print("not loaded (broken plugins):")
        for f in broken:
            print(f"  {f.kind} {f.name}: {f.distribution} ({f.entry_point}): {f.reason}")
    return 0


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _resume_hint(args, exc) -> str:
    files = " ".join(list(args.config) + [f"--gin_file {f}" for f in args.gin_file])
    extra = "".join(f" --gin_bindings {b!r}" for b in args.gin_bindings)
    uri = f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""
    return f"precondlab run {files}{extra}{uri} --resume {exc.run_id}"


def cmd_run(args) -> int:
    from precondlab import experiment
    from precondlab.interrupt import Interrupted
    cfg = _load(args)
    if args.workers:
        return _run_on_ray(args, cfg)
    try:
        result = experiment.run(cfg, tracking_uri=args.tracking_uri, experiment_name=args.experiment,
                                progress=not args.no_progress, resume=args.resume, run_name=args.run_name,
                                entry_point="precondlab run", stream=sys.stderr)
    except Interrupted as exc:
        saved = (f"checkpoint of step {exc.checkpoint} logged" if exc.checkpoint is not None
                 else "no checkpoint yet")
        resume = f"; resume with: {_resume_hint(args, exc)}" if exc.checkpoint is not None else ""
        print(f"precondlab: {exc} (MLflow run {exc.run_id} marked KILLED, {saved}){resume}", file=sys.stderr)
        return exc.exit_code
    from precondlab.training import distributed
    if not distributed.current().main:
        return 0                                  # rank 0 prints the summary of a multi-process run
    rows = [(k, f"{v:.4g}") for k, v in sorted(result.final.items())]
    rows += [(k[len("eval."):], str(v)) for k, v in sorted(result.info.items())   # how the samples were made
             if k.startswith("eval.times.") or k == "eval.class_labels"]
    rows += [("mlflow run", result.run_id), ("checkpoint", result.checkpoint or "-")]
    # With --json, stdout holds exactly one JSON document (pipe it into jq); the table goes to stderr.
    table = sys.stderr if args.json else sys.stdout
    print("\nsummary (final evaluation of the EMA student; lower is better, except psnr):", file=table)
    print(_table(rows), file=table)
    if args.json:
        print(json.dumps({"run_id": result.run_id, "final": result.final, "info": result.info,
                          "checkpoint": result.checkpoint}))
    return 0


def _run_on_ray(args, cfg) -> int:
    """precondlab run --workers N: the same run on N Ray Train workers (DDP), local or on a cluster."""
    from precondlab.tuning import train
    final = train.run(cfg, args.workers, address=args.address, gpus_per_worker=args.gpus_per_worker,
                      cpus_per_worker=args.cpus_per_worker, tracking_uri=args.tracking_uri,
                      experiment_name=args.experiment, run_name=args.run_name, resume=args.resume)
    metrics = {k: v for k, v in final.items() if isinstance(v, float) and k not in ("step", "total_steps")}
    rows = [(k, f"{v:.4g}") for k, v in sorted(metrics.items())]
    rows += [("workers", str(args.workers)), ("mlflow run", final.get("mlflow_run_id", "-")),
             ("checkpoint", final.get("checkpoint") or "-")]
    table = sys.stderr if args.json else sys.stdout
    print(f"\nsummary (final evaluation of the EMA student on {args.workers} Ray workers):", file=table)
    print(_table(rows), file=table)
    if args.json:
        print(json.dumps({"run_id": final.get("mlflow_run_id"), "final": metrics, "checkpoint": final.get("checkpoint")}))
    return 0


def cmd_gap(args) -> int:
    from precondlab import experiment, registry
    from precondlab.errors import UserInputError
    from precondlab.evaluation.gap import GapEstimator, GapRow, check_pair, parse_pairs
    pairs = parse_pairs(args.pairs)
    teacher = experiment.build(_load(args)).teacher
    for t, s in pairs:
        check_pair(t, s, teacher.schedule)
    explicit = bool(args.preconditioners)
    names = args.preconditioners.split(",") if explicit else [
        e.name for e in registry.list_entries("preconditioner") if getattr(e.obj, "denoiser_form", True)]
    if not explicit:  # a broken plugin's preconditioner is a row with its error, not the end of the table
        names += [f.name for f in registry.failures() if f.kind == "preconditioner"]
    estimator = GapEstimator(teacher, num_samples=args.samples)
    rows, fitted, failed = [], {}, []
    nan = float("nan")
    for spec in names:
        name, _, form = spec.partition(":")
        try:
            cls = registry.get("preconditioner", name)
        except registry.UnknownEntryError as exc:
            if explicit and registry.failure("preconditioner", name) is None:
                raise
            failed.append(name)
            rows += [GapRow(name, t, s, nan, nan, nan, nan, str(exc)) for t, s in pairs]
            continue
        if not getattr(cls, "denoiser_form", True):
            print(f"# skipped {name}: its F is a raw network output, not a denoiser, so the gap does not apply",
                  file=sys.stderr)
            continue
        forms = [form] if form else list(getattr(cls, "forms", [""]))
        for fm in forms:
            label = f"{name}:{fm}" if fm else name
            try:
                precond = cls(form=fm) if fm else cls()
                key = (name, type(getattr(precond, "ode", None)).__name__)
                if key in fitted:
                    precond.schedule, precond.coeffs = teacher.schedule, fitted[key]
                else:
                    precond.fit(teacher)
                    fitted[key] = getattr(precond, "coeffs", None)
                experiment.check_contract(precond)
                rows += [estimator.row(label, precond, t, s) for t, s in pairs]
            except Exception as exc:  # noqa: BLE001 - one broken preconditioner is one row, the rest go on
                found = registry.entry_of(cls)
                who = registry.describe_entry(found) if found else name
                error = str(exc) if isinstance(exc, UserInputError) else f"{who} raised {type(exc).__name__}: {exc}"
                failed.append(label)
                rows += [GapRow(label, t, s, nan, nan, nan, nan, error.splitlines()[0]) for t, s in pairs]
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=1))
    else:
        print(f"{'preconditioner':<20} {'t':>8} {'s':>8} {'f':>10} {'g':>10} {'gap vs D(x_t,t)':>16} {'gap vs D(x_s,s)':>16}")
        for r in rows:
            if r.error:
                print(f"{r.preconditioner:<20} {r.t:>8.4g} {r.s:>8.4g}  error: {r.error}")
            else:
                print(f"{r.preconditioner:<20} {r.t:>8.4g} {r.s:>8.4g} {r.f:>10.4g} {r.g:>10.4g} {r.gap_t:>16.4g} "
                      f"{r.gap_s:>16.4g}")
    return 2 if explicit and failed else 0


def cmd_check(args) -> int:
    """precondlab check KIND NAME [NAME ...]: each one's conformance table; exit 0 only if no rule fails."""
    from precondlab import registry, testing
    kind = registry._check_kind(args.kind)  # noqa: SLF001
    if args.gin_file or args.gin_bindings:
        args.config = []
        _load(args)
    else:
        registry.load_plugins()
    broken_any = False
    for name in args.names:
        broken = registry.failure(kind, name)
        if broken is not None:
            print(f"{kind} {name!r} ({broken.distribution}): not loaded\n  FAIL  load  {broken.reason} "
                  f"({broken.entry_point})")
            broken_any = True
            continue
        found = registry.entry(kind, name)
        # Students, losses and samplers are checked as the callables the experiment calls; the rest
        # as the instances gin makes (with the bindings given, if any).
        obj = found.obj if kind in ("student", "loss", "sampler") else found.obj()
        results = testing.checks_for(kind, obj)
        failed = [r for r in results if r.passed is False]
        broken_any |= bool(failed)
        print(f"{registry.describe_entry(found)}: {registry.KINDS[kind]}")
        print(testing.report(results))
        print(f"  {len(results) - len(failed)} of {len(results)} rules pass or do not apply"
              + (f"; broken: {', '.join(r.rule for r in failed)}" if failed else ""))
    return 1 if broken_any else 0


def cmd_report(args) -> int:
    from precondlab import reporting
    result = reporting.run(args.experiments, out=args.out, tracking_uri=args.tracking_uri, baseline=args.baseline,
                           targets=args.target, resamples=args.resamples, log=not args.no_log)
    print(f"report: {result['html']}\n        {result['markdown']} (figures beside it)")
    if result["run_id"]:
        print(f"logged as MLflow run {result['run_id']} (artifacts under report/)")
    return 0


def cmd_sync(args) -> int:
    from precondlab import tracking
    for folder in args.folders:
        sent = tracking.sync(folder, args.tracking_uri)
        print(f"{folder}: {sent} logged operations sent")
    return 0


def cmd_sweep(args) -> int:
    from precondlab.tuning import runner as sweep
    return sweep.main_args(args)


def cmd_train_teacher(args) -> int:
    from precondlab.training import teacher as teacher_training
    return teacher_training.main_args(args)


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag (main parses with it; the README test checks its commands against it)."""
    parser = argparse.ArgumentParser(prog="precondlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train a student as a gin config describes, logging to MLflow")
    _gin_args(p)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.add_argument("--experiment", default="precondlab", help="MLflow experiment name")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON document on stdout "
                                                       "(the summary table then goes to stderr)")
    p.add_argument("--run-name", help="the MLflow run's name (default: <preconditioner>-<form>-seed<N>-<time>)")
    p.add_argument("--workers", type=int, help="run on this many Ray Train workers (DDP; the batch is the global "
                                               "batch); without it: this process (or torchrun's)")
    p.add_argument("--address", help="with --workers: an existing Ray cluster HOST:PORT (default: a local Ray)")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="with --workers: GPUs per worker (default 0)")
    p.add_argument("--cpus-per-worker", type=float, default=1, help="with --workers: CPUs per worker (default 1)")
    p.add_argument("--resume", metavar="RUN_ID", help="continue this MLflow run from its last checkpoint "
                                                      "('latest': the newest unfinished run of the experiment)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("list", help="list registered entries with their one-line docs")
    p.add_argument("kind", nargs="?", help="teacher, ode, preconditioner, student, ... (default: all)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("gap", help="f, g and the exact consistency gap of preconditioners on the config's teacher")
    _gin_args(p)
    p.add_argument("--pairs", default="10:1,5:0.5,80:0.002", help="T:S pairs, comma-separated")
    p.add_argument("--preconditioners", help="comma-separated names, 'analytic:forward' for one form "
                                             "(default: every registered one whose F is a denoiser)")
    p.add_argument("--samples", type=int, default=4096, help="Monte-Carlo samples per pair")
    p.add_argument("--json", action="store_true", help="print a JSON list of "
                                                       "{preconditioner, t, s, f, g, gap_t, gap_s}")
    p.set_defaults(func=cmd_gap)

    p = sub.add_parser("check", help="run a component's conformance checks (docs/plugins.md) and print a "
                                     "pass/fail table; exit 0 only if all pass")
    p.add_argument("kind", help="preconditioner, teacher, student, loss, sampler, schedule, ode, objective, ...")
    p.add_argument("names", nargs="+", metavar="NAME", help="registered names, e.g. variance")
    p.add_argument("--gin_file", action="append", default=[], help="gin files whose bindings configure it")
    p.add_argument("--gin_bindings", "--gin_binding", action="append", default=[],
                   help="a gin binding, e.g. 'preconditioner.analytic.form = \"forward\"' (repeatable)")
    p.add_argument("--gin_search_paths", action="append", default=[], help="folders searched for includes")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("sweep", help="run a Ray Tune sweep (a TOML definition, see sweeps/README.md), "
                                     "one MLflow child run per trial")
    p.add_argument("sweep", help="the sweep definition, e.g. sweeps/toy_precond.toml")
    p.add_argument("--address", help="an existing Ray cluster (default: a local Ray started for the sweep)")
    p.add_argument("--num-samples", type=int, help="override the definition's num_samples")
    p.add_argument("--scheduler", choices=["asha", "fifo"], help="override the definition's scheduler "
                                                                  "(fifo: no early stopping)")
    p.add_argument("--max-concurrent", type=int, help="override the definition's max_concurrent (0: no limit)")
    p.add_argument("--run-name", help="the MLflow parent run's name (default: the sweep's name)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep (same --output)")
    p.add_argument("--gin_bindings", "--gin_binding", action="append", default=[],
                   help="a gin binding added to every trial, e.g. 'STEPS = 100' (repeatable)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: the definition's, else precondlab)")
    p.add_argument("--output", help="folder for Tune's state, summary.txt and best.gin "
                                    "(default: sweep_runs/<sweep name>)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: 2, or one trial's "
                   "CPUs if more, at most the cpu count)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="curves, speed-ups and intervals over seeds of the runs of MLflow "
                                      "experiments, as HTML and Markdown")
    p.add_argument("experiments", nargs="+", metavar="EXPERIMENT", help="MLflow experiment names")
    p.add_argument("--out", help="folder for report.html, report.md and the figures (default: reports/<names>-<time>)")
    p.add_argument("--baseline", default="ctm", help="the method speed-ups are measured against (default: ctm)")
    p.add_argument("--target", action="append", default=[], metavar="METRIC=VALUE",
                   help="an extra target level, e.g. traj_mse/nfe2=0.01 (repeatable)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.add_argument("--no-log", action="store_true", help="do not log the report as an MLflow run")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sync", help="send the logs a run kept in ./precondlab-unsynced/<run id>/ while its "
                                    "MLflow store was unreachable")
    p.add_argument("folders", nargs="+", help="precondlab-unsynced/<run id> folders")
    p.add_argument("--tracking-uri", help="send them here instead of the store the run used")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("train-teacher", help="train a SongUNet teacher with EDM's loss on a dataset "
                                             "(gin: teacher_training.*, teacher_net.*)")
    _gin_args(p)
    p.add_argument("--output", help="checkpoint .pt or .safetensors (default: teacher_training.output); "
                                    "the sidecar <output>.json is written beside it")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.add_argument("--experiment", default="precondlab", help="MLflow experiment name")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="also print the summary and losses as JSON")
    p.set_defaults(func=cmd_train_teacher)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")  # raised by a dependency's import
    warnings.formatwarning = lambda message, category, *rest, **kw: f"precondlab: warning: {message}\n"
    args = build_parser().parse_args(argv)
    from precondlab.errors import UserInputError, user_message
    from precondlab.registry import UnknownEntryError
    from precondlab.tracking import TrackingError
    try:
        return args.func(args)
    except (UserInputError, UnknownEntryError, TrackingError, ValueError, FileNotFoundError) as exc:
        # UserInputError: ConfigError, and a missing or broken dataset (DatasetError), checkpoint
        # (CheckpointError) or FID weights file (FeatureExtractorError), also when raised inside a
        # run, whose MLflow run experiment.run has then marked FAILED. The message says what to do.
        print(f"precondlab: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"precondlab: run failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("precondlab: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The console script (and ``python -m precondlab``): ``main()``, then exit without tearing the
    interpreter down. Its exit handlers still run (MLflow, Ray, logging, temporary folders), and so
    does every flush, but freeing every module and object of torch, MLflow and matplotlib one by
    one took 2.2 s of each toy run (0.8 s for torch alone) and changed nothing.
    Worker threads that are still running, and a profiler or tracer (``python -m cProfile``, which
    writes its file after the script returns), get the interpreter's normal exit."""
    import atexit
    import threading
    code = main()
    if sys.getprofile() or sys.gettrace() or any(
            t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    entry()
