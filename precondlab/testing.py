"""Conformance checks: does a component keep the contract of its kind (docs/plugins.md)?

For plugin authors' own test suites::

    from precondlab.testing import check_preconditioner
    def test_my_preconditioner():
        check_preconditioner(MyPrecond())          # raises AssertionError naming each broken rule

and from the command line, ``precondlab check preconditioner NAME`` (a pass/fail table). Each
check returns ``Result(rule, passed, detail)``; a check that raises is a failure of its rule,
with the exception in the detail. ``precondlab run`` and ``gap`` run the cheap checks
(``CHEAP``) on the chosen preconditioner before training.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from typing import Callable

import torch

CHEAP = ("boundary", "finite", "shapes", "dtypes")


@dataclass
class Result:
    rule: str
    passed: bool | None          # None: not applicable here (skipped, with the reason)
    detail: str = ""


def _run(rule: str, fn: Callable[[], str | None]) -> Result:
    try:
        detail = fn()
    except Skip as skip:
        return Result(rule, None, str(skip))
    except Exception as exc:  # noqa: BLE001 - any exception is this rule's failure
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return Result(rule, False, f"raised {type(exc).__name__}{': ' + first if first else ''}")
    return Result(rule, True, detail or "")


class Skip(Exception):
    """The rule does not apply to this component (or this machine)."""


def _fail(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def report(results: list[Result]) -> str:
    width = max(len(r.rule) for r in results)
    mark = {True: "pass", False: "FAIL", None: "skip"}
    return "\n".join(f"  {mark[r.passed]:<4}  {r.rule:<{width}}  {r.detail}" for r in results)


def _raise_if_failed(what: str, results: list[Result]) -> list[Result]:
    failed = [r for r in results if r.passed is False]
    if failed:
        raise AssertionError(f"{what} breaks the contract:\n{report(failed)}")
    return results


# -- preconditioners ------------------------------------------------------------------------------
def _times(precond, n: int = 24, dtype=torch.float64) -> torch.Tensor:
    sched = precond.schedule
    lo, hi = math.log(sched.sigma_min), math.log(sched.sigma_max)
    return torch.exp(torch.linspace(lo, hi, n, dtype=dtype))


def _tiny_teacher():
    from precondlab.teachers.gmm import GMMTeacher
    return GMMTeacher(dim=2, num_components=3, seed=0)


class _TinyNet(torch.nn.Module):
    """F(x, c_t, c_s) for the checks: a linear map of x and both noise levels."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = torch.nn.Linear(dim + 2, dim)

    def forward(self, x, c_t, c_s):
        c_t = torch.as_tensor(c_t, dtype=x.dtype, device=x.device).expand(x.shape[0])[:, None]
        c_s = torch.as_tensor(c_s, dtype=x.dtype, device=x.device).expand(x.shape[0])[:, None]
        return self.lin(torch.cat([x, c_t, c_s], dim=1))


def preconditioner_checks(precond, rules: tuple[str, ...] | None = None, teacher=None) -> list[Result]:
    """Every rule of docs/plugins.md for a Preconditioner instance (``rules`` chooses some)."""
    from precondlab import registry
    from precondlab.preconditioners.base import Preconditioner
    eps, top = precond.schedule.sigma_min, precond.schedule.sigma_max
    uses_s = getattr(precond, "uses_s", True)

    def fg(t, s):
        return precond.f(t, s), precond.g(t, s)

    def boundary():
        ts = _times(precond) if uses_s else torch.tensor([eps], dtype=torch.float64)
        f, g = fg(ts, ts)
        worst_f, worst_g = float((f - 1).abs().max()), float(g.abs().max())
        _fail(worst_f <= 1e-6 and worst_g <= 1e-6,
              f"f(t, t) must be 1 and g(t, t) must be 0; worst |f - 1| = {worst_f:.3g}, |g| = {worst_g:.3g}")
        return f"on {ts.numel()} times in [{eps}, {top}]"

    def finite():
        ts = _times(precond)
        t, s = torch.meshgrid(ts, ts, indexing="ij")
        keep = s <= t
        t, s = t[keep], s[keep] if uses_s else torch.full_like(t[keep], eps)
        f, g = fg(t, s)
        bad = (~torch.isfinite(f)) | (~torch.isfinite(g))
        _fail(not bool(bad.any()), f"non-finite f or g at (t, s) = {(float(t[bad][0]), float(s[bad][0]))}"
              if bool(bad.any()) else "")
        return f"on {t.numel()} pairs eps <= s <= t <= T"

    def shapes():
        t = torch.tensor([10.0, 1.0, 0.5], dtype=torch.float64)
        s = torch.tensor([1.0, 0.5, 0.002], dtype=torch.float64)
        for name, value in zip("fg", fg(t, s)):
            _fail(tuple(value.shape) == (3,), f"{name} of (3,) times must have shape (3,), got {tuple(value.shape)}")
        for name, value in zip("fg", fg(t, torch.tensor(0.002, dtype=torch.float64))):
            _fail(tuple(value.shape) == (3,), f"{name} must broadcast (3,) times with a scalar s, got {tuple(value.shape)}")
        for name, value in zip("fg", fg(torch.tensor(10.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))):
            _fail(tuple(value.shape) == (), f"{name} of scalar times must be a scalar, got {tuple(value.shape)}")
        return "(B,), (B,) with (), and ()"

    def dtypes():
        for dtype in (torch.float32, torch.float64):
            t, s = torch.tensor([10.0, 1.0], dtype=dtype), torch.tensor([1.0, 0.1], dtype=dtype)
            for name, value in zip("fg", fg(t, s)):
                _fail(value.dtype == dtype, f"{name} of {dtype} times must be {dtype}, got {value.dtype}")
        return "float32 and float64 preserved"

    def jump_net(dtype=torch.float32, device="cpu"):
        torch.manual_seed(0)
        net = _TinyNet(2).to(device=device, dtype=dtype)
        x = torch.randn(4, 2, dtype=dtype, device=device) * 3
        t = torch.tensor([10.0, 5.0, 1.0, 0.5], dtype=dtype, device=device)
        s = torch.tensor([1.0, 0.5, 0.1, 0.002], dtype=dtype, device=device)
        return net, x, t, s if uses_s else torch.full_like(s, eps)

    def autocast():
        net, x, t, s = jump_net()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = precond.jump(net, x, t, s)
        _fail(bool(torch.isfinite(out.float()).all()), "jump() under bf16 autocast is not finite")
        return f"jump() under bf16 autocast gives {out.dtype}"

    def devices():
        if not torch.cuda.is_available():
            raise Skip("no CUDA device here (CPU checked by the other rules)")
        net, x, t, s = jump_net(device="cuda")
        out = precond.jump(net, x, t, s)
        _fail(out.device.type == "cuda", f"jump() on CUDA inputs returned a tensor on {out.device}")
        f, g = fg(t, s)
        _fail(f.device.type == "cuda" and g.device.type == "cuda", "f, g of CUDA times must be on CUDA")
        return "CUDA"

    def differentiable():
        net, x, t, s = jump_net()
        out = precond.jump(net, x, t, s)
        out.square().sum().backward()
        grads = [p.grad for p in net.parameters()]
        _fail(all(g is not None and bool(torch.isfinite(g).all()) for g in grads), "no finite gradient reaches the network")
        _fail(any(float(g.abs().sum()) > 0 for g in grads), "the network's gradient is zero: G does not depend on F")
        return "gradients reach F's parameters"

    def first_order():
        if not getattr(precond, "denoiser_form", True):
            raise Skip("F is not a denoiser (denoiser_form = False): no first-order condition")
        if not uses_s:
            raise Skip("s is pinned to sigma_min")
        if getattr(precond.schedule, "alpha", None) is None or type(precond.schedule).__name__ != "EDMSchedule":
            raise Skip("checked for the EDM schedule only")
        worst = 0.0
        for t0 in (0.02, 0.3, 2.0, 20.0):
            h = 1e-4 * t0
            t, s = torch.tensor([t0], dtype=torch.float64), torch.tensor([t0 - h], dtype=torch.float64)
            f, g = fg(t, s)
            # Euler on dx/dt = (x - D)/t: x_s = x + (s - t)(x - D)/t, i.e. df/ds = 1/t, dg/ds = -1/t at s = t.
            df, dg = float((1 - f) / h), float(g / h)
            worst = max(worst, abs(df * t0 - 1), abs(dg * t0 - 1))
        _fail(worst <= 0.02, f"as s -> t, G(x, t, s) with F = D(x, t) must follow the teacher ODE "
                             f"dx/dt = (x - D)/t: t df/ds and -t dg/ds at s = t must be 1 (worst error {worst:.3g}); "
                             f"set denoiser_form = False if F is not a denoiser")
        return f"matches the teacher ODE to {worst:.1e} (relative)"

    def gin_configurable():
        found = registry.entry_of(precond)
        if found is None:
            raise Skip("not registered (register it with @register('preconditioner', NAME))")
        from gin import config as gin_config
        selector = f"{found.kind}.{found.name}"
        _fail(gin_config._REGISTRY.get_match(selector) is not None, f"gin does not know {selector}")  # noqa: SLF001
        made = found.obj()          # what @preconditioner.NAME() in a gin file calls
        _fail(isinstance(made, Preconditioner), f"@{selector}() made a {type(made).__name__}")
        return f"@{selector}()"

    def picklable():
        copy = pickle.loads(pickle.dumps(precond))
        t, s = torch.tensor([10.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.1], dtype=torch.float64)
        s = s if uses_s else torch.full_like(s, eps)
        for a, b in zip(fg(t, s), (copy.f(t, s), copy.g(t, s))):
            _fail(torch.equal(a, b), "a pickled copy gives other f, g")
        return "pickled and unpickled (Ray ships it)"

    def subclass():
        _fail(isinstance(precond, Preconditioner), f"{type(precond).__name__} is not a precondlab Preconditioner")
        return "Preconditioner"

    table = {"interface": subclass, "boundary": boundary, "finite": finite, "shapes": shapes, "dtypes": dtypes,
             "autocast": autocast, "devices": devices, "differentiable": differentiable, "first_order": first_order,
             "gin": gin_configurable, "pickle": picklable}
    if needs_statistics(precond):  # statistics first: its f, g come from the teacher
        precond.fit(teacher or _tiny_teacher())
    return [_run(rule, table[rule]) for rule in (rules or tuple(table))]


def needs_statistics(precond) -> bool:
    from precondlab.preconditioners.base import Preconditioner
    return type(precond).fit is not Preconditioner.fit and getattr(precond, "coeffs", None) is None


def check_preconditioner(precond, teacher=None) -> list[Result]:
    """For pytest: every rule; AssertionError naming the broken ones. Accepts a class (made with
    its defaults) or an instance."""
    if isinstance(precond, type):
        precond = precond()
    return _raise_if_failed(type(precond).__name__, preconditioner_checks(precond, teacher=teacher))


# -- the other kinds ------------------------------------------------------------------------------
def teacher_checks(teacher) -> list[Result]:
    def sample():
        x0 = teacher.sample_x0(4, torch.Generator().manual_seed(0))
        _fail(tuple(x0.shape) == (4, *teacher.shape), f"sample_x0(4) must have shape (4, *shape) = "
                                                      f"{(4, *teacher.shape)}, got {tuple(x0.shape)}")
        _fail(x0[0].numel() == teacher.dim, f"dim = {teacher.dim} but an example has {x0[0].numel()} values")
        return f"shape {tuple(teacher.shape)}"

    def denoise():
        x0 = teacher.sample_x0(4, torch.Generator().manual_seed(0))
        x = (x0 + torch.randn_like(x0)).to(torch.float32)
        out = teacher.denoise(x, torch.full((4,), 1.0))
        _fail(out.shape == x.shape and bool(torch.isfinite(out).all()), "denoise(x, t) must be finite, shaped like x")
        _fail(out.dtype == x.dtype, f"denoise of {x.dtype} returned {out.dtype}")
        return "finite, shape and dtype of x"

    def schedule():
        _fail(hasattr(teacher, "schedule") and hasattr(teacher.schedule, "karras"), "no schedule with karras()")
        return type(teacher.schedule).__name__

    return [_run("sample_x0", sample), _run("denoise", denoise), _run("schedule", schedule)]


def student_checks(student_cls, dim: int = 4) -> list[Result]:
    def call():
        net = student_cls(dim=dim)
        x = torch.randn(3, dim)
        out = net(x, torch.zeros(3), torch.zeros(3))
        _fail(tuple(out.reshape(3, -1).shape) == (3, dim), f"F(x, c_t, c_s) must have x's size, got {tuple(out.shape)}")
        out.square().sum().backward()
        _fail(any(p.grad is not None for p in net.parameters()), "no gradient reaches the parameters")
        return "F(x, c_noise_t, c_noise_s) shaped like x, differentiable"
    return [_run("forward", call)]


def loss_checks(loss) -> list[Result]:
    def call():
        a, b = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3)
        d = loss(a, b)
        _fail(tuple(d.shape) == (5,), f"a distance must be per example, shape (5,), got {tuple(d.shape)}")
        _fail(float(loss(b, b).abs().max()) <= 1e-6, "distance(a, a) must be 0")
        _fail(bool((d >= 0).all()), "a distance must be >= 0")
        d.sum().backward()
        _fail(a.grad is not None and bool(torch.isfinite(a.grad).all()), "not differentiable")
        return "per example, zero at equality, differentiable"
    return [_run("distance", call)]


def sampler_checks(sampler) -> list[Result]:
    def call():
        import inspect
        params = list(inspect.signature(sampler).parameters)
        _fail(params[:3] == ["jump", "x", "ts"] and "generator" in params, "signature must be (jump, x, ts, *, generator=None, ...)")
        teacher = _tiny_teacher()
        from precondlab.teachers.solvers import reference_flow
        jump = lambda x, t, s: reference_flow(teacher, x, t, s, steps=64)  # noqa: E731
        x = 80 * torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        out = sampler(jump, x, [80.0, 1.0, 0.002], generator=torch.Generator().manual_seed(1))
        _fail(out.shape == x.shape and bool(torch.isfinite(out).all()), "samples must be finite and shaped like x")
        return "k-diffusion signature; finite samples"
    return [_run("signature", call)]


def schedule_checks(schedule) -> list[Result]:
    def call():
        ts = schedule.karras(18)
        _fail(bool((ts[1:] < ts[:-1]).all()), "karras(n) must decrease")
        _fail(math.isclose(float(ts[0]), schedule.sigma_max) and math.isclose(float(ts[-1]), schedule.sigma_min),
              "karras(n) must run from sigma_max to sigma_min")
        back = schedule.t_of_lam(schedule.lam(ts))
        _fail(bool(torch.allclose(back, ts, rtol=1e-9)), "t_of_lam must invert lam")
        return "grid, lambda and its inverse"
    return [_run("grid", call)]


def ode_checks(ode) -> list[Result]:
    def call():
        from precondlab.odes.base import ODECoefficients
        coeffs = ode.fit(_tiny_teacher())
        _fail(isinstance(coeffs, ODECoefficients), f"fit(teacher) must return ODECoefficients, got {type(coeffs).__name__}")
        return f"{coeffs.lam.numel()} points"
    return [_run("fit", call)]


def objective_checks(objective) -> list[Result]:
    def call():
        import copy

        from precondlab.preconditioners.ctm import CTMPrecond
        from precondlab.preconditioners.cm import CMPrecond
        teacher = _tiny_teacher()
        student = _TinyNet(2)
        target = copy.deepcopy(student).requires_grad_(False)
        x0 = teacher.sample_x0(8, torch.Generator().manual_seed(0)).float()
        for precond in (CTMPrecond(), CMPrecond()):
            try:
                loss, logs = objective(student, target, precond, teacher, x0, torch.Generator().manual_seed(1))
                break
            except ValueError:
                continue
        _fail(loss.ndim == 0 and bool(torch.isfinite(loss)), "the loss must be a finite scalar")
        _fail(isinstance(logs, dict), "logs must be a dict")
        loss.backward()
        return "a finite scalar loss and a dict of logs"
    return [_run("loss", call)]


def dataset_checks(dataset) -> list[Result]:
    def call():
        x = dataset.sample_x0(3, torch.Generator().manual_seed(0))
        _fail(x.shape[0] == 3 and bool(torch.isfinite(x).all()), "sample_x0(3) must give 3 finite examples")
        return f"examples of shape {tuple(x.shape[1:])}"
    return [_run("sample_x0", call)]


def feature_extractor_checks(extractor) -> list[Result]:
    def call():
        images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        feats = extractor(images)
        _fail(feats.ndim == 2 and feats.shape[0] == 4, f"features must be (N, D), got {tuple(feats.shape)}")
        return f"(N, {feats.shape[1]}) features"
    return [_run("features", call)]


def checks_for(kind: str, obj) -> list[Result]:
    """Every check of ``kind`` on ``obj`` (an instance; a class or function for students, losses,
    samplers)."""
    table = {"preconditioner": preconditioner_checks, "teacher": teacher_checks, "student": student_checks,
             "loss": loss_checks, "sampler": sampler_checks, "schedule": schedule_checks, "ode": ode_checks,
             "objective": objective_checks, "dataset": dataset_checks, "feature_extractor": feature_extractor_checks}
    return table[kind](obj)


__all__ = ["CHEAP", "Result", "check_preconditioner", "checks_for", "needs_statistics", "preconditioner_checks",
           "report"]
