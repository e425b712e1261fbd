"""AnalyticODE's on-disk cache, and its statistics on an image-shaped network teacher."""

from __future__ import annotations

import time

import torch

from precondlab.data.images import ImageDataset
from precondlab.nets.songunet import SongUNet
from precondlab.odes.analytic import AnalyticODE, teacher_fingerprint
from precondlab.schedules import EDMSchedule
from precondlab.teachers.edm_pkl import EDMNetTeacher
from precondlab.teachers.gmm import GMMTeacher

SMALL = dict(num_points=12, num_samples=256, trace="hutchinson")


def gmm(**kw):
    return GMMTeacher(dim=4, num_components=3, mean_spread=0.5, component_std=0.1, **kw)


def timed_fit(ode, teacher):
    t0 = time.perf_counter()
    coeffs = ode.fit(teacher)
    return coeffs, time.perf_counter() - t0


def test_second_fit_loads_the_cache(tmp_path):
    teacher = gmm(seed=0)
    first, t_first = timed_fit(AnalyticODE(**SMALL, cache_dir=str(tmp_path)), teacher)
    assert first.info["cached"] is False and len(list(tmp_path.glob("analytic-*.pt"))) == 1
    second, t_second = timed_fit(AnalyticODE(**SMALL, cache_dir=str(tmp_path)), gmm(seed=0))  # an equal teacher
    assert second.info["cached"] is True and t_second < t_first
    assert second.info["seconds"] == first.info["seconds"]            # the original cost is kept
    assert second.info["denoiser_evals"] == first.info["denoiser_evals"]
    for a, b in ((first.lam, second.lam), (first.l, second.l), (first.s, second.s)):
        assert torch.equal(a, b)
    # Without a cache the same numbers come out: the cache stores, it does not change, the estimate.
    plain = AnalyticODE(**SMALL).fit(teacher)
    assert torch.equal(plain.l, first.l) and torch.equal(plain.s, first.s) and "cache_file" not in plain.info


def test_a_changed_teacher_or_grid_misses_the_cache(tmp_path):
    AnalyticODE(**SMALL, cache_dir=str(tmp_path)).fit(gmm(seed=0))
    misses = [
        (AnalyticODE(**SMALL, cache_dir=str(tmp_path)), gmm(seed=1)),                               # other means
        (AnalyticODE(**SMALL, cache_dir=str(tmp_path)), gmm(seed=0, weights=[1.0, 2.0, 1.0])),      # other weights
        (AnalyticODE(**{**SMALL, "num_points": 20}, cache_dir=str(tmp_path)), gmm(seed=0)),         # grid size
        (AnalyticODE(**SMALL, cache_dir=str(tmp_path)), gmm(seed=0, schedule=EDMSchedule(sigma_min=0.01))),
        (AnalyticODE(**{**SMALL, "num_samples": 128}, cache_dir=str(tmp_path)), gmm(seed=0)),
        (AnalyticODE(**{**SMALL, "seed": 1}, cache_dir=str(tmp_path)), gmm(seed=0)),
        (AnalyticODE(**{**SMALL, "trace": "exact"}, cache_dir=str(tmp_path)), gmm(seed=0)),
    ]
    for ode, teacher in misses:
        assert ode.fit(teacher).info["cached"] is False
    assert len(list(tmp_path.glob("analytic-*.pt"))) == 1 + len(misses)
    hit = AnalyticODE(**{**SMALL, "trace": "exact"}, cache_dir=str(tmp_path)).fit(gmm(seed=0))
    assert hit.info["cached"] is True
    assert AnalyticODE(**{**SMALL, "probes": 2}, cache_dir=str(tmp_path)).fit(gmm(seed=0)).info["cached"] is False
    # probes do not matter to the exact trace: the same file serves any value
    assert AnalyticODE(**{**SMALL, "trace": "exact", "probes": 3},
                       cache_dir=str(tmp_path)).fit(gmm(seed=0)).info["cached"] is True


def test_a_corrupt_cache_file_is_recomputed(tmp_path):
    ode = AnalyticODE(**SMALL, cache_dir=str(tmp_path))
    first = ode.fit(gmm(seed=0))
    (path,) = tmp_path.glob("analytic-*.pt")
    path.write_bytes(b"not a torch file")
    again = ode.fit(gmm(seed=0))
    assert again.info["cached"] is False and torch.equal(again.l, first.l)
    assert ode.fit(gmm(seed=0)).info["cached"] is True


def tiny_network_teacher(seed: int = 0, data_seed: int = 0) -> EDMNetTeacher:
    torch.manual_seed(seed)
    net = SongUNet(img_resolution=8, in_channels=1, out_channels=1, model_channels=8, channel_mult=[1],
                   num_blocks=1, attn_resolutions=[])
    images = torch.randint(0, 256, (16, 1, 8, 8), generator=torch.Generator().manual_seed(data_seed),
                           dtype=torch.uint8)
    return EDMNetTeacher(net, "edm", dataset=ImageDataset(images, name="tiny"))


def test_hutchinson_on_an_image_network_teacher(tmp_path):
    teacher = tiny_network_teacher()
    ode = AnalyticODE(num_points=5, num_samples=8, trace="hutchinson", probes=1, batch_size=4,
                      cache_dir=str(tmp_path))
    coeffs = ode.fit(teacher)
    assert coeffs.info["dtype"] == "float32" and coeffs.info["trace"] == "hutchinson"
    assert coeffs.info["device"] == "cpu" and coeffs.info["cached"] is False
    assert bool(torch.isfinite(coeffs.l).all() and torch.isfinite(coeffs.s).all())
    # An untrained SongUNet outputs ~0 (its last conv starts at 1e-5 scale), so D = c_skip x and
    # l = c_skip = sd^2 / (sd^2 + t^2) up to that tiny network term.
    t = torch.exp(-coeffs.lam)
    torch.testing.assert_close(coeffs.l, 0.25 / (0.25 + t ** 2), rtol=0, atol=1e-3)

    assert ode.fit(teacher).info["cached"] is True
    # Other weights or other data: another fingerprint, so the cache misses.
    assert teacher_fingerprint(teacher) == teacher_fingerprint(tiny_network_teacher())
    assert teacher_fingerprint(teacher) != teacher_fingerprint(tiny_network_teacher(seed=1))
    assert teacher_fingerprint(teacher) != teacher_fingerprint(tiny_network_teacher(data_seed=1))
    assert ode.fit(tiny_network_teacher(data_seed=1)).info["cached"] is False


def test_hutchinson_matches_the_exact_trace_on_a_randomised_image_network():
    """The batched image path (B, C, H, W) of the statistics: with random weights (the network
    term is not ~0, unlike at init) Hutchinson's l, s agree with the exact trace's (64 JVPs per
    sample) to Monte-Carlo accuracy, and both differ from the untrained network's c_skip."""
    teacher = tiny_network_teacher()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in teacher.net.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    common = dict(num_points=4, num_samples=16, batch_size=1024, seed=1)   # 64 tangents x 16 samples per call
    exact = AnalyticODE(trace="exact", **common).fit(teacher)
    hutch = AnalyticODE(trace="hutchinson", probes=64, **common).fit(teacher)
    t = torch.exp(-exact.lam)
    assert float((exact.l - 0.25 / (0.25 + t ** 2)).abs().max()) > 0.05  # the network matters here
    torch.testing.assert_close(hutch.l, exact.l, rtol=0, atol=0.03)
    torch.testing.assert_close(hutch.s, exact.s, rtol=0, atol=0.1 * float(exact.s.abs().max()) + 0.03)
