"""Teacher ODE solvers: Euler and Heun on a time grid, and a fine RK4 reference flow.

The reference integrator works in lambda-time, where the EDM ODE reads dx/dlambda = D - x and is
smooth across the whole range; each example may have its own (t, s).
"""

from __future__ import annotations

import torch

from precondlab.labels import with_labels
from precondlab.schedules import _bcast


def euler_step(teacher, x, t, s, class_labels=None):
    return x + _bcast(s - t, x) * with_labels(teacher.velocity, x, t, class_labels=class_labels)


def heun_step(teacher, x, t, s, class_labels=None):
    """EDM's Heun (2nd-order) step from t to s; s must be > 0 for the corrector."""
    d_t = with_labels(teacher.velocity, x, t, class_labels=class_labels)
    x_euler = x + _bcast(s - t, x) * d_t
    d_s = with_labels(teacher.velocity, x_euler, s, class_labels=class_labels)
    return x + _bcast(s - t, x) * 0.5 * (d_t + d_s)


def solve(teacher, x, ts, method: str = "heun", class_labels=None):
    """Integrate from ts[0] down through every ts[i] (shared grid for the batch)."""
    step = {"heun": heun_step, "euler": euler_step}[method]
    for t, s in zip(ts[:-1], ts[1:]):
        x = step(teacher, x, t, s, class_labels)
    return x


def reference_flow(teacher, x, t, s, steps: int = 256):
    """Phi_{t->s}(x): RK4 in lambda with `steps` steps per example ("exact" flow for analytic teachers)."""
    dtype = x.dtype
    x = x.double()
    sched = teacher.schedule
    t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
    s = torch.as_tensor(s, dtype=torch.float64).expand(x.shape[0])
    lam, lam_end = sched.lam(t), sched.lam(s)
    h = (lam_end - lam) / steps

    def rhs(x, lam):
        # dx/dlambda for x_t = alpha x0 + sigma eps reduces to D - x in the EDM (alpha = 1) case.
        return teacher.denoise(x, sched.t_of_lam(lam)) - x

    hb = _bcast(h, x)
    for i in range(steps):
        lam_i = lam + i * h
        k1 = rhs(x, lam_i)
        k2 = rhs(x + 0.5 * hb * k1, lam_i + 0.5 * h)
        k3 = rhs(x + 0.5 * hb * k2, lam_i + 0.5 * h)
        k4 = rhs(x + hb * k3, lam_i + h)
        x = x + hb / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x.to(dtype)
