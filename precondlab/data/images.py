"""Common base of the real image datasets: uint8 images in memory, served in [-1, 1].

Also the pieces every loader shares: ``DatasetError`` (a message that says what is missing,
where it was looked for and what to do), the default data folder, and a checked download.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from precondlab.errors import UserInputError
from precondlab.fileio import atomic_write
from precondlab.hashing import file_digest

DATA_ENV = "PRECONDLAB_DATA"


class DatasetError(UserInputError):
    """A data file is missing or corrupt; the message names it, where it was sought, and the fix."""


def default_data_dir() -> Path:
    """``$PRECONDLAB_DATA`` if set, else ``~/.cache/precondlab/data`` (read at call time)."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "precondlab" / "data"


def resolve_data_dir(data_dir) -> Path:
    """The folder a loader reads: the one given, else the default."""
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def to_unit_range(images: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 [0, 255] -> [-1, 1]; 0 maps to -1 and 255 to 1 exactly."""
    return images.to(dtype) / 127.5 - 1


class ImageDataset(Dataset):
    """Images held as uint8 (N, C, H, W) in memory; items are float32 (C, H, W) in [-1, 1].

    ``labels`` (optional) is a tensor of length N, read by index; ``__getitem__`` returns the
    image alone so the dataset plugs into a DataLoader for unconditional training as is.
    """

    def __init__(self,
                 images,             # uint8 (N, C, H, W), numpy array or tensor
                 labels=None,        # optional, length N
                 name: str = "images"):
        if isinstance(images, np.ndarray):
            # from_numpy shares memory; copy read-only buffers (np.frombuffer) so torch may write.
            images = np.ascontiguousarray(images)
            images = torch.from_numpy(images if images.flags.writeable else images.copy())
        else:
            images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"{name}: expected uint8 images of shape (N, C, H, W), "
                             f"got {images.dtype} {tuple(images.shape)}")
        if labels is not None:
            labels = np.asarray(labels)
            labels = torch.as_tensor(labels.astype(np.int64) if labels.dtype.kind in "iub" else labels)
            if labels.shape[0] != images.shape[0]:
                raise ValueError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        return to_unit_range(self.images[index])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    @property
    def dim(self) -> int:
        """Number of scalars in one image, C * H * W."""
        return int(np.prod(self.shape))

    def sample_x0(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images drawn uniformly with replacement, float64 (n, C, H, W) in [-1, 1]."""
        idx = torch.randint(len(self), (n,), generator=generator)
        return to_unit_range(self.images[idx], torch.float64)

    def sample_labelled(self, n: int, label_dim: int,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """sample_x0's n images (the same draws) with their labels one-hot, float32 (n, label_dim):
        what EDM's dataset hands a class-conditional network."""
        self.check_labels(label_dim)
        idx = torch.randint(len(self), (n,), generator=generator)
        return to_unit_range(self.images[idx], torch.float64), torch.nn.functional.one_hot(
            self.labels[idx], label_dim).to(torch.float32)

    def check_labels(self, label_dim: int) -> None:
        """The dataset's labels are class indices below label_dim (a conditional teacher's classes)."""
        if self.labels is None:
            raise DatasetError(f"{self.name} has no labels, but the teacher is class-conditional ({label_dim} "
                               f"classes): use its labelled dataset (EDM's dataset_tool.py writes them to "
                               f"dataset.json) or an unconditional teacher")
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise DatasetError(f"{self.name}: labels must be class indices, got {self.labels.dtype} of shape "
                               f"{tuple(self.labels.shape)}")
        low, high = int(self.labels.min()), int(self.labels.max())
        if low < 0 or high >= label_dim:
            raise DatasetError(f"{self.name}: labels run from {low} to {high}, but the teacher knows {label_dim} "
                               f"classes (0 .. {label_dim - 1}): bind the dataset it was trained on")

    def as_tensor(self, dtype=torch.float64) -> torch.Tensor:
        """All images in [-1, 1] as one tensor, e.g. the points of an empirical teacher."""
        return to_unit_range(self.images, dtype)

    def describe(self) -> dict:
        return {"dataset": self.name, "num_images": len(self), "shape": list(self.shape),
                "labels": self.labels is not None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)}, shape={self.shape})"


# --- files and downloads ------------------------------------------------------------------


def file_md5(path) -> str:
    """Hex md5 of a file, read in chunks."""
    return file_digest(path, "md5")


def verify_md5(path, expected: str) -> bool:
    """True when the file's md5 equals ``expected`` (case-insensitive)."""
    return file_md5(path) == expected.lower()


def download(url: str,
             dest,
             md5: str,
             what_to_do: str,    # the sentence telling the user how to provide the file by hand
             timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` via a temp file beside it, check md5, then rename atomically.

    Any failure deletes the partial file and raises DatasetError, so ``dest`` either holds the
    verified file or does not exist.
    """
    dest = Path(dest)
    try:
        # atomic_write: a temp file beside dest, renamed over it only when the block succeeds and
        # deleted on any failure (also Ctrl-C), so readers never see a half file.
        with atomic_write(dest) as tmp:
            with open(tmp, "wb") as out:
                try:
                    with urllib.request.urlopen(url, timeout=timeout) as response:
                        shutil.copyfileobj(response, out, 1 << 20)
                except (OSError, ValueError) as exc:  # URLError, timeouts and resets are OSErrors
                    raise DatasetError(f"Could not download {url} ({exc}); the machine seems offline. "
                                       f"{what_to_do}") from exc
            actual = file_md5(tmp)
            if actual != md5.lower():
                raise DatasetError(f"Checksum mismatch for {url}: md5 {actual}, expected {md5}; the "
                                   f"download was discarded. {what_to_do}")
    except OSError as exc:  # the folder or the temp file cannot be created, written or renamed
        raise DatasetError(f"Cannot write into {dest.parent} to download {dest.name}: {exc}. "
                           f"{what_to_do}") from exc
    return dest
