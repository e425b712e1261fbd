"""Image evaluation: clean-fid's Fréchet distance, the labelled classifier substitute, the offline
Inception error, the reference-statistics cache, alignment and sample grids. Nothing downloads:
``urllib.request.urlopen`` and ``requests`` are made to fail in every test here."""

import math
import urllib.request

import gin
import numpy as np
import pytest
import torch
from PIL import Image

from cleanfid import fid as cleanfid_fid

from precondlab.data.images import ImageDataset, to_unit_range
from precondlab.evaluation import features as features_mod
from precondlab.evaluation import fid as fid_mod
from precondlab.evaluation import (CLASSIFIER_LABEL, FeatureExtractorError, FIDEvaluator, INCEPTION_URL,
                                   alignment, build_feature_extractor, load_classifier, save_classifier,
                                   save_grid, to_uint8, train_classifier)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    import requests
    monkeypatch.setattr(requests.Session, "request", refuse)
    # clean-fid's Inception folder and torch.hub's cache point at empty temporary folders.
    monkeypatch.setattr(features_mod, "cleanfid_inception_dir", lambda: tmp_path / "cleanfid_tmp")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def two_class_dataset(n=48, side=12, seed=0, name="toy-train"):
    """Class 0: bright top half, class 1: bright bottom half, plus noise; uint8 (n, 1, side, side)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    img = torch.rand(n, 1, side, side, generator=g) * 60
    half = side // 2
    img[labels == 0, :, :half] += 150
    img[labels == 1, :, half:] += 150
    return ImageDataset(img.clamp(0, 255).to(torch.uint8), labels, name=name)


@pytest.fixture(scope="module")
def toy_classifier():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_classifier(two_class_dataset(), steps=40, batch_size=32, seed=0, feat_dim=16, width=8)
    finally:
        torch.set_num_threads(before)


# --- (a) Fréchet distance ------------------------------------------------------------------------


def test_frechet_distance_identical_and_closed_form():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(200, 4))
    assert abs(fid_mod.frechet_distance_of_features(feats, feats)) < 1e-8
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 0.5])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    # Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(np.diag(s1)) - np.sqrt(np.diag(s2))) ** 2)
    assert cleanfid_fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # A full covariance against itself shifted only in the mean: the mean term alone.
    a = rng.normal(size=(3, 3))
    s = a @ a.T + np.eye(3)
    assert cleanfid_fid.frechet_distance(mu1, s, mu2, s) == pytest.approx(np.sum((mu1 - mu2) ** 2), abs=1e-8)


def test_to_uint8_inverts_dataset_scaling():
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(to_uint8(to_unit_range(u)), u)
    assert torch.equal(to_uint8(to_unit_range(u, torch.float64)), u)
    assert to_uint8(torch.tensor([-2.0, 2.0])).tolist() == [0, 255]


# --- (b) classifier substitute -------------------------------------------------------------------


def test_classifier_fd_self_zero_shift_positive_and_labelled(toy_classifier, tmp_path):
    ds = two_class_dataset()
    path = save_classifier(toy_classifier, tmp_path / "clf.pt")
    ev = FIDEvaluator(feature_extractor="classifier", classifier_path=str(path), batch_size=16,
                      cache_dir=str(tmp_path / "cache"), device="cpu").setup(ds)
    data = ds.as_tensor(torch.float32)
    pos = [0]

    def same(n):  # the dataset's own images, in order
        x = data[pos[0]:pos[0] + n]
        pos[0] += n
        return x

    out = ev(same, num_samples=len(ds))
    assert set(out) == {"fd_classifier/nfe1", "fd_classifier_mode", "fd_classifier_num_samples",
                        "fd_classifier_extractor", "fd_classifier_label", "fd_classifier_reference"}
    assert not any(k.startswith("fid") for k in out)
    assert out["fd_classifier_label"] == CLASSIFIER_LABEL and "NOT Inception FID" in CLASSIFIER_LABEL
    assert out["fd_classifier_extractor"] == "classifier" and out["fd_classifier_num_samples"] == len(ds)
    assert abs(out["fd_classifier/nfe1"]) < 1e-4

    shifted = ev(lambda n: (data[:n] + 0.5).clamp(-1, 1), num_samples=len(ds), tag="nfe2")
    assert shifted["fd_classifier/nfe2"] > 1e-2
    one_class = ev(lambda n: data[0::2][:n].repeat(2, 1, 1, 1)[:n], num_samples=20, tag="nfe4")
    assert one_class["fd_classifier/nfe4"] > 1e-2


def test_classifier_learns_and_roundtrips_weights_only(toy_classifier, tmp_path):
    from precondlab.evaluation import classifier_accuracy
    ds = two_class_dataset(seed=1)
    assert classifier_accuracy(toy_classifier, ds) > 0.9
    path = save_classifier(toy_classifier, tmp_path / "sub" / "clf.pt")
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"config", "state_dict"}
    loaded = load_classifier(path)
    x = ds.as_tensor(torch.float32)
    assert torch.equal(loaded.features(x), toy_classifier.features(x))
    ext = build_feature_extractor("classifier", classifier_path=path)
    assert ext.prefix == "fd_classifier" and ext.dim == 16 and ext.identity.startswith("classifier-")
    with pytest.raises(FeatureExtractorError, match="not found"):
        load_classifier(tmp_path / "missing.pt")


def test_gin_binding_selects_classifier_and_trains_it_when_missing(tmp_path):
    gin.parse_config("fid.feature_extractor = 'classifier'\nfid.classifier_steps = 5\nfid.num_samples = 8")
    ev = FIDEvaluator(cache_dir=str(tmp_path / "cache"), device="cpu")
    assert ev.feature_extractor == "classifier" and ev.num_samples == 8
    ds = two_class_dataset(n=16, side=8)
    out = ev(lambda n: ds.sample_x0(n).float(), dataset=ds)
    assert "fd_classifier/nfe1" in out and out["fd_classifier_num_samples"] == 8
    assert list((tmp_path / "cache").glob("classifier_toy_8_train_s5_seed0.pt"))


# --- (c) Inception without weights: a clear error, no download -----------------------------------


def test_weight_and_stats_urls_are_clean_fids_own():
    # features.py / fid.py keep these as literals so that importing them needs no clean-fid
    # (tests/test_imports.py); here they are checked against the installed clean-fid.
    import inspect
    from cleanfid import features as cleanfid_features
    from cleanfid.downloads_helper import inception_url
    from cleanfid.inception_pytorch import FID_WEIGHTS_URL
    assert features_mod.INCEPTION_URL == inception_url
    assert features_mod.INCEPTION_URL.endswith("/" + features_mod.INCEPTION_FILENAME)
    assert features_mod.LEGACY_PYTORCH_URL == FID_WEIGHTS_URL
    assert f'"{fid_mod.CLEANFID_STATS_URL}"' in inspect.getsource(cleanfid_features.get_reference_statistics)


def test_inception_missing_weights_error_names_url_and_destination(tmp_path):
    target = tmp_path / "weights"
    with pytest.raises(FeatureExtractorError) as err:
        FIDEvaluator(inception_path=str(target), device="cpu").extractor
    msg = str(err.value)
    assert INCEPTION_URL in msg and "nvlabs-fi-cdn.nvidia.com" in msg
    assert str(target / "inception-2015-12-05.pt") in msg
    assert "fid.feature_extractor = 'classifier'" in msg and "offline" in msg

    with pytest.raises(FeatureExtractorError) as err:  # no inception_path: clean-fid's own folder
        build_feature_extractor("inception", mode="clean")
    assert str(tmp_path / "cleanfid_tmp" / "inception-2015-12-05.pt") in str(err.value)

    with pytest.raises(FeatureExtractorError) as err:  # legacy_pytorch: torch.hub's cache
        build_feature_extractor("inception", mode="legacy_pytorch")
    msg = str(err.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in msg and str(tmp_path / "torch_home") in msg


def test_cifar10_reference_without_stats_file_names_url(tmp_path, monkeypatch):
    monkeypatch.setattr(fid_mod, "cleanfid_stats_path", lambda *a: tmp_path / "stats" / "cifar10_clean_train_32.npz")
    ev = FIDEvaluator(reference="cifar10", device="cpu")   # the lookup fails before any extractor is built
    with pytest.raises(FeatureExtractorError) as err:
        ev.reference_stats()
    msg = str(err.value)
    assert "https://www.cs.cmu.edu/~clean-fid/stats/cifar10_clean_train_32.npz" in msg
    assert str(tmp_path / "stats" / "cifar10_clean_train_32.npz") in msg


# --- (d) reference statistics cache --------------------------------------------------------------


def test_reference_stats_computed_once_then_loaded(toy_classifier, tmp_path, monkeypatch):
    ds = two_class_dataset(n=24, name="toy-test")
    clf = save_classifier(toy_classifier, tmp_path / "clf.pt")
    kw = dict(feature_extractor="classifier", classifier_path=str(clf), batch_size=10,
              cache_dir=str(tmp_path / "cache"), device="cpu")
    ev = FIDEvaluator(**kw)
    mu, sigma = ev.reference_stats(ds)
    assert ev.reference_computations == 1 and mu.shape == (16,) and sigma.shape == (16, 16)
    path = ev.reference_cache_path(ds)
    assert path.is_file() and path.name.startswith("toy_12x12_test_classifier-") and "_native_n24" in path.name
    mtime = path.stat().st_mtime_ns
    ev.reference_stats(ds)   # memoised in the instance
    assert ev.reference_computations == 1

    ev2 = FIDEvaluator(**kw)
    monkeypatch.setattr(FIDEvaluator, "dataset_features",
                        lambda *a, **k: pytest.fail("reference statistics recomputed"))
    mu2, sigma2 = ev2.reference_stats(ds)
    assert ev2.reference_computations == 0 and path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    # Another classifier has another key: its statistics are not mixed up with these.
    other = train_classifier(ds, steps=2, batch_size=8, seed=1, feat_dim=16, width=8)
    ev3 = FIDEvaluator(**{**kw, "classifier_path": str(save_classifier(other, tmp_path / "o.pt"))})
    assert ev3.reference_cache_path(ds) != path


# --- (e) alignment and grids ---------------------------------------------------------------------


def test_alignment_psnr_closed_form():
    a = torch.zeros(4, 3, 8, 8)
    b = torch.full_like(a, 0.1)
    out = alignment(a, b)
    assert out["mse"] == pytest.approx(0.01)
    assert out["psnr"] == pytest.approx(10 * math.log10(4 / 0.01))   # peak-to-peak 2 for [-1, 1]
    assert alignment(a, a)["psnr"] == math.inf
    with pytest.raises(ValueError):
        alignment(a, b[:2])


def test_save_grid_writes_png_of_the_right_size(tmp_path):
    x = torch.rand(10, 3, 8, 6) * 2 - 1
    path = save_grid(x, tmp_path / "g" / "grid.png", nrow=4)
    with Image.open(path) as im:
        assert im.format == "PNG"
        # 3 rows of 4: height 3 * (8 + 2) + 2, width 4 * (6 + 2) + 2.
        assert im.size == (4 * 8 + 2, 3 * 10 + 2)
    save_grid(torch.zeros(2, 1, 8, 8), tmp_path / "gray.png", nrow=8)
    with Image.open(tmp_path / "gray.png") as im:
        assert im.size == (2 * 10 + 2, 12) and np.asarray(im.convert("L")).max() == 128


def test_failed_writes_leave_no_partial_files(toy_classifier, tmp_path, monkeypatch):
    """A classifier or reference statistics that cannot be written completely leave neither the
    file nor its temporary copy (nothing half-written a later run could pick up)."""
    clf = save_classifier(toy_classifier, tmp_path / "clf.pt")

    def half_torch_save(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"PK half")
        raise OSError("No space left on device")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", half_torch_save)
        with pytest.raises(OSError, match="No space left"):
            save_classifier(toy_classifier, tmp_path / "classifiers" / "c.pt")
    assert list((tmp_path / "classifiers").iterdir()) == []

    def half_savez(f, *args, **kwargs):
        f.write(b"PK half")
        raise OSError("No space left on device")

    ev = FIDEvaluator(feature_extractor="classifier", classifier_path=str(clf), batch_size=10,
                      cache_dir=str(tmp_path / "cache"), device="cpu")
    monkeypatch.setattr(np, "savez", half_savez)
    with pytest.raises(OSError, match="No space left"):
        ev.reference_stats(two_class_dataset(n=12))
    assert list((tmp_path / "cache").iterdir()) == []


def test_describe_holds_the_settings_a_value_depends_on(toy_classifier, tmp_path):
    clf = save_classifier(toy_classifier, tmp_path / "clf.pt")
    ev = FIDEvaluator(feature_extractor="classifier", classifier_path=str(clf), num_samples=6, batch_size=6,
                      cache_dir=str(tmp_path / "cache"), device="cpu")
    ev.reference_stats(two_class_dataset(n=12))
    settings = ev.describe()
    assert settings == {"fd_classifier_mode": "native", "fd_classifier_num_samples": 6,
                        "fd_classifier_extractor": "classifier", "fd_classifier_label": CLASSIFIER_LABEL,
                        "fd_classifier_reference": str(ev.reference_cache_path(two_class_dataset(n=12)))}
    result = ev(lambda n: torch.rand(n, 1, 12, 12) * 2 - 1, tag="nfe1")
    assert {k: v for k, v in result.items() if "/" not in k} == settings


def test_feature_extractors_are_registry_entries_and_unknown_names_suggest_close_ones():
    from precondlab import registry
    from precondlab.evaluation import list_feature_extractors

    assert {"inception", "classifier"} <= set(list_feature_extractors())
    assert registry.get("feature_extractor", "classifier") is not None
    with pytest.raises(registry.UnknownEntryError, match="Did you mean: inception"):
        build_feature_extractor("inceptoin")
