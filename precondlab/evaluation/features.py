"""Feature extractors for Fréchet distances on images: clean-fid's Inception, or a labelled substitute.

Two registered choices (kind ``feature_extractor``, picked by ``fid.feature_extractor = NAME``;
a plugin may register more):

* ``"inception"``: clean-fid's own extractor (``cleanfid.features.build_feature_extractor``) with
  clean-fid's own resizing (``cleanfid.resize.build_resizer(mode)``). The distance computed with it
  is FID and is reported under ``fid/...``. Nothing is downloaded unless ``allow_download=True``;
  when the weights file is absent, ``FeatureExtractorError`` says which URL to fetch and where to
  put the file.
* ``"classifier"``: the 128-D penultimate features of a small CNN trained in this project on a
  labelled ``ImageDataset`` (Fashion-MNIST, CIFAR-10, ...). The distance computed with it is NOT
  FID: it is reported under ``fd_classifier/...`` with ``CLASSIFIER_LABEL``.

Where clean-fid keeps things (clean-fid 0.1.35, read from its source):

* torchscript Inception (modes ``clean`` and ``legacy_tensorflow``): ``INCEPTION_URL`` is saved as
  ``/tmp/inception-2015-12-05.pt`` (``./inception-2015-12-05.pt`` on Windows); clean-fid downloads
  it whenever that file is missing (``InceptionV3W(path, download=True)``).
* pytorch-fid Inception (mode ``legacy_pytorch``): ``LEGACY_PYTORCH_URL`` through
  ``torch.hub.load_state_dict_from_url`` into ``<torch.hub.get_dir()>/checkpoints/``.
* Mode and resizing: ``clean`` = PIL bicubic to 299x299 on float32 channels, outside the net;
  ``legacy_pytorch`` = torch bilinear to 299x299 outside the net; ``legacy_tensorflow`` = the
  torchscript net resizes inside (TF-style), no resizing outside.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from precondlab import registry
from precondlab.errors import UserInputError
from precondlab.fileio import atomic_write

# clean-fid is imported inside the functions that use it: cleanfid.features imports torchvision,
# which imports torch._dynamo (seconds), and every CLI start imports this module via
# precondlab's entry points. The two URLs below are clean-fid's own values, copied so that error messages
# need no clean-fid import; tests/test_fid.py checks them against clean-fid.
INCEPTION_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                 "inception-2015-12-05.pt")   # cleanfid.downloads_helper.inception_url
INCEPTION_FILENAME = "inception-2015-12-05.pt"   # the name InceptionV3W loads from its folder
LEGACY_PYTORCH_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                      "pt_inception-2015-12-05-6726825d.pth")   # cleanfid.inception_pytorch.FID_WEIGHTS_URL
MODES = ("clean", "legacy_pytorch", "legacy_tensorflow")

CLASSIFIER_LABEL = ("Fréchet distance in a small in-project classifier's feature space "
                    "(NOT Inception FID; not comparable to published FID numbers)")
OFFLINE_HINT = ("The machine may be offline; nothing is downloaded unless allow_download=True. "
                "For a labelled substitute metric (reported as fd_classifier/..., NOT FID) use "
                "--gin_bindings \"fid.feature_extractor = 'classifier'\".")


class FeatureExtractorError(UserInputError):
    """A feature extractor cannot be built; the message says what is missing and what to do."""


def cleanfid_inception_dir() -> Path:
    """The folder clean-fid downloads the torchscript Inception into (hard-coded in
    ``cleanfid.features.feature_extractor``: "/tmp", or "./" on Windows)."""
    return Path("./" if platform.system() == "Windows" else "/tmp")


def legacy_pytorch_weights_path() -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` caches pytorch-fid's Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(LEGACY_PYTORCH_URL)


@dataclass
class FeatureExtractor:
    """What the evaluator needs to turn [0, 255] images into feature vectors via clean-fid.

    ``model_fn`` takes a float tensor (N, C, H, W) holding [0, 255] values, on ``device``, and
    returns (N, dim) features: clean-fid's feature-model contract (``get_batch_features``).
    ``fn_resize`` is handed to clean-fid as ``custom_fn_resize`` (None: clean-fid's own
    ``build_resizer(mode)``); ``channels`` is what the images must have before resizing.
    """
    name: str                  # "inception" | "classifier"
    model_fn: Callable[[torch.Tensor], torch.Tensor]
    mode: str                  # clean-fid mode handed to get_model_features
    dim: int
    channels: int
    device: torch.device
    prefix: str                # metric prefix: "fid" or "fd_classifier"
    label: str                 # human-readable name of the metric
    fn_resize: Callable | None = None
    identity: str = ""         # part of the reference-statistics cache key
    info: dict = field(default_factory=dict)


def list_feature_extractors() -> list[str]:
    """Names of the registered extractors (kind ``feature_extractor``; plugins may add more)."""
    return [entry.name for entry in registry.list_entries("feature_extractor")]


def build_feature_extractor(name: str, **kwargs) -> FeatureExtractor:
    """The registered extractor ``name`` built with ``kwargs``; an unknown name lists close ones."""
    return registry.create("feature_extractor", name, **kwargs)


# --- Inception (clean-fid) ----------------------------------------------------------------------


def find_inception_weights(inception_path=None) -> Path | None:
    """The torchscript Inception file: ``inception_path`` (the file, or a folder holding
    ``inception-2015-12-05.pt``) first, then clean-fid's own download location; None if absent."""
    candidates = []
    if inception_path:
        p = Path(inception_path).expanduser()
        candidates.append(p / INCEPTION_FILENAME if p.is_dir() or not p.suffix else p)
    candidates.append(cleanfid_inception_dir() / INCEPTION_FILENAME)
    for c in candidates:
        if c.is_file():
            return c
    return None


def inception_destination(inception_path=None) -> Path:
    """Where the torchscript Inception file should be put: at ``inception_path`` when one is
    configured (a folder gets ``inception-2015-12-05.pt`` inside it), else clean-fid's location."""
    if inception_path:
        p = Path(inception_path).expanduser()
        return (p / INCEPTION_FILENAME if p.is_dir() or not p.suffix else p).absolute()
    return (cleanfid_inception_dir() / INCEPTION_FILENAME).absolute()


def _missing_weights_error(url: str, dest: Path, alternative: Path | None = None) -> FeatureExtractorError:
    extra = f" (clean-fid itself also looks at {alternative})" if alternative and alternative != dest else ""
    return FeatureExtractorError(
        f"Inception weights for FID not found. Download {url} on a machine with network access "
        f"and place the file at {dest}{extra}. {OFFLINE_HINT}")


@registry.register("feature_extractor", "inception")
def inception_extractor(mode: str = "clean",
                        device="cpu",
                        inception_path=None,         # file or folder with inception-2015-12-05.pt
                        allow_download: bool = False,
                        **_unused) -> FeatureExtractor:
    """clean-fid's Inception-v3 pool features (2048-D), built by clean-fid's own code."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    from cleanfid import features as cleanfid_features        # imports torchvision: see the top
    from cleanfid import inception_torchscript as cleanfid_torchscript
    device = torch.device(device)
    if mode == "legacy_pytorch":
        dest = legacy_pytorch_weights_path()
        if not dest.is_file() and not allow_download:
            raise _missing_weights_error(LEGACY_PYTORCH_URL, dest)
        # pytorch-fid's net via torch.hub's cache: no download when the file is there.
        model_fn = cleanfid_features.build_feature_extractor(mode, device, use_dataparallel=False)
        source = str(dest)
    else:
        found = find_inception_weights(inception_path)
        default = (cleanfid_inception_dir() / INCEPTION_FILENAME).absolute()
        if found is None:
            if not allow_download:
                raise _missing_weights_error(INCEPTION_URL, inception_destination(inception_path), default)
            # clean-fid's own builder, which downloads into its folder (/tmp) first.
            model_fn = cleanfid_features.build_feature_extractor(mode, device, use_dataparallel=False)
            source = str(default)
        else:
            if found.name != INCEPTION_FILENAME:
                raise FeatureExtractorError(
                    f"{found}: clean-fid loads the file by its name; rename it to {INCEPTION_FILENAME}.")
            try:
                # Exactly what cleanfid.features.feature_extractor("torchscript_inception") builds,
                # from the folder where the file is, with the download switched off.
                net = cleanfid_torchscript.InceptionV3W(str(found.parent), download=False,
                                                        resize_inside=(mode == "legacy_tensorflow"))
            except (RuntimeError, ValueError, OSError) as exc:  # torch.jit.load on a bad file
                raise FeatureExtractorError(
                    f"Inception weights at {found} cannot be loaded ({exc}); delete the file and "
                    f"download {INCEPTION_URL} again to that place. {OFFLINE_HINT}") from exc
            model_fn = net.to(device).eval()
            source = str(found)
    return FeatureExtractor(name="inception", model_fn=model_fn, mode=mode, dim=2048, channels=3,
                            device=device, prefix="fid", label=f"FID (clean-fid, Inception-v3, mode={mode})",
                            fn_resize=None, identity="inception", info={"weights": source})


# --- in-project classifier (labelled substitute) -----------------------------------------------


class SmallClassifier(nn.Module):
    """A few conv layers, global average pooling, a ``feat_dim`` embedding and a linear head.

    Input: float images in [-1, 1]. ``features`` returns the penultimate embedding (before its
    ReLU, so no unit is ever constantly zero), the vectors the Fréchet distance is computed on.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, feat_dim: int = 128,
                 width: int = 32, resolution: int = 28):
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "feat_dim": feat_dim,
                       "width": width, "resolution": resolution}
        w = width
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Linear(4 * w, feat_dim)
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


def _require_labels(dataset):
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise ValueError(f"{getattr(dataset, 'name', dataset)}: the classifier needs a labelled dataset")
    return torch.as_tensor(labels).long()


def train_classifier(dataset,                  # ImageDataset with labels (uint8 images)
                     steps: int = 2000,
                     batch_size: int = 128,
                     seed: int = 0,
                     device="cpu",
                     lr: float = 2e-3,
                     feat_dim: int = 128,
                     width: int = 32,
                     hflip: bool = False) -> SmallClassifier:   # flip augmentation (only if label-preserving)
    """Train ``SmallClassifier`` with Adam on the dataset's labels; returns it in eval mode."""
    labels = _require_labels(dataset)
    images = dataset.images
    n, c, h, w = images.shape
    num_classes = int(labels.max()) + 1
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # initialisation from the seed, global RNG untouched
        torch.manual_seed(seed)
        model = SmallClassifier(c, num_classes, feat_dim, width, resolution=h).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    for _ in range(steps):
        idx = torch.randint(n, (min(batch_size, n),), generator=gen)
        x = (images[idx].float() / 127.5 - 1).to(device)
        if hflip and torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        loss = F.cross_entropy(model(x), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def classifier_accuracy(model: SmallClassifier, dataset, max_images: int | None = 10000,
                        batch_size: int = 512) -> float:
    """Top-1 accuracy on (the first ``max_images`` of) a labelled dataset."""
    labels = _require_labels(dataset)[:max_images]
    images = dataset.images[:max_images]
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        x = (images[i:i + batch_size].float() / 127.5 - 1).to(device)
        correct += int((model(x).argmax(1).cpu() == labels[i:i + batch_size]).sum())
    return correct / max(len(images), 1)


def save_classifier(model: SmallClassifier, path) -> Path:
    """Config plus state dict, loadable with ``torch.load(weights_only=True)``; atomic write."""
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save({"config": dict(model.config),
                    "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, tmp)
    return path


def load_classifier(path, device="cpu") -> SmallClassifier:
    path = Path(path)
    if not path.is_file():
        raise FeatureExtractorError(f"Classifier weights not found at {path}; train them with "
                                    f"precondlab.evaluation.features.train_classifier and save_classifier.")
    from precondlab.safe_load import load_tensors
    blob = load_tensors(path, "classifier weights")
    model = SmallClassifier(**blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()


def classifier_fingerprint(model: SmallClassifier) -> str:
    """A short hash of the weights: reference statistics depend on the exact classifier."""
    digest = hashlib.sha1(repr(sorted(model.config.items())).encode())
    for k, v in sorted(model.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:10]


@registry.register("feature_extractor", "classifier")
def classifier_extractor(model: SmallClassifier | None = None,
                         classifier_path=None,
                         device="cpu",
                         **_unused) -> FeatureExtractor:
    """Penultimate (128-D) features of an in-project classifier: fd_classifier, NOT FID.

    Images keep their own size unless it differs from the classifier's training resolution
    (then bilinear); channels are averaged (RGB -> gray) or repeated (gray -> RGB) to match."""
    device = torch.device(device)
    if model is None:
        if classifier_path is None:
            raise FeatureExtractorError("The classifier extractor needs model= or classifier_path=.")
        model = load_classifier(classifier_path, device)
    model = model.to(device).eval()
    cfg = model.config
    res, cin = cfg["resolution"], cfg["in_channels"]

    @torch.no_grad()
    def model_fn(x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 127.5 - 1  # clean-fid hands [0, 255]
        if x.shape[1] != cin:
            x = x.mean(1, keepdim=True) if cin == 1 else x.expand(-1, cin, -1, -1) if x.shape[1] == 1 else x
        if x.shape[1] != cin:
            raise ValueError(f"classifier expects {cin} channels, got {x.shape[1]}")
        if x.shape[-2:] != (res, res):
            x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
        return model.features(x)

    return FeatureExtractor(name="classifier", model_fn=model_fn, mode="clean", dim=cfg["feat_dim"],
                            channels=cin, device=device, prefix="fd_classifier", label=CLASSIFIER_LABEL,
                            fn_resize=lambda img: img,  # no 299x299 resize: native resolution
                            identity=f"classifier-{classifier_fingerprint(model)}",
                            info={"weights": str(classifier_path) if classifier_path else "(in memory)"})
