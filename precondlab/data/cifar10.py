"""CIFAR-10 from the official python-pickle release, read from its tarball or extracted folder.

The batches are pickles, so they are read with ``SafeUnpickler``: it resolves only the few
globals a real batch refers to (numpy array reconstruction) and refuses everything else, so a
tampered file cannot run code.
"""

from __future__ import annotations

import importlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from precondlab.data.images import DatasetError, ImageDataset, download, resolve_data_dir
from precondlab.registry import register

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
TARBALL = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _numpy_reconstruct():
    # numpy 2 moved numpy.core to numpy._core; old pickles still name numpy.core, and importing
    # numpy.core on numpy 2 warns, so both names resolve to whichever module really exists.
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module)._reconstruct
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy has no multiarray._reconstruct")


def _latin1_encode(text, encoding="latin1"):
    """What a Python 3 protocol-2 pickle calls to rebuild bytes; only latin-1 text is accepted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode called with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


_reconstruct = _numpy_reconstruct()
# (module, name) -> the object it resolves to. Dicts, lists, ints and str need no globals.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): bytes,  # an empty bytes object in a protocol-2 pickle
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler (``encoding='bytes'``) that resolves only the globals in ``_ALLOWED``."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self.source = source  # named in the error message

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DatasetError(
                f"{self.source}: refusing to unpickle {module}.{name}. A CIFAR-10 batch holds only "
                f"dicts, lists and numpy arrays, so this file is not a genuine batch. Delete it and "
                f"put the official {TARBALL} (md5 {CIFAR10_MD5}) in its place.") from None


def safe_load(data: bytes, source: str):
    """Unpickle ``data`` with SafeUnpickler; any failure is a DatasetError naming ``source``."""
    try:
        return SafeUnpickler(io.BytesIO(data), source).load()
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken pickle raises almost anything
        raise DatasetError(f"{source} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc}). "
                           f"Delete it and put the official {TARBALL} (md5 {CIFAR10_MD5}) in its "
                           f"place.") from exc


def parse_batch(obj, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A batch dict -> (uint8 images (n, 3, 32, 32), int64 labels (n,))."""
    data = obj.get(b"data") if isinstance(obj, dict) else None
    labels = obj.get(b"labels") if isinstance(obj, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32 and isinstance(labels, list)
            and len(labels) == data.shape[0]):
        raise DatasetError(f"{source} does not hold a CIFAR-10 batch (a dict with b'data' uint8 "
                           f"(n, 3072) and b'labels' of length n). Delete it and put the official "
                           f"{TARBALL} (md5 {CIFAR10_MD5}) in its place.")
    # Rows are 1024 red, then green, then blue values, each image row-major: (n, C, H, W).
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _read_folder(folder: Path, names: list[str]) -> dict[str, tuple[bytes, str]]:
    return {name: ((folder / name).read_bytes(), str(folder / name)) for name in names}


def _read_tarball(path: Path, names: list[str]) -> dict[str, tuple[bytes, str]]:
    """The wanted members' bytes; one pass, since the official tarball is not in batch order."""
    found, wanted = {}, {(FOLDER, n) for n in names}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.isfile() and parts[-2:] in wanted:
                    found[parts[-1]] = (tar.extractfile(member).read(), f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}). Delete it "
                           f"and run again to re-download, or put a good {TARBALL} (md5 "
                           f"{CIFAR10_MD5}) there.") from exc
    missing = [n for n in names if n not in found]
    if missing:
        raise DatasetError(f"{path} lacks {', '.join(f'{FOLDER}/{n}' for n in missing)}; it is not the "
                           f"official {TARBALL}. Delete it and put the official one (md5 "
                           f"{CIFAR10_MD5}) there.")
    return found


@register("dataset", "cifar10")
class CIFAR10(ImageDataset):
    """CIFAR-10: 32x32 RGB images with 10 class labels, 50000 train and 10000 test."""

    def __init__(self,
                 data_dir=None,      # holds the tarball or cifar-10-batches-py/; default $PRECONDLAB_DATA
                 split: str = "train",   # 'train' (data_batch_1..5) or 'test' (test_batch)
                 limit: int | None = None,   # keep the first `limit` images
                 download: bool = True,  # fetch the tarball when neither it nor the folder is there
                 url: str = CIFAR10_URL):    # a mirror (file:// works) for clusters without internet
        if split not in SPLITS:
            raise ValueError(f"dataset.cifar10: split must be one of {list(SPLITS)}, got {split!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"dataset.cifar10: limit must be a positive count or None, got {limit}")
        self.data_dir = resolve_data_dir(data_dir)
        raw = self._read(SPLITS[split], download, url)
        images, labels, count = [], [], 0
        for name in SPLITS[split]:  # parse in batch order; stop once `limit` images are in
            if limit is not None and count >= limit:
                break
            x, y = parse_batch(safe_load(*raw[name]), raw[name][1])
            images.append(x)
            labels.append(y)
            count += len(x)
        images, labels = np.concatenate(images)[:limit], np.concatenate(labels)[:limit]
        super().__init__(images, labels, name=f"cifar10-{split}")

    def _read(self, names, download_ok, url):
        for folder in (self.data_dir / FOLDER, self.data_dir):  # extracted copy first: no gunzip
            if all((folder / n).is_file() for n in names):
                return _read_folder(folder, names)
        tarball = self.data_dir / TARBALL
        what_to_do = (f"Put {TARBALL} (md5 {CIFAR10_MD5}) into {self.data_dir}, or set "
                      f"PRECONDLAB_DATA / dataset.cifar10.data_dir to the folder that holds it "
                      f"(or its extracted {FOLDER}/).")
        if not tarball.is_file():
            if not download_ok:
                raise DatasetError(f"CIFAR-10 not found: no {tarball} and no {self.data_dir / FOLDER}/"
                                   f"{{{','.join(names)}}}; download=False. {what_to_do}")
            download(url, tarball, CIFAR10_MD5, what_to_do)
        return _read_tarball(tarball, names)
