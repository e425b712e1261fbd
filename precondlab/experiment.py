"""One run: config -> registry -> teacher/ODE/preconditioner/student -> training -> metrics -> MLflow.

``Experiment`` is the gin-configured description of a run; ``run(config)`` executes it and
is what `precondlab run` and every sweep trial call.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gin
import torch

from precondlab import provenance, registry, testing, tracking, validation
from precondlab.config import ConfigError, ParsedConfig
from precondlab.errors import ContractError, NonFiniteLossError, PluginError, UserInputError, user_message
from precondlab.evaluation import plots
from precondlab.evaluation.analytic import Evaluator
from precondlab.evaluation.gap import GapEstimator
from precondlab.interrupt import Interrupted, SignalGuard
from precondlab.preconditioners.base import Preconditioner
from precondlab.progress import Bar, Phases
from precondlab.training import checkpoint, distributed
from precondlab.training import resume as resume_run
from precondlab.training.loop import StepSettings, TrainState, check_ema, check_finite, train_step


@gin.configurable("experiment")
@dataclass
class Experiment:
    teacher: object = gin.REQUIRED                 # @teacher.gmm() ...
    preconditioner: object = gin.REQUIRED          # @preconditioner.analytic() ...
    student: Callable = gin.REQUIRED               # @student.mlp (called with dim=teacher.dim)
    objective: object = gin.REQUIRED               # @objective.ctm() ...
    steps: int = 3000                              # optimiser steps
    batch_size: int = 256
    lr: float = 1e-3
    ema_decay: float = 0.999                       # EMA target network (also the evaluated network)
    grad_clip: float = 1.0                         # max gradient norm (0: off)
    seed: int = 0
    eval_every: int = 250
    checkpoint_every: int = 1000                   # steps between checkpoints
    checkpoint_minutes: float = 10.0               # and minutes of wall-clock between them (0: steps only)
    keep_checkpoints: int = 3                      # the newest K are kept (locally and in the artifact store)
    gap_pairs: tuple = ((10.0, 1.0), (1.0, 0.1), (80.0, 0.002))   # logged once for analytic teachers
    device: str = "cpu"
    amp: str = "auto"                              # 'bf16' autocast, 'off', or 'auto' (bf16 on CUDA)
    init_from_teacher: bool = True                 # copy matching teacher tensors into the student (CTM)
    compile: bool = False                          # torch.compile student, EMA target and teacher network
    compile_backend: str = "inductor"              # torch.compile backend ('aot_eager': tracing only, no codegen)
    compile_mode: str | None = None                # e.g. 'max-autotune' (inductor only)
    name: str = ""                                 # MLflow run name (default: preconditioner + seed)
    evaluator: Evaluator = field(default_factory=Evaluator)

    def __post_init__(self):
        """Bad values fail here, when the config is built: before statistics, data or an MLflow run."""
        v = validation
        v.positive_int("experiment.steps", self.steps)
        v.positive_int("experiment.batch_size", self.batch_size)
        v.positive_float("experiment.lr", self.lr)
        v.in_range("experiment.ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)
        v.nonnegative_float("experiment.grad_clip", self.grad_clip)
        v.nonnegative_int("experiment.seed", self.seed)
        v.positive_int("experiment.eval_every", self.eval_every)
        v.positive_int("experiment.checkpoint_every", self.checkpoint_every)
        v.nonnegative_float("experiment.checkpoint_minutes", self.checkpoint_minutes)
        v.positive_int("experiment.keep_checkpoints", self.keep_checkpoints)
        v.one_of("experiment.amp", self.amp, ("auto", "bf16", "off"))
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise validation.SettingError(f"experiment.device = {self.device!r}: must be a torch device such as "
                                          f"'cpu', 'cuda' or 'cuda:1'") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise validation.SettingError(f"experiment.device = {self.device!r}: no CUDA device is visible here "
                                          f"(use 'cpu')")
        for pair in self.gap_pairs:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise validation.SettingError(f"experiment.gap_pairs = {self.gap_pairs!r}: must be (t, s) pairs, "
                                              f"e.g. ((10.0, 1.0),)")


@dataclass
class RunResult:
    run_id: str
    status: str
    final: dict
    history: list                   # [(step, metrics)]
    seconds: float
    stats_seconds: float
    checkpoint: str | None
    info: dict = field(default_factory=dict)   # how the metrics were made (eval.*: NFE times, FID mode)


def compile_in_place(modules, backend: str = "inductor", mode: str | None = None) -> int:
    """torch.compile each module in place (nn.Module.compile), so state_dict() names, the EMA's
    parameter pairs and checkpoints are those of the eager modules. Returns how many it compiled.
    Off by default: benchmarks/gpu_image.py (part 4) and toy_run_time.py --binding measure
    whether it pays."""
    # The adaptive DSM weight differentiates the student's graph twice (retain_graph=True), which
    # AOTAutograd's donated buffers forbid.
    import torch._functorch.config
    torch._functorch.config.donated_buffer = False
    done = 0
    for module in modules:
        if isinstance(module, torch.nn.Module):
            module.compile(backend=backend, mode=mode)
            done += 1
    return done


def build(config: ParsedConfig | None = None) -> Experiment:
    """``Experiment()`` from gin's bindings, every configurable's arguments checked. A bad setting is
    a ``ConfigError`` naming it and the config files; a missing dataset, checkpoint or weights file
    (``UserInputError``) keeps its own message; any other construction error becomes a
    ``ConfigError`` naming the config files."""
    origin = ", ".join(config.files) if config is not None and config.files else "config"
    try:
        return Experiment()
    except validation.SettingError as exc:
        raise ConfigError(f"{origin}: {user_message(exc)}") from None
    except UserInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - gin wraps missing bindings and constructor errors
        raise ConfigError(f"{origin}: {str(exc).strip()}") from None


def run_label(precond, seed: int) -> str:
    """'analytic-backward-seed0': what a run's default name starts with."""
    name = registry.name_of(precond).split(".")[-1]
    form = precond.describe().get("form")
    return f"{name}{'-' + form if form else ''}-seed{seed}"


def run(config: ParsedConfig, tracking_uri: str | None = None, experiment_name: str = tracking.DEFAULT_EXPERIMENT,
        progress: bool = True, report: Callable[[int, dict], None] | None = None,
        parent_run_id: str | None = None, tags: dict | None = None, out_dir: str | Path | None = None,
        resume: str | None = None, run_name: str | None = None, entry_point: str = "precondlab.experiment.run",
        stream=None) -> RunResult:
    """Run the experiment gin describes (or continue the run ``resume`` names: a run id or 'latest').

    Every exception marks the MLflow run FAILED and is re-raised; a signal (``Interrupted``) or
    Ctrl-C marks it KILLED, after a checkpoint of the step that was running. Phases and progress
    go to ``stream`` (stderr) when ``progress``."""
    main = os.environ.get("RANK", "0") == "0"        # torchrun, srun and Ray Train set RANK
    phases = Phases(stream=stream, enabled=progress and main)   # one rank speaks
    with phases("setup", f"building {', '.join(config.files) or 'the config'} (teacher, preconditioner, objective)",
                after=1.0):
        exp = build(config)
        d = distributed.setup(exp.device)
        if exp.batch_size % d.world:
            raise ConfigError(f"experiment.batch_size = {exp.batch_size} is the global batch: it must divide "
                              f"by the {d.world} ranks")
        if not testing.needs_statistics(exp.preconditioner):
            check_contract(exp.preconditioner)   # a broken plugin is refused before anything else
        held = {}

        def connect():
            held["client"], uri, exp_id = tracking.connect(tracking_uri, experiment_name)
            return uri, exp_id
        uri, exp_id = d.on_main(connect)          # an unusable store stops every rank, not only rank 0
        client = held.get("client")
    bindings = provenance.stable_params(gin.config_str())
    resumed, logged = None, []
    if resume:
        def fetch():
            previous = resume_run.find_run(client, exp_id, resume)
            state, _, names = resume_run.fetch_checkpoint(client, previous.info.run_id)
            resume_run.check_config(state["bindings"], bindings, int(state["step"]), exp.steps,
                                    previous.info.run_id, previous.info.status == "FINISHED")
            return previous.info.run_id, state, names
        run_id, resumed, logged = d.on_main(fetch)
        if d.main:
            log = tracking.RunLogger(client, exp_id, resume_run_id=run_id)
            log.tags(resume_run.identity_tags())
    elif d.main:
        name = run_name or exp.name or f"{run_label(exp.preconditioner, exp.seed)}-{time.strftime('%m%d-%H%M%S')}"
        log = tracking.RunLogger(client, exp_id, run_name=name, parent_run_id=parent_run_id,
                                 tags={**provenance.source_tags(entry_point), **(tags or {}),
                                       **resume_run.identity_tags()})
    if not d.main:
        log = tracking.NullLogger()
    elif d.active:
        log.tags({"precondlab.world_size": str(d.world), "precondlab.backend": d.backend})
    out = Path(out_dir or log.tmp)  # without out_dir, files live in MLflow only (a CIFAR checkpoint is ~1 GB)
    ckpts = checkpoint.Checkpointer(out / "checkpoints", log, exp.checkpoint_every, exp.checkpoint_minutes,
                                    exp.keep_checkpoints, logged)
    try:
        with SignalGuard() as guard:
            result = _train(exp, config, log, phases, report, bindings, guard, ckpts, resumed)
    except BaseException as exc:
        # Stopped (a signal, Ctrl-C, a sweep's scheduler or driver): KILLED and tagged as such, not
        # as an error; anything else: FAILED with the error as a tag.
        stopped = isinstance(exc, (Interrupted, KeyboardInterrupt, SystemExit))
        if isinstance(exc, Interrupted):
            exc.run_id, exc.checkpoint = log.run_id, ckpts.last_step
            log.tags({"precondlab.interrupted": exc.name, "precondlab.interrupted_at_step": str(exc.step)})
        elif stopped:
            log.tags({"precondlab.interrupted": type(exc).__name__})
        else:
            plugin = registry.plugin_in_traceback(exc) if not isinstance(exc, UserInputError) else None
            if plugin is not None:  # said with the plugin's name, not as a traceback from our code
                exc = PluginError(f"{registry.describe_entry(plugin)} raised {type(exc).__name__}: "
                                  f"{user_message(exc) or '(no message)'}")
            log.tag("error", f"{type(exc).__name__}: {user_message(exc)}"[:5000])
        log.end("KILLED" if stopped else "FAILED")
        log.cleanup()
        if isinstance(exc, PluginError):
            raise exc from None
        if isinstance(exc, NonFiniteLossError):
            raise NonFiniteLossError(f"{exc} (MLflow run {log.run_id} marked FAILED; last good checkpoint: "
                                     f"{ckpts.location() or 'none yet'})") from None
        raise
    unsent = log.end("FINISHED")
    if unsent is not None:
        warnings.warn(f"the MLflow store {uri} did not come back: this run's last logs are in {unsent}; send them "
                      f"with `precondlab sync {unsent}`", stacklevel=2)
    result.checkpoint = ckpts.location() if out_dir is None else str(ckpts.last_path)
    log.cleanup()
    return result


def check_contract(precond) -> None:
    """The cheap conformance rules (boundary, finite, shapes, dtypes) on the chosen preconditioner:
    a broken one is refused with its plugin's name and the rule, before it costs anything."""
    results = testing.preconditioner_checks(precond, rules=testing.CHEAP)
    failed = [r for r in results if r.passed is False]
    if failed:
        found = registry.entry_of(precond)
        who = registry.describe_entry(found) if found else type(precond).__name__
        raise ContractError(f"{who} breaks the preconditioner contract (docs/plugins.md): "
                            + "; ".join(f"{r.rule}: {r.detail}" for r in failed))


def component_tags(exp: "Experiment") -> dict:
    """precondlab.component.<kind>: which entry, from which distribution and version (and git commit,
    when installed from a checkout), provided each component of the run."""
    parts = {"teacher": exp.teacher, "preconditioner": exp.preconditioner, "student": exp.student,
             "objective": exp.objective, "loss": getattr(exp.objective, "distance", None),
             "ode": getattr(exp.preconditioner, "ode", None), "schedule": getattr(exp.teacher, "schedule", None),
             "sampler": getattr(exp.evaluator, "sampler", None), "dataset": getattr(exp.teacher, "dataset", None)}
    tags = {}
    for role, obj in parts.items():
        found = registry.entry_of(obj) if obj is not None else None
        if found is None:
            continue
        module = sys.modules.get(found.module)
        git = provenance.git_state(str(Path(module.__file__).resolve().parent)) if getattr(module, "__file__", None) else {}
        commit = f", git {git['commit'][:12]}{' dirty' if git['dirty'] else ''}" if git else ""
        tags[f"precondlab.component.{role}"] = f"{found.kind}.{found.name} ({found.distribution} {found.version}{commit})"
    return tags


def _restore_streams(state, resumed: dict, d, seed: int, log) -> None:
    """Every random stream of the checkpoint, when it was written by as many ranks as run now (an exact
    resume); otherwise each rank's own streams are seeded afresh from (seed, rank, step): the same
    weights, optimizer and step, other draws from here on."""
    per_rank = resumed.get("rng_per_rank") or [resumed["rng"]]
    if len(per_rank) == d.world:
        checkpoint.restore_rng(per_rank[d.rank], state.generators())
        return
    step = int(resumed["step"])
    state.noise_gen.manual_seed(distributed.stream_seed(seed + 7919 * step, d.rank))
    state.data_gen.manual_seed(distributed.stream_seed(seed + 1 + 7919 * step, d.rank))
    torch.manual_seed(distributed.stream_seed(seed + 2 + 7919 * step, d.rank))
    message = (f"resumed on {d.world} rank(s) from a checkpoint of {len(per_rank)}: the same weights, optimizer "
               f"and step (the global batch is the same), new random streams from step {step}")
    log.tags({"precondlab.resumed_world_sizes": f"{len(per_rank)}->{d.world}"})
    if d.main:
        warnings.warn(message, stacklevel=3)


def _statistics_work(precond) -> str:
    """What the statistics phase does, in words (its line when it starts)."""
    if type(precond).statistics is Preconditioner.statistics:
        return f"none ({type(precond).__name__} has closed-form coefficients)"
    ode = getattr(precond, "ode", None)
    size = (f": {ode.num_points} lambda points x {ode.num_samples} samples"
            if hasattr(ode, "num_points") and hasattr(ode, "num_samples") else "")
    return f"{type(precond).__name__} estimates l(t), s(t) from the teacher{size}"


def _train(exp: Experiment, config: ParsedConfig, log, phases: Phases, report, bindings: dict, guard,
           ckpts: checkpoint.Checkpointer, resumed: dict | None) -> RunResult:
    start = time.perf_counter()
    teacher, precond, objective = exp.teacher, exp.preconditioner, exp.objective
    d = distributed.current()
    device = distributed.device_of(exp.device, d)
    run_name = log.run.info.run_name if d.main else f"rank {d.rank}"
    torch.manual_seed(exp.seed)        # every rank makes the same student (DDP checks it too)
    try:  # first: its settings are checked before anything costly (nothing before it draws from torch's RNG)
        student = exp.student(dim=teacher.dim)
    except validation.SettingError as exc:
        raise ConfigError(f"{', '.join(config.files) or 'config'}: {user_message(exc)}") from None
    if getattr(student, "label_dim", 0) != getattr(teacher, "label_dim", 0):
        raise ConfigError(f"{', '.join(config.files) or 'config'}: the teacher has {teacher.label_dim} classes, the "
                          f"student {getattr(student, 'label_dim', 0)}: a class-conditional teacher needs a student "
                          f"of its classes (student.songunet.label_dim = {teacher.label_dim}), an unconditional one "
                          f"label_dim = 0")

    log.tags(component_tags(exp))
    if resumed is None:
        log.text(config.text, "config.gin")
        # The MLflow UI cannot preview .gin files: the run's description shows the config.
        log.tags({"mlflow.note.content": f"`{' '.join(config.files)}`\n\n```\n{config.text[:60000]}\n```"})
        log.params({"teacher": type(teacher).__name__, "preconditioner": type(precond).__name__,
                    **{f"precond.{k}": v for k, v in precond.describe().items()}, **bindings})
    else:  # params are immutable in MLflow: the resumed config is an artifact, the new length a tag
        log.text(config.text, f"config-at-step-{resumed['step']}.gin", "resumed")
        log.tags({"precondlab.resumed_from_step": str(resumed["step"]), "precondlab.steps": str(exp.steps)})

    # The evaluator first (fixed noise, teacher references, FID feature extractor and reference
    # statistics): a missing Inception file or dataset fails here, in seconds, not after the
    # statistics. The global RNG is forked so that its draws (clean-fid's latents when reference
    # statistics are computed rather than read from the cache) change nothing that follows.
    grid = objective.grid(teacher.schedule, "cpu", torch.float64)
    with phases("evaluator", "fixed noise and the teacher's references (exact flows, or Heun samples and FID "
                             "statistics)"), torch.random.fork_rng(devices=[]):
        exp.evaluator.setup(teacher, grid)
    eval_info = getattr(exp.evaluator, "info", None)
    if eval_info and resumed is None:  # the same eval.* params log_artifacts logs at the end, so a failed run has them
        log.params({f"eval.{k}": v for k, v in eval_info.items()})

    # Statistics (Analytic-Precond) and the preconditioning's exact gaps, both logged once; a
    # resumed run takes the statistics its checkpoint kept.
    t0 = time.perf_counter()
    if resumed is None:
        with phases("statistics", _statistics_work(precond)):
            # Rank 0 estimates, the others take its statistics: once per run, not once per rank.
            saved = d.on_main(lambda: precond.fit(teacher).statistics())
            if not d.main:
                precond.restore_statistics(teacher, saved)
        stats_seconds = time.perf_counter() - t0
        coeffs = getattr(precond, "coeffs", None)
        info = coeffs.info if coeffs is not None else {}
        if info.get("cached"):
            phases.note(f"statistics loaded from the cache {info.get('cache_file')} (estimating them took "
                        f"{info.get('seconds', float('nan')):.1f} s)")
        log.metrics({"stats/seconds": stats_seconds,  # this run's cost: a cache hit's is its load time
                     **({"stats/denoiser_evals": info["denoiser_evals"]} if "denoiser_evals" in info else {}),
                     **({"stats/cached": float(info["cached"]), "stats/estimate_seconds": info["seconds"]}
                        if "cached" in info and "seconds" in info else {})}, step=0)
    else:
        precond.restore_statistics(teacher, resumed.get("statistics"))
        stats_seconds = float(resumed.get("stats_seconds", 0.0))
    check_contract(precond)              # again with its statistics (cheap: milliseconds)
    precond.tabulate(grid)
    if resumed is None and d.main:
        gaps = teacher.analytic and precond.denoiser_form and exp.gap_pairs
        with phases("diagnostics", "coefficient plots" + (" and exact consistency gaps" if gaps else "")):
            label = f"{run_name} | {run_label(precond, exp.seed)} | {type(teacher).__name__}"
            log.figure(plots.coefficients(precond, grid, title=label), "coefficients.png")
            coeffs = getattr(precond, "coeffs", None)
            if coeffs is not None:
                log.figure(plots.ode_coefficients(coeffs, title=label), "l_s_curves.png")
            if gaps:
                estimator = GapEstimator(teacher, num_samples=2048)
                for t, s in exp.gap_pairs:
                    row = estimator.row(type(precond).__name__, precond, float(t), float(s))
                    log.metrics({f"gap_t/{t}_to_{s}": row.gap_t, f"gap_s/{t}_to_{s}": row.gap_s}, step=0)

    # (torch.optim imports torch._dynamo when the optimiser is made: about 1 s of this phase)
    with phases("student", "the student on its device, its EMA target and the optimiser"):
        if exp.init_from_teacher and hasattr(teacher, "net") and resumed is None:
            from precondlab.students.songunet import init_from_teacher
            copied, _ = init_from_teacher(student, teacher.net)
            source = teacher.net.state_dict()
            fraction = sum(source[k].numel() for k in copied) / max(1, sum(v.numel() for v in source.values()))
            log.params({"student_init_copied_tensors": len(copied), "student_init_copied_fraction": round(fraction, 4)})
            if fraction < 0.9:  # e.g. a CIFAR-size student on a small teacher: CTM's init did not happen
                warnings.warn(f"init_from_teacher copied only {100 * fraction:.1f}% of the teacher's weights into "
                              f"the student: give the student the teacher's architecture (student.songunet.*), "
                              f"or set experiment.init_from_teacher = False to silence this", stacklevel=2)
        student = student.to(device)
        if device.type == "cuda" and len(teacher.shape) == 3:
            student = student.to(memory_format=torch.channels_last)
        use_bf16 = exp.amp == "bf16" or (exp.amp == "auto" and device.type == "cuda")
        target = copy.deepcopy(student).requires_grad_(False).eval()   # evaluated and used as the CTM target
        if exp.compile:  # after the deepcopy: the EMA target gets its own compiled callable
            compiled = compile_in_place((student, target, getattr(teacher, "net", None)),
                                        exp.compile_backend, exp.compile_mode)
            if resumed is None:
                log.params({"compiled_modules": compiled})
        # foreach: one kernel per update for all tensors (PyTorch's default on CUDA only; on the CPU the
        # per-tensor loop costs more than the arithmetic for a small student)
        optimizer = torch.optim.Adam(student.parameters(), lr=exp.lr, foreach=True)
    # Each rank draws its own data and noise; rank 0's streams are a single process's.
    state = TrainState(student, target, optimizer,
                       noise_gen=torch.Generator(device=device).manual_seed(distributed.stream_seed(exp.seed, d.rank)),
                       data_gen=torch.Generator().manual_seed(distributed.stream_seed(exp.seed + 1, d.rank)))
    if resumed is None:
        log.params({"student_parameters": sum(p.numel() for p in student.parameters())})
    else:
        state.load_state_dict(resumed)
        _restore_streams(state, resumed, d, exp.seed, log)
        if hasattr(exp.evaluator, "load_state_dict"):
            exp.evaluator.load_state_dict(resumed.get("evaluator") or {})
    model = student
    if d.active:  # gradients averaged over the ranks; the EMA target is updated alike on each
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    settings = StepSettings(teacher, precond, objective, exp.batch_size // d.world, device, use_bf16,
                            exp.grad_clip, exp.ema_decay, model=model)
    elapsed_before = float(resumed.get("elapsed", 0.0)) if resumed else 0.0

    def evaluate(step):
        check_ema(state)
        metrics = exp.evaluator(precond, target, device=device)    # sharded over the ranks, gathered
        state.history.append((step, metrics))
        log.metrics(metrics, step)
        if report is not None:      # every rank (Ray Train's report is called by all workers)
            report(step, metrics)

    def save_checkpoint():
        check_finite(state)
        check_ema(state)
        distributed.check_identical(d, student, target)
        streams = d.gather(checkpoint.capture_rng(state.generators()))   # every rank's, for an exact resume
        if not d.main:
            return
        evaluator_state = exp.evaluator.state_dict() if hasattr(exp.evaluator, "state_dict") else {}
        ckpts.save({**state.state_dict(), "rng": streams[0], "rng_per_rank": streams, "world_size": d.world,
                    "statistics": precond.statistics(), "bindings": bindings, "evaluator": evaluator_state,
                    "stats_seconds": stats_seconds, "elapsed": elapsed_before + time.perf_counter() - start})

    if resumed is None:
        with phases("first evaluation"):
            evaluate(0)
    bar = Bar(exp.steps, run_name, "step", initial=state.step, stream=phases.stream,
              enabled=phases.enabled)
    train_start, steps_before = time.perf_counter(), state.step
    guard.deferring = True  # a signal now ends the step, then the run (with a checkpoint)
    try:
        while state.step < exp.steps:
            loss, logs = train_step(state, settings)
            step = state.step
            if step % 50 == 0 or step == exp.steps:
                check_finite(state)
                log.metrics({"loss": float(loss), **{k: float(v) for k, v in logs.items()}}, step)
            bar.update(1, **({"loss": f"{float(loss):.3g}"} if step % 50 == 0 else {}))
            if step % exp.eval_every == 0 or step == exp.steps:
                check_finite(state)
                evaluate(step)
            # Wall-clock checkpoints and signals: ranks agree on them every 10 steps (one tiny
            # all-reduce; a single process looks every step), so that all act at the same step.
            by_time, stop = (d.any(ckpts.due_by_time(), guard.requested is not None)
                             if not d.active or step % 10 == 0 or step == exp.steps else (False, False))
            if ckpts.due_by_step(step) or by_time or step == exp.steps:
                save_checkpoint()
            if stop:
                raise Interrupted(guard.requested or signal.SIGTERM, step)
    except Interrupted as exc:
        if exc.step is not None and ckpts.last_step != state.step:  # the step ended cleanly: keep it
            save_checkpoint()
        exc.step = state.step
        raise
    finally:
        guard.deferring = False
        bar.close()
    train_seconds = time.perf_counter() - train_start
    phases.seconds["training"] = train_seconds

    with phases("artifacts", "operative config, plots, samples"):
        log.text(gin.operative_config_str(), "operative_config.gin")
        # every rank: the samples are sharded (on ranks other than 0 the logger keeps nothing)
        exp.evaluator.log_artifacts(log, precond, target, device, title=f"{run_name} | "
                                    f"{run_label(precond, exp.seed)} | EMA student at step {state.step}")
    final = dict(state.history[-1][1])
    seconds = elapsed_before + time.perf_counter() - start + phases.seconds.get("setup", 0.0)
    summary = {"summary/seconds": seconds, "summary/train_seconds": train_seconds,
               "summary/steps_per_second": (state.step - steps_before) / max(train_seconds, 1e-9),
               "summary/stats_share": stats_seconds / seconds,
               **{f"time/{name}": value for name, value in phases.seconds.items()}}
    log.metrics(summary, exp.steps)
    final.update(summary)
    if not all(math.isfinite(v) for v in final.values()):
        raise NonFiniteLossError(f"non-finite final metrics {final}")
    info = {f"eval.{k}": v for k, v in (getattr(exp.evaluator, "info", None) or {}).items()}
    return RunResult(log.run_id, "FINISHED", final, state.history, seconds, stats_seconds, None, info)
