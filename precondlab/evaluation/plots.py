"""Figures logged with every run: l/s curves, f/g coefficients, sample scatter plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _title(fig, title: str) -> None:
    if title:
        fig.suptitle(title, fontsize=9)


def ode_coefficients(coeffs, title: str = ""):
    """l(t) and s(t) of the generalized ODE against t (log scale)."""
    t = torch.exp(-coeffs.lam)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, values, label in ((axes[0], coeffs.l, "l_t"), (axes[1], coeffs.s, "s_t")):
        ax.plot(t, values, marker=".", ms=3)
        ax.set_xscale("log")
        ax.set_xlabel("time t (noise level)")
        ax.set_ylabel(label)
        ax.set_title(f"{label} of the generalized teacher ODE")
        ax.grid(alpha=0.3)
    _title(fig, title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def coefficients(precond, grid: torch.Tensor, title: str = ""):
    """f(t, s) and g(t, s) against s, one curve per t on the training grid (CTM's (s/t, 1-s/t) dashed)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    idx = sorted({0, len(grid) // 4, len(grid) // 2, 3 * len(grid) // 4})
    for i in idx:
        t = grid[i]
        s = grid[i:]
        tt = t.expand_as(s)
        f, g = precond.f(tt, s), precond.g(tt, s)
        (line,) = axes[0].plot(s, f, label=f"t={float(t):.3g}")
        axes[1].plot(s, g, color=line.get_color())
        axes[0].plot(s, s / t, ls="--", color=line.get_color(), alpha=0.4)
        axes[1].plot(s, 1 - s / t, ls="--", color=line.get_color(), alpha=0.4)
    for ax, name in zip(axes, ("f(t, s)", "g(t, s)")):
        ax.set_xscale("log")
        ax.set_xlabel("jump target s")
        ax.set_ylabel(name)
        ax.set_title(f"{name} ({type(precond).__name__}; dashed: CTM)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="jump from", title_fontsize=7)
    _title(fig, title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def samples(evaluator, precond, net, device="cpu", title: str = ""):
    """First two coordinates: data, the teacher's exact flow, and the student at each NFE."""
    panels = [("data", evaluator.data)]
    if evaluator.exact is not None:
        panels.append(("teacher (exact flow)", evaluator.exact))
    with torch.no_grad():
        for nfe in evaluator.nfes:
            panels.append((f"student, NFE {nfe}", evaluator.samples(precond, net, nfe, device)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3), sharex=True, sharey=True)
    for ax, (name, x) in zip(axes, panels):
        x = x.reshape(x.shape[0], -1)
        ax.scatter(x[:, 0], x[:, 1 if x.shape[1] > 1 else 0], s=2, alpha=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("x[0]")
    axes[0].set_ylabel("x[1]")
    _title(fig, title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def two_step_vs_time(errors: dict, training_grid, default_times=None, title: str = ""):
    """traj_mse of the 2-step student sigma_max -> tau -> sigma_min against tau, training-grid times
    marked: an accurate student gives a smooth curve, one that learned only its grid gives spikes."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    taus, values = list(errors), list(errors.values())
    ax.plot(taus, values, marker=".", ms=4, label="2-step error")
    on_grid = [(t, v) for t, v in errors.items() if any(abs(t - g) <= 1e-9 * g for g in training_grid)]
    if on_grid:
        ax.scatter(*zip(*on_grid), color="C3", zorder=3, s=16, label="training-grid time")
    if default_times is not None and len(default_times) == 3:
        ax.axvline(default_times[1], color="gray", ls="--", lw=1, label=f"evaluated nfe2 time {default_times[1]:.4g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("intermediate time tau")
    ax.set_ylabel("traj_mse of sigma_max -> tau -> sigma_min")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _title(fig, title)
    fig.tight_layout()
    plt.close(fig)
    return fig
