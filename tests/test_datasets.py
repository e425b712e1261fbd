"""Real image datasets on tiny fixtures written here in the true file formats (no network)."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from precondlab import registry
from precondlab.data import cifar10, fashion_mnist, images as images_mod
from precondlab.data import CIFAR10, DatasetError, FashionMNIST, ImageDataset, ImageFolder

PER_BATCH, TEST_N = 3, 4  # 5 train batches of 3 images, a test batch of 4

# --- fixture writers ------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2 ``str`` opcodes, as in the real CIFAR batches (cPickle).

    So the dict keys, the dtype's byte-order char and the array's raw data all load as bytes
    under ``encoding='bytes'``, exactly as the official files do.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_str8(self, obj):
        raw = obj.encode("ascii") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8


def cifar_batch_bytes(images: np.ndarray, labels, legacy: bool = True) -> bytes:
    """A batch pickle like the official ones: dict of bytes keys, data (n, 3072) uint8, list labels."""
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [int(y) for y in labels],
             b"data": images.reshape(len(images), -1),
             b"filenames": [b"x_%d.png" % i for i in range(len(images))]}
    if not legacy:
        return pickle.dumps(batch, protocol=4)  # what numpy 2 / Python 3 write natively
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(batch)
    # Python 2 era numpy named its module numpy.core; GLOBAL opcodes are newline-terminated text.
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def _add(tar: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_cifar_tarball(path: Path, seed: int = 0, skip=(), members=None) -> dict:
    """All 5 data batches + test_batch, small; returns the images/labels written per split."""
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, (5 * PER_BATCH, 3, 32, 32), dtype=np.uint8)
    train_x[4, 1, 7, 9] = 200  # a known pixel: image 4 (batch 2), green, row 7, col 9
    train_y = rng.integers(0, 10, 5 * PER_BATCH)
    test_x = rng.integers(0, 256, (TEST_N, 3, 32, 32), dtype=np.uint8)
    test_y = rng.integers(0, 10, TEST_N)
    members = members or {}
    with tarfile.open(path, "w:gz") as tar:
        # The official tarball is not in batch order; mimic that to test the one-pass reader.
        for i in (4, 3, 5, 2, 1):
            name = f"data_batch_{i}"
            if name in skip:
                continue
            sl = slice((i - 1) * PER_BATCH, i * PER_BATCH)
            _add(tar, f"cifar-10-batches-py/{name}",
                 members.get(name) or cifar_batch_bytes(train_x[sl], train_y[sl]))
        _add(tar, "cifar-10-batches-py/test_batch", cifar_batch_bytes(test_x, test_y))
        _add(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
    return {"train": (train_x, train_y), "test": (test_x, test_y)}


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.double() + 1) * 127.5).round().to(torch.uint8)


def write_idx(path: Path, array: np.ndarray, magic: int | None = None):
    magic = magic if magic is not None else 0x0800 + array.ndim
    data = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_fmnist(folder: Path, n: int = 6, gz: bool = True, split: str = "train", seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)  # no zeros: padding is then visible
    y = rng.integers(0, 10, n).astype(np.uint8)
    prefix = "train" if split == "train" else "t10k"
    ext = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y)
    return x, y


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def edm_images(n: int = 5, size: int = 8, seed: int = 2):
    """EDM dataset_tool layout: {name: HWC uint8}, plus its dataset.json."""
    rng = np.random.default_rng(seed)
    arrays = {f"{i // 3:05d}/img{i:08d}.png": rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
              for i in range(n)}
    meta = {"labels": [[name, i % 10] for i, name in enumerate(arrays)]}
    return arrays, meta


def write_folder(root: Path, arrays: dict, meta=None):
    for name, a in arrays.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png_bytes(a))
    if meta is not None:
        (root / "dataset.json").write_text(json.dumps(meta))


def write_zip(path: Path, arrays: dict, meta=None):
    with zipfile.ZipFile(path, "w") as zf:
        for name, a in arrays.items():
            zf.writestr(name, png_bytes(a))
        if meta is not None:
            zf.writestr("dataset.json", json.dumps(meta))


@pytest.fixture
def cifar_dir(tmp_path):
    truth = write_cifar_tarball(tmp_path / "cifar-10-python.tar.gz")
    return tmp_path, truth


# --- base class -----------------------------------------------------------------------------


def test_image_dataset_basics():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    ds = ImageDataset(x, labels=[3, 7])
    assert len(ds) == 2 and ds.shape == (3, 4, 5) and ds.dim == 60
    assert ds[0].dtype == torch.float32 and ds[1][2, 3, 4] == pytest.approx(119 / 127.5 - 1)
    s1 = ds.sample_x0(50, generator=torch.Generator().manual_seed(0))
    s2 = ds.sample_x0(50, generator=torch.Generator().manual_seed(0))
    assert s1.dtype == torch.float64 and s1.shape == (50, 3, 4, 5) and torch.equal(s1, s2)
    assert s1.min() >= -1 and s1.max() <= 1
    assert {to_uint8(s)[0, 0, 0].item() for s in s1} == {0, 60}  # both images are drawn
    assert ds.labels.dtype == torch.int64
    with pytest.raises(ValueError):
        ImageDataset(np.zeros((2, 3, 4, 5), np.float32))


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PRECONDLAB_DATA", str(tmp_path))
    assert images_mod.default_data_dir() == tmp_path
    monkeypatch.delenv("PRECONDLAB_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert images_mod.default_data_dir() == tmp_path / ".cache" / "precondlab" / "data"


def test_registered():
    assert registry.get("dataset", "cifar10") is CIFAR10
    assert registry.get("dataset", "fashion_mnist") is FashionMNIST
    assert registry.get("dataset", "image_folder") is ImageFolder


# --- CIFAR-10 -------------------------------------------------------------------------------


def test_cifar_train_roundtrip(cifar_dir):
    root, truth = cifar_dir
    ds = CIFAR10(data_dir=root, download=False)
    x, y = truth["train"]
    assert len(ds) == 15 and ds.shape == (3, 32, 32) and ds.dim == 3072
    item = ds[4]
    assert item.dtype == torch.float32 and item.min() >= -1 and item.max() <= 1
    assert item[1, 7, 9].item() == pytest.approx(200 / 127.5 - 1)
    assert torch.equal(ds.images, torch.from_numpy(x))  # batch order kept despite tar order
    assert torch.equal(to_uint8(torch.stack([ds[i] for i in range(len(ds))])), torch.from_numpy(x))
    assert ds.labels.tolist() == y.tolist()


def test_cifar_test_split_limit_and_env(cifar_dir, monkeypatch):
    root, truth = cifar_dir
    test = CIFAR10(data_dir=root, split="test", download=False)
    assert len(test) == TEST_N and torch.equal(test.images, torch.from_numpy(truth["test"][0]))
    monkeypatch.setenv("PRECONDLAB_DATA", str(root))
    part = CIFAR10(limit=7, download=False)  # spans batches 1..3
    assert len(part) == 7 and torch.equal(part.images, torch.from_numpy(truth["train"][0][:7]))
    assert part.labels.tolist() == truth["train"][1][:7].tolist()
    with pytest.raises(ValueError, match="split"):
        CIFAR10(data_dir=root, split="val", download=False)


def test_cifar_extracted_folder(cifar_dir):
    root, truth = cifar_dir
    tarball = root / "cifar-10-python.tar.gz"
    with tarfile.open(tarball) as tar:  # extract by hand: extractall(filter=) needs 3.11.4+
        for member in tar.getmembers():
            (root / member.name).parent.mkdir(exist_ok=True)
            (root / member.name).write_bytes(tar.extractfile(member).read())
    tarball.unlink()
    ds = CIFAR10(data_dir=root, download=False)
    assert torch.equal(ds.images, torch.from_numpy(truth["train"][0]))


def test_cifar_modern_pickle_accepted():
    x = np.full((2, 3, 32, 32), 9, np.uint8)
    obj = cifar10.safe_load(cifar_batch_bytes(x, [1, 2], legacy=False), "modern")
    images, labels = cifar10.parse_batch(obj, "modern")
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [1, 2]
    # Python 3 protocol 2 goes through _codecs.encode for bytes; also accepted.
    obj = cifar10.safe_load(pickle.dumps({b"data": x.reshape(2, -1), b"labels": [1, 2]}, protocol=2), "p2")
    assert cifar10.parse_batch(obj, "p2")[0].shape == (2, 3, 32, 32)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2)
    with pytest.raises(DatasetError, match=r"evil_batch: refusing to unpickle \w+\.system"):
        cifar10.safe_load(evil, "evil_batch")
    assert not marker.exists()
    # The same inside a tarball: the error names the tarball member.
    write_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", members={"data_batch_2": evil})
    with pytest.raises(DatasetError, match=r"cifar-10-python\.tar\.gz:cifar-10-batches-py/data_batch_2"):
        CIFAR10(data_dir=tmp_path, download=False)
    assert not marker.exists()


def test_cifar_corrupt_tarballs(tmp_path):
    tarball = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_tarball(tarball)
    data = tarball.read_bytes()
    for broken in (data[: len(data) // 2], b"this is not a tar file" * 100, gzip.compress(b"x" * 5000)):
        tarball.write_bytes(broken)
        with pytest.raises(DatasetError, match=r"cifar-10-python\.tar\.gz.*(corrupt|lacks)"):
            CIFAR10(data_dir=tmp_path, download=False)
    write_cifar_tarball(tarball, skip=("data_batch_3",))
    with pytest.raises(DatasetError,
                       match=r"cifar-10-python\.tar\.gz lacks cifar-10-batches-py/data_batch_3"):
        CIFAR10(data_dir=tmp_path, download=False)
    # A member that is a pickle of the wrong thing.
    write_cifar_tarball(tarball, members={"data_batch_1": pickle.dumps({b"data": [1, 2]})})
    with pytest.raises(DatasetError, match="data_batch_1 does not hold a CIFAR-10 batch"):
        CIFAR10(data_dir=tmp_path, download=False)


def test_cifar_missing_message(tmp_path):
    empty = tmp_path / "nothing here"
    with pytest.raises(DatasetError) as err:
        CIFAR10(data_dir=empty, download=False)
    msg = str(err.value)
    assert str(empty) in msg and "cifar-10-python.tar.gz" in msg and cifar10.CIFAR10_MD5 in msg
    assert "PRECONDLAB_DATA" in msg and "dataset.cifar10.data_dir" in msg


def test_md5_verify(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"hello")
    assert images_mod.verify_md5(f, "5d41402abc4b2a76b9719d911017c592")
    assert images_mod.verify_md5(f, "5D41402ABC4B2A76B9719D911017C592")
    assert not images_mod.verify_md5(f, cifar10.CIFAR10_MD5)


def test_download_file_url(tmp_path):
    src = tmp_path / "src" / "fixture.tar.gz"
    src.parent.mkdir()
    write_cifar_tarball(src)
    good_md5 = images_mod.file_md5(src)
    dest_dir = tmp_path / "data"
    dest = images_mod.download(src.as_uri(), dest_dir / "cifar-10-python.tar.gz", good_md5, "do X")
    assert dest.read_bytes() == src.read_bytes() and os.listdir(dest_dir) == [dest.name]
    # Bad checksum: the download is discarded, nothing half-written remains.
    dest.unlink()
    with pytest.raises(DatasetError, match="Checksum mismatch.*do X"):
        images_mod.download(src.as_uri(), dest, "0" * 32, "do X")
    assert os.listdir(dest_dir) == []
    # Unreachable source: reads as offline, and again leaves nothing.
    with pytest.raises(DatasetError, match="seems offline.*do X"):
        images_mod.download((tmp_path / "absent.tar.gz").as_uri(), dest, good_md5, "do X")
    assert os.listdir(dest_dir) == []


def test_cifar_download_path(tmp_path, monkeypatch):
    src = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    src.parent.mkdir()
    truth = write_cifar_tarball(src)
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetError) as err:  # the real md5 does not match the fixture
        CIFAR10(data_dir=data_dir, url=src.as_uri())
    msg = str(err.value)
    assert "Checksum mismatch" in msg and str(data_dir) in msg and "dataset.cifar10.data_dir" in msg
    assert os.listdir(data_dir) == []
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", images_mod.file_md5(src))
    ds = CIFAR10(data_dir=data_dir, url=src.as_uri(), split="test")
    assert torch.equal(ds.images, torch.from_numpy(truth["test"][0]))
    assert os.listdir(data_dir) == ["cifar-10-python.tar.gz"]


# --- Fashion-MNIST --------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_fmnist_pad(tmp_path, gz):
    x, y = write_fmnist(tmp_path, gz=gz)
    ds = FashionMNIST(data_dir=tmp_path, system_dir=None)
    assert len(ds) == 6 and ds.shape == (1, 32, 32) and ds.dim == 1024
    item = ds[3]
    assert item.min() >= -1 and item.max() <= 1
    assert (item[0, :2] == -1).all() and (item[0, :, -2:] == -1).all()  # pad background is -1
    assert item[0, 2 + 5, 2 + 11].item() == pytest.approx(x[3, 5, 11] / 127.5 - 1)
    assert torch.equal(ds.images[:, 0, 2:30, 2:30], torch.from_numpy(x))
    assert ds.labels.tolist() == y.tolist()


def test_fmnist_resize_split_limit(tmp_path):
    x, y = write_fmnist(tmp_path / "fashion-mnist", split="test", gz=False)  # the subfolder is searched
    bil = FashionMNIST(data_dir=tmp_path, split="test", resize="bilinear", limit=4, system_dir=None)
    assert bil.images.shape == (4, 1, 32, 32) and bil.labels.tolist() == y[:4].tolist()
    assert bil[0].min() >= -1 and bil[0].max() <= 1
    same = FashionMNIST(data_dir=tmp_path, split="test", resolution=28, resize="bilinear", system_dir=None)
    assert torch.equal(same.images[:, 0], torch.from_numpy(x))
    small = FashionMNIST(data_dir=tmp_path, split="test", resolution=16, resize="bilinear", system_dir=None)
    assert small.shape == (1, 16, 16)
    with pytest.raises(ValueError, match="bilinear"):
        FashionMNIST(data_dir=tmp_path, split="test", resolution=16, system_dir=None)


def test_fmnist_bad_files(tmp_path):
    write_fmnist(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-10])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte has .* bytes"):
        FashionMNIST(data_dir=tmp_path, system_dir=None)
    write_idx(images, np.zeros((2, 28, 28), np.uint8), magic=2049)  # a label magic on an image file
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte: magic number 2049, expected 2051"):
        FashionMNIST(data_dir=tmp_path, system_dir=None)
    images.write_bytes(good[:6])
    with pytest.raises(DatasetError, match="truncated inside its header"):
        FashionMNIST(data_dir=tmp_path, system_dir=None)
    write_idx(images, np.zeros((5, 28, 28), np.uint8))  # 5 images, 6 labels
    with pytest.raises(DatasetError, match="5 images but"):
        FashionMNIST(data_dir=tmp_path, system_dir=None)
    images.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(good)[:-20])  # truncated gzip
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz cannot be read"):
        FashionMNIST(data_dir=tmp_path, system_dir=None)


def test_fmnist_missing_message(tmp_path):
    with pytest.raises(DatasetError) as err:
        FashionMNIST(data_dir=tmp_path, split="test", system_dir=str(tmp_path / "sys"))
    msg = str(err.value)
    assert str(tmp_path) in msg and "t10k-images-idx3-ubyte" in msg and str(tmp_path / "sys") in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_fmnist_debian_package(tmp_path):
    if not Path(fashion_mnist.SYSTEM_DIR).is_dir():
        pytest.skip(f"{fashion_mnist.SYSTEM_DIR} absent (apt-get install dataset-fashion-mnist)")
    ds = FashionMNIST(data_dir=tmp_path, limit=16)
    assert len(ds) == 16 and ds.shape == (1, 32, 32) and ds.labels.max() < 10
    assert ds.labels[0].item() == 9  # the first training image is an ankle boot
    assert FashionMNIST(data_dir=tmp_path, split="test", limit=16).labels[0].item() == 9


# --- image folder / zip ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_image_folder(tmp_path, kind):
    arrays, meta = edm_images()
    path = tmp_path / ("ds" if kind == "folder" else "ds.zip")
    (write_folder if kind == "folder" else write_zip)(path, arrays, meta)
    ds = ImageFolder(path=path, resolution=8)
    want = np.stack([a.transpose(2, 0, 1) for a in arrays.values()])
    assert len(ds) == 5 and ds.shape == (3, 8, 8)
    assert torch.equal(ds.images, torch.from_numpy(want))
    assert ds[3][2, 1, 6].item() == pytest.approx(want[3, 2, 1, 6] / 127.5 - 1)
    assert ds.labels.tolist() == [0, 1, 2, 3, 4]
    part = ImageFolder(path=path, limit=2)
    assert len(part) == 2 and part.labels.tolist() == [0, 1]


def test_image_folder_unlabeled_gray_jpeg(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(3):
        (tmp_path / f"g{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (6, 6), dtype=np.uint8)))
    gray = ImageFolder(path=tmp_path)
    assert gray.shape == (1, 6, 6) and gray.labels is None
    jpg = tmp_path / "j"
    jpg.mkdir()
    (jpg / "a.jpg").write_bytes(png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "JPEG"))
    assert ImageFolder(path=jpg).shape == (3, 8, 8)


def test_image_folder_errors(tmp_path):
    arrays, _ = edm_images()
    arrays["00001/img00000004.png"] = np.zeros((10, 8, 3), np.uint8)  # 8 wide, 10 high
    write_folder(tmp_path / "mixed", arrays)
    with pytest.raises(DatasetError, match=r"img00000004\.png is 8x10, but resolution=8"):
        ImageFolder(path=tmp_path / "mixed", resolution=8)
    with pytest.raises(DatasetError, match=r"img00000004\.png has shape .*all images must share"):
        ImageFolder(path=tmp_path / "mixed")
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolder(path=tmp_path / "absent.zip")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"bad\.zip is not a readable \.zip"):
        ImageFolder(path=tmp_path / "bad.zip")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"x\.png is not a readable PNG/JPEG"):
        ImageFolder(path=tmp_path / "broken")
    arrays, meta = edm_images()
    meta["labels"] = meta["labels"][1:]
    write_zip(tmp_path / "nolabel.zip", arrays, meta)
    with pytest.raises(DatasetError, match=r"no label for 00000/img00000000\.png"):
        ImageFolder(path=tmp_path / "nolabel.zip")
