"""Distillation objectives: CTM (any jump t -> s) and plain consistency distillation (CM).

Both follow the math note, section 5. Time indices run over a Karras grid t_0 = sigma_max >
... > t_{N-1} = sigma_min; "the teacher target" is the teacher ODE solved by Heun steps along
that grid.
"""

from __future__ import annotations

import torch

from precondlab.registry import register
from precondlab.schedule import _bcast
from precondlab.teachers.solvers import euler_step, heun_step
from precondlab.training.losses import l2


def teacher_steps(teacher, x, grid, start, k, max_k: int, method="heun"):
    """Per-example k_i solver steps along the grid from index start_i (k may differ per example).

    Loops max_k times with masking rather than reading k.max() from the device: no host sync.
    """
    step = heun_step if method == "heun" else euler_step
    last = len(grid) - 1
    for j in range(max_k):
        active = (j < k).reshape(-1, *([1] * (x.ndim - 1)))
        t, s = grid[(start + j).clamp(max=last)], grid[(start + j + 1).clamp(max=last)]
        x = torch.where(active, step(teacher, x, t, s), x)
    return x


class Objective:
    def __init__(self,
                 num_timesteps: int = 18,       # N: Karras grid points (CTM CIFAR-10: 18)
                 teacher_solver: str = "heun",  # solver for the teacher target
                 distance=l2,                   # per-example distance, e.g. @loss.pseudo_huber
                 dsm_weight: float = 1.0,       # DSM regulariser weight (0 disables)
                 dsm_adaptive: bool = True,     # scale DSM by the ratio of last-layer gradient norms
                 dsm_p_mean: float = -1.2,      # EDM's log-normal sigma for the DSM term
                 dsm_p_std: float = 1.2):
        if teacher_solver not in ("heun", "euler"):
            raise ValueError(f"teacher_solver must be 'heun' or 'euler', got {teacher_solver!r}")
        self.num_timesteps, self.teacher_solver, self.distance = num_timesteps, teacher_solver, distance
        self.dsm_weight, self.dsm_adaptive = dsm_weight, dsm_adaptive
        self.dsm_p_mean, self.dsm_p_std = dsm_p_mean, dsm_p_std

    def grid(self, schedule, device, dtype):
        return schedule.karras(self.num_timesteps).to(device=device, dtype=dtype)

    def dsm_loss(self, student, precond, x0, generator):
        """EDM denoising loss on D_theta(x, sigma, sigma), weight (sigma^2 + sd^2)/(sigma sd)^2."""
        sched = precond.schedule
        rnd = torch.randn(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
        sigma = (rnd * self.dsm_p_std + self.dsm_p_mean).exp().clamp(sched.sigma_min, sched.sigma_max)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        denoised = precond.network_output(student, x0 + _bcast(sigma, x0) * noise, sigma, sigma)
        sd = precond.sigma_data
        weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
        return (weight * l2(denoised, x0)).mean()

    def combine(self, student, precond, main, x0, generator, logs):
        """main + DSM, the DSM weight adapted as in CTM when asked."""
        if not (self.dsm_weight > 0 and precond.denoiser_form):
            return main
        dsm = self.dsm_loss(student, precond, x0, generator)
        weight = torch.as_tensor(self.dsm_weight, dtype=main.dtype)
        last = getattr(student, "last_layer", None)
        if self.dsm_adaptive and last is not None and main.requires_grad:
            g_main = torch.autograd.grad(main, last(), retain_graph=True)[0].norm()
            g_dsm = torch.autograd.grad(dsm, last(), retain_graph=True)[0].norm()
            weight = weight * (g_main / (g_dsm + 1e-8)).detach()
        logs["loss_dsm"] = dsm.detach()
        logs["dsm_weight"] = weight.detach()
        return main + weight * dsm


@register("objective", "ctm")
class CTMObjective(Objective):
    """CTM: d(G_ema(G_theta(x_t,t,s),s,eps), G_ema(G_sg(x_u,u,s),s,eps)), x_u from k teacher steps."""

    def __init__(self, max_jump: int | None = None, **kwargs):   # K: largest k (default N - 1)
        super().__init__(**kwargs)
        self.max_jump = max_jump

    def __call__(self, student, target, precond, teacher, x0, generator):
        if not precond.uses_s:
            raise ValueError(f"{type(precond).__name__} pins s to sigma_min; train it with objective.cm")
        B, dev, dt = x0.shape[0], x0.device, x0.dtype
        grid = self.grid(precond.schedule, dev, dt)
        N = grid.numel()
        K = min(self.max_jump or N - 1, N - 1)
        # k ~ p(k) ∝ k on {1..K}; n ~ U{0..N-1-k}; s index ~ U{n+k..N-1} (math note, section 5).
        k = torch.multinomial(torch.arange(1, K + 1, dtype=dt, device=dev), B, replacement=True, generator=generator) + 1
        n = (torch.rand(B, generator=generator, device=dev, dtype=dt) * (N - k)).long()
        m = n + k + (torch.rand(B, generator=generator, device=dev, dtype=dt) * (N - n - k)).long()
        t, u, s = grid[n], grid[n + k], grid[m]
        eps = torch.full_like(t, precond.schedule.sigma_min)

        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=dt)
        x_t = x0 + _bcast(t, x0) * noise
        with torch.no_grad():
            x_u = teacher_steps(teacher, x_t, grid, n, k, K, self.teacher_solver)
        with precond.on_grid():  # t, u, s, eps are grid points: (f, g) looked up on the device
            with torch.no_grad():
                target_s = precond.jump(student, x_u, u, s)        # G_sg(x_u, u, s)
                target_0 = precond.jump(target, target_s, s, eps)  # then G_ema(., s, eps)
            estimate_s = precond.jump(student, x_t, t, s)
            estimate_0 = precond.jump(target, estimate_s, s, eps)  # gradient flows through the input
        main = self.distance(estimate_0, target_0).mean()
        logs = {"loss_ctm": main.detach()}
        return self.combine(student, precond, main, x0, generator, logs), logs


@register("objective", "cm")
class CMObjective(Objective):
    """Consistency distillation: d(G_theta(x_t, t, eps), G_ema(x_u, u, eps)), one teacher step t -> u."""

    def __call__(self, student, target, precond, teacher, x0, generator):
        B, dev, dt = x0.shape[0], x0.device, x0.dtype
        grid = self.grid(precond.schedule, dev, dt)
        N = grid.numel()
        n = (torch.rand(B, generator=generator, device=dev, dtype=dt) * (N - 1)).long()
        t, u = grid[n], grid[n + 1]
        eps = torch.full_like(t, precond.schedule.sigma_min)
        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=dt)
        x_t = x0 + _bcast(t, x0) * noise
        with torch.no_grad():
            x_u = teacher_steps(teacher, x_t, grid, n, torch.ones_like(n), 1, self.teacher_solver)
        with precond.on_grid():  # t, u, eps are grid points
            with torch.no_grad():
                target_0 = precond.jump(target, x_u, u, eps)
            main = self.distance(precond.jump(student, x_t, t, eps), target_0).mean()
        logs = {"loss_cm": main.detach()}
        return self.combine(student, precond, main, x0, generator, logs), logs
