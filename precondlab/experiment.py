"""One run: config -> registry -> teacher/ODE/preconditioner/student -> training -> metrics -> MLflow.

``Experiment`` is the gin-configured description of a run; ``run(config)`` executes it and
is what `precondlab run` and every sweep trial call.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gin
import torch

from precondlab import plots, tracking
from precondlab.config import ConfigError, ParsedConfig
from precondlab.errors import NonFiniteLossError, UserInputError
from precondlab.fileio import atomic_write
from precondlab.gap import GapEstimator
from precondlab.metrics import Evaluator


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
    checkpoint_every: int = 1000
    gap_pairs: tuple = ((10.0, 1.0), (1.0, 0.1), (80.0, 0.002))   # logged once for analytic teachers
    device: str = "cpu"
    amp: str = "auto"                              # 'bf16' autocast, 'off', or 'auto' (bf16 on CUDA)
    init_from_teacher: bool = True                 # copy matching teacher tensors into the student (CTM)
    compile: bool = False                          # torch.compile student, EMA target and teacher network
    compile_backend: str = "inductor"              # torch.compile backend ('aot_eager': tracing only, no codegen)
    compile_mode: str | None = None                # e.g. 'max-autotune' (inductor only)
    name: str = ""                                 # MLflow run name (default: preconditioner + seed)
    evaluator: Evaluator = field(default_factory=Evaluator)


@dataclass
class RunResult:
    run_id: str
    status: str
    final: dict
    history: list                   # [(step, metrics)]
    seconds: float
    stats_seconds: float
    checkpoint: str | None


def flatten_operative(text: str) -> dict:
    """gin's config as flat params ('experiment.steps' -> '3000'), macros (%NAME) substituted."""
    params, macros = {}, {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or " = " not in line:
            continue
        key, value = (v.strip() for v in line.split(" = ", 1))
        (params if "." in key else macros)[key] = value
    for key, value in params.items():
        if value.startswith("%") and value[1:] in macros:
            params[key] = macros[value[1:]]
    return params


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


def _checkpoint(path: Path, step: int, student, target, optimizer) -> Path:
    with atomic_write(path) as tmp:  # a crash mid-write never clobbers the last good checkpoint
        torch.save({"step": step, "student": student.state_dict(), "target": target.state_dict(),
                    "optimizer": optimizer.state_dict()}, tmp)
    return path


def build(config: ParsedConfig | None = None) -> Experiment:
    """``Experiment()`` from gin's bindings. A missing dataset, checkpoint or weights file
    (``UserInputError``) keeps its own message; any other construction error becomes a
    ``ConfigError`` naming the config files."""
    try:
        return Experiment()
    except UserInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - gin wraps missing bindings and constructor errors
        origin = ", ".join(config.files) if config is not None and config.files else "config"
        raise ConfigError(f"{origin}: {str(exc).strip()}") from None


def run(config: ParsedConfig, tracking_uri: str | None = None, experiment_name: str = tracking.DEFAULT_EXPERIMENT,
        progress: bool = True, report: Callable[[int, dict], None] | None = None,
        parent_run_id: str | None = None, tags: dict | None = None, out_dir: str | Path | None = None) -> RunResult:
    """Run the experiment gin describes; every exception marks the MLflow run FAILED and is re-raised."""
    exp = build(config)
    client, uri, exp_id = tracking.connect(tracking_uri, experiment_name)
    name = exp.name or f"{type(exp.preconditioner).__name__}-seed{exp.seed}"
    log = tracking.RunLogger(client, exp_id, run_name=name, tags=tags, parent_run_id=parent_run_id)
    out = Path(out_dir or log.tmp)  # without out_dir, files live in MLflow only (a CIFAR checkpoint is ~1 GB)
    ckpt_path, last_good = out / "checkpoint.pt", None
    try:
        result = _train(exp, config, log, out, progress, report)
        log.end("FINISHED")
        if out_dir is None:
            result.checkpoint = log.artifact_location("checkpoints", ckpt_path.name)
        return result
    except BaseException as exc:
        if ckpt_path.exists():
            log.artifact(ckpt_path, "checkpoints")
            last_good = ckpt_path if out_dir is not None else log.artifact_location("checkpoints", ckpt_path.name)
        log.tag("error", f"{type(exc).__name__}: {exc}"[:5000])
        log.end("FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED")
        if isinstance(exc, NonFiniteLossError):
            raise NonFiniteLossError(f"{exc} (MLflow run {log.run_id} marked FAILED; last good checkpoint: "
                                     f"{last_good or 'none yet'})") from None
        raise
    finally:
        log.cleanup()


def _train(exp: Experiment, config: ParsedConfig, log, out: Path, progress: bool, report) -> RunResult:
    start = time.perf_counter()
    teacher, precond, objective = exp.teacher, exp.preconditioner, exp.objective
    device = torch.device(exp.device)
    torch.manual_seed(exp.seed)

    operative_before = gin.config_str()
    log.text(config.text, "config.gin")
    log.params({"teacher": type(teacher).__name__, "preconditioner": type(precond).__name__,
                **{f"precond.{k}": v for k, v in precond.describe().items()},
                **flatten_operative(operative_before)})

    # The evaluator first (fixed noise, teacher references, FID feature extractor and reference
    # statistics): a missing Inception file or dataset fails here, in seconds, not after the
    # statistics. The global RNG is forked so that its draws (clean-fid's latents when reference
    # statistics are computed rather than read from the cache) change nothing that follows.
    grid = objective.grid(teacher.schedule, "cpu", torch.float64)
    with torch.random.fork_rng(devices=[]):
        exp.evaluator.setup(teacher, grid)
    eval_info = getattr(exp.evaluator, "info", None)
    if eval_info:  # the same eval.* params log_artifacts logs at the end, so a failed run has them
        log.params({f"eval.{k}": v for k, v in eval_info.items()})

    # Statistics (Analytic-Precond) and the preconditioning's exact gaps, both logged once.
    t0 = time.perf_counter()
    precond.fit(teacher)
    stats_seconds = time.perf_counter() - t0
    coeffs = getattr(precond, "coeffs", None)
    info = coeffs.info if coeffs is not None else {}
    log.metrics({"stats/seconds": stats_seconds,  # this run's cost: a cache hit's is its load time
                 **({"stats/denoiser_evals": info["denoiser_evals"]} if "denoiser_evals" in info else {}),
                 **({"stats/cached": float(info["cached"]), "stats/estimate_seconds": info["seconds"]}
                    if "cached" in info and "seconds" in info else {})}, step=0)
    precond.tabulate(grid)
    log.figure(plots.coefficients(precond, grid), "coefficients.png")
    if coeffs is not None:
        log.figure(plots.ode_coefficients(coeffs), "l_s_curves.png")
    if teacher.analytic and precond.denoiser_form and exp.gap_pairs:
        gaps = GapEstimator(teacher, num_samples=2048)
        for t, s in exp.gap_pairs:
            row = gaps.row(type(precond).__name__, precond, float(t), float(s))
            log.metrics({f"gap_t/{t}_to_{s}": row.gap_t, f"gap_s/{t}_to_{s}": row.gap_s}, step=0)

    student = exp.student(dim=teacher.dim)
    if exp.init_from_teacher and hasattr(teacher, "net"):
        from precondlab.nets.songunet import init_from_teacher
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
    target = copy.deepcopy(student).requires_grad_(False)
    if exp.compile:  # after the deepcopy: the EMA target gets its own compiled callable
        compiled = compile_in_place((student, target, getattr(teacher, "net", None)),
                                    exp.compile_backend, exp.compile_mode)
        log.params({"compiled_modules": compiled})
    optimizer = torch.optim.Adam(student.parameters(), lr=exp.lr)
    gen = torch.Generator(device=device).manual_seed(exp.seed)
    data_gen = torch.Generator().manual_seed(exp.seed + 1)
    log.params({"student_parameters": sum(p.numel() for p in student.parameters())})

    history, ckpt_path, ckpt = [], out / "checkpoint.pt", None
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=exp.steps, desc=log.run.info.run_name, unit="it", dynamic_ncols=True)

    def evaluate(step):
        target.eval()
        metrics = exp.evaluator(precond, target, device=device)
        history.append((step, metrics))
        log.metrics(metrics, step)
        if report is not None:
            report(step, metrics)
        return metrics

    evaluate(0)
    train_start = time.perf_counter()
    bad = None
    for step in range(1, exp.steps + 1):
        x0 = teacher.sample_x0(exp.batch_size, data_gen).to(torch.float32)
        if device.type == "cuda":  # from pinned memory the copy is queued, not waited for
            x0 = x0.pin_memory().to(device, non_blocking=True)
        else:
            x0 = x0.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, logs = objective(student, target, precond, teacher, x0, gen)
        # On CUDA the finiteness check (a host sync) runs at log and checkpoint steps only; a
        # non-finite loss in between is remembered, so no checkpoint is ever written after one.
        bad = ~torch.isfinite(loss.detach()) if bad is None else bad | ~torch.isfinite(loss.detach())
        if device.type != "cuda" or step % 50 == 0 or step % exp.checkpoint_every == 0 or step == exp.steps:
            if bool(bad):
                raise NonFiniteLossError(f"non-finite loss at step {step}" if device.type != "cuda"
                                         else f"non-finite loss at or before step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if exp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), exp.grad_clip)
        optimizer.step()
        with torch.no_grad():
            for p_t, p in zip(target.parameters(), student.parameters()):
                p_t.lerp_(p, 1 - exp.ema_decay)
        if step % 50 == 0 or step == exp.steps:
            log.metrics({"loss": float(loss.detach()), **{k: float(v) for k, v in logs.items()}}, step)
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3g}")
        if step % exp.eval_every == 0 or step == exp.steps:
            evaluate(step)
        if step % exp.checkpoint_every == 0 or step == exp.steps:
            ckpt = _checkpoint(ckpt_path, step, student, target, optimizer)
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - train_start

    log.artifact(ckpt, "checkpoints")
    log.text(gin.operative_config_str(), "operative_config.gin")
    exp.evaluator.log_artifacts(log, precond, target, device)
    final = dict(history[-1][1])
    seconds = time.perf_counter() - start
    summary = {"summary/seconds": seconds, "summary/train_seconds": train_seconds,
               "summary/stats_share": stats_seconds / seconds}
    log.metrics(summary, exp.steps)
    final.update(summary)
    if not all(math.isfinite(v) for v in final.values()):
        raise NonFiniteLossError(f"non-finite final metrics {final}")
    return RunResult(log.run_id, "FINISHED", final, history, seconds, stats_seconds, str(ckpt))
