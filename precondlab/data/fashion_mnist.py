"""Fashion-MNIST (28x28 grayscale, 10 classes) from its idx files, padded or resized for a UNet.

Files are looked for in ``data_dir`` (also its ``fashion-mnist/`` subfolder), then where the
Debian package ``dataset-fashion-mnist`` installs them, each raw or gzipped.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from precondlab.data.images import DatasetError, ImageDataset, resolve_data_dir
from precondlab.registry import register

SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian: apt-get install dataset-fashion-mnist
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGES_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dimensions (n, rows, cols)
LABELS_MAGIC = 2049  # 0x0801: unsigned bytes, 1 dimension (n,)


def read_idx(path, magic: int) -> np.ndarray:
    """An idx file (raw, or gzipped when named .gz) as a uint8 array of its declared shape.

    ``magic`` is the expected magic number; its low byte is the number of dimensions.
    """
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DatasetError(f"{path} cannot be read ({type(exc).__name__}: {exc}); delete it and put "
                           f"a good copy there.") from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        raise DatasetError(f"{path}: magic number {found}, expected {magic}; it is not an idx "
                           f"{'image' if magic == IMAGES_MAGIC else 'label'} file. Delete it and put "
                           f"the right file there.")
    if len(data) < header:
        raise DatasetError(f"{path} is truncated inside its header; delete it and put a good copy there.")
    dims = [int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DatasetError(f"{path} has {len(data)} bytes but its header {dims} needs {expected} "
                           f"(truncated or corrupt); delete it and put a good copy there.")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def fit_resolution(images: np.ndarray, resolution: int, resize: str) -> np.ndarray:
    """uint8 (N, H, W) -> uint8 (N, 1, R, R), by zero padding (pixel 0 is -1 in [-1, 1]) or bilinear."""
    n, h, w = images.shape
    if resize == "pad":
        if resolution < max(h, w):
            raise ValueError(f"resize='pad' cannot shrink {h}x{w} to {resolution}; use 'bilinear'")
        top, left = (resolution - h) // 2, (resolution - w) // 2
        out = np.zeros((n, 1, resolution, resolution), np.uint8)
        out[:, 0, top:top + h, left:left + w] = images
        return out
    if resize != "bilinear":
        raise ValueError(f"resize must be 'pad' or 'bilinear', got {resize!r}")
    out = np.empty((n, 1, resolution, resolution), np.uint8)
    for i in range(0, n, 8192):  # chunks bound the float32 copy
        x = torch.from_numpy(np.array(images[i:i + 8192, None], np.float32))
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=resolution < min(h, w))  # antialias only matters when shrinking
        out[i:i + 8192] = x.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


@register("dataset", "fashion_mnist")
class FashionMNIST(ImageDataset):
    """Fashion-MNIST: grayscale clothing images with 10 class labels, 60000 train and 10000 test."""

    def __init__(self,
                 data_dir=None,          # searched first; default $PRECONDLAB_DATA or ~/.cache/...
                 split: str = "train",   # 'train' or 'test' (the t10k files)
                 resolution: int = 32,   # output side; 28 keeps the originals
                 resize: str = "pad",    # 'pad' (centered, background 0 -> -1) or 'bilinear'
                 limit: int | None = None,   # keep the first `limit` images
                 system_dir: str | None = SYSTEM_DIR):  # searched last; None skips it
        if split not in FILES:
            raise ValueError(f"dataset.fashion_mnist: split must be one of {list(FILES)}, got {split!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"dataset.fashion_mnist: limit must be a positive count or None, got {limit}")
        if resize not in ("pad", "bilinear"):
            raise ValueError(f"dataset.fashion_mnist: resize must be 'pad' or 'bilinear', got {resize!r}")
        self.data_dir = resolve_data_dir(data_dir)
        dirs = [self.data_dir, self.data_dir / "fashion-mnist"] + ([Path(system_dir)] if system_dir else [])
        paths = [self._find(name, dirs) for name in FILES[split]]
        if None in paths:
            wanted = " and ".join(f"{n}[.gz]" for n in FILES[split])
            raise DatasetError(
                f"Fashion-MNIST {split} files not found: looked for {wanted} in "
                f"{', '.join(str(d) for d in dirs)}. Run `apt-get install dataset-fashion-mnist` "
                f"(it installs them into {SYSTEM_DIR}), or put the idx files into {self.data_dir} "
                f"(or set PRECONDLAB_DATA / dataset.fashion_mnist.data_dir).")
        images, labels = read_idx(paths[0], IMAGES_MAGIC), read_idx(paths[1], LABELS_MAGIC)
        if len(images) != len(labels):
            raise DatasetError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} "
                               f"labels; the two files come from different releases.")
        self.paths = paths
        images = fit_resolution(images[:limit], resolution, resize)  # crop first: cheap with limit
        super().__init__(images, labels[:limit], name=f"fashion_mnist-{split}")

    @staticmethod
    def _find(name: str, dirs: list[Path]) -> Path | None:
        for folder in dirs:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
        return None
