"""Tiny stand-ins in the true file formats for the image configs (tests only): an EDM pickle of
a 32x32 SongUNet with 8 channels, a CIFAR-10 tarball of a few images, and the bindings that
shrink gin/cifar_*.gin to seconds on a CPU."""

from pathlib import Path

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
