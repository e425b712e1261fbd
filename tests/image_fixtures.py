"""Tiny stand-ins in the true file formats for the image configs (tests only): EDM pickles of
32x32 and 64x64 SongUNets with 8 channels, a CIFAR-10 tarball and an EDM dataset_tool zip of a
few images, and the bindings that shrink gin/cifar_*.gin and gin/ffhq64_*.gin to seconds on a CPU."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from precondlab.nets.songunet import SongUNet

TINY_NET = dict(img_resolution=32, in_channels=3, out_channels=3, label_dim=0, augment_dim=0, model_channels=8,
                channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0, embedding_type="positional",
                channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])


def write_cifar_fixture(root: Path) -> tuple[Path, Path]:
    """(teacher .pkl, data dir) for gin/cifar_*.gin."""
    from test_datasets import write_cifar_tarball
    from test_edm_pkl import write_edm_pickle
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_cifar_tarball(data / "cifar-10-python.tar.gz")
    torch.manual_seed(0)
    net = SongUNet(**TINY_NET).eval().requires_grad_(False)
    # what edm-cifar10-32x32-uncond-vp.pkl is: EDMPrecond around a DDPM++ SongUNet ("vp" names the architecture)
    pkl = root / "edm-tiny-cifar10-32x32-uncond-vp.pkl"
    write_edm_pickle(pkl, net, root / "marker", "EDMPrecond", record_kwargs=TINY_NET)
    return pkl, data


def write_cifar_cond_fixture(root: Path) -> tuple[Path, Path]:
    """(teacher .pkl, data dir) for gin/cifar_cond_*.gin: what edm-cifar10-32x32-cond-vp.pkl is,
    EDMPrecond around a DDPM++ SongUNet with 10 classes, at 8 channels."""
    from test_datasets import write_cifar_tarball
    from test_edm_pkl import write_edm_pickle
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_cifar_tarball(data / "cifar-10-python.tar.gz")
    kwargs = {**TINY_NET, "label_dim": 10}
    torch.manual_seed(0)
    net = SongUNet(**kwargs).eval().requires_grad_(False)
    pkl = root / "edm-tiny-cifar10-32x32-cond-vp.pkl"
    write_edm_pickle(pkl, net, root / "marker", "EDMPrecond", record_kwargs=kwargs)
    return pkl, data


def write_dataset_tool_zip(path: Path, n: int, resolution: int, labels: list | None = None) -> Path:
    """A zip as EDM's dataset_tool.py writes it: 00000/img00000000.png ... and dataset.json
    ({"labels": null} for an unlabelled dataset such as FFHQ)."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            buf = io.BytesIO()
            PIL.Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(buf, "png")
            zf.writestr(f"{i // 1000:05d}/img{i:08d}.png", buf.getvalue())
        names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(n)]
        zf.writestr("dataset.json", json.dumps({"labels": None if labels is None else
                                                [[name, y] for name, y in zip(names, labels)]}))
    return path


# SongUNet attends at its lowest resolution: three levels put that at 16x16 (at 64x64, 4096
# tokens, one forward of batch 8 took 0.5 s)
FFHQ64_CHANNEL_MULT = [1, 1, 1]


def write_ffhq64_fixture(root: Path) -> tuple[Path, Path]:
    """(teacher .pkl, dataset zip) for gin/ffhq64_*.gin: EDMPrecond around a 64x64 DDPM++ SongUNet
    with EDM's 9 augmentation labels, as edm-ffhq-64x64-uncond-vp.pkl is, at 8 channels."""
    from test_edm_pkl import write_edm_pickle
    root.mkdir(parents=True, exist_ok=True)
    kwargs = {**TINY_NET, "img_resolution": 64, "augment_dim": 9, "channel_mult": FFHQ64_CHANNEL_MULT}
    torch.manual_seed(0)
    net = SongUNet(**kwargs).eval().requires_grad_(False)
    pkl = root / "edm-tiny-ffhq-64x64-uncond-vp.pkl"
    write_edm_pickle(pkl, net, root / "marker", "EDMPrecond", record_kwargs=kwargs)
    # FFHQ has no labels; these serve the tests' offline FID stand-in (fid.feature_extractor =
    # 'classifier', trained on a labelled dataset), not the config, whose Inception needs none
    return pkl, write_dataset_tool_zip(root / "ffhq-64x64.zip", 12, 64, labels=[i % 3 for i in range(12)])


IMAGENET64_LABEL_DIM = 3   # the fixture's classes (LABEL_DIM = 3 in the tests' bindings)


def write_imagenet64_fixture(root: Path) -> tuple[Path, Path]:
    """(teacher .pkl, labelled dataset zip) for gin/imagenet64_*.gin: what
    edm-imagenet-64x64-cond-adm.pkl is (EDMPrecond around a class-conditional DhariwalUNet,
    use_fp16), at 8 channels and 3 classes, and a dataset_tool zip with labels."""
    from test_edm_pkl import write_edm_pickle

    from precondlab.nets.dhariwalunet import DhariwalUNet
    root.mkdir(parents=True, exist_ok=True)
    kwargs = dict(img_resolution=64, in_channels=3, out_channels=3, label_dim=IMAGENET64_LABEL_DIM, augment_dim=0,
                  model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.1)
    torch.manual_seed(0)
    net = DhariwalUNet(**kwargs).eval().requires_grad_(False)
    pkl = root / "edm-tiny-imagenet-64x64-cond-adm.pkl"
    write_edm_pickle(pkl, net, root / "marker", "EDMPrecond", model_class="DhariwalUNet", record_kwargs=kwargs,
                     extra_state={"use_fp16": True})
    zip_path = write_dataset_tool_zip(root / "imagenet-64x64.zip", 12, 64,
                                      labels=[i % IMAGENET64_LABEL_DIM for i in range(12)])
    return pkl, zip_path


def tiny_image_bindings(cache: Path) -> list[str]:
    return [
        'DEVICE = "cpu"', "STEPS = 4", "BATCH = 4", "MODEL_CHANNELS = 8", "CHANNEL_MULT = (1,)",
        "NUM_BLOCKS = 1", "ATTN_RESOLUTIONS = ()", "NUM_TIMESTEPS = 4",
        "experiment.eval_every = 2", "experiment.checkpoint_every = 2",
        "image_evaluator.num_align = 4", "image_evaluator.grid_images = 4", "image_evaluator.batch_size = 4",
        "fid.feature_extractor = 'classifier'", "fid.num_samples = 8", "fid.batch_size = 8",
        "fid.classifier_steps = 5", f"fid.cache_dir = '{cache}'", "fid.reference = 'dataset'",
        "fid.device = 'cpu'",
        "ode.analytic.num_points = 6", "ode.analytic.num_samples = 8", "ode.analytic.batch_size = 8",
    ]


def write_fashion_fixture(root: Path) -> tuple[Path, Path]:
    """(teacher .pt with its sidecar, data dir with idx files) for gin/fashion_*.gin."""
    from test_datasets import write_fmnist

    from precondlab.training.teacher import save_teacher
    data = root / "fmnist"
    write_fmnist(data, n=16)
    kwargs = {**TINY_NET, "in_channels": 1, "out_channels": 1}
    torch.manual_seed(0)
    net = SongUNet(**kwargs).eval()
    ckpt, _ = save_teacher(root / "fashion-teacher.pt", net, kwargs)
    return ckpt, data
