"""FID of a sampler with clean-fid's own pipeline, or a labelled substitute Fréchet distance.

``FIDEvaluator`` (gin: ``fid``) turns ``sample_fn(n) -> (n, C, H, W) floats in [-1, 1]`` into
uint8 levels exactly as an image file would hold them, hands them to clean-fid's
``get_model_features`` (its resizing for ``mode``, its batch feature call) and compares with
reference statistics by clean-fid's ``frechet_distance``:

* ``feature_extractor='inception'`` -> ``{"fid/<tag>": ..., "fid_mode": ..., ...}``: real FID.
* ``feature_extractor='classifier'`` -> ``{"fd_classifier/<tag>": ..., ...}``: the Fréchet
  distance in an in-project classifier's feature space; NOT FID, and labelled so everywhere.

Reference statistics: for ``reference='cifar10'`` (any clean-fid dataset name) clean-fid's own
precomputed file ``<cleanfid package>/stats/<name>_<mode>_<split>_<res>.npz`` is used when it is
already there (no download unless ``allow_download``); otherwise they are computed once from the
dataset through the same pipeline and cached as ``.npz`` under ``cache_dir``, keyed by dataset name,
resolution, split, extractor (with a hash of the classifier's weights) and mode.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable

import gin
import numpy as np
import torch

# No module-level clean-fid import: cleanfid.fid and cleanfid.features import torchvision (seconds,
# via torch._dynamo), and every CLI start imports this module (an entry point of precondlab's) for the
# gin configurable. The functions below import clean-fid where they use it.

from precondlab.evaluation.features import (FeatureExtractor, FeatureExtractorError, OFFLINE_HINT,
                                            build_feature_extractor, classifier_accuracy, save_classifier,
                                            train_classifier)
from precondlab.fileio import atomic_write

CACHE_ENV = "PRECONDLAB_FID_CACHE"
CLEANFID_STATS_URL = "https://www.cs.cmu.edu/~clean-fid/stats/"  # cleanfid.features.get_reference_statistics


def default_cache_dir() -> Path:
    """``$PRECONDLAB_FID_CACHE`` if set, else ``~/.cache/precondlab/fid`` (read at call time)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "precondlab" / "fid"


def cleanfid_stats_path(name: str, res: int, mode: str = "clean", split: str = "train") -> Path:
    """Where clean-fid keeps (and downloads) its precomputed Inception statistics."""
    import cleanfid   # the bare package: an empty __init__, no torchvision
    return Path(os.path.dirname(cleanfid.__file__)) / "stats" / f"{name}_{mode}_{split}_{res}.npz".lower()


def cleanfid_stats_url(name: str, res: int, mode: str = "clean", split: str = "train") -> str:
    return CLEANFID_STATS_URL + f"{name}_{mode}_{split}_{res}.npz".lower()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 levels as EDM saves PNGs: floor(127.5 x + 128) clipped to [0, 255].

    Exact inverse of ``ImageDataset``'s u / 127.5 - 1 on integers (u maps back to u).
    """
    return (x.detach().float() * 127.5 + 128).floor().clamp(0, 255).to(torch.uint8)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray -> RGB by repetition (what an RGB-converted grayscale PNG holds), RGB -> gray by mean."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(1, keepdim=True)
    raise ValueError(f"cannot turn {c}-channel images into {channels}-channel ones")


def frechet_distance_of_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """clean-fid's Fréchet distance between the Gaussians fitted to two feature sets (N, D)."""
    from cleanfid import fid as cleanfid_fid
    return float(cleanfid_fid.fid_from_feats(feats1, feats2))


class _Generator:
    """clean-fid's ``G(z)``: returns a full batch of [0, 255] float images, drawing only the
    ``total`` images asked for (a short last batch is padded by repeats that clean-fid drops)."""

    def __init__(self, draw: Callable[[int], torch.Tensor], total: int, channels: int):
        self.draw, self.remaining, self.channels = draw, total, channels
        self.last = None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        bs = z.shape[0]
        k = min(bs, self.remaining)
        if k > 0:
            x = self.draw(k)
            if x.shape[0] != k or x.ndim != 4:
                raise ValueError(f"sample_fn({k}) returned shape {tuple(x.shape)}; expected ({k}, C, H, W)")
            x = match_channels(x.cpu(), self.channels).float()
            self.remaining -= k
            self.last = x[-1:]
        else:
            x = self.last[:0]
        if x.shape[0] < bs:
            x = torch.cat([x, self.last.expand(bs - x.shape[0], -1, -1, -1)])
        return x.contiguous()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(text)).strip("-") or "na"


def _split_name(dataset) -> tuple[str, str]:
    """("cifar10", "train") from a dataset named "cifar10-train"; split "na" when none is named."""
    name = str(getattr(dataset, "name", type(dataset).__name__))
    split = getattr(dataset, "split", None)
    base, _, tail = name.rpartition("-")
    if split is None and base and tail in ("train", "test", "val", "valid"):
        name, split = base, tail
    return name, split or "na"


@gin.configurable("fid")
class FIDEvaluator:
    """FID (clean-fid, Inception) or the labelled classifier substitute of a sampler."""

    def __init__(self,
                 num_samples: int = 50000,           # generated images per evaluation
                 batch_size: int = 250,              # images per feature batch
                 mode: str = "clean",                # clean-fid mode: clean | legacy_pytorch | legacy_tensorflow
                 feature_extractor: str = "inception",   # 'inception' (FID) | 'classifier' (fd_classifier)
                 classifier_path: str | None = None,     # .pt of the classifier; trained and saved here if missing
                 classifier_steps: int = 2000,       # training steps when the classifier must be trained
                 inception_path: str | None = None,  # file or folder holding inception-2015-12-05.pt
                 allow_download: bool = False,       # let clean-fid download weights / statistics
                 reference: str = "dataset",         # 'dataset', or a clean-fid stats name such as 'cifar10'
                 reference_split: str | None = None,  # clean-fid split ('train'/'test'); default: the dataset's
                 reference_num_images: int | None = None,  # images for dataset statistics; None: all
                 cache_dir: str | None = None,       # default $PRECONDLAB_FID_CACHE or ~/.cache/precondlab/fid
                 device: str | None = None,          # default cuda if available
                 seed: int = 0,                      # classifier training seed
                 verbose: bool = False):
        self.num_samples, self.batch_size, self.mode = int(num_samples), int(batch_size), mode
        self.feature_extractor, self.classifier_path = feature_extractor, classifier_path
        self.classifier_steps, self.inception_path = classifier_steps, inception_path
        self.allow_download, self.reference, self.reference_split = allow_download, reference, reference_split
        self.reference_num_images = reference_num_images
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.seed, self.verbose = seed, verbose
        self.dataset = None
        self.reference_computations = 0   # times statistics were computed from images (not loaded)
        self._extractor: FeatureExtractor | None = None
        self._ref: tuple[np.ndarray, np.ndarray, str] | None = None
        self.info: dict = {}

    # --- feature extractor -------------------------------------------------------------------

    def setup(self, dataset) -> "FIDEvaluator":
        """Remember the reference dataset (also the classifier's training set when needed)."""
        self.dataset, self._ref = dataset, None
        return self

    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = self._build_extractor()
        return self._extractor

    def _build_extractor(self) -> FeatureExtractor:
        if self.feature_extractor != "classifier":
            return build_feature_extractor(self.feature_extractor, mode=self.mode, device=self.device,
                                           inception_path=self.inception_path,
                                           allow_download=self.allow_download)
        path = Path(self.classifier_path).expanduser() if self.classifier_path else None
        if path is None or not path.is_file():
            ds = self.dataset
            if ds is None or getattr(ds, "labels", None) is None:
                where = f" at {path}" if path else ""
                raise FeatureExtractorError(
                    f"No classifier weights{where} and no labelled dataset to train them on; call "
                    f"setup(dataset) with a labelled ImageDataset or set fid.classifier_path.")
            name, split = _split_name(ds)
            if path is None:
                path = self.cache_dir / (f"classifier_{_safe(name)}_{ds.shape[-1]}_{split}"
                                         f"_s{self.classifier_steps}_seed{self.seed}.pt")
            if not path.is_file():
                t0 = time.time()
                model = train_classifier(ds, steps=self.classifier_steps, seed=self.seed, device=self.device)
                save_classifier(model, path)
                self.info.update(classifier_train_s=round(time.time() - t0, 1),
                                 classifier_train_accuracy=classifier_accuracy(model, ds))
        return build_feature_extractor("classifier", classifier_path=path, device=self.device)

    # --- features ----------------------------------------------------------------------------

    def _features(self, draw: Callable[[int], torch.Tensor], n: int, desc: str) -> np.ndarray:
        """(n, D) features of n images from ``draw(k) -> [0, 255] floats``, by clean-fid."""
        from cleanfid import fid as cleanfid_fid
        ext = self.extractor
        gen = _Generator(draw, n, ext.channels)
        # clean-fid draws (batch, z_dim) latents from torch's global CPU RNG; z_dim=1 keeps that
        # small, and the latents are unused (sample_fn brings its own noise).
        return cleanfid_fid.get_model_features(
            gen, ext.model_fn, mode=ext.mode, z_dim=1, num_gen=n, batch_size=min(self.batch_size, n),
            device=ext.device, desc=desc, verbose=self.verbose, custom_fn_resize=ext.fn_resize)

    def sample_features(self, sample_fn: Callable[[int], torch.Tensor], n: int) -> np.ndarray:
        return self._features(lambda k: to_uint8(sample_fn(k)).float(), n, "generated")

    def dataset_features(self, dataset, n: int | None = None) -> np.ndarray:
        """Features of the first n images of an ImageDataset (uint8 as stored)."""
        images = dataset.images
        n = len(images) if n is None else min(int(n), len(images))
        pos = [0]

        def draw(k):
            batch = images[pos[0]:pos[0] + k]
            pos[0] += k
            return torch.as_tensor(batch).float()

        self.reference_computations += 1
        return self._features(draw, n, "reference")

    # --- reference statistics ----------------------------------------------------------------

    def reference_cache_path(self, dataset) -> Path:
        name, split = _split_name(dataset)
        ext = self.extractor
        n = len(dataset) if self.reference_num_images is None else min(self.reference_num_images, len(dataset))
        mode = self.mode if ext.name == "inception" else "native"
        c, h, w = dataset.shape
        return self.cache_dir / f"{_safe(name)}_{h}x{w}_{split}_{_safe(ext.identity)}_{mode}_n{n}.npz"

    def reference_stats(self, dataset=None) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of the reference: clean-fid's own file, else the cached or computed dataset ones."""
        dataset = dataset if dataset is not None else self.dataset
        if dataset is not None and dataset is not self.dataset:
            self.setup(dataset)
        if self._ref is not None:
            return self._ref[0], self._ref[1]
        if self.reference != "dataset":
            if self.feature_extractor != "inception":
                raise ValueError(f"reference={self.reference!r} (clean-fid's Inception statistics) cannot be "
                                 f"used with feature_extractor={self.feature_extractor!r}; use reference='dataset'.")
            res = dataset.shape[-1] if dataset is not None else 32
            split = self.reference_split or (_split_name(dataset)[1] if dataset is not None else "train")
            split = "train" if split == "na" else split
            path = cleanfid_stats_path(self.reference, res, self.mode, split)
            if path.is_file() or self.allow_download:
                from cleanfid import features as cleanfid_features
                # With the file present, clean-fid only reads it.
                mu, sigma = cleanfid_features.get_reference_statistics(self.reference, res, mode=self.mode,
                                                                        split=split)
                self._ref = (mu, sigma, f"clean-fid:{path.name}")
                return mu, sigma
            if dataset is None:
                raise FeatureExtractorError(
                    f"clean-fid statistics for {self.reference} not found at {path}; download "
                    f"{cleanfid_stats_url(self.reference, res, self.mode, split)} and place it there, or pass "
                    f"the dataset so they are computed from it. {OFFLINE_HINT}")
        if dataset is None:
            raise ValueError("reference statistics need a dataset: call setup(dataset) or pass it")
        ext = self.extractor
        path = self.reference_cache_path(dataset)
        if path.is_file():
            with np.load(path) as z:
                mu, sigma = z["mu"], z["sigma"]
        else:
            feats = self.dataset_features(dataset, self.reference_num_images)
            mu, sigma = np.mean(feats, axis=0), np.cov(feats, rowvar=False)
            with atomic_write(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no .npz
                np.savez(f, mu=mu, sigma=sigma, num_images=len(feats), extractor=ext.identity, mode=self.mode)
        self._ref = (mu, sigma, str(path))
        return mu, sigma

    # --- evaluation --------------------------------------------------------------------------

    def __call__(self,
                 sample_fn: Callable[[int], torch.Tensor],   # n -> (n, C, H, W) floats in [-1, 1]
                 num_samples: int | None = None,
                 dataset=None,
                 tag: str = "nfe1") -> dict:
        from cleanfid import fid as cleanfid_fid
        mu_ref, sigma_ref = self.reference_stats(dataset)
        n = int(num_samples or self.num_samples)
        if n < 2:
            raise ValueError("a Fréchet distance needs at least 2 samples")
        feats = self.sample_features(sample_fn, n)
        mu, sigma = np.mean(feats, axis=0), np.cov(feats, rowvar=False)
        value = float(cleanfid_fid.frechet_distance(mu, sigma, mu_ref, sigma_ref))
        p = self.extractor.prefix
        return {f"{p}/{tag}": value, **self.describe(), f"{p}_num_samples": n}

    def describe(self) -> dict:
        """The settings a value depends on, keyed as ``__call__`` reports them (``fid_mode``,
        ``fid_num_samples``, ``fid_extractor``, ``fid_label``, ``fid_reference`` once the reference
        statistics are known; ``fd_classifier_...`` for the substitute). Builds the extractor."""
        ext, p = self.extractor, self.extractor.prefix
        out = {f"{p}_mode": self.mode if ext.name == "inception" else "native",
               f"{p}_num_samples": self.num_samples,
               f"{p}_extractor": ext.name,
               f"{p}_label": ext.label}
        if self._ref is not None:
            out[f"{p}_reference"] = self._ref[2]
        return out
