"""Distillation objectives: CTM (any jump t -> s) and plain consistency distillation (CM).

Both follow the math note, section 5, and read like EDM's loss: ``sample`` draws a batch's
random choices (which grid times, which noise), ``loss`` turns them into the loss, and
``__call__`` is the two in a row plus the DSM regulariser. Time indices run over a Karras grid
t_0 = sigma_max > ... > t_{N-1} = sigma_min; "the teacher target" is the teacher ODE solved by
Heun steps along that grid. The tests hold each against a per-example re-implementation and
the sampled indices against the distribution written here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from precondlab import registry, validation
from precondlab.labels import with_labels
from precondlab.registry import register
from precondlab.schedules import _bcast
from precondlab.teachers.solvers import euler_step, heun_step
from precondlab.training.losses import l2


def teacher_steps(teacher, x, grid, start, k, max_k: int, method="heun", masked: bool | None = None,
                  class_labels=None):
    """Per-example k_i solver steps along the grid from index start_i (k may differ per example).

    On an accelerator: max_k masked steps over the whole batch, so that k is never read from the
    device (no host sync). On the CPU, where reading k costs nothing, the examples are ordered by
    k and step j moves only the k_i > j still moving: the same numbers with a third fewer rows
    for CTM's p(k) ∝ k (E[k] = 11.7 of 17 on N = 18). ``masked`` chooses a way (default: by device).
    ``class_labels`` (a conditional teacher's, one row per example) go with their examples.
    """
    step = heun_step if method == "heun" else euler_step
    if not (x.device.type != "cpu" if masked is None else masked):
        order = torch.argsort(k, descending=True)
        moving = (k[order][None, :] > torch.arange(max_k, device=k.device)[:, None]).sum(1).tolist()
        xs, first = x[order], start[order]
        ys = class_labels[order] if class_labels is not None else None
        for j, count in enumerate(moving):
            if count == 0:
                break
            xs[:count] = step(teacher, xs[:count], grid[first[:count] + j], grid[first[:count] + j + 1],
                              ys[:count] if ys is not None else None)
        return torch.empty_like(x).index_copy_(0, order, xs)
    last = len(grid) - 1
    for j in range(max_k):
        active = (j < k).reshape(-1, *([1] * (x.ndim - 1)))
        t, s = grid[(start + j).clamp(max=last)], grid[(start + j + 1).clamp(max=last)]
        x = torch.where(active, step(teacher, x, t, s, class_labels), x)
    return x


@dataclass
class JumpDraw:
    """One batch's random choices, as indices into the Karras grid (t = grid[n], u = grid[n + k],
    s = grid[m]) and the noise of x_t = x_0 + t * noise."""

    n: torch.Tensor
    k: torch.Tensor
    m: torch.Tensor
    noise: torch.Tensor


@dataclass
class DSMDraw:
    """The DSM regulariser's noise level per example and its noise."""

    sigma: torch.Tensor
    noise: torch.Tensor


class Objective:
    def __init__(self,
                 num_timesteps: int = 18,       # N: Karras grid points (CTM CIFAR-10: 18)
                 teacher_solver: str = "heun",  # solver for the teacher target
                 distance=l2,                   # per-example distance, e.g. @loss.pseudo_huber
                 dsm_weight: float = 1.0,       # DSM regulariser weight (0 disables)
                 dsm_adaptive: bool = True,     # scale DSM by the ratio of last-layer gradient norms
                 dsm_p_mean: float = -1.2,      # EDM's log-normal sigma for the DSM term
                 dsm_p_std: float = 1.2):
        name = registry.name_of(self)
        if validation.positive_int(f"{name}.num_timesteps", num_timesteps) < 2:
            raise validation.SettingError(f"{name}.num_timesteps = {num_timesteps!r}: a Karras grid needs at least 2")
        validation.one_of(f"{name}.teacher_solver", teacher_solver, ("heun", "euler"))
        validation.nonnegative_float(f"{name}.dsm_weight", dsm_weight)
        validation.positive_float(f"{name}.dsm_p_std", dsm_p_std)
        if not callable(distance):
            raise validation.SettingError(f"{name}.distance = {distance!r}: must be a distance, e.g. @loss.l2")
        self.num_timesteps, self.teacher_solver, self.distance = num_timesteps, teacher_solver, distance
        self.dsm_weight, self.dsm_adaptive = dsm_weight, dsm_adaptive
        self.dsm_p_mean, self.dsm_p_std = dsm_p_mean, dsm_p_std

    def backward(self, student, target, precond, teacher, x0, generator, autocast=None, class_labels=None):
        """One batch's loss (returned detached, with the logs) and its gradient, added to the
        student's ``.grad``: what train_step calls. The forward passes run under ``autocast``;
        ``class_labels``: the batch's one-hot labels (a class-conditional teacher), one per example.

        The same numbers as ``__call__(...)[0].backward()``, with one backward pass fewer where the
        DSM weight is adaptive on a single process: the distillation term's full backward comes
        first, and its last-layer gradient is the weight's numerator (CTM's way, kept under DDP where
        that gradient is all-reduced first, takes it with autograd.grad through the EMA target and
        then backpropagates through it all again: 6% of a toy step)."""
        autocast = autocast or contextlib.nullcontext()
        last = getattr(student, "last_layer", None)     # None through a DDP wrapper: combine() does it
        deferred = (self.dsm_adaptive and self.dsm_weight > 0 and precond.denoiser_form and last is not None
                    and not (torch.distributed.is_available() and torch.distributed.is_initialized()))
        with autocast:
            main, logs = self.drawn_loss(student, target, precond, teacher, x0, generator, class_labels)
            if not deferred:
                loss = self.combine(student, precond, main, x0, generator, logs, class_labels=class_labels)
            else:
                dsm = self.dsm_loss(student, precond, x0, self.sample_dsm(x0, precond.schedule, generator),
                                    class_labels)
        if not deferred:
            loss.backward()
            return loss.detach(), logs
        before = last().grad.clone() if last().grad is not None else 0.0
        main.backward()
        g_main = last().grad - before
        g_dsm = torch.autograd.grad(dsm, last(), retain_graph=True)[0]
        weight = self.dsm_weight * (g_main.norm() / (g_dsm.norm() + 1e-8)).detach()
        (weight * dsm).backward()
        logs["loss_dsm"], logs["dsm_weight"] = dsm.detach(), weight.detach()
        return (main + weight * dsm).detach(), logs

    def grid(self, schedule, device, dtype):
        return schedule.karras(self.num_timesteps).to(device=device, dtype=dtype)

    def drawn_loss(self, student, target, precond, teacher, x0, generator, class_labels=None):
        """(distillation loss, logs) of one batch: its draws, then the loss (no DSM term yet)."""
        grid = self.grid(precond.schedule, x0.device, x0.dtype)
        draw = self.sample(x0, grid.numel(), generator)
        return self.loss(student, target, precond, teacher, x0, grid, draw, class_labels)

    def __call__(self, student, target, precond, teacher, x0, generator, class_labels=None):
        """(loss, logs) of one batch: the draws, the distillation loss, then the DSM term."""
        main, logs = self.drawn_loss(student, target, precond, teacher, x0, generator, class_labels)
        return self.combine(student, precond, main, x0, generator, logs, class_labels=class_labels), logs

    # -- the DSM regulariser (CTM) -------------------------------------------------------
    def sample_dsm(self, x0, schedule, generator) -> DSMDraw:
        """sigma ~ EDM's log-normal (p_mean, p_std), clamped to the schedule's range."""
        rnd = torch.randn(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
        sigma = (rnd * self.dsm_p_std + self.dsm_p_mean).exp().clamp(schedule.sigma_min, schedule.sigma_max)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return DSMDraw(sigma, noise)

    def dsm_loss(self, student, precond, x0, draw: DSMDraw, class_labels=None):
        """EDM denoising loss on D_theta(x, sigma, sigma), weight (sigma^2 + sd^2)/(sigma sd)^2."""
        sigma = draw.sigma
        x = x0 + _bcast(sigma, x0) * draw.noise
        denoised = with_labels(precond.network_output, student, x, sigma, sigma, class_labels=class_labels)
        sd = precond.sigma_data
        weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
        return (weight * l2(denoised, x0)).mean()

    def combine(self, student, precond, main, x0, generator, logs, dsm_draw: DSMDraw | None = None,
                class_labels=None):
        """main + DSM, the DSM weight adapted as in CTM when asked (``dsm_draw``: given draws instead
        of the generator's, e.g. one process's share of a batch)."""
        if not (self.dsm_weight > 0 and precond.denoiser_form):
            return main
        dsm = self.dsm_loss(student, precond, x0, dsm_draw or self.sample_dsm(x0, precond.schedule, generator),
                            class_labels)
        weight = torch.as_tensor(self.dsm_weight, dtype=main.dtype)
        last = getattr(getattr(student, "module", student), "last_layer", None)   # through a DDP wrapper
        if self.dsm_adaptive and last is not None and main.requires_grad:
            g_main = torch.autograd.grad(main, last(), retain_graph=True)[0]
            g_dsm = torch.autograd.grad(dsm, last(), retain_graph=True)[0]
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # the gradients of the global batch's losses (what one process with the whole batch
                # would see), so that the weight does not depend on how the batch is split
                both = torch.stack([g_main, g_dsm])
                torch.distributed.all_reduce(both)
                g_main, g_dsm = both / torch.distributed.get_world_size()
            weight = weight * (g_main.norm() / (g_dsm.norm() + 1e-8)).detach()
        logs["loss_dsm"] = dsm.detach()
        logs["dsm_weight"] = weight.detach()
        return main + weight * dsm


@register("objective", "ctm")
class CTMObjective(Objective):
    """CTM: d(G_ema(G_theta(x_t,t,s),s,eps), G_ema(G_sg(x_u,u,s),s,eps)), x_u from k teacher steps."""

    def __init__(self, max_jump: int | None = None, **kwargs):   # K: largest k (default N - 1)
        super().__init__(**kwargs)
        if max_jump is not None:
            validation.positive_int("objective.ctm.max_jump", max_jump)
        self.max_jump = max_jump

    def largest_jump(self, N: int) -> int:
        return min(self.max_jump or N - 1, N - 1)

    def sample(self, x0, N: int, generator) -> JumpDraw:
        """k ~ p(k) ∝ k on {1..K}; n ~ U{0..N-1-k}; m ~ U{n+k..N-1} (math note, section 5)."""
        B, dev, dt = x0.shape[0], x0.device, x0.dtype
        K = self.largest_jump(N)
        k = torch.multinomial(torch.arange(1, K + 1, dtype=dt, device=dev), B, replacement=True, generator=generator) + 1
        n = (torch.rand(B, generator=generator, device=dev, dtype=dt) * (N - k)).long()
        m = n + k + (torch.rand(B, generator=generator, device=dev, dtype=dt) * (N - n - k)).long()
        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=dt)
        return JumpDraw(n, k, m, noise)

    def loss(self, student, target, precond, teacher, x0, grid, draw: JumpDraw, class_labels=None):
        if not precond.uses_s:
            raise ValueError(f"{type(precond).__name__} pins s to sigma_min; train it with objective.cm")
        t, u, s = grid[draw.n], grid[draw.n + draw.k], grid[draw.m]
        eps = torch.full_like(t, precond.schedule.sigma_min)
        x_t = x0 + _bcast(t, x0) * draw.noise
        with torch.no_grad():
            x_u = teacher_steps(teacher, x_t, grid, draw.n, draw.k, self.largest_jump(grid.numel()),
                                self.teacher_solver, class_labels=class_labels)
        y = class_labels
        with precond.on_grid():  # t, u, s, eps are grid points: (f, g) looked up on the device
            with torch.no_grad():
                target_s = with_labels(precond.jump, student, x_u, u, s, class_labels=y)        # G_sg(x_u, u, s)
                target_0 = with_labels(precond.jump, target, target_s, s, eps, class_labels=y)  # then G_ema(., s, eps)
            estimate_s = with_labels(precond.jump, student, x_t, t, s, class_labels=y)
            # the gradient flows through estimate_s, the EMA target's input
            estimate_0 = with_labels(precond.jump, target, estimate_s, s, eps, class_labels=y)
        main = self.distance(estimate_0, target_0).mean()
        return main, {"loss_ctm": main.detach()}


@register("objective", "cm")
class CMObjective(Objective):
    """Consistency distillation: d(G_theta(x_t, t, eps), G_ema(x_u, u, eps)), one teacher step t -> u."""

    def sample(self, x0, N: int, generator) -> JumpDraw:
        """n ~ U{0..N-2}, k = 1 (u is the next grid time), m = N - 1 (s = eps)."""
        B, dev, dt = x0.shape[0], x0.device, x0.dtype
        n = (torch.rand(B, generator=generator, device=dev, dtype=dt) * (N - 1)).long()
        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=dt)
        return JumpDraw(n, torch.ones_like(n), torch.full_like(n, N - 1), noise)

    def loss(self, student, target, precond, teacher, x0, grid, draw: JumpDraw, class_labels=None):
        t, u = grid[draw.n], grid[draw.n + 1]
        eps = torch.full_like(t, precond.schedule.sigma_min)
        x_t = x0 + _bcast(t, x0) * draw.noise
        with torch.no_grad():
            x_u = teacher_steps(teacher, x_t, grid, draw.n, draw.k, 1, self.teacher_solver, class_labels=class_labels)
        with precond.on_grid():  # t, u, eps are grid points
            with torch.no_grad():
                target_0 = with_labels(precond.jump, target, x_u, u, eps, class_labels=class_labels)
            estimate_0 = with_labels(precond.jump, student, x_t, t, eps, class_labels=class_labels)
            main = self.distance(estimate_0, target_0).mean()
        return main, {"loss_cm": main.detach()}
