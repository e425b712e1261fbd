"""The training step and the state a run carries from step to step (and through a checkpoint).

``train_step`` is one optimiser step: a batch of data, the objective's loss (its own draws of
times and noise), gradients, clipping, Adam, the EMA target. It is the only step there is:
``experiment.run`` calls it, and so does ``benchmarks/gpu_image.py``.

Numerical faults: on the CPU a non-finite loss or gradient stops the run at that step. On CUDA
the check would cost a host sync per step, so the step instead keeps a device-side flag: a
non-finite step updates neither the student (its gradients are zeroed) nor the EMA target, and
the flag is read every 50 steps and before every evaluation and checkpoint, so no checkpoint is
ever written after a non-finite step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from precondlab.errors import NonFiniteLossError
from precondlab.teachers.base import sample_data


@dataclass
class TrainState:
    """Everything that changes during training; ``state_dict`` is what a checkpoint holds of it."""

    student: torch.nn.Module
    target: torch.nn.Module            # EMA of the student: the CTM target and the evaluated network
    optimizer: torch.optim.Optimizer
    noise_gen: torch.Generator         # the objective's draws (times, noise, DSM), on the device
    data_gen: torch.Generator          # the data order (CPU)
    step: int = 0
    history: list = field(default_factory=list)   # [(step, metrics)] of every evaluation
    bad: torch.Tensor | None = None    # CUDA: a non-finite step happened since the last check
    first_bad: torch.Tensor | None = None

    def generators(self) -> dict:
        return {"noise": self.noise_gen, "data": self.data_gen}

    def state_dict(self) -> dict:
        return {"step": self.step, "student": self.student.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "history": [[step, dict(metrics)] for step, metrics in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = [(int(step), dict(metrics)) for step, metrics in state["history"]]


@dataclass
class StepSettings:
    """What one step needs besides the state (the experiment's components and settings)."""

    teacher: object
    precond: object
    objective: object
    batch_size: int
    device: torch.device
    use_bf16: bool = False
    grad_clip: float = 1.0             # max gradient norm; 0: no clipping
    ema_decay: float = 0.999
    defer_checks: bool | None = None   # flag non-finite steps on the device (default: on CUDA)
    model: torch.nn.Module | None = None   # what the loss calls: the student, or its DDP wrapper

    def __post_init__(self):
        if self.defer_checks is None:
            self.defer_checks = self.device.type == "cuda"


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":  # from pinned memory the copy is queued, not waited for
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def train_step(state: TrainState, s: StepSettings) -> tuple[torch.Tensor, dict]:
    """One optimiser step; returns the detached loss and the objective's logs."""
    x0, labels = sample_data(s.teacher, s.batch_size, state.data_gen)   # labels: a conditional teacher's
    x0 = _to_device(x0.to(torch.float32), s.device)
    given = {} if labels is None else {"class_labels": _to_device(labels.to(torch.float32), s.device)}
    state.optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.use_bf16)
    args = (s.model or state.student, state.target, s.precond, s.teacher, x0, state.noise_gen)
    if hasattr(s.objective, "backward"):   # precondlab's objectives (and their subclasses) save a backward pass
        loss, logs = s.objective.backward(*args, autocast=autocast, **given)
    else:                                  # the registry's contract: objective(...) -> (loss, logs)
        with autocast:
            loss, logs = s.objective(*args, **given)
        loss.backward()
        loss = loss.detach()
    params = [p for p in state.student.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip if s.grad_clip > 0 else float("inf"))
    step = state.step + 1
    if not s.defer_checks:
        if not bool(torch.isfinite(loss)):
            raise NonFiniteLossError(f"non-finite loss at step {step}")
        if not bool(torch.isfinite(grad_norm)):
            raise NonFiniteLossError(f"non-finite gradient at step {step} (the loss was finite)")
        ema_weight = 1 - s.ema_decay
    else:
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        for p in params:  # a non-finite step moves nothing: zero gradients (Adam then only decays its moments)
            p.grad = torch.where(finite, p.grad.nan_to_num(0.0, 0.0, 0.0), torch.zeros_like(p.grad))
        bad = ~finite
        state.first_bad = torch.where(bad & (state.first_bad < 0), step, state.first_bad) \
            if state.first_bad is not None else torch.where(bad, step, -1)
        state.bad = bad if state.bad is None else state.bad | bad
        ema_weight = (1 - s.ema_decay) * finite.to(loss.dtype)      # and no EMA update from it
    state.optimizer.step()
    with torch.no_grad():
        targets, sources = list(state.target.parameters()), list(state.student.parameters())
        if isinstance(ema_weight, float):
            torch._foreach_lerp_(targets, sources, ema_weight)
        else:
            for p_t, p in zip(targets, sources):
                p_t.lerp_(p, ema_weight)
    state.step = step
    return loss, logs


def check_finite(state: TrainState) -> None:
    """Read the CUDA step flag (a host sync) and raise if a non-finite step happened since the last read."""
    if state.bad is not None and bool(state.bad):
        first = int(state.first_bad)
        raise NonFiniteLossError(f"non-finite loss or gradient at step {first} (found at step {state.step}; "
                                 f"no update was taken from it)")


def check_ema(state: TrainState) -> None:
    """The EMA target (what is evaluated and checkpointed) must be finite."""
    if not all(bool(torch.isfinite(p).all()) for p in state.target.parameters()):
        raise NonFiniteLossError(f"non-finite EMA weights at step {state.step}")


__all__ = ["StepSettings", "TrainState", "check_ema", "check_finite", "train_step"]
