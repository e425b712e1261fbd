"""Analytic-Precond: l(lambda), s(lambda) estimated from the teacher (math note, section 4).

    l_t = E[ tr(grad_x D(x_t, t)) ] / d
    s_t = E<g_phi, dg_phi/dlambda> / E|g_phi|^2,    g_phi = D - l x

dg_phi/dlambda is the total derivative along the teacher ODE: one JVP of D with tangent
(dx/dlambda = D - x, dt/dlambda = -t), minus (dl/dlambda) x + l (D - x). The expectations use
common random numbers (the same x_0 and noise at every grid point), so l is smooth in lambda
and its finite-difference derivative is usable.

A teacher with a closed-form ``denoiser_trace(x, t)`` (the GMM) gives the exact trace in one
pass instead of one JVP per coordinate.

Network teachers (images (B, C, H, W), a SongUNet on 'cuda' or 'cpu') are estimated in the
teacher's own dtype when it declares one (``teacher.dtype``, float32 for a network), else in
the dtype ``teacher.sample_x0`` returns. A fit is saved to ``<cache_dir>/analytic-<hash>.pt``
(``cache_dir = "auto"``, the default: ``$PRECONDLAB_CACHE/statistics``, else
``~/.cache/precondlab/statistics``; None: no cache) keyed by the teacher's identity (``teacher.fingerprint()``,
else a hash of its ``describe()`` and tensors), the lambda grid, the sample count, the trace
method, the probes, the seed and the dtype; a later fit with the same key loads it
(``info['cached'] = True``, ``info['seconds']`` the original cost).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import warnings
from pathlib import Path

import torch
from torch.func import jvp

from precondlab import progress
from precondlab.fileio import atomic_write
from precondlab.hashing import update_with_tensor
from precondlab.odes.base import ODECoefficients, ODEGeneralization
from precondlab.registry import register
from precondlab.teachers.base import sample_data


def jacobian_trace(denoise, x: torch.Tensor, t: torch.Tensor, method: str, probes: int,
                   generator: torch.Generator | None, max_batch: int = 4096):
    """Per-example tr(d denoise(x, t) / dx): exact (one JVP per coordinate) or Hutchinson
    (Rademacher probes), and the JVPs per example it took. Several tangents share one call (x
    repeated), up to ``max_batch`` examples per call."""
    B, flat = x.shape[0], x[0].numel()
    if method == "exact":
        count = flat
        tangent = lambda j: torch.nn.functional.one_hot(  # noqa: E731 - e_j for every example
            torch.full((B,), j, device=x.device), flat).to(x.dtype).reshape(x.shape)
    else:
        count = probes
        draws = torch.randint(0, 2, (probes, *x.shape), generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
        tangent = lambda j: draws[j]  # noqa: E731
    per_call = max(1, max_batch // B)
    trace = torch.zeros(B, dtype=x.dtype, device=x.device)
    for first in range(0, count, per_call):
        js = range(first, min(count, first + per_call))
        v = torch.cat([tangent(j) for j in js])
        xs, ts = x.repeat(len(js), *([1] * (x.ndim - 1))), t.repeat(len(js))
        _, jv = jvp(lambda y: denoise(y, ts), (xs,), (v,))
        trace += (v * jv).reshape(len(js), B, -1).sum(-1).sum(0)
    return trace / (1 if method == "exact" else probes), count


@register("ode", "analytic")
class AnalyticODE(ODEGeneralization):
    """l_t, s_t estimated from teacher statistics on a lambda grid (Analytic-Precond)."""

    def __init__(self,
                 num_points: int = 120,        # lambda grid points (paper: 120)
                 num_samples: int = 4096,      # Monte-Carlo samples per point (paper: 4096)
                 trace: str = "auto",          # 'exact', 'hutchinson', or 'auto' (exact if dim <= exact_max_dim)
                 exact_max_dim: int = 16,
                 probes: int = 1,              # Hutchinson probes per sample
                 batch_size: int = 4096,       # samples per denoiser call (lower it for big networks)
                 seed: int = 0,
                 device: str | None = None,    # where x lives: 'cpu', 'cuda'; None: the teacher's device (else cpu)
                 cache_dir: str | None = "auto",   # save/load fits here, keyed by teacher + settings (None: off)
                 clamp: float = 20.0):         # |l|, |s| bound: keeps exp(int s) finite on a poor estimate
        from precondlab import validation as v
        v.one_of("ode.analytic.trace", trace, ("auto", "exact", "hutchinson"))
        v.positive_int("ode.analytic.num_points", num_points)
        if num_points < 2:
            raise v.SettingError(f"ode.analytic.num_points = {num_points!r}: must be at least 2")
        v.positive_int("ode.analytic.num_samples", num_samples)
        v.positive_int("ode.analytic.batch_size", batch_size)
        v.positive_int("ode.analytic.probes", probes)
        v.nonnegative_int("ode.analytic.exact_max_dim", exact_max_dim)
        v.positive_float("ode.analytic.clamp", clamp)
        self.num_points, self.num_samples, self.trace = num_points, num_samples, trace
        self.exact_max_dim, self.probes, self.batch_size = exact_max_dim, probes, batch_size
        self.seed, self.device, self.cache_dir, self.clamp = seed, device, cache_dir, clamp

    def cache_key(self, teacher, method: str, dtype: torch.dtype, lam: torch.Tensor) -> dict:
        """What a fit depends on, as plain data (its sha256 names the cache file)."""
        sched = teacher.schedule
        return {"version": CACHE_VERSION, "teacher": teacher_fingerprint(teacher),
                "schedule": type(sched).__name__,
                "num_points": self.num_points,
                "sigma_min": float(getattr(sched, "sigma_min", float("nan"))),
                "sigma_max": float(getattr(sched, "sigma_max", float("nan"))),
                "lam_grid": hashlib.sha256(lam.double().cpu().numpy().tobytes()).hexdigest(),
                "num_samples": self.num_samples, "trace": method,
                "probes": self.probes if method == "hutchinson" else None,
                "seed": self.seed, "dtype": str(dtype).replace("torch.", "")}

    def _method(self, teacher) -> str:
        if self.trace != "auto":
            return self.trace
        return "exact" if teacher.dim <= self.exact_max_dim else "hutchinson"

    def key(self, teacher) -> dict:
        """What a fit on this teacher depends on; its sha256 (``key_digest``) names the cache file and
        is checked when a run resumes with statistics from its checkpoint."""
        dtype = getattr(teacher, "dtype", None)
        if not isinstance(dtype, torch.dtype):
            dtype = teacher.sample_x0(1, torch.Generator().manual_seed(0)).dtype
        return self.cache_key(teacher, self._method(teacher), dtype, teacher.schedule.lam_grid(self.num_points))

    def key_digest(self, teacher) -> str:
        return key_digest(self.key(teacher))

    def fit(self, teacher) -> ODECoefficients:
        start = time.perf_counter()
        sched = teacher.schedule
        gen = torch.Generator().manual_seed(self.seed)
        method = self._method(teacher)
        x0, labels = sample_data(teacher, self.num_samples, gen)   # labels: a class-conditional teacher's
        dtype = getattr(teacher, "dtype", None)
        if isinstance(dtype, torch.dtype) and dtype != x0.dtype:
            x0 = x0.to(dtype)  # a network teacher declares its dtype (e.g. float32: no float64 on some devices)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        lam = sched.lam_grid(self.num_points)  # uniform in lambda
        ts = sched.t_of_lam(lam)
        dev = torch.device(self.device if self.device is not None else getattr(teacher, "device", "cpu"))
        evals = 0

        key = self.cache_key(teacher, method, x0.dtype, lam)
        digest = key_digest(key)
        cache_file = None
        folder = cache_folder(self.cache_dir)
        if folder is not None:
            cache_file = folder / f"analytic-{digest[:32]}.pt"
            cached = load_cached(cache_file, key, start)
            if cached is not None:
                cached.info["key_digest"] = digest
                return cached

        def batches():   # (x0, noise, the denoiser with each example's label bound, if any)
            for i in range(0, self.num_samples, self.batch_size):
                denoise = teacher.denoise if labels is None else functools.partial(
                    teacher.denoise, class_labels=labels[i:i + self.batch_size].to(dev))
                yield x0[i:i + self.batch_size].to(dev), noise[i:i + self.batch_size].to(dev), denoise

        # Pass 1: l_t = E tr(grad D) / d on the (uniform) grid plus two points beyond each end, so
        # that dl/dlambda is a 4th-order central difference everywhere: one-sided or 2nd-order
        # differences bias s_t visibly near sigma_min, where l changes fastest relative to 1 - l.
        h = lam[1] - lam[0]
        lam_ext = torch.cat([lam[:1] - 2 * h, lam[:1] - h, lam, lam[-1:] + h, lam[-1:] + 2 * h])
        l_ext = torch.zeros(lam_ext.numel(), dtype=torch.float64)
        shown = progress.bar(lam_ext.numel() + self.num_points, "statistics", unit="point")
        for i, t in enumerate(sched.t_of_lam(lam_ext)):
            shown.update(1)
            total = 0.0
            for xb, nb, denoise in batches():
                x = sched.add_noise(xb, t, nb)
                tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=dev)
                if method == "exact" and hasattr(teacher, "denoiser_trace") and labels is None:
                    tr, n_jvp = teacher.denoiser_trace(x, tt), 1   # a closed form (GMM): exact, one pass
                else:
                    tr, n_jvp = jacobian_trace(denoise, x, tt, method, self.probes, gen, self.batch_size)
                total += float(tr.sum())
                evals += n_jvp * x.shape[0]
            l_ext[i] = total / (self.num_samples * teacher.dim)
        l = l_ext[2:-2]
        dl = (-l_ext[4:] + 8 * l_ext[3:-1] - 8 * l_ext[1:-3] + l_ext[:-4]) / (12 * h)

        # Pass 2: s_t from the total derivative of g_phi along the ODE.
        s = torch.zeros(self.num_points, dtype=torch.float64)
        for i, t in enumerate(ts):
            shown.update(1)
            num = den = 0.0
            for xb, nb, denoise in batches():
                x = sched.add_noise(xb, t, nb)
                tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=dev)
                D = denoise(x, tt)
                _, dD = jvp(denoise, (x, tt), (D - x, -tt))      # dt/dlambda = -t (EDM)
                g = D - l[i] * x
                dg = dD - dl[i] * x - l[i] * (D - x)
                num += float((g * dg).sum())
                den += float((g * g).sum())
                evals += 2 * x.shape[0]
            s[i] = num / den if den > 0 else 0.0

        # The reference values stay within |s| < 3; a far larger |s| means too few samples or a
        # teacher whose g_phi vanishes. Unbounded, exp(int s dlambda) overflows float64 and the
        # coefficients become NaN, so clamp and record how many points were clamped.
        clamped = int((l.abs() > self.clamp).sum() + (s.abs() > self.clamp).sum())
        if clamped:
            warnings.warn(f"ode.analytic: {clamped} of {2 * self.num_points} statistics exceeded |{self.clamp}| and "
                          f"were clamped (num_samples={self.num_samples}; raise it if this is a real teacher)",
                          stacklevel=2)
        l, s = l.clamp(-self.clamp, self.clamp), s.clamp(-self.clamp, self.clamp)
        shown.close()
        seconds = time.perf_counter() - start
        info = {"ode": "analytic", "trace": method, "num_points": self.num_points, "clamped": clamped,
                "num_samples": self.num_samples, "denoiser_evals": evals, "seconds": seconds,
                "dtype": str(x0.dtype).replace("torch.", ""), "device": str(dev), "cached": False,
                "key_digest": digest}
        coeffs = ODECoefficients(lam, l, s, info=info)
        if cache_file is not None:
            save_cached(cache_file, key, coeffs)
        return coeffs


# -- the on-disk cache --------------------------------------------------------------------------
CACHE_VERSION = 2  # bump when the estimator's math changes: old cache files then miss


def cache_folder(cache_dir: str | None) -> Path | None:
    """Where statistics are cached: 'auto' is $PRECONDLAB_CACHE/statistics or ~/.cache/precondlab/statistics."""
    if cache_dir is None:
        return None
    if cache_dir == "auto":
        import os
        return Path(os.environ.get("PRECONDLAB_CACHE", Path.home() / ".cache" / "precondlab")) / "statistics"
    return Path(cache_dir).expanduser()


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _hash_into(h, value, depth: int = 0) -> None:
    """Feed a stable description of ``value`` (tensors by bytes) into the hash ``h``."""
    if depth > 6:
        h.update(f"<depth:{type(value).__name__}>".encode())
    elif hasattr(value, "fingerprint") and callable(value.fingerprint) and not isinstance(value, type):
        h.update(f"fp:{value.fingerprint()}".encode())
    elif isinstance(value, torch.Tensor):
        update_with_tensor(h, "tensor", value)
    elif isinstance(value, torch.nn.Module):
        _hash_into(h, {"module": type(value).__name__, **value.state_dict()}, depth + 1)
    elif value is None or isinstance(value, (bool, int, float, str)):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}[{len(value)}]".encode())
        for v in value:
            _hash_into(h, v, depth + 1)
    elif isinstance(value, dict):
        h.update(f"dict[{len(value)}]".encode())
        for k in sorted(value, key=str):
            h.update(f"{k!s}=".encode())
            _hash_into(h, value[k], depth + 1)
    elif hasattr(value, "__dict__") and not callable(value):
        # Plain objects (schedules, datasets): their class and data attributes.
        attrs = {k: v for k, v in vars(value).items() if not k.startswith("_") and not callable(v)}
        _hash_into(h, {"class": type(value).__qualname__, **attrs}, depth + 1)
    else:
        h.update(f"<{type(value).__qualname__}>".encode())


def teacher_fingerprint(teacher) -> str:
    """``teacher.fingerprint()`` if it has one, else a hash of its class, describe() and data.

    The fallback covers the analytic teachers (GMM: means, stds, weights; empirical: points)
    and the schedule. A custom teacher whose state is not in plain attributes should define
    ``fingerprint()``, or the cache may reuse statistics it should not.
    """
    fp = getattr(teacher, "fingerprint", None)
    if callable(fp):
        return f"{type(teacher).__name__}:{fp()}"
    h = hashlib.sha256()
    describe = teacher.describe() if hasattr(teacher, "describe") else {}
    _hash_into(h, {"class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
                   "describe": describe,
                   "attrs": {k: v for k, v in vars(teacher).items() if not callable(v)}})
    return f"{type(teacher).__name__}:{h.hexdigest()}"


def load_cached(path: Path, key: dict, start: float) -> ODECoefficients | None:
    """The cached coefficients at ``path`` if its stored key equals ``key``; None otherwise."""
    if not path.is_file():
        return None
    from precondlab.errors import CheckpointError
    from precondlab.safe_load import load_tensors
    try:
        data = load_tensors(path, "statistics cache")
        if not isinstance(data, dict) or data.get("key") != key:
            return None  # another key under the same hash prefix, or an older format
        info = dict(data["info"])
    except (CheckpointError, KeyError, TypeError) as exc:  # truncated or foreign: recompute and overwrite
        warnings.warn(f"ignoring it and recomputing: {exc}", stacklevel=3)
        return None
    info.update(cached=True, cache_file=str(path), load_seconds=time.perf_counter() - start)
    return ODECoefficients(data["lam"], data["l"], data["s"], info=info)


def save_cached(path: Path, key: dict, coeffs: ODECoefficients) -> None:
    """Write atomically (temp file + rename): readers never see half a file."""
    info = {k: v for k, v in coeffs.info.items() if v is None or isinstance(v, (bool, int, float, str))}
    with atomic_write(path) as tmp:
        torch.save({"key": key, "lam": coeffs.lam, "l": coeffs.l, "s": coeffs.s, "info": info}, tmp)
