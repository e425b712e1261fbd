"""A folder or .zip of PNG/JPEG images laid out as EDM's dataset_tool writes them.

Images may sit in subfolders (``00000/img00000000.png``) and are taken in sorted path order;
an optional ``dataset.json`` at the top, ``{"labels": [[fname, label], ...]}``, gives labels.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import PIL.Image

from precondlab.data.images import DatasetError, ImageDataset
from precondlab.registry import register

EXTENSIONS = {".png", ".jpg", ".jpeg"}
LABELS_FILE = "dataset.json"
# Modes turned into 8-bit L or RGB before decoding; L, LA, RGB, RGBA are kept as they are.
_CONVERT = {"1": "L", "P": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def decode_image(data: bytes, source: str) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (C, H, W); ``source`` names the file in errors."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as img:
            if img.mode in _CONVERT:
                img = img.convert(_CONVERT[img.mode])
            if img.mode not in ("L", "LA", "RGB", "RGBA"):
                raise DatasetError(f"{source}: image mode {img.mode} is not 8-bit grayscale or RGB; "
                                   f"convert it to 8-bit PNG first.")
            array = np.asarray(img, dtype=np.uint8)
    except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:  # PIL's decoder errors
        raise DatasetError(f"{source} is not a readable PNG/JPEG ({exc}); delete or replace it.") from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _labels_by_name(data: bytes, source: str) -> dict[str, object] | None:
    try:
        labels = json.loads(data).get("labels")
        # EDM writes Windows paths with backslashes; the file names we compare are posix.
        return None if labels is None else {str(f).replace("\\", "/"): y for f, y in labels}
    except (ValueError, AttributeError, TypeError) as exc:
        raise DatasetError(f"{source} is not a dataset.json of the form "
                           f'{{"labels": [[fname, label], ...]}} ({exc}); fix or delete it.') from exc


@register("dataset", "image_folder")
class ImageFolder(ImageDataset):
    """Images from a folder or .zip (EDM dataset_tool layout), with labels from dataset.json if any."""

    def __init__(self,
                 path=None,                     # a folder or a .zip file
                 resolution: int | None = None,  # if given, every image must be this size square
                 limit: int | None = None,      # keep the first `limit` images in sorted order
                 how_to_make: str = ""):        # said when `path` is missing (a config names its recipe)
        if path is None:
            raise ValueError("dataset.image_folder needs `path`: bind "
                             "dataset.image_folder.path = '/data/cifar10-32x32.zip'")
        if limit is not None and limit < 1:
            raise ValueError(f"dataset.image_folder: limit must be a positive count or None, got {limit}")
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            files = {p.relative_to(self.path).as_posix(): p for p in self.path.rglob("*") if p.is_file()}
            images, labels = self._load(list(files), lambda name: files[name].read_bytes(),
                                        resolution, limit)
        elif self.path.is_file():
            try:
                with zipfile.ZipFile(self.path) as zf:
                    names = [n for n in zf.namelist() if not n.endswith("/")]
                    images, labels = self._load(names, zf.read, resolution, limit)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:  # also bad CRCs on read
                raise DatasetError(f"{self.path} is not a readable .zip ({exc}); recreate it, e.g. "
                                   f"with EDM's dataset_tool.py.") from exc
        else:
            raise DatasetError(f"{self.path} does not exist. Point dataset.image_folder.path at a folder "
                               f"or .zip of PNG/JPEG images (EDM's dataset_tool.py makes one)"
                               + (f"; to make this one: {how_to_make}" if how_to_make else "."))
        super().__init__(images, labels, name=f"image_folder:{self.path.name}")

    def _load(self, names, read, resolution, limit):
        image_names = sorted(n for n in names if PurePosixPath(n).suffix.lower() in EXTENSIONS)
        if not image_names:
            raise DatasetError(f"{self.path} holds no {'/'.join(sorted(EXTENSIONS))} images.")
        image_names = image_names[:limit]
        labels = None
        if LABELS_FILE in names:
            by_name = _labels_by_name(read(LABELS_FILE), f"{self.path}/{LABELS_FILE}")
            if by_name is not None:
                unlabeled = [n for n in image_names if n not in by_name]
                if unlabeled:
                    raise DatasetError(f"{self.path}/{LABELS_FILE} has no label for {unlabeled[0]} "
                                       f"({len(unlabeled)} images lack one); fix the labels list.")
                labels = [by_name[n] for n in image_names]
        arrays = []
        for name in image_names:
            array = decode_image(read(name), f"{self.path}/{name}")
            _, h, w = array.shape
            if resolution is not None and (h, w) != (resolution, resolution):
                raise DatasetError(f"{self.path}/{name} is {w}x{h}, but resolution={resolution} asks for "
                                   f"{resolution}x{resolution}; resize the dataset (EDM's dataset_tool.py "
                                   f"--resolution) or change dataset.image_folder.resolution.")
            if arrays and array.shape != arrays[0].shape:
                raise DatasetError(f"{self.path}/{name} has shape (C, H, W) = {array.shape}, but "
                                   f"{image_names[0]} has {arrays[0].shape}; all images must share one "
                                   f"shape and mode.")
            arrays.append(array)
        return np.stack(arrays), labels
