"""The k-step sampling times of an evaluation, and sampling a student along them."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch



def nfe_grid(schedule, nfe: int) -> torch.Tensor:
    """The default k-step sampling times: a Karras grid of k + 1 points (2 steps: 80 -> 2.515 -> 0.002),
    what CTM's own deterministic ("exact") sampler uses. Its inner times are not on the N = 18
    training grid: the student must be usable at any time in [sigma_min, sigma_max]."""
    return schedule.karras(nfe + 1)


def check_nfe_times(setting: str, nfes: Sequence[int], times: Mapping[int, Sequence[float]] | None) -> dict:
    """``times`` as {k: [t_0 > ... > t_k]} for evaluated step counts k; a SettingError naming
    ``setting`` otherwise (the range is checked against the schedule by ``nfe_times``)."""
    from precondlab.validation import SettingError
    out = {}
    for k, ts in dict(times or {}).items():
        if k not in tuple(nfes):
            raise SettingError(f"{setting} names step count {k!r}, which is not evaluated (nfes = {tuple(nfes)})")
        try:
            ts = [float(v) for v in ts]
        except (TypeError, ValueError):
            raise SettingError(f"{setting}[{k}] = {ts!r}: must be a list of times") from None
        if len(ts) != k + 1:
            raise SettingError(f"{setting}: nfe_times[{k}] must list {k + 1} times (sigma_max ... sigma_min), got {ts}")
        if not all(a > b for a, b in zip(ts[:-1], ts[1:])):
            raise SettingError(f"{setting}: nfe_times[{k}] must decrease strictly, got {ts}")
        out[k] = ts
    return out


def nfe_times(schedule, nfes: Sequence[int], times: Mapping[int, Sequence[float]] | None = None,
              setting: str = "evaluator.nfe_times") -> dict[int, list[float]]:
    """The sampling times of each evaluated step count: ``times[k]`` where given (k + 1 times from
    sigma_max down to sigma_min), else the default Karras grid of k + 1 points."""
    from precondlab.validation import SettingError
    times = check_nfe_times(setting, nfes, times)
    out = {}
    for k in nfes:
        ts = times[k] if k in times else nfe_grid(schedule, k).tolist()
        if not (math.isclose(ts[0], schedule.sigma_max, rel_tol=1e-6)
                and math.isclose(ts[-1], schedule.sigma_min, rel_tol=1e-6)):
            raise SettingError(f"{setting}: nfe_times[{k}] must run from sigma_max = {schedule.sigma_max} to "
                               f"sigma_min = {schedule.sigma_min}, got {ts}")
        out[k] = ts
    return out


def describe_times(ts: Sequence[float]) -> str:
    """'80 > 2.515 > 0.002': how a run's parameters and summary name an NFE's sampling times."""
    return " > ".join(f"{t:.4g}" for t in ts)


def sample_student(sampler, precond, net, z, schedule, ts: Sequence[float], *, seed: int, device="cpu",
                   dtype=torch.float32, batch_size: int | None = None, class_labels=None) -> torch.Tensor:
    """k-step samples (k = len(ts) - 1) of the student G = precond.jump(net, ...) from x = sigma_max z
    along the times ts, with a generator seeded by seed + k (shared by every evaluator); on the CPU.
    ``class_labels`` (a class-conditional student): one one-hot row per z, bound into the jump.
    In a multi-process run each rank samples its share of z, and every rank gets all the samples."""
    from precondlab.training import distributed
    from precondlab.labels import with_labels
    d = distributed.current()
    ts = [float(t) for t in ts]
    gen = torch.Generator(device=device).manual_seed(seed + len(ts) - 1 + 7919 * d.rank)
    mine = d.rows(z)
    labels = d.rows(class_labels) if class_labels is not None else None
    chunks = mine.split(batch_size) if batch_size else (mine,)
    label_chunks = [None] * len(chunks) if labels is None else labels.split(batch_size) if batch_size else (labels,)
    out = []
    with torch.no_grad():
        for zb, yb in zip(chunks, label_chunks):
            y = yb.to(device=device, dtype=dtype) if yb is not None else None
            step = lambda x, t, s: with_labels(precond.jump, net, x, t, s, class_labels=y)  # noqa: E731
            out.append(sampler(step, (schedule.sigma_max * zb).to(device=device, dtype=dtype), ts,
                               generator=gen).cpu())
    return d.gather_rows(torch.cat(out), len(z))
