"""Why Analytic-Precond's backward form trains like CTM on the toy (issue 9, part 2).

Prints, for CTM's jump distribution on the N-point training grid (the math note, section 5):

1. how often training draws each jump target s, and how much an error at s still weighs in the
   loss after the target network's outer jump s -> eps (|J|^2/d of the teacher's exact flow
   Phi_{s->eps}, by an exact JVP through the RK4 flow; mean and median over x_s ~ p_s);
2. the backward and forward forms' (f, g) against CTM's (s/t, 1 - s/t) on the jumps that carry
   the loss, and their relative difference averaged with the training distribution and weights;
3. the cosine and norm ratio between each form's and CTM's loss gradient, same student, same
   batch (DSM off, so that only the preconditioning differs).

    .venv/bin/python benchmarks/backward_vs_ctm.py [--samples 4096] [--checkpoint PATH]

``--checkpoint`` takes a run's checkpoint (its EMA target, e.g. the summary's `checkpoint` row of
`precondlab run gin/toy_ctm.gin`) for part 3; without it, a freshly initialised student.
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch.func import jvp

from precondlab.odes.analytic import AnalyticODE
from precondlab.preconditioners.analytic import AnalyticPrecond
from precondlab.preconditioners.ctm import CTMPrecond
from precondlab.students.mlp import MLPStudent
from precondlab.teachers.gmm import GMMTeacher
from precondlab.teachers.solvers import reference_flow
from precondlab.training.objectives import CTMObjective


def jump_probabilities(N: int, K: int) -> torch.Tensor:
    """P[n, m]: probability that a training example jumps from t_n to s = t_m."""
    P = torch.zeros(N, N, dtype=torch.float64)
    Z = K * (K + 1) / 2
    for k in range(1, K + 1):
        for n in range(N - k):
            for m in range(n + k, N):
                P[n, m] += k / Z / (N - k) / (N - n - k)
    return P


def outer_jump_weight(teacher, s: float, samples: int, gen) -> tuple[float, float]:
    """Mean and median of |J v|^2/d for v ~ N(0, I), J the Jacobian of Phi_{s->eps} at x_s ~ p_s."""
    eps = teacher.schedule.sigma_min
    if s <= eps:
        return 1.0, 1.0
    x0 = teacher.sample_x0(samples, gen)
    x_s = x0 + s * torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    v = torch.randn(x_s.shape, generator=gen, dtype=x_s.dtype)
    _, jv = jvp(lambda x: reference_flow(teacher, x, s, eps, 96), (x_s,), (v,))
    q = (jv ** 2).sum(-1) / teacher.dim
    return float(q.mean()), float(q.median())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--num-timesteps", type=int, default=18)
    ap.add_argument("--checkpoint", help="a toy run's checkpoint.pt (its EMA target is used in part 3)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    teacher = GMMTeacher(dim=8, num_components=6, mean_spread=0.5, component_std=0.05, seed=0)
    N = args.num_timesteps
    objective = CTMObjective(num_timesteps=N, dsm_weight=0.0)
    grid = objective.grid(teacher.schedule, "cpu", torch.float64)
    P = jump_probabilities(N, objective.largest_jump(N))
    forms = {form: AnalyticPrecond(ode=AnalyticODE(), form=form).fit(teacher).tabulate(grid)
             for form in ("backward", "forward")}
    ctm = CTMPrecond()

    gen = torch.Generator().manual_seed(0)
    weights = [outer_jump_weight(teacher, float(s), args.samples, gen) for s in grid]
    print("1. jump targets s drawn by training, and the weight of an error at s after the outer jump s -> eps")
    print("| s | P(s) | mean |J|^2/d | median |J|^2/d |")
    print("|---|---|---|---|")
    for j, s in enumerate(grid.tolist()):
        print(f"| {s:.4g} | {float(P[:, j].sum()):.4f} | {weights[j][0]:.3g} | {weights[j][1]:.3g} |")
    print(f"P(s <= {float(grid[-4]):.3g}) = {float(P[:, -4:].sum()):.3f}")

    W = torch.tensor([w[1] for w in weights], dtype=torch.float64)      # the median: robust to boundary spikes
    print("\n2. (f, g) on the jumps that carry the loss (largest P * median weight first)")
    pairs = sorted(((float(P[n, m] * W[m]), n, m) for n in range(N) for m in range(n + 1, N) if P[n, m] > 0),
                   reverse=True)
    print("| t | s | P | weight | f, g backward | f, g forward | f, g CTM |")
    print("|---|---|---|---|---|---|---|")
    for _, n, m in pairs[:10]:
        t, s = grid[n:n + 1], grid[m:m + 1]
        cells = [", ".join(f"{float(v):.4f}" for v in p.fg(t, s)) for p in (forms["backward"], forms["forward"], ctm)]
        print(f"| {float(t):.4g} | {float(s):.4g} | {float(P[n, m]):.4f} | {float(W[m]):.3g} | " + " | ".join(cells) + " |")
    for form, precond in forms.items():
        total = diff = diff_p = total_p = 0.0
        for w, n, m in pairs:
            t, s = grid[n:n + 1], grid[m:m + 1]
            g_form, g_ctm = float(precond.g(t, s)), float(ctm.g(t, s))
            diff += w * abs(g_form - g_ctm) / g_ctm
            total += w
            diff_p += float(P[n, m]) * abs(g_form - g_ctm) / g_ctm
            total_p += float(P[n, m])
        print(f"{form}: mean |g - g_CTM| / g_CTM = {diff / total:.4f} weighted by P * weight, {diff_p / total_p:.4f} by P alone")

    torch.manual_seed(0)
    student = MLPStudent(dim=teacher.dim)
    if args.checkpoint:
        student.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True)["target"])
        label = f"trained student ({args.checkpoint})"
    else:
        torch.nn.init.normal_(student.out.weight, std=0.02)
        label = "freshly initialised student (output layer N(0, 0.02^2))"
    target = copy.deepcopy(student).requires_grad_(False)

    def gradient(precond) -> torch.Tensor:
        gen = torch.Generator().manual_seed(5)
        x0 = teacher.sample_x0(1024, gen).float()
        student.zero_grad()
        loss, _ = objective(student, target, precond, teacher, x0, gen)
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in student.parameters()])

    g_ctm = gradient(ctm)
    print(f"\n3. loss gradients against CTM's, {label}, one batch of 1024, DSM off")
    for form, precond in forms.items():
        g = gradient(precond)
        print(f"{form}: cosine {float(g @ g_ctm / g.norm() / g_ctm.norm()):.6f}, norm ratio {float(g.norm() / g_ctm.norm()):.4f}")


if __name__ == "__main__":
    main()
